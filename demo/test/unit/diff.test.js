// The history preview's word diff: applying the script to the old text
// gives the new one, edits are minimal on small cases, and big rewrites
// fall back to one deletion + one insertion.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { diffText, tokens } from '../../src/widget/diff.js';

const apply = (ops) => ({ from: ops.filter(([op]) => op !== 'ins').map(([, t]) => t).join(''), to: ops.filter(([op]) => op !== 'del').map(([, t]) => t).join('') });

test('tokens cover the text', () => {
  for (const s of ['', 'a', 'hello, world!\n  x_1 = 2', 'ünïcödé  — 日本語']) assert.equal(tokens(s).join(''), s);
});

test('small edits are found word by word', () => {
  assert.deepEqual(diffText('the quick fox', 'the slow fox'), [
    ['eq', 'the '],
    ['del', 'quick'],
    ['ins', 'slow'],
    ['eq', ' fox'],
  ]);
  assert.deepEqual(diffText('', 'new'), [['ins', 'new']]);
  assert.deepEqual(diffText('old', ''), [['del', 'old']]);
  assert.deepEqual(diffText('same', 'same'), [['eq', 'same']]);
  assert.deepEqual(diffText('a b c d', 'a c d e'), [
    ['eq', 'a '],
    ['del', 'b '],
    ['eq', 'c d'],
    ['ins', ' e'],
  ]);
});

test('random edits: the script rebuilds both texts', () => {
  let seed = 7;
  const rnd = (n) => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  const words = ['alpha', 'beta', 'gamma', ' ', '\n', ',', 'delta', 'é'];
  for (let i = 0; i < 200; i++) {
    const a = Array.from({ length: rnd(40) }, () => words[rnd(words.length)]).join('');
    const b = Array.from({ length: rnd(40) }, () => words[rnd(words.length)]).join('');
    const ops = diffText(a, b);
    assert.deepEqual(apply(ops), { from: a, to: b }, JSON.stringify({ a, b }));
    for (let j = 1; j < ops.length; j++) assert.notEqual(ops[j][0], ops[j - 1][0], 'merged');
  }
});

test('past the edit budget: one deletion and one insertion, still correct', () => {
  const a = Array.from({ length: 3000 }, (_, i) => `a${i}`).join(' ');
  const b = Array.from({ length: 3000 }, (_, i) => `b${i}`).join(' ');
  const ops = diffText(`start ${a} end`, `start ${b} end`, { maxEdits: 100 });
  assert.deepEqual(apply(ops), { from: `start ${a} end`, to: `start ${b} end` });
  assert.ok(ops.length <= 5, `${ops.length} ops`);
});
