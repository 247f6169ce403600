// Checks the client's codec against protocol vectors: files of
// {name, direction: "client"|"server", hex, value, roundtrip} or
// {name, direction, hex, error: code}; bin fields in `value` are written
// {"$bin": "<hex>"}. A file holds one vector, an array, or {vectors: [...]}.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { encodeClient, decodeClient, encodeServer, decodeServer, toHex, fromHex } from '../src/client/index.js';

/** Replaces {"$bin": hex} by Uint8Array, recursively. */
export function fromVectorValue(v) {
  if (Array.isArray(v)) return v.map(fromVectorValue);
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length === 1 && keys[0] === '$bin') return fromHex(v.$bin);
    return Object.fromEntries(keys.map((k) => [k, fromVectorValue(v[k])]));
  }
  return v;
}

/** Every vector in the .json files of `dir` (sorted by file name). */
export function loadVectors(dir) {
  const out = [];
  for (const file of fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
    const parsed = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
    const list = Array.isArray(parsed) ? parsed : Array.isArray(parsed.vectors) ? parsed.vectors : [parsed];
    for (const v of list) out.push({ file, ...v });
  }
  return out;
}

/**
 * Checks one vector; returns 'checked' or a reason it does not apply to a
 * client (frames the server must refuse are the server's tests).
 */
export function checkVector(v) {
  const label = `${v.file}: ${v.name}`;
  assert.equal(typeof v.hex, 'string', `${label}: hex missing`);
  const bytes = fromHex(v.hex);
  if (v.error !== undefined) {
    if (v.direction === 'server') {
      assert.throws(() => decodeServer(bytes), `${label}: the client must refuse this server frame`);
      return 'checked';
    }
    return 'server-side validation';
  }
  const expected = fromVectorValue(v.value);
  if (v.direction === 'client') {
    // The client writes these frames: it must write exactly the canonical
    // bytes. Decode-only client vectors (extra fields, other key orders) are
    // about what the server accepts.
    if (v.roundtrip === false) return 'server-side decoding';
    assert.equal(toHex(encodeClient(expected)), v.hex.toLowerCase(), `${label}: encode`);
    assert.deepStrictEqual(decodeClient(bytes), expected, `${label}: decode`);
  } else if (v.direction === 'server') {
    assert.deepStrictEqual(decodeServer(bytes), expected, `${label}: decode`);
    if (v.roundtrip !== false) assert.equal(toHex(encodeServer(expected)), v.hex.toLowerCase(), `${label}: encode`);
  } else {
    assert.fail(`${label}: unknown direction ${v.direction}`);
  }
  return 'checked';
}
