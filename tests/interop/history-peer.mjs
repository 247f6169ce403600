// Version-history peers driven by tests/it/history.rs (the native side is
// the Rust test client): node history-peer.mjs <host:port> <room>. A stock
// y-websocket client and @hocuspocus/provider v2 and v4 clients join the
// room. Each phase waits until every client's document reads as the phase
// expects (text `t` and the TipTap-shaped XmlFragment `default`), prints one
// JSON line {phase, texts, xml, connects}, and the next phase starts when a
// line arrives on stdin. `connects` counts each client's connections: 1
// means the client never reconnected.
import { createInterface } from 'node:readline'
import { connect, destroy, synced, waitFor } from './helpers.mjs'
import { open, close } from './hocus.mjs'

const [addr, room] = process.argv.slice(2)
const yws = connect(`ws://${addr}/yjs`, room)
let ywsConnects = 0
yws.provider.on('status', ({ status }) => { if (status === 'connected') ywsConnects++ })
const sockets = ['v2', 'v4'].map((v) => open(v, `ws://${addr}/hocuspocus`, [{ name: room }]))
const hocusConnects = sockets.map(() => 0)
sockets.forEach((s, i) => s.socket.on('connect', () => { hocusConnects[i]++ }))
await synced(yws.provider)
for (const s of sockets) await synced(s.docs[0].provider)
const docs = [yws.doc, ...sockets.map((s) => s.docs[0].doc)]
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]()
const state = () => ({
  texts: docs.map((d) => d.getText('t').toString()),
  xml: docs.map((d) => d.getXmlFragment('default').toString()),
  connects: [ywsConnects, ...hocusConnects]
})
for (const [phase, text, xml] of [
  ['a', 'A', '<paragraph textAlign="left">A</paragraph>'],
  ['b', 'B', '<paragraph textAlign="right">B</paragraph><paragraph>more</paragraph>'],
  ['restored', 'A', '<paragraph textAlign="left">A</paragraph>']
]) {
  await waitFor(() => docs.every((d) => d.getText('t').toString() === text &&
    d.getXmlFragment('default').toString() === xml), `phase ${phase}: ${JSON.stringify(state())}`, 20000)
  console.log(JSON.stringify({ phase, ...state() }))
  await lines.next()
}
sockets.forEach((s) => close(s))
destroy(yws)
process.exit(0)
