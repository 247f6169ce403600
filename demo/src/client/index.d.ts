// Types of chorus-client, the client of Chorus's native protocol v1.

import type * as Y from 'yjs';

export const PROTOCOL_VERSION: 1;
/** WebSocket close codes after which the client does not reconnect. */
export const FATAL_CLOSE_CODES: readonly number[];

export type ConnectionStatus = 'idle' | 'connecting' | 'online' | 'reconnecting' | 'offline' | 'closed';
export type RoomState = 'joining' | 'synced' | 'disconnected' | 'failed' | 'left';

/** JSON-compatible value (presence states and event payloads). */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export interface BackoffOptions {
  /** First delay (before jitter), ms. Default 250. */
  initialMs?: number;
  /** Largest delay (before jitter), ms. Default 10000. */
  maxMs?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
}

export interface ClientOptions {
  /** Bearer token sent in `hello`. */
  token?: string;
  /** Client name and version for the server's logs. */
  clientName?: string;
  backoff?: BackoffOptions;
  /** Application-level ping interval, ms (0 disables). Default 10000. */
  pingIntervalMs?: number;
  /** Drop the connection when nothing was heard this long after a ping was due. Default 5000. */
  pongTimeoutMs?: number;
  /** Follow the browser's online/offline events. Default true. */
  watchNetwork?: boolean;
  /** Stand-in for window + navigator (an EventTarget with `onLine`), for tests. */
  network?: { onLine: boolean; addEventListener(type: string, fn: () => void): void; removeEventListener(type: string, fn: () => void): void };
  /** Connect in the constructor. Default true. */
  autoConnect?: boolean;
  /** Requests (versions, …) reject with code `timeout` after this long; 0: never. Default 30000. */
  requestTimeoutMs?: number;
  /** WebSocket constructor (defaults to globalThis.WebSocket). */
  WebSocket?: new (url: string) => WebSocket;
  /** Random source for the backoff jitter (tests). */
  random?: () => number;
  /** Timer functions (tests). */
  timers?: Pick<typeof globalThis, 'setTimeout' | 'clearTimeout' | 'setInterval' | 'clearInterval'>;
}

export interface StatusEvent {
  status: ConnectionStatus;
  attempt: number;
  /** For `reconnecting`: the wait before the next attempt. */
  delayMs?: number;
  /** WebSocket close code that caused the change. */
  code?: number;
  reason?: string;
}

export interface WireLimits {
  max_frame_bytes: number;
  max_rooms: number;
  max_doc_bytes: number;
  max_presence_bytes: number;
  typing_ttl_ms: number;
  heartbeat_ms: number;
}

export interface ServerError {
  t: 'error';
  code: string;
  message: string;
  rid?: number;
  room?: string;
}

/** One version of a room's document (see proto/PROTOCOL.md). */
export interface Version {
  /** Decimal string of a per-room counter: newer versions compare greater as numbers. */
  id: string;
  /** Milliseconds since the Unix epoch. */
  time: number;
  name: string | null;
  kind: 'auto' | 'named' | 'restore';
  /** For kind `restore`: the id of the version restored. */
  restored_from: string | null;
  /** Who changed the document since the previous version. */
  authors: { user: string; name: string | null }[];
  /** Bytes stored for this version. */
  bytes: number;
}

/** A page of versions, newest first; `next` is the `before` of the next page. */
export interface VersionPage {
  versions: Version[];
  next: string | null;
}

/** A refused or failed request: the server's error code, or `not_joined`, `disconnected`, `timeout`, `left`. */
export class ChorusRequestError extends Error {
  readonly code: string;
}

export interface Member {
  id: string;
  user?: string;
  state: { [key: string]: Json };
}

export interface Cursor {
  id: string;
  anchor: Uint8Array | null;
  head: Uint8Array | null;
}

export interface MembersChange {
  joined: string[];
  updated: string[];
  left: string[];
  snapshot: boolean;
  /** The room's member count while `members` is partial; null when it is everyone. */
  total: number | null;
  /** True while `members` lists only part of the room. */
  partial: boolean;
}

/** A page of a room's member list, in join order; `next` is the `after` of the next page. */
export interface MemberPage {
  members: Member[];
  next: string | null;
  total: number;
}

export interface RoomEvent {
  from: string;
  name: string;
  data: Json;
}

declare class Emitter<Events extends Record<string, (...args: any[]) => void>> {
  on<K extends keyof Events>(name: K, fn: Events[K]): () => void;
  once<K extends keyof Events>(name: K, fn: Events[K]): () => void;
  off<K extends keyof Events>(name: K, fn: Events[K]): void;
  emit<K extends keyof Events>(name: K, ...args: Parameters<Events[K]>): void;
}

export interface ClientEvents {
  status: (e: StatusEvent) => void;
  welcome: (msg: { v: number; session: string; server: string; limits: WireLimits }) => void;
  error: (err: ServerError | { code: string; message: string }) => void;
  message: (msg: { t: string; [field: string]: unknown }) => void;
  [name: string]: (...args: any[]) => void;
}

export class ChorusClient extends Emitter<ClientEvents> {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly status: ConnectionStatus;
  /** This connection's member id; null while not connected. */
  readonly session: string | null;
  readonly limits: WireLimits | null;
  readonly rooms: Map<string, ChorusRoom>;
  connect(): void;
  /** Closes for good; no reconnect. */
  close(): void;
  /** Drops the connection (if any) and reconnects now. */
  reconnectNow(): void;
  /** Joins a room; it (re)syncs whenever the connection is up. */
  join(room: string, options?: { doc?: Y.Doc; presence?: { [key: string]: Json } }): ChorusRoom;
  rid(): number;
}

export interface RoomEvents {
  status: (state: RoomState) => void;
  synced: (room: ChorusRoom) => void;
  members: (members: Map<string, Member>, change: MembersChange) => void;
  cursors: (cursors: Map<string, Cursor>, changed: string[]) => void;
  typing: (change: { id: string; on: boolean } | null, typing: Set<string>) => void;
  event: (e: RoomEvent) => void;
  saved: (saved: boolean) => void;
  error: (err: ServerError) => void;
  /** A version was added or deleted (by anyone): list again. */
  versions: (room: ChorusRoom) => void;
  [name: string]: (...args: any[]) => void;
}

export class ChorusRoom extends Emitter<RoomEvents> {
  readonly client: ChorusClient;
  readonly id: string;
  readonly doc: Y.Doc;
  readonly state: RoomState;
  /**
   * Members present, by member id (this connection included). In a room
   * above the server's `presence_list_max_members` only part of them: the
   * first to have joined, plus members whose activity was sent (`partial`).
   */
  readonly members: Map<string, Member>;
  /** The room's member count while `members` is partial; null when it is everyone. */
  readonly total: number | null;
  /** True while `members` lists only part of the room (page the rest with `listMembers`). */
  readonly partial: boolean;
  /** Members in the room: `total` while partial, else `members.size`. */
  readonly memberCount: number;
  /** A page of the whole member list, in join order (`limit` at most the server's `presence_list_max_members`). */
  listMembers(options?: { after?: string; limit?: number }): Promise<MemberPage>;
  readonly cursors: Map<string, Cursor>;
  /** Member ids currently typing. */
  readonly typing: Set<string>;
  /** This connection's member id. */
  readonly self: string | null;
  /** True while some local change is not yet acknowledged as durable. */
  readonly unsaved: boolean;
  /** Has the room synced at least once. */
  readonly everSynced: boolean;
  whenSynced(): Promise<ChorusRoom>;
  setPresence(state: { [key: string]: Json }): void;
  setCursor(anchor: Uint8Array | null, head?: Uint8Array | null): void;
  setTyping(on: boolean): void;
  sendEvent(name: string, data?: Json): boolean;
  /** Versions, newest first (`limit` default 50, max 200). Rejects with a ChorusRequestError. */
  versions(options?: { limit?: number; before?: string }): Promise<VersionPage>;
  /** Names the current state (`rw` only, else `forbidden`). */
  createVersion(name: string): Promise<Version>;
  /** A Yjs v1 update that rebuilds the version's document from empty. */
  viewVersion(id: string): Promise<Uint8Array>;
  /** Makes the version's content current, as a new change (`rw` only); resolves to the `restore` version. */
  restoreVersion(id: string): Promise<Version>;
  /** Deletes a version (`rw` only). */
  deleteVersion(id: string): Promise<void>;
  leave(): void;
}

/** Rights a JWT grants in `room`, read without verifying (for UI only); null without a readable token. */
export function tokenRights(token: string | undefined, room: string): 'r' | 'rp' | 'rw' | null;

/** Equal-jitter exponential backoff delay for attempt `attempt` (0-based). */
export function backoffDelay(attempt: number, backoff: Required<BackoffOptions>, random?: () => number): number;
/** A selection in `ytext` as protocol cursor bytes (Yjs relative positions). */
export function relativeCursor(ytext: Y.Text, anchor: number, head?: number): { anchor: Uint8Array; head: Uint8Array };
/** Resolves protocol cursor bytes to indexes; null when unresolvable. */
export function absoluteCursor(doc: Y.Doc, cursor: { anchor: Uint8Array | null; head: Uint8Array | null } | null | undefined): { anchor: number; head: number } | null;

export class CodecError extends Error {}
export function encodeClient(msg: { t: string; [field: string]: unknown }): Uint8Array;
export function decodeServer(bytes: Uint8Array | ArrayBuffer): { t: string; [field: string]: any };
export function encodeServer(msg: { t: string; [field: string]: unknown }): Uint8Array;
export function decodeClient(bytes: Uint8Array | ArrayBuffer): { t: string; [field: string]: any };
export function canonicalJson<T>(value: T): T;
export function toHex(bytes: Uint8Array): string;
export function fromHex(hex: string): Uint8Array;
export { Emitter };
