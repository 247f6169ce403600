// The native protocol v1 codec: one MessagePack map per WebSocket binary
// frame, its type in `t`, fields by name, CRDT bytes as MessagePack `bin`.
//
// Frames are written with the same field order as the server's encoder
// (`t` first, then the fields in the order the protocol lists them; object
// keys of JSON payloads sorted), so a message encodes to the same bytes on
// both sides and the golden vectors in proto/vectors/ can be compared byte
// for byte.

import { Encoder, decode } from '@msgpack/msgpack';

/** Field order of every client message type; `?` marks fields left out when absent. */
export const CLIENT_FIELDS = Object.freeze({
  hello: ['v', 'token?', 'client?', 'rid?'],
  join: ['room', 'sv?', 'presence?', 'rid?'],
  leave: ['room', 'rid?'],
  update: ['room', 'data', 'rid?'],
  presence: ['room', 'state', 'rid?'],
  cursor: ['room', 'anchor', 'head', 'rid?'],
  typing: ['room', 'on', 'rid?'],
  event: ['room', 'name', 'data', 'rid?'],
  ping: ['rid?'],
  versions: ['room', 'limit?', 'before?', 'rid?'],
  version_create: ['room', 'name', 'rid?'],
  version_view: ['room', 'id', 'rid?'],
  version_restore: ['room', 'id', 'rid?'],
  version_delete: ['room', 'id', 'rid?'],
  presence_list: ['room', 'after?', 'limit?', 'rid?'],
});

/** Field order of every server message type (used by tests and tools). */
export const SERVER_FIELDS = Object.freeze({
  welcome: ['v', 'session', 'server', 'limits'],
  synced: ['room', 'diff', 'sv', 'rid?'],
  update: ['room', 'data', 'origin?'],
  ack: ['room', 'rid'],
  presence: ['room', 'snapshot', 'joined', 'updated', 'left', 'total?', 'partial?'],
  cursor: ['room', 'cursors'],
  typing: ['room', 'id', 'on'],
  event: ['room', 'from', 'name', 'data'],
  error: ['code', 'message', 'rid?', 'room?'],
  pong: ['rid?'],
  versions: ['room', 'versions', 'next', 'rid?'],
  version: ['room', 'version', 'rid?'],
  version_doc: ['room', 'id', 'update', 'rid?'],
  version_deleted: ['room', 'id', 'rid?'],
  versions_changed: ['room'],
  presence_page: ['room', 'members', 'next', 'total', 'rid?'],
});

/** Optional flags the server leaves out when false. */
const OMIT_FALSE = new Set(['partial']);

/** Fields that must be MessagePack `bin` (a Uint8Array) when present. */
const BIN_FIELDS = new Set(['sv', 'data', 'anchor', 'head', 'diff', 'update']);
/** Fields that carry free JSON (their `data` is not bin). */
const JSON_DATA_TYPES = new Set(['event']);

const encoder = new Encoder({ ignoreUndefined: true });

/** Protocol error raised by the codec for a malformed message. */
export class CodecError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CodecError';
  }
}

/** Recursively sorts object keys, as the server's JSON values are ordered. */
export function canonicalJson(value) {
  if (value === undefined) return null;
  if (value === null || typeof value !== 'object') return value;
  if (value instanceof Uint8Array) return value;
  if (Array.isArray(value)) return value.map(canonicalJson);
  const out = {};
  for (const key of Object.keys(value).sort()) {
    if (value[key] !== undefined) out[key] = canonicalJson(value[key]);
  }
  return out;
}

/** Field order of the structs nested in server messages. */
const NESTED = {
  joined: ['id', 'user?', 'state'],
  updated: ['id', 'user?', 'state'],
  members: ['id', 'user?', 'state'],
  cursors: ['id', 'anchor', 'head'],
  versions: ['id', 'time', 'name', 'kind', 'restored_from', 'authors', 'bytes'],
  authors: ['user', 'name'],
};
NESTED.version = NESTED.versions;
const LIMIT_FIELDS = [
  'max_frame_bytes', 'max_rooms', 'max_doc_bytes', 'max_presence_bytes', 'typing_ttl_ms', 'heartbeat_ms',
  'client_timeout_ms', 'max_event_bytes', 'max_room_id_bytes',
];

function orderStruct(value, fields) {
  const out = {};
  for (const spec of fields) {
    const optional = spec.endsWith('?');
    const name = optional ? spec.slice(0, -1) : spec;
    const v = value[name];
    if (v === undefined || v === null) {
      if (!optional) out[name] = null;
      continue;
    }
    if (name === 'state') out[name] = canonicalJson(v);
    else if (NESTED[name] && Array.isArray(v)) out[name] = v.map((x) => orderStruct(x, NESTED[name]));
    else out[name] = v;
  }
  return out;
}

function ordered(msg, fields, isBin) {
  const out = { t: msg.t };
  for (const spec of fields) {
    const optional = spec.endsWith('?');
    const name = optional ? spec.slice(0, -1) : spec;
    let value = msg[name];
    if (optional && value === false && OMIT_FALSE.has(name)) continue;
    if (value === undefined || (optional && value === null)) {
      if (optional) continue;
      value = null;
    }
    if (isBin(name)) {
      if (value !== null && !(value instanceof Uint8Array)) {
        throw new CodecError(`field ${msg.t}.${name} must be a Uint8Array`);
      }
    } else if (name === 'presence' || name === 'state' || (name === 'data' && !isBin(name))) {
      value = canonicalJson(value);
    }
    if (NESTED[name] && Array.isArray(value)) value = value.map((v) => orderStruct(v, NESTED[name]));
    else if (name === 'version' && value) value = orderStruct(value, NESTED.version);
    if (name === 'limits' && value) value = orderStruct(value, LIMIT_FIELDS);
    out[name] = value;
  }
  return out;
}

/**
 * Encodes a client message ({t, ...fields}) into one frame.
 * @param {object} msg
 * @returns {Uint8Array}
 */
export function encodeClient(msg) {
  const fields = msg && CLIENT_FIELDS[msg.t];
  if (!fields) throw new CodecError(`unknown client message type ${JSON.stringify(msg && msg.t)}`);
  const isBin = (name) => BIN_FIELDS.has(name) && !(name === 'data' && JSON_DATA_TYPES.has(msg.t));
  return encoder.encode(ordered(msg, fields, isBin));
}

/**
 * Encodes a server message (tests and mock servers only).
 * @param {object} msg
 * @returns {Uint8Array}
 */
export function encodeServer(msg) {
  const fields = msg && SERVER_FIELDS[msg.t];
  if (!fields) throw new CodecError(`unknown server message type ${JSON.stringify(msg && msg.t)}`);
  const isBin = (name) => BIN_FIELDS.has(name) && !(name === 'data' && JSON_DATA_TYPES.has(msg.t));
  return encoder.encode(ordered(msg, fields, isBin));
}

function decodeMap(bytes) {
  let value;
  try {
    value = decode(bytes);
  } catch (e) {
    throw new CodecError(`not MessagePack: ${e.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array) {
    throw new CodecError('frame is not a MessagePack map');
  }
  if (typeof value.t !== 'string') throw new CodecError('frame has no type field `t`');
  return value;
}

/**
 * Decodes one server frame. Unknown fields are kept; an unknown `t` is
 * returned as is (callers ignore types they do not know, as the protocol
 * asks). Bin fields are checked to be bytes.
 * @param {Uint8Array|ArrayBuffer} bytes
 */
export function decodeServer(bytes) {
  const msg = decodeMap(bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : bytes);
  const fields = SERVER_FIELDS[msg.t];
  if (fields) {
    for (const spec of fields) {
      const name = spec.replace('?', '');
      if (!spec.endsWith('?') && !(name in msg) && !(msg.t === 'presence')) {
        throw new CodecError(`${msg.t} lacks field ${name}`);
      }
      if (BIN_FIELDS.has(name) && !(name === 'data' && JSON_DATA_TYPES.has(msg.t)) && msg[name] != null && !(msg[name] instanceof Uint8Array)) {
        throw new CodecError(`${msg.t}.${name} must be bin`);
      }
    }
    if (msg.t === 'presence') {
      msg.snapshot = Boolean(msg.snapshot);
      msg.joined ??= [];
      msg.updated ??= [];
      msg.left ??= [];
    }
  }
  return msg;
}

/**
 * Decodes a client frame (tests and mock servers only).
 * @param {Uint8Array|ArrayBuffer} bytes
 */
export function decodeClient(bytes) {
  const msg = decodeMap(bytes instanceof ArrayBuffer ? new Uint8Array(bytes) : bytes);
  if (!CLIENT_FIELDS[msg.t]) throw new CodecError(`unknown client message type ${msg.t}`);
  return msg;
}

/** Hex of bytes (lower case). */
export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Bytes of a hex string. */
export function fromHex(hex) {
  const clean = hex.replace(/\s+/g, '');
  if (clean.length % 2) throw new CodecError('odd hex length');
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
  return out;
}
