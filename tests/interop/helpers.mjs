// Shared helpers of the interop suite: start the chorus binary (path in
// CHORUS_BIN, set by tests/it/interop.rs or by hand) on a free port, and
// connect stock y-websocket providers to it.
import { spawn } from 'node:child_process'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

export const bin = () => {
  const path = process.env.CHORUS_BIN
  if (!path) throw new Error('set CHORUS_BIN to the chorus binary (cargo build; target/debug/chorus)')
  return path
}

export const freePort = () => new Promise((resolve, reject) => {
  const srv = net.createServer()
  srv.on('error', reject)
  srv.listen(0, '127.0.0.1', () => {
    const { port } = srv.address()
    srv.close(() => resolve(port))
  })
})

/** Polls `pred` every 20 ms until it holds; throws after `ms`. */
export const waitFor = async (pred, what, ms = 10000) => {
  const deadline = Date.now() + ms
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

/** A chorus server child process; `args` are extra command line flags. */
export class Server {
  constructor (args = [], port = null) {
    this.args = args
    this.port = port
  }

  async start () {
    this.port ??= await freePort()
    this.child = spawn(bin(), ['--port', String(this.port), '--log-level', 'warn', '--store', 'memory', ...this.args], {
      stdio: ['ignore', 'inherit', 'inherit']
    })
    this.exited = new Promise((resolve) => this.child.once('exit', resolve))
    const deadline = Date.now() + 10000
    for (;;) {
      try {
        const res = await fetch(`http://127.0.0.1:${this.port}/healthz`)
        if (res.ok) break
      } catch (_) {}
      if (Date.now() > deadline) throw new Error('server did not start')
      await sleep(20)
    }
    return this
  }

  get url () {
    return `ws://127.0.0.1:${this.port}/yjs`
  }

  async stop () {
    if (!this.child) return
    this.child.kill('SIGTERM')
    await this.exited
    this.child = null
  }
}

/** A stock y-websocket provider on a fresh doc (or `doc`). */
export const connect = (url, room, doc = new Y.Doc(), opts = {}) => {
  const provider = new WebsocketProvider(url, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    ...opts
  })
  return { doc, provider, awareness: provider.awareness }
}

export const synced = (provider) => waitFor(() => provider.synced, 'sync')

/** Disconnects and frees clients (the awareness interval would keep node alive). */
export const destroy = (...clients) => {
  for (const c of clients) {
    c.provider.destroy()
    c.doc.destroy()
  }
}
