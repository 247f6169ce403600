// @hocuspocus/provider v2, v3 and v4 (the real npm packages) against
// Chorus' /hocuspocus: several documents per socket, y-websocket clients
// on the same rooms, tokens per document, SyncStatus, restarts.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Server, connect, destroy, synced, waitFor } from './helpers.mjs'
import { open, close, token, names } from './hocus.mjs'

const hocusUrl = (srv) => `ws://127.0.0.1:${srv.port}/hocuspocus`
const SECRET = 'interop-secret-interop-secret-32b'

test('v2, v3 and v4 sockets with three documents each converge with y-websocket clients; awareness crosses', async () => {
  const srv = await new Server().start()
  const rooms = ['hp-a', 'hp-b', 'hp-c']
  const sockets = ['v2', 'v3', 'v4'].map((v) =>
    open(v, hocusUrl(srv), rooms.map((name) => ({ name, user: { name: v, color: '#00aa00' } }))))
  const yws = rooms.map((room) => connect(srv.url, room))
  try {
    for (const s of sockets) for (const d of s.docs) await synced(d.provider)
    for (const y of yws) await synced(y.provider)
    yws.forEach((y) => y.awareness.setLocalStateField('user', { name: 'yws', color: '#0000aa' }))
    sockets.forEach((s, i) => s.docs.forEach((d) => d.doc.getText('t').insert(0, `[${['v2', 'v3', 'v4'][i]}]`)))
    yws.forEach((y) => y.doc.getText('t').insert(0, '[yws]'))
    const all = ['[v2]', '[v3]', '[v4]', '[yws]']
    const docs = [...sockets.flatMap((s) => s.docs.map((d) => d.doc)), ...yws.map((y) => y.doc)]
    await waitFor(() => docs.every((doc) => all.every((tag) => doc.getText('t').toString().includes(tag))), 'every edit everywhere')
    // Same text everywhere in a room.
    rooms.forEach((room, i) => {
      const texts = [...sockets.map((s) => s.docs[i].doc), yws[i].doc].map((d) => d.getText('t').toString())
      assert.equal(new Set(texts).size, 1, `${room}: ${texts}`)
    })
    // Awareness: every provider sees the others, y-websocket sees the providers.
    for (const s of sockets) {
      for (const d of s.docs) {
        await waitFor(() => ['v2', 'v3', 'v4', 'yws'].every((n) => names(d.provider).includes(n)), `awareness at ${d.name}`)
      }
    }
    for (const y of yws) await waitFor(() => ['v2', 'v3', 'v4'].every((n) => names(y.provider).includes(n)), 'awareness at yws')
    // Every change acknowledged: nothing left unsynced.
    for (const s of sockets) for (const d of s.docs) await waitFor(() => !d.provider.hasUnsyncedChanges, `${d.name} synced changes`)
  } finally {
    sockets.forEach(close)
    destroy(...yws)
    await srv.stop()
  }
})

for (const v of ['v2', 'v3', 'v4']) {
  test(`${v}: a read-only token gets SyncStatus 0 and its edit is not applied; a bad token is denied, other documents unaffected`, async () => {
    const srv = await new Server(['--auth-secret', SECRET]).start()
    const rw = token(SECRET, 'ro-*', 'rw')
    const r = token(SECRET, 'ro-*', 'r')
    const s = open(v, hocusUrl(srv), [
      { name: 'ro-doc', token: r },
      { name: 'ro-bad', token: 'not-a-token' },
      { name: 'ro-ok', token: rw },
      { name: 'elsewhere', token: rw }
    ])
    const writer = open(v, hocusUrl(srv), [{ name: 'ro-doc', token: rw }])
    try {
      const [ro, bad, ok, elsewhere] = s.docs
      await synced(ro.provider)
      await synced(ok.provider)
      await synced(writer.docs[0].provider)
      assert.equal(ro.provider.authorizedScope ?? ro.scope, 'readonly')
      await waitFor(() => bad.failed.length > 0, 'bad token denied')
      await waitFor(() => elsewhere.failed.length > 0, 'room outside the grants denied')
      assert.match(elsewhere.failed[0], /no access/)
      // The read-only edit: SyncStatus 0, never applied.
      ro.doc.getText('t').insert(0, 'forbidden')
      await waitFor(() => ro.statuses.includes(0), 'SyncStatus 0')
      assert.ok(ro.provider.hasUnsyncedChanges)
      // The read-write documents on the same socket work.
      ok.doc.getText('t').insert(0, 'fine')
      await waitFor(() => !ok.provider.hasUnsyncedChanges, 'ok acked')
      writer.docs[0].doc.getText('t').insert(0, 'written')
      await waitFor(() => ro.doc.getText('t').toString().includes('written'), 'read-only sees writes')
      await new Promise((resolve) => setTimeout(resolve, 300))
      assert.ok(!writer.docs[0].doc.getText('t').toString().includes('forbidden'))
      const check = open(v, hocusUrl(srv), [{ name: 'ro-doc', token: rw }])
      await synced(check.docs[0].provider)
      assert.equal(check.docs[0].doc.getText('t').toString(), 'written')
      close(check)
    } finally {
      close(s)
      close(writer)
      await srv.stop()
    }
  })

  test(`${v}: a provider reconnects after a server restart and its offline edits arrive`, async () => {
    const srv = await new Server().start()
    const a = open(v, hocusUrl(srv), [{ name: 'restart-1' }, { name: 'restart-2' }])
    try {
      for (const d of a.docs) await synced(d.provider)
      a.docs[0].doc.getText('t').insert(0, 'before ')
      await waitFor(() => !a.docs[0].provider.hasUnsyncedChanges, 'acked')
      await srv.stop() // memory store: the server forgets the documents
      await waitFor(() => a.docs.every((d) => !d.provider.synced || !d.provider.isSynced), 'a notices', 10000).catch(() => {})
      a.docs[0].doc.getText('t').insert(7, 'offline')
      a.docs[1].doc.getMap('m').set('k', 'v')
      await srv.start() // same port; the socket reconnects with backoff
      const c = open(v, hocusUrl(srv), [{ name: 'restart-1' }, { name: 'restart-2' }])
      try {
        await waitFor(() => c.docs[0].doc.getText('t').toString() === 'before offline' &&
          c.docs[1].doc.getMap('m').get('k') === 'v', 'offline edits arrive', 20000)
        await waitFor(() => a.docs.every((d) => !d.provider.hasUnsyncedChanges), 'acked after restart', 10000)
        // One more edit, acked and seen: whatever the server answered the
        // flushed offline edit has arrived by now.
        a.docs[0].doc.getText('t').insert(0, '>')
        await waitFor(() => !a.docs[0].provider.hasUnsyncedChanges &&
          c.docs[0].doc.getText('t').toString() === '>before offline', 'a later edit acked and seen', 10000)
        // The offline edit follows state the restarted server lost: the
        // server asks for it (SyncStatus 0, then its sync step 1) instead of
        // closing the socket; only the shutdown closed it.
        assert.deepEqual(a.closes.filter((code) => code !== 1001 && code !== 1006), [], `closes: ${a.closes}`)
        assert.ok(a.closes.length >= 1, 'the shutdown closed the socket')
      } finally {
        close(c)
      }
    } finally {
      close(a)
      await srv.stop()
    }
  })
}

test('stateless messages: BroadcastStateless reaches every provider on the document', async () => {
  const srv = await new Server().start()
  const a = open('v3', hocusUrl(srv), [{ name: 'st' }])
  const b = open('v4', hocusUrl(srv), [{ name: 'st' }])
  try {
    await synced(a.docs[0].provider)
    await synced(b.docs[0].provider)
    const got = []
    b.docs[0].provider.on('stateless', ({ payload }) => got.push(payload))
    a.docs[0].provider.sendStateless('hello')
    await waitFor(() => got.includes('hello'), 'stateless arrives')
  } finally {
    close(a)
    close(b)
    await srv.stop()
  }
})
