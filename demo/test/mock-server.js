// An in-memory stand-in for a Chorus server and the WebSocket to it, for
// unit tests of the client: it speaks the native protocol through the same
// codec, keeps one Y.Doc per room and relays like the real room actor.

import * as Y from 'yjs';
import { encodeServer, decodeClient } from '../src/client/index.js';

export class MockServer {
  constructor() {
    /** @type {Map<string, {doc: Y.Doc, members: Map<string, MockSocket>, presence: Map<string, object>}>} */
    this.rooms = new Map();
    this.sockets = new Set();
    this.received = [];
    this.next = 0;
    this.down = false;
    /** When false, the server swallows pings (to test the client's timeout). */
    this.answerPings = true;
    const server = this;
    /** The WebSocket constructor to hand to ChorusClient. */
    this.WebSocket = class extends MockSocket {
      constructor(url) {
        super(server, url);
      }
    };
  }

  room(id) {
    let r = this.rooms.get(id);
    if (!r) this.rooms.set(id, (r = { doc: new Y.Doc(), members: new Map(), presence: new Map(), versions: [], nextVersion: 1 }));
    return r;
  }

  /** Drops every connection as a network failure would (close 1006). */
  dropAll(code = 1006) {
    for (const s of [...this.sockets]) s._serverClose(code, '');
  }

  fanOut(room, msg, except) {
    for (const [id, s] of room.members) if (id !== except) s._deliver(msg);
  }

  receive(sock, bytes) {
    const msg = decodeClient(bytes);
    this.received.push(msg);
    const r = msg.room != null ? this.rooms.get(msg.room) : null;
    switch (msg.t) {
      case 'hello':
        if (msg.v !== 1) return sock._serverClose(4002, 'unsupported protocol version');
        sock.id = `mock-${++this.next}`;
        // Token "read-only" stands for a token with `r` rights only.
        sock.readOnly = msg.token === 'read-only';
        return sock._deliver({ t: 'welcome', v: 1, session: sock.id, server: 'mock', limits: { max_frame_bytes: 1 << 20, max_rooms: 10, max_doc_bytes: 1 << 24, max_presence_bytes: 8192, typing_ttl_ms: 5000, heartbeat_ms: 5000 } });
      case 'join': {
        const room = this.room(msg.room);
        const diff = Y.encodeStateAsUpdate(room.doc, msg.sv);
        sock._deliver({ t: 'synced', room: msg.room, diff, sv: Y.encodeStateVector(room.doc), rid: msg.rid });
        room.members.set(sock.id, sock);
        room.presence.set(sock.id, msg.presence || {});
        sock.rooms.add(msg.room);
        sock._deliver({ t: 'presence', room: msg.room, snapshot: true, joined: [...room.presence].map(([id, state]) => ({ id, state })), updated: [], left: [] });
        this.fanOut(room, { t: 'presence', room: msg.room, snapshot: false, joined: [{ id: sock.id, state: msg.presence || {} }], updated: [], left: [] }, sock.id);
        return;
      }
      case 'update':
        if (!r || !r.members.has(sock.id)) return sock._deliver({ t: 'error', code: 'not_joined', message: 'join first', rid: msg.rid, room: msg.room });
        Y.applyUpdate(r.doc, msg.data);
        if (msg.rid != null) sock._deliver({ t: 'ack', room: msg.room, rid: msg.rid });
        return this.fanOut(r, { t: 'update', room: msg.room, data: msg.data, origin: sock.id }, sock.id);
      case 'presence':
        r.presence.set(sock.id, msg.state);
        return this.fanOut(r, { t: 'presence', room: msg.room, snapshot: false, joined: [], updated: [{ id: sock.id, state: msg.state }], left: [] });
      case 'cursor':
        return this.fanOut(r, { t: 'cursor', room: msg.room, cursors: [{ id: sock.id, anchor: msg.anchor, head: msg.head }] });
      case 'typing':
        return this.fanOut(r, { t: 'typing', room: msg.room, id: sock.id, on: msg.on }, sock.id);
      case 'event':
        return this.fanOut(r, { t: 'event', room: msg.room, from: sock.id, name: msg.name, data: msg.data }, sock.id);
      case 'leave':
        return this.leave(sock, msg.room);
      case 'versions':
      case 'version_create':
      case 'version_view':
      case 'version_restore':
      case 'version_delete':
        return this.history(sock, r, msg);
      case 'ping':
        if (this.answerPings) sock._deliver({ t: 'pong', rid: msg.rid });
        return;
      default:
        return sock._deliver({ t: 'error', code: 'unknown_type', message: `unknown ${msg.t}` });
    }
  }

  /** Adds a version of `room`'s current state; tells every member. */
  addVersion(roomId, kind, { name = null, restoredFrom = null, authors = [] } = {}) {
    const room = this.room(roomId);
    const update = Y.encodeStateAsUpdate(room.doc);
    const version = { id: String(room.nextVersion++), time: Date.now(), name, kind, restored_from: restoredFrom, authors, bytes: update.length, update };
    room.versions.push(version);
    this.fanOut(room, { t: 'versions_changed', room: roomId });
    return version;
  }

  /** The version history messages, as the contract (notes/history-contract.md) has them. */
  history(sock, r, msg) {
    const err = (code, message) => sock._deliver({ t: 'error', code, message, rid: msg.rid, room: msg.room });
    if (!r || !r.members.has(sock.id)) return err('not_joined', 'join first');
    const pub = ({ update, ...v }) => v;
    const find = () => r.versions.find((v) => v.id === msg.id);
    if (msg.t !== 'versions' && msg.t !== 'version_view' && sock.readOnly) return err('forbidden', 'read-only token');
    switch (msg.t) {
      case 'versions': {
        const limit = Math.min(msg.limit ?? 50, 200);
        const older = r.versions.filter((v) => msg.before == null || Number(v.id) < Number(msg.before)).reverse();
        const page = older.slice(0, limit);
        return sock._deliver({ t: 'versions', room: msg.room, versions: page.map(pub), next: older.length > limit ? page.at(-1).id : null, rid: msg.rid });
      }
      case 'version_create': {
        const state = r.presence.get(sock.id) || {};
        const v = this.addVersion(msg.room, 'named', { name: msg.name, authors: [{ user: sock.id, name: state.name ?? null }] });
        return sock._deliver({ t: 'version', room: msg.room, version: pub(v), rid: msg.rid });
      }
      case 'version_view': {
        const v = find();
        if (!v) return err('not_found', `no version ${msg.id}`);
        return sock._deliver({ t: 'version_doc', room: msg.room, id: v.id, update: v.update, rid: msg.rid });
      }
      case 'version_restore': {
        const v = find();
        if (!v) return err('not_found', `no version ${msg.id}`);
        // A forward change: every text root gets the version's content.
        const old = new Y.Doc();
        Y.applyUpdate(old, v.update);
        const before = Y.encodeStateVector(r.doc);
        r.doc.transact(() => {
          for (const key of new Set([...r.doc.share.keys(), ...old.share.keys()])) {
            const now = r.doc.getText(key);
            now.delete(0, now.length);
            now.insert(0, old.getText(key).toString());
          }
        });
        const data = Y.encodeStateAsUpdate(r.doc, before);
        this.fanOut(r, { t: 'update', room: msg.room, data, origin: sock.id });
        const created = this.addVersion(msg.room, 'restore', { restoredFrom: v.id });
        return sock._deliver({ t: 'version', room: msg.room, version: pub(created), rid: msg.rid });
      }
      case 'version_delete': {
        const i = r.versions.findIndex((v) => v.id === msg.id);
        if (i < 0) return err('not_found', `no version ${msg.id}`);
        r.versions.splice(i, 1);
        sock._deliver({ t: 'version_deleted', room: msg.room, id: msg.id, rid: msg.rid });
        return this.fanOut(r, { t: 'versions_changed', room: msg.room });
      }
    }
  }

  leave(sock, roomId) {
    const r = this.rooms.get(roomId);
    if (!r || !r.members.delete(sock.id)) return;
    r.presence.delete(sock.id);
    this.fanOut(r, { t: 'presence', room: roomId, snapshot: false, joined: [], updated: [], left: [sock.id] });
  }
}

/** The client half of a fake socket (browser WebSocket API subset). */
class MockSocket {
  constructor(server, url) {
    this.server = server;
    this.url = url;
    this.readyState = 0;
    this.rooms = new Set();
    this.binaryType = 'blob';
    setTimeout(() => {
      if (server.down) return this._serverClose(1006, 'connection refused');
      server.sockets.add(this);
      this.readyState = 1;
      this.onopen?.({});
    }, 1);
  }

  send(bytes) {
    if (this.readyState !== 1) throw new Error('socket not open');
    const copy = new Uint8Array(bytes);
    setTimeout(() => this.readyState === 1 && this.server.receive(this, copy), 0);
  }

  close(code = 1000, reason = '') {
    this._serverClose(code, reason);
  }

  _deliver(msg) {
    if (this.readyState !== 1) return;
    const bytes = encodeServer(msg);
    setTimeout(() => {
      if (this.readyState === 1) this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
    }, 0);
  }

  _serverClose(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.server.sockets.delete(this);
    for (const room of this.rooms) this.server.leave(this, room);
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
}

/** Polls `cond` until it is truthy or `ms` pass (then throws with `what`). */
export async function until(cond, what = 'condition', ms = 3000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
