// An honest burst from a stock y-websocket client, driven by
// tests/it/abuse.rs: node burst.mjs <ws url> <room> <edits>. A writer
// inserts <edits> one-character edits as fast as it can (one transaction
// each, one frame each); a reader in the same room waits until it has them
// all. Prints one JSON line: the reader's text length, the writer's close
// codes (every `connection-close`), and whether the writer gave up for good
// (`closed`: a permanent code).
import { connect, synced, waitFor } from './helpers.mjs'

const [url, room, edits] = process.argv.slice(2)
const n = Number(edits)
const writer = connect(url, room)
const reader = connect(url, room)
const closes = []
let permanent = null
writer.provider.on('connection-close', (event) => closes.push(event?.code ?? null))
writer.provider.on('closed', (event) => { permanent = event.code })
await synced(writer.provider)
await synced(reader.provider)
const started = Date.now()
const t = writer.doc.getText('t')
for (let i = 0; i < n; i++) t.insert(t.length, 'x')
const rt = reader.doc.getText('t')
let timedOut = false
try {
  await waitFor(() => rt.length === n, `${n} edits at the reader`, 120000)
} catch (_) {
  timedOut = true
}
console.log(JSON.stringify({ len: rt.length, ms: Date.now() - started, closes, permanent, timedOut }))
writer.provider.destroy()
reader.provider.destroy()
process.exit(0)
