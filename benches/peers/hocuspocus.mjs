// Hocuspocus 4.x on loopback; PORT from the environment. HP_MERGE=0 turns
// off its update merging (flushDelay: false sends every update on its own).
import { Server } from '@hocuspocus/server'
const flushDelay = process.env.HP_MERGE === '0' ? false : 0
const server = new Server({ port: Number(process.env.PORT), address: '127.0.0.1', quiet: true, flushDelay })
await server.listen()
