// What changed between two texts, word by word, for the history preview:
// Myers' O((N+M)·D) diff over tokens (runs of letters/digits, runs of
// spaces, single other characters), after trimming the common prefix and
// suffix. Past `maxEdits` token edits the middle is reported as one
// deletion and one insertion (a huge rewrite is not worth the time).

const TOKEN = /\s+|[\p{L}\p{N}_]+|[^\s\p{L}\p{N}_]/gu;

/** The tokens of `s` (concatenated they give `s` back). */
export function tokens(s) {
  return String(s).match(TOKEN) || [];
}

/**
 * The edit script from `a` to `b`: `[op, text]` pairs, op `eq` (in both),
 * `del` (only in `a`) or `ins` (only in `b`); adjacent pairs of one op merged.
 * @returns {Array<['eq'|'del'|'ins', string]>}
 */
export function diffText(a, b, { maxEdits = 4000 } = {}) {
  const A = tokens(a);
  const B = tokens(b);
  let pre = 0;
  while (pre < A.length && pre < B.length && A[pre] === B[pre]) pre++;
  let suf = 0;
  while (suf < A.length - pre && suf < B.length - pre && A[A.length - 1 - suf] === B[B.length - 1 - suf]) suf++;
  const midA = A.slice(pre, A.length - suf);
  const midB = B.slice(pre, B.length - suf);
  const out = [];
  const push = (op, text) => {
    if (!text) return;
    const last = out[out.length - 1];
    if (last && last[0] === op) last[1] += text;
    else out.push([op, text]);
  };
  push('eq', A.slice(0, pre).join(''));
  const mid = myers(midA, midB, maxEdits) || [
    ['del', midA.join('')],
    ['ins', midB.join('')],
  ];
  for (const [op, text] of mid) push(op, text);
  push('eq', A.slice(A.length - suf).join(''));
  return out;
}

/** Myers' shortest edit script over token arrays; null past `maxD` edits. */
function myers(a, b, maxD) {
  const n = a.length;
  const m = b.length;
  const max = n + m;
  if (max === 0) return [];
  const off = max + 1;
  const v = new Int32Array(2 * max + 3);
  const trace = [];
  for (let d = 0; d <= Math.min(max, maxD); d++) {
    // v for k in [-d-1, d+1], as it was before this round.
    trace.push(v.slice(off - d - 1, off + d + 2));
    for (let k = -d; k <= d; k += 2) {
      let x = k === -d || (k !== d && v[off + k - 1] < v[off + k + 1]) ? v[off + k + 1] : v[off + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) {
        x++;
        y++;
      }
      v[off + k] = x;
      if (x >= n && y >= m) return backtrack(trace, a, b);
    }
  }
  return null;
}

function backtrack(trace, a, b) {
  const out = [];
  let x = a.length;
  let y = b.length;
  for (let d = trace.length - 1; d >= 0; d--) {
    const V = trace[d];
    const get = (k) => V[k + d + 1];
    const k = x - y;
    const prevK = k === -d || (k !== d && get(k - 1) < get(k + 1)) ? k + 1 : k - 1;
    const prevX = get(prevK);
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) {
      out.push(['eq', a[x - 1]]);
      x--;
      y--;
    }
    if (d > 0) {
      if (x === prevX) out.push(['ins', b[y - 1]]);
      else out.push(['del', a[x - 1]]);
    }
    x = prevX;
    y = prevY;
  }
  return out.reverse();
}
