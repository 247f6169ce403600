// Stock Yjs clients (yjs 13, y-websocket 3, y-protocols) against Chorus.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { isDeepStrictEqual } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import * as Y from 'yjs'
import { Server, connect, synced, waitFor, destroy } from './helpers.mjs'

let server

before(async () => { server = await new Server().start() })
after(async () => { await server.stop() })

const json = (doc) => ({
  text: doc.getText('text').toString(),
  map: doc.getMap('map').toJSON(),
  array: doc.getArray('array').toJSON()
})

test('two y-websocket clients converge on concurrent text, map and array edits', async () => {
  const a = connect(server.url, 'converge')
  const b = connect(server.url, 'converge')
  await synced(a.provider)
  await synced(b.provider)
  // Concurrent edits, each side without waiting for the other.
  for (let i = 0; i < 20; i++) {
    a.doc.transact(() => {
      a.doc.getText('text').insert(0, `a${i} `)
      a.doc.getMap('map').set(`a${i}`, i)
      a.doc.getMap('map').set('shared', `a${i}`)
      a.doc.getArray('array').push([`a${i}`])
    })
    b.doc.transact(() => {
      b.doc.getText('text').insert(b.doc.getText('text').length, `b${i} `)
      b.doc.getMap('map').set(`b${i}`, i)
      b.doc.getMap('map').set('shared', `b${i}`)
      b.doc.getArray('array').insert(0, [`b${i}`])
    })
  }
  await waitFor(() => isDeepStrictEqual(json(a.doc), json(b.doc)) &&
    a.doc.getArray('array').length === 40, 'convergence')
  assert.equal(Object.keys(a.doc.getMap('map').toJSON()).length, 41)
  // A late joiner gets everything.
  const c = connect(server.url, 'converge')
  await synced(c.provider)
  await waitFor(() => isDeepStrictEqual(json(c.doc), json(a.doc)), 'late joiner')
  destroy(a, b, c)
})

test('awareness: a state appears at others and disappears on disconnect', async () => {
  const a = connect(server.url, 'aw')
  const b = connect(server.url, 'aw')
  await synced(a.provider)
  await synced(b.provider)
  a.awareness.setLocalStateField('user', { name: 'ann', color: '#f00' })
  await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'ann', 'state at b')
  const removed = new Promise((resolve) => b.awareness.on('change', ({ removed }) => {
    if (removed.includes(a.doc.clientID)) resolve()
  }))
  // Disconnect without saying goodbye: the server removes the state. The
  // stock client would drop it by itself after 30 s without renewal, so
  // the removal must come well before that.
  a.provider.ws.onclose = null
  a.provider.shouldConnect = false
  a.provider.ws.terminate?.() ?? a.provider.ws.close()
  const t0 = Date.now()
  await Promise.race([removed, sleep(5000).then(() => {
    throw new Error('the server did not announce the removal within 5 s')
  })])
  assert.ok(Date.now() - t0 < 5000)
  assert.equal(b.awareness.getStates().has(a.doc.clientID), false)
  destroy(a, b)
})

test('awareness: a silent client\'s state expires', async () => {
  const short = await new Server(['--presence-ttl-ms', '1000']).start()
  try {
    const a = connect(short.url, 'silent')
    const b = connect(short.url, 'silent')
    await synced(a.provider)
    await synced(b.provider)
    a.awareness.setLocalStateField('user', { name: 'quiet' })
    await waitFor(() => b.awareness.getStates().get(a.doc.clientID)?.user?.name === 'quiet', 'state at b')
    // `a` keeps its socket open (ws answers pings) but sends nothing more.
    a.provider.ws.send = () => {}
    const t0 = Date.now()
    await waitFor(() => !b.awareness.getStates().has(a.doc.clientID), 'expiry', 5000)
    assert.ok(Date.now() - t0 < 5000)
    destroy(a, b)
  } finally {
    await short.stop()
  }
})

test('a client that reconnects after a server restart resyncs its offline edits', async () => {
  const srv = await new Server().start()
  try {
    const a = connect(srv.url, 'restart')
    await synced(a.provider)
    a.doc.getText('text').insert(0, 'before ')
    const b = connect(srv.url, 'restart')
    await synced(b.provider)
    await waitFor(() => b.doc.getText('text').toString() === 'before ', 'b sees a')
    destroy(b)
    await srv.stop() // memory store: the server forgets the document
    await waitFor(() => !a.provider.wsconnected, 'a notices')
    a.doc.getText('text').insert(7, 'offline')
    a.doc.getMap('map').set('k', 'v')
    await srv.start() // same port; a reconnects with backoff
    await synced(a.provider)
    const c = connect(srv.url, 'restart')
    await synced(c.provider)
    await waitFor(() => c.doc.getText('text').toString() === 'before offline' &&
      c.doc.getMap('map').get('k') === 'v', 'c sees everything', 10000)
    destroy(a, c)
  } finally {
    await srv.stop()
  }
})

test('documents of Yjs 13 clients round-trip byte for byte', async () => {
  const doc = new Y.Doc()
  doc.clientID = 0xffffffff // the largest id Yjs 13 picks
  const a = connect(server.url, 'bytes', doc)
  await synced(a.provider)
  a.doc.getText('text').insert(0, 'max id')
  a.doc.getArray('array').push([1, 'two', { three: 3 }])
  const b = connect(server.url, 'bytes')
  await synced(b.provider)
  await waitFor(() => b.doc.getArray('array').length === 3, 'array')
  await waitFor(() => b.doc.getText('text').toString() === 'max id', 'text')
  assert.deepEqual(Y.encodeStateAsUpdate(b.doc), Y.encodeStateAsUpdate(a.doc))
  destroy(a, b)
})
