// chorus-client: the browser / Node client of Chorus's native protocol v1.
//
// One WebSocket carries any number of rooms. Each room keeps a Y.Doc in
// sync: `join` carries the doc's state vector, the server answers `synced`
// with what the client lacks plus its own state vector, and the client sends
// back what the server lacks. The same handshake runs after every reconnect,
// so edits made offline are delivered without a replay log.

import * as Y from 'yjs';
import { Emitter } from './emitter.js';
import { encodeClient, decodeServer } from './codec.js';

export { encodeClient, decodeServer, encodeServer, decodeClient, canonicalJson, toHex, fromHex, CodecError } from './codec.js';
export { Emitter } from './emitter.js';

/** Protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

/**
 * A request the server refused (`code` from its `error` message, e.g.
 * `forbidden`, `not_found`, `not_joined`), or that could not complete
 * (`disconnected`, `timeout`, `left`).
 */
export class ChorusRequestError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'ChorusRequestError';
    this.code = code;
  }
}

/**
 * The rights (`r`, `rp`, `rw`) a JWT `token` grants in `room`, read from
 * its payload without checking the signature (the server does that): for
 * showing or hiding controls only. null: no token, or not a JWT.
 */
export function tokenRights(token, room) {
  if (typeof token !== 'string') return null;
  const part = token.split('.')[1];
  if (!part) return null;
  let claims;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
  if (!claims || !Array.isArray(claims.grants)) return null;
  const order = ['r', 'rp', 'rw'];
  let best = -1;
  for (const g of claims.grants) {
    const pattern = String(g && g.room);
    const matches = pattern.endsWith('*') ? String(room).startsWith(pattern.slice(0, -1)) : pattern === room;
    if (matches) best = Math.max(best, order.indexOf(g.rights));
  }
  return best < 0 ? null : order[best];
}

/** Answers of the request/response messages of a room, by request type. */
const ANSWERS = Object.freeze({
  versions: 'versions',
  version_create: 'version',
  version_view: 'version_doc',
  version_restore: 'version',
  version_delete: 'version_deleted',
  presence_list: 'presence_page',
});

/** Close codes after which reconnecting cannot help. */
export const FATAL_CLOSE_CODES = Object.freeze([1008, 4001, 4002, 4003]);

const DEFAULTS = {
  token: undefined,
  clientName: 'chorus-client/0.1',
  backoff: { initialMs: 250, maxMs: 10_000, factor: 2 },
  pingIntervalMs: 10_000,
  pongTimeoutMs: 5_000,
  watchNetwork: true,
  autoConnect: true,
  requestTimeoutMs: 30_000,
};

/**
 * Delay before reconnect attempt `attempt` (0-based): exponential growth
 * capped at `maxMs`, with "equal jitter" (half fixed, half random) so that
 * clients dropped together do not come back together.
 */
export function backoffDelay(attempt, { initialMs, maxMs, factor }, random = Math.random) {
  const base = Math.min(maxMs, initialMs * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(base / 2 + random() * (base / 2));
}

/** True for the encoding of an update that carries nothing. */
function isEmptyUpdate(update) {
  return update.length === 2 && update[0] === 0 && update[1] === 0;
}

/**
 * Encodes a selection in `ytext` as the protocol's cursor: Yjs relative
 * positions, so it stays attached to the text while others edit.
 * @returns {{anchor: Uint8Array, head: Uint8Array}}
 */
export function relativeCursor(ytext, anchor, head = anchor) {
  return {
    anchor: Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(ytext, anchor)),
    head: Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(ytext, head)),
  };
}

/**
 * Resolves a protocol cursor to indexes in `doc`; null when either end
 * cannot be resolved (e.g. the text it points into is not known yet).
 * @returns {{anchor: number, head: number} | null}
 */
export function absoluteCursor(doc, cursor) {
  if (!cursor || !cursor.anchor || !cursor.head) return null;
  try {
    const a = Y.createAbsolutePositionFromRelativePosition(Y.decodeRelativePosition(cursor.anchor), doc);
    const h = Y.createAbsolutePositionFromRelativePosition(Y.decodeRelativePosition(cursor.head), doc);
    if (!a || !h) return null;
    return { anchor: a.index, head: h.index };
  } catch {
    return null;
  }
}

/**
 * A connection to a Chorus server. Events:
 * - `status` ({status, attempt, delayMs?, code?, reason?}): `connecting`,
 *   `online`, `reconnecting`, `offline` (the browser has no network), `closed`;
 * - `welcome` (welcome message), `error` (server error without a room),
 *   `message` (every decoded server message, for tools).
 */
export class ChorusClient extends Emitter {
  /**
   * @param {string} url  WebSocket URL of the native endpoint, e.g. `ws://host:8080/ws`.
   * @param {object} [options]  see index.d.ts
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new Error('no WebSocket implementation: pass options.WebSocket');
    this.random = options.random || Math.random;
    this.timers = options.timers || globalThis;
    /** @type {'idle'|'connecting'|'online'|'reconnecting'|'offline'|'closed'} */
    this.status = 'idle';
    /** This connection's member id (from `welcome`); changes on reconnect. */
    this.session = null;
    /** Limits announced by the server. */
    this.limits = null;
    /** @type {Map<string, ChorusRoom>} */
    this.rooms = new Map();
    this.attempt = 0;
    this.ws = null;
    this.nextRid = 1;
    this.lastHeard = 0;
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.stopped = false;
    this.networkDown = false;
    this.#watchNetwork();
    if (this.options.autoConnect) this.connect();
  }

  /** A fresh request id. */
  rid() {
    return this.nextRid++;
  }

  /** Opens the socket (no-op when open or opening). */
  connect() {
    this.stopped = false;
    if (this.ws) return;
    this.#clearReconnect();
    if (this.networkDown) return this.#setStatus('offline');
    this.#setStatus(this.attempt === 0 ? 'connecting' : 'reconnecting', { attempt: this.attempt });
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (e) {
      this.#lost(1006, String(e && e.message));
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      this.#sendNow({ t: 'hello', v: PROTOCOL_VERSION, token: this.options.token, client: this.options.clientName });
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      if (typeof ev.data === 'string') return;
      let msg;
      try {
        msg = decodeServer(new Uint8Array(ev.data));
      } catch (e) {
        this.emit('error', { code: 'bad_message', message: `undecodable server frame: ${e.message}` });
        return;
      }
      this.#handle(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.#lost(ev.code, ev.reason);
    };
    ws.onerror = () => {
      // `close` follows; nothing to do here.
    };
  }

  /** Closes for good (no reconnect). Rooms keep their documents. */
  close() {
    this.stopped = true;
    this.#clearReconnect();
    this.#stopPing();
    const ws = this.ws;
    this.ws = null;
    for (const room of this.rooms.values()) room._disconnected();
    if (ws) {
      try {
        ws.close(1000, 'bye');
      } catch {
        /* already closed */
      }
    }
    this.#setStatus('closed', { code: 1000 });
    this.#unwatchNetwork?.();
  }

  /**
   * Drops the connection and reconnects at once, as after a network
   * change (also what the browser's `online` event does).
   */
  reconnectNow() {
    this.attempt = 0;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try {
        ws.close(1000, 'reconnect');
      } catch {
        /* ignore */
      }
      this.#onSocketGone();
    }
    this.connect();
  }

  /**
   * Joins `roomId`. Returns the room at once; it syncs as soon as the
   * connection is up (and again after every reconnect).
   * @param {string} roomId
   * @param {{doc?: Y.Doc, presence?: object}} [options]
   */
  join(roomId, options = {}) {
    if (this.rooms.has(roomId)) throw new Error(`already joined ${roomId}`);
    const room = new ChorusRoom(this, roomId, options);
    this.rooms.set(roomId, room);
    if (this.status === 'online') room._sendJoin();
    return room;
  }

  /** @internal Sends when online; returns false when the message was not sent. */
  _send(msg) {
    if (this.status !== 'online') return false;
    return this.#sendNow(msg);
  }

  #sendNow(msg) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(encodeClient(msg));
      return true;
    } catch (e) {
      this.emit('error', { code: 'send_failed', message: String(e && e.message) });
      return false;
    }
  }

  #handle(msg) {
    this.emit('message', msg);
    if (msg.t === 'welcome') {
      this.session = msg.session;
      this.limits = msg.limits;
      this.attempt = 0;
      this.#setStatus('online');
      this.emit('welcome', msg);
      this.#startPing();
      for (const room of this.rooms.values()) room._sendJoin();
      return;
    }
    if (msg.t === 'pong') return;
    if (msg.t === 'error' && !msg.room) {
      this.emit('error', msg);
      return;
    }
    const room = msg.room != null ? this.rooms.get(msg.room) : undefined;
    if (room) room._handle(msg);
  }

  #lost(code, reason) {
    this.ws = null;
    this.#onSocketGone();
    if (this.stopped) return;
    if (FATAL_CLOSE_CODES.includes(code)) {
      this.stopped = true;
      this.#setStatus('closed', { code, reason });
      return;
    }
    if (this.networkDown) {
      this.#setStatus('offline', { code, reason });
      return;
    }
    this.#scheduleReconnect(code, reason);
  }

  #onSocketGone() {
    this.#stopPing();
    this.session = null;
    for (const room of this.rooms.values()) room._disconnected();
  }

  #scheduleReconnect(code, reason) {
    this.#clearReconnect();
    const delayMs = backoffDelay(this.attempt, this.options.backoff, this.random);
    this.attempt += 1;
    this.#setStatus('reconnecting', { attempt: this.attempt, delayMs, code, reason });
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped) this.connect();
    }, delayMs);
  }

  #clearReconnect() {
    if (this.reconnectTimer != null) this.timers.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
  }

  #startPing() {
    this.#stopPing();
    const { pingIntervalMs, pongTimeoutMs } = this.options;
    if (!pingIntervalMs) return;
    this.pingTimer = this.timers.setInterval(() => {
      if (Date.now() - this.lastHeard > pingIntervalMs + pongTimeoutMs) {
        // Nothing heard, not even a pong: the connection is dead.
        const ws = this.ws;
        this.ws = null;
        try {
          ws?.close(4000, 'ping timeout');
        } catch {
          /* ignore */
        }
        this.#lost(4000, 'ping timeout');
        return;
      }
      this.#sendNow({ t: 'ping', rid: this.rid() });
    }, pingIntervalMs);
  }

  #stopPing() {
    if (this.pingTimer != null) this.timers.clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  #setStatus(status, detail = {}) {
    if (this.status === status && status !== 'reconnecting') return;
    this.status = status;
    this.emit('status', { status, attempt: this.attempt, ...detail });
  }

  #unwatchNetwork = null;

  #watchNetwork() {
    // `network` (tests) stands for the browser's window + navigator.
    const g = this.options.network || globalThis;
    const nav = this.options.network || globalThis.navigator;
    if (!this.options.watchNetwork || typeof g.addEventListener !== 'function' || !nav) return;
    this.networkDown = nav.onLine === false;
    const offline = () => {
      this.networkDown = true;
      this.#clearReconnect();
      const ws = this.ws;
      this.ws = null;
      if (ws) {
        try {
          ws.close(1000, 'offline');
        } catch {
          /* ignore */
        }
        this.#onSocketGone();
      }
      if (!this.stopped) this.#setStatus('offline');
    };
    const online = () => {
      this.networkDown = false;
      if (!this.stopped) this.reconnectNow();
    };
    g.addEventListener('offline', offline);
    g.addEventListener('online', online);
    this.#unwatchNetwork = () => {
      g.removeEventListener('offline', offline);
      g.removeEventListener('online', online);
    };
  }
}

/**
 * One joined room. Events:
 * - `synced` (first and every later resync), `status` ('joining'|'synced'|'disconnected'|'failed');
 * - `members` (Map, {joined, updated, left, snapshot, total, partial}); `cursors` (Map, changed ids);
 * - `typing` ({id, on}, Set of typing ids); `event` ({from, name, data});
 * - `saved` (true when every local update is acknowledged as durable, false when some wait);
 * - `error` (server error for this room).
 */
export class ChorusRoom extends Emitter {
  constructor(client, id, { doc, presence } = {}) {
    super();
    this.client = client;
    this.id = id;
    /** @type {Y.Doc} */
    this.doc = doc || new Y.Doc();
    /** Own presence state; null: none (joins without one, as `r` tokens must). */
    this.presence = presence ? { ...presence } : null;
    /** @type {'joining'|'synced'|'disconnected'|'failed'|'left'} */
    this.state = 'disconnected';
    /** @type {Map<string, {id: string, user?: string, state: object}>} */
    this.members = new Map();
    /**
     * The room's member count while `members` holds only part of it (a
     * room above the server's `presence_list_max_members`); null when
     * `members` is everyone.
     * @type {number|null}
     */
    this.total = null;
    /** True while `members` lists only part of the room (see `listMembers`). */
    this.partial = false;
    /** @type {Map<string, {id: string, anchor: Uint8Array|null, head: Uint8Array|null}>} */
    this.cursors = new Map();
    /** @type {Set<string>} */
    this.typing = new Set();
    this.joinRid = null;
    this.unacked = new Set();
    /** Local changes not yet known durable (drives the `saved` event). */
    this.unsaved = false;
    this.everSynced = false;
    this.localCursor = undefined;
    this.presenceDirty = false;
    this.typingOn = false;
    /** Requests waiting for their answer, by rid. */
    this.pending = new Map();
    /** Origin of transactions applied from the server. */
    this.origin = { chorusRoom: id };
    this.onDocUpdate = (update, origin) => {
      if (origin === this.origin) return;
      // Before `synced` the room may not have this member yet; the diff sent
      // after `synced` covers these edits.
      if (this.state !== 'synced') return this.#markUnsaved();
      this.#sendUpdate(update);
    };
    this.doc.on('update', this.onDocUpdate);
  }

  /** This connection's member id, or null while offline. */
  get self() {
    return this.client.session;
  }

  /** Resolves once the room is synced (now, if it is). */
  whenSynced() {
    if (this.state === 'synced') return Promise.resolve(this);
    return new Promise((resolve, reject) => {
      const offs = [
        this.on('synced', () => {
          offs.forEach((f) => f());
          resolve(this);
        }),
        this.on('status', (s) => {
          if (s === 'failed' || s === 'left') {
            offs.forEach((f) => f());
            reject(new Error(`room ${this.id} ${s}`));
          }
        }),
      ];
    });
  }

  /** Members in the room: `total` while the list is partial, else the list's size. */
  get memberCount() {
    return this.partial && this.total != null ? this.total : this.members.size;
  }

  /**
   * A page of the room's whole member list, in join order: `{members, next,
   * total}`, where `next` (when not null) is the `after` of the next page.
   * For rooms whose `members` is partial; `limit` at most the server's
   * `presence_list_max_members` (its default).
   * @param {{after?: string, limit?: number}} [options]
   */
  async listMembers({ after, limit } = {}) {
    const msg = await this.#request({ t: 'presence_list', after, limit });
    return { members: msg.members || [], next: msg.next ?? null, total: msg.total };
  }

  /** Replaces this member's presence state (name, colour, …). */
  setPresence(state) {
    this.presence = { ...state };
    if (this.state === 'synced') this.client._send({ t: 'presence', room: this.id, state: this.presence, rid: this.client.rid() });
    else this.presenceDirty = true;
  }

  /**
   * Moves this member's cursor: encoded relative positions (see
   * `relativeCursor`), or nulls to hide it.
   */
  setCursor(anchor, head = anchor) {
    this.localCursor = { anchor: anchor || null, head: head || null };
    if (this.state === 'synced') this.#sendCursor();
  }

  /** Typing on or off (the server turns it off by itself after its TTL). */
  setTyping(on) {
    this.typingOn = Boolean(on);
    this.client._send({ t: 'typing', room: this.id, on: this.typingOn });
  }

  /** Sends an ephemeral event to every other member; false when offline. */
  sendEvent(name, data = null) {
    if (this.state !== 'synced') return false;
    return this.client._send({ t: 'event', room: this.id, name, data, rid: this.client.rid() });
  }

  /**
   * Lists the room's versions, newest first: `{versions, next}`, where
   * `next` (when not null) is the `before` of the next page.
   * @param {{limit?: number, before?: string}} [options]
   */
  async versions({ limit, before } = {}) {
    const msg = await this.#request({ t: 'versions', limit, before });
    return { versions: msg.versions || [], next: msg.next ?? null };
  }

  /** Names the current state (needs write rights): the new version. */
  async createVersion(name) {
    return (await this.#request({ t: 'version_create', name: String(name) })).version;
  }

  /** A Yjs update that rebuilds version `id`'s whole document from empty. */
  async viewVersion(id) {
    return (await this.#request({ t: 'version_view', id: String(id) })).update;
  }

  /**
   * Makes version `id`'s content the current content (a new change that
   * reaches everyone as ordinary updates; needs write rights). Resolves to
   * the new version of kind `restore`.
   */
  async restoreVersion(id) {
    return (await this.#request({ t: 'version_restore', id: String(id) })).version;
  }

  /** Deletes version `id` (needs write rights). */
  async deleteVersion(id) {
    await this.#request({ t: 'version_delete', id: String(id) });
  }

  #request(fields) {
    if (this.state !== 'synced') return Promise.reject(new ChorusRequestError('not_joined', `room ${this.id} is not joined (${this.state})`));
    const rid = this.client.rid();
    return new Promise((resolve, reject) => {
      const timeoutMs = this.client.options.requestTimeoutMs;
      const timer = timeoutMs ? this.client.timers.setTimeout(() => this.#settle(rid, null, new ChorusRequestError('timeout', `no answer to ${fields.t} within ${timeoutMs} ms`)), timeoutMs) : null;
      this.pending.set(rid, { answer: ANSWERS[fields.t], resolve, reject, timer });
      if (!this.client._send({ ...fields, room: this.id, rid })) this.#settle(rid, null, new ChorusRequestError('disconnected', 'not connected'));
    });
  }

  /** Resolves (`msg`) or rejects (`error`) request `rid`; false if unknown. */
  #settle(rid, msg, error) {
    const p = this.pending.get(rid);
    if (!p) return false;
    this.pending.delete(rid);
    if (p.timer != null) this.client.timers.clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(msg);
    return true;
  }

  #failPending(code, message) {
    for (const rid of [...this.pending.keys()]) this.#settle(rid, null, new ChorusRequestError(code, message));
  }

  /** Leaves the room; the document stays usable locally. */
  leave() {
    if (this.state === 'left') return;
    this.#failPending('left', `left room ${this.id}`);
    this.client._send({ t: 'leave', room: this.id });
    this.client.rooms.delete(this.id);
    this.doc.off('update', this.onDocUpdate);
    this.#setState('left');
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit('status', state);
  }

  #sendUpdate(update) {
    const rid = this.client.rid();
    if (this.client._send({ t: 'update', room: this.id, data: update, rid })) this.unacked.add(rid);
    this.#markUnsaved();
  }

  #markUnsaved() {
    if (this.unsaved) return;
    this.unsaved = true;
    this.emit('saved', false);
  }

  #markSavedIfDone() {
    if (!this.unsaved || this.unacked.size > 0 || this.state !== 'synced') return;
    this.unsaved = false;
    this.emit('saved', true);
  }

  #sendCursor() {
    if (this.localCursor === undefined) return;
    this.client._send({ t: 'cursor', room: this.id, anchor: this.localCursor.anchor, head: this.localCursor.head });
  }

  /** @internal */
  _sendJoin() {
    if (this.state === 'left') return;
    this.joinRid = this.client.rid();
    this.presenceDirty = false;
    this.#setState('joining');
    this.client._send({
      t: 'join',
      room: this.id,
      sv: Y.encodeStateVector(this.doc),
      presence: this.presence ?? undefined,
      rid: this.joinRid,
    });
  }

  /** @internal The socket is gone: everything ephemeral is stale. */
  _disconnected() {
    if (this.state === 'left') return;
    this.#failPending('disconnected', 'the connection was lost');
    this.members.clear();
    this.total = null;
    this.partial = false;
    this.cursors.clear();
    this.typing.clear();
    this.unacked.clear();
    this.#setState('disconnected');
    this.emit('members', this.members, { joined: [], updated: [], left: [], snapshot: true, total: null, partial: false });
    this.emit('cursors', this.cursors, []);
    this.emit('typing', null, this.typing);
  }

  /** @internal */
  _handle(msg) {
    switch (msg.t) {
      case 'synced': {
        if (msg.rid != null && msg.rid !== this.joinRid) return;
        Y.applyUpdate(this.doc, msg.diff, this.origin);
        // Send what the server lacks: edits made offline or before the join.
        const missing = Y.encodeStateAsUpdate(this.doc, msg.sv);
        this.#setState('synced');
        if (!isEmptyUpdate(missing)) this.#sendUpdate(missing);
        // Nothing missing: whatever was unacknowledged had reached the store.
        else this.#markSavedIfDone();
        if (this.presenceDirty) this.setPresence(this.presence);
        this.#sendCursor();
        if (this.typingOn) this.setTyping(true);
        this.everSynced = true;
        this.emit('synced', this);
        return;
      }
      case 'update':
        Y.applyUpdate(this.doc, msg.data, this.origin);
        return;
      case 'ack':
        if (this.unacked.delete(msg.rid)) this.#markSavedIfDone();
        return;
      case 'presence':
        return this.#onPresence(msg);
      case 'cursor': {
        const changed = [];
        for (const c of msg.cursors || []) {
          if (!this.members.has(c.id) && c.id !== this.self) continue;
          this.cursors.set(c.id, { id: c.id, anchor: c.anchor ?? null, head: c.head ?? null });
          changed.push(c.id);
        }
        if (changed.length) this.emit('cursors', this.cursors, changed);
        return;
      }
      case 'typing':
        if (msg.on) this.typing.add(msg.id);
        else this.typing.delete(msg.id);
        this.emit('typing', { id: msg.id, on: Boolean(msg.on) }, this.typing);
        return;
      case 'event':
        this.emit('event', { from: msg.from, name: msg.name, data: msg.data });
        return;
      case 'versions':
      case 'version':
      case 'version_doc':
      case 'version_deleted':
      case 'presence_page': {
        const p = msg.rid != null ? this.pending.get(msg.rid) : null;
        if (p && p.answer === msg.t) this.#settle(msg.rid, msg);
        return;
      }
      case 'versions_changed':
        this.emit('versions', this);
        return;
      case 'error':
        // The error of a request rejects its promise (and is not emitted).
        if (msg.rid != null && this.#settle(msg.rid, null, new ChorusRequestError(msg.code, msg.message))) return;
        if (msg.rid != null && msg.rid === this.joinRid && this.state === 'joining') this.#setState('failed');
        if (msg.rid != null) this.unacked.delete(msg.rid);
        this.emit('error', msg);
        return;
      default:
        // Unknown types are ignored (forward compatibility).
        return;
    }
  }

  #onPresence(msg) {
    if (msg.snapshot) {
      this.members.clear();
      this.typing.clear();
    }
    for (const m of msg.joined) this.members.set(m.id, { id: m.id, user: m.user, state: m.state || {} });
    for (const m of msg.updated) this.members.set(m.id, { id: m.id, user: m.user, state: m.state || {} });
    const cursorsGone = [];
    for (const id of msg.left) {
      this.members.delete(id);
      if (this.typing.delete(id)) this.emit('typing', { id, on: false }, this.typing);
      if (this.cursors.delete(id)) cursorsGone.push(id);
    }
    // A `total` comes while the list is partial (and once more when it is
    // whole again); without one the list is the whole room.
    if (msg.total != null) {
      this.total = msg.total;
      this.partial = Boolean(msg.partial);
    } else {
      this.total = null;
      this.partial = false;
    }
    if (msg.snapshot) {
      for (const id of [...this.cursors.keys()]) {
        if (!this.members.has(id)) {
          this.cursors.delete(id);
          cursorsGone.push(id);
        }
      }
    }
    this.emit('members', this.members, {
      joined: msg.joined.map((m) => m.id),
      updated: msg.updated.map((m) => m.id),
      left: msg.left,
      snapshot: msg.snapshot,
      total: this.total,
      partial: this.partial,
    });
    if (cursorsGone.length) this.emit('cursors', this.cursors, cursorsGone);
  }
}
