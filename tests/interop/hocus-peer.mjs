// @hocuspocus/provider v2 and v4 peers driven by tests/it/interop.rs (the
// native side is the Rust test client): node hocus-peer.mjs <host:port>
// <room>... One socket per version carries every room; a stock y-websocket
// client joins each room too. Each appends its tag ([v2], [v4], [yws]) to
// text `t` and announces awareness user {name: tag}. Once every room's text
// holds every tag and the native member (top-level name "nat") shows in
// every provider's awareness as user.name "nat", it prints one JSON line,
// then waits for a line on stdin and exits.
import { connect, destroy, synced, waitFor } from './helpers.mjs'
import { open, close, names } from './hocus.mjs'

const [addr, ...rooms] = process.argv.slice(2)
const sockets = ['v2', 'v4'].map((v) =>
  [v, open(v, `ws://${addr}/hocuspocus`, rooms.map((name) => ({ name, user: { name: v, color: '#00aa00' } })))])
const yws = rooms.map((room) => connect(`ws://${addr}/yjs`, room))
for (const [, s] of sockets) for (const d of s.docs) await synced(d.provider)
for (const y of yws) await synced(y.provider)
yws.forEach((y) => y.awareness.setLocalStateField('user', { name: 'yws', color: '#0000aa' }))
for (const [v, s] of sockets) for (const d of s.docs) d.doc.getText('t').insert(d.doc.getText('t').length, `[${v}]`)
for (const y of yws) y.doc.getText('t').insert(y.doc.getText('t').length, '[yws]')
const tags = ['native', '[v2]', '[v4]', '[yws]']
const docs = [...sockets.flatMap(([, s]) => s.docs.map((d) => d.doc)), ...yws.map((y) => y.doc)]
await waitFor(() => docs.every((doc) => tags.every((t) => doc.getText('t').toString().includes(t))), 'every edit', 20000)
const providers = [...sockets.flatMap(([, s]) => s.docs.map((d) => d.provider)), ...yws.map((y) => y.provider)]
await waitFor(() => providers.every((p) => names(p).includes('nat')), 'native member as user.name', 20000)
await waitFor(() => sockets.every(([, s]) => s.docs.every((d) => !d.provider.hasUnsyncedChanges)), 'acked', 20000)
const nat = [...providers[0].awareness.getStates().values()].find((s) => s.user?.name === 'nat')
console.log(JSON.stringify({ texts: docs.map((d) => d.getText('t').toString()), nat }))
await new Promise((resolve) => process.stdin.once('data', resolve))
sockets.forEach(([, s]) => close(s))
destroy(...yws)
process.exit(0)
