// The client's codec against the shared protocol vectors in proto/vectors/
// (the same files the Rust codec is tested with).
import { test } from 'node:test';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadVectors, checkVector } from '../vectors-lib.js';

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'proto', 'vectors');

{
  if (!fs.existsSync(dir)) throw new Error(`${dir} is missing: the client is checked against it`);
  const vectors = loadVectors(dir);
  test('proto/vectors is not empty', (t) => {
    if (vectors.length === 0) throw new Error(`no vectors in ${dir}`);
  });
  for (const v of vectors) {
    test(`proto ${v.direction} ${v.name}`, (t) => {
      const result = checkVector(v);
      if (result !== 'checked') t.skip(result);
    });
  }
}
