// The client's codec against golden frames produced by the server's Rust
// encoder (chorus::protocol::native), kept in test/golden/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadVectors, checkVector } from '../vectors-lib.js';

const dir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'golden');
const vectors = loadVectors(dir);

test('golden vectors exist', () => {
  assert.ok(vectors.length >= 20, `only ${vectors.length} golden vectors`);
});

for (const v of vectors) {
  test(`golden ${v.direction} ${v.name}`, () => {
    assert.equal(checkVector(v), 'checked');
  });
}
