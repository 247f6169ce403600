// A stock y-websocket peer driven by tests/it/interop.rs (the native side is
// the Rust test client): node peer.mjs <ws url> <room>. It announces
// awareness {user: {name: 'js'}}, appends "js" to text `t`, waits until the
// text holds the native client's "native" and a native member named "nat"
// is in its awareness, then prints one JSON line and exits.
import { connect, synced, waitFor } from './helpers.mjs'

const [url, room] = process.argv.slice(2)
const peer = connect(url, room)
await synced(peer.provider)
peer.awareness.setLocalStateField('user', { name: 'js' })
const t = peer.doc.getText('t')
t.insert(t.length, 'js')
await waitFor(() => t.toString().includes('native'), 'native edit', 10000)
await waitFor(() => [...peer.awareness.getStates().values()].some((s) => s.name === 'nat'), 'native presence', 10000)
console.log(JSON.stringify({ text: t.toString(), states: [...peer.awareness.getStates().values()] }))
// Stay until the Rust side has seen us, then leave.
await new Promise((resolve) => process.stdin.once('data', resolve))
peer.provider.destroy()
process.exit(0)
