// Big rooms over y-protocols (proto/PROTOCOL.md): stock y-websocket clients
// and Hocuspocus providers are shown at most --presence-list-max-members
// awareness states, the ones live longest; and a removed state that comes
// back at its old clock is shown again to everyone.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { setTimeout as sleep } from 'node:timers/promises'
import { Server, connect, synced, waitFor, destroy } from './helpers.mjs'
import { open } from './hocus.mjs'

let server

before(async () => { server = await new Server(['--presence-list-max-members', '3']).start() })
after(async () => { await server.stop() })

const keys = (aw) => [...aw.getStates().keys()].sort((a, b) => a - b)
/** What a client shows: the shown states and its own. */
const expectAt = (shown, self) => [...new Set([...shown, self])].sort((a, b) => a - b)

test('big room: every client converges to the states live longest; a freed place goes to the next', async () => {
  const room = 'big'
  const cs = []
  for (let i = 0; i < 5; i++) {
    const c = connect(server.url, room)
    await synced(c.provider)
    c.awareness.setLocalStateField('user', { name: `c${i}` })
    cs.push(c)
    // The server must see c_i's state before c_{i+1}'s.
    await sleep(150)
  }
  const id = (c) => c.doc.clientID
  const converge = async (clients, shown, what) => {
    for (const c of clients) {
      const want = expectAt(shown.map(id), id(c))
      await waitFor(() => JSON.stringify(keys(c.awareness)) === JSON.stringify(want),
        `${what}: ${c.awareness.getLocalState()?.user?.name} shows ${JSON.stringify(keys(c.awareness))}, want ${JSON.stringify(want)}`, 5000)
    }
  }
  await converge(cs, cs.slice(0, 3), 'first three')
  // A shown client leaves: the oldest waiting one is shown.
  destroy(cs[1])
  await converge([cs[0], cs[2], cs[3], cs[4]], [cs[0], cs[2], cs[3]], 'c1 left')
  // A shown client clears its state: the next one is shown.
  cs[0].awareness.setLocalState(null)
  await converge([cs[2], cs[3], cs[4]], [cs[2], cs[3], cs[4]], 'c0 null')
  // c0 comes back: it waits.
  cs[0].awareness.setLocalState({ user: { name: 'c0 again' } })
  await sleep(300)
  await converge([cs[0], cs[2], cs[3], cs[4]], [cs[2], cs[3], cs[4]], 'c0 back, waiting')
  // A late joiner gets the shown ones; its edits flow though it waits.
  const late = connect(server.url, room)
  await synced(late.provider)
  late.awareness.setLocalStateField('user', { name: 'late' })
  await converge([late], [cs[2], cs[3], cs[4]], 'late joiner')
  late.doc.getText('t').insert(0, 'from the back')
  await waitFor(() => cs[2].doc.getText('t').toString() === 'from the back', 'edit of a waiting client')
  // Hocuspocus providers in the same room wait too, and see the same three.
  const h = open('v3', server.url.replace('/yjs', '/hocuspocus'), [{ name: room, user: { name: 'hp' } }])
  const hp = h.docs[0].provider
  await waitFor(() => hp.synced ?? hp.isSynced, 'hocuspocus sync')
  const hkeys = () => [...hp.awareness.getStates().keys()].sort((a, b) => a - b)
  const hwant = expectAt([cs[2], cs[3], cs[4]].map(id), hp.awareness.clientID)
  await waitFor(() => JSON.stringify(hkeys()) === JSON.stringify(hwant), `hocuspocus shows ${JSON.stringify(hkeys())}, want ${JSON.stringify(hwant)}`, 5000)
  // Two shown leave at once: c0 (back first) and then late take the places.
  destroy(cs[2], cs[3])
  await converge([cs[0], cs[4], late], [cs[4], cs[0], late], 'c2, c3 left')
  await waitFor(() => JSON.stringify(hkeys()) === JSON.stringify(expectAt([cs[4], cs[0], late].map(id), hp.awareness.clientID)), 'hocuspocus after leaves', 5000)
  hp.destroy()
  h.socket.destroy()
  destroy(cs[0], cs[4], late)
})

test('a client whose socket drops shows again at the others soon after it reconnects', async () => {
  const a = connect(server.url, 'blip')
  const b = connect(server.url, 'blip')
  await synced(a.provider)
  await synced(b.provider)
  a.awareness.setLocalStateField('user', { name: 'ann' })
  await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'ann', 'state at b')
  // The socket drops; the provider reconnects and sends its state with its
  // clock unchanged, one below the removal the others saw.
  a.provider.ws.close()
  await waitFor(() => !b.awareness.getStates().has(a.doc.clientID), 'removal at b')
  await synced(a.provider)
  const t0 = Date.now()
  await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'ann', 'state at b again', 5000)
  assert.ok(Date.now() - t0 < 5000)
  destroy(a, b)
})

test('a Hocuspocus provider whose socket drops shows again at the others soon after it reconnects', async () => {
  const b = connect(server.url, 'hp-blip')
  await synced(b.provider)
  const h = open('v3', server.url.replace('/yjs', '/hocuspocus'), [{ name: 'hp-blip', user: { name: 'hp' } }])
  const hp = h.docs[0].provider
  const id = hp.awareness.clientID
  await waitFor(() => b.awareness.getStates().get(id)?.user?.name === 'hp', 'provider at b')
  h.socket.webSocket.close()
  await waitFor(() => !b.awareness.getStates().has(id), 'removal at b')
  await waitFor(() => b.awareness.getStates().get(id)?.user?.name === 'hp', 'provider at b again', 5000)
  hp.destroy()
  h.socket.destroy()
  destroy(b)
})
