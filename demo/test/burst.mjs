// An honest burst from the demo's own client library, driven by
// tests/it/abuse.rs: node --experimental-websocket burst.mjs <ws url> <room> <edits>.
// A writer inserts <edits> one-character edits as fast as it can (one Yjs
// transaction each, so one `update` message each); a reader in the same
// room waits until it has them all. Prints one JSON line: the reader's text
// length, every close code the writer saw, and whether it stopped for good
// (`permanent`: a code the client treats as fatal).
import { ChorusClient } from '../src/client/index.js';

const [url, room, edits] = process.argv.slice(2);
const n = Number(edits);
const WebSocket = globalThis.WebSocket;
const writer = new ChorusClient(url, { WebSocket });
const reader = new ChorusClient(url, { WebSocket });
const closes = [];
let permanent = null;
writer.on('status', (s) => {
  if (s.code != null) closes.push(s.code);
  if (s.status === 'closed') permanent = s.code ?? null;
});
const w = writer.join(room);
const r = reader.join(room);
await w.whenSynced();
await r.whenSynced();
const started = Date.now();
const t = w.doc.getText('t');
for (let i = 0; i < n; i++) t.insert(t.length, 'x');
const rt = r.doc.getText('t');
const deadline = Date.now() + 120000;
while (rt.length < n && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
console.log(JSON.stringify({ len: rt.length, ms: Date.now() - started, closes, permanent, timedOut: rt.length < n }));
writer.close();
reader.close();
process.exit(0);
