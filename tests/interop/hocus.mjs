// Helpers for @hocuspocus/provider v2, v3 and v4 (aliased npm packages)
// against a Chorus server's /hocuspocus endpoint: one socket per version,
// any number of documents on it.
import { execFileSync } from 'node:child_process'
import * as decoding from 'lib0/decoding'
import * as Y from 'yjs'
import WebSocket from 'ws'
import * as v2 from 'hocuspocus-provider-v2'
import * as v3 from 'hocuspocus-provider-v3'
import * as v4 from 'hocuspocus-provider-v4'
import { bin } from './helpers.mjs'

export const versions = { v2, v3, v4 }

/** A Chorus HS256 token (`chorus token`). */
export const token = (secret, room, rights = 'rw', user = 'u', name = null) => {
  const args = ['token', '--secret', secret, '--room', room, '--rights', rights, '--user', user]
  if (name) args.push('--name', name)
  return execFileSync(bin(), args).toString().trim().split('\n').pop()
}

/**
 * One socket of provider version `v` ('v2' | 'v3' | 'v4') to `url`
 * (ws://host:port/hocuspocus), with one provider per entry of `docs`:
 * {name, token?, user?}. Returns {socket, closes, docs: [{name, doc,
 * provider, statuses, failed, scope}]} (`closes`: the close codes the socket saw); `statuses` collects the SyncStatus values the
 * server sent for that document, `failed` the permission-denied reasons.
 */
export const open = (v, url, docs) => {
  const lib = versions[v]
  const socket = new lib.HocuspocusProviderWebsocket({ url, WebSocketPolyfill: WebSocket, minDelay: 100, maxDelay: 500, delay: 100 })
  // Close codes the socket saw. (A socket destroyed between a close and its
  // delayed reconnect keeps retrying forever, a provider bug that keeps node
  // alive: tests check that the server closed nothing it should not have.)
  const closes = []
  socket.on('close', ({ event }) => closes.push(event?.code))
  const out = docs.map(({ name, token = null, user = null }) => {
    const doc = new Y.Doc()
    const entry = { name, doc, statuses: [], failed: [], scope: null }
    const provider = new lib.HocuspocusProvider({
      websocketProvider: socket,
      name,
      document: doc,
      token,
      onAuthenticationFailed: ({ reason }) => entry.failed.push(reason),
      onAuthenticated: (e) => { entry.scope = e?.scope ?? 'ok' },
      onMessage: ({ event }) => {
        const d = decoding.createDecoder(new Uint8Array(event.data))
        decoding.readVarString(d)
        if (decoding.readVarUint(d) === 8) entry.statuses.push(decoding.readVarUint(d))
      }
    })
    if (v !== 'v2') provider.attach()
    if (user) provider.setAwarenessField('user', user)
    entry.provider = provider
    return entry
  })
  return { socket, docs: out, closes }
}

/** Destroys every provider and the socket. */
export const close = ({ socket, docs }) => {
  for (const d of docs) {
    d.provider.destroy()
    d.doc.destroy()
  }
  socket.destroy()
}

/** Every awareness state's `user.name` a provider sees. */
export const names = (provider) => [...provider.awareness.getStates().values()].map((s) => s.user?.name).filter(Boolean)
