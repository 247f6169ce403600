// Records the y-protocols byte sequences used by tests/it/yjs.rs, with the
// real yjs / y-protocols packages. Run: node record.mjs (prints Rust consts).
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'

const hex = (u8) => Buffer.from(u8).toString('hex')
const frame = (f) => { const e = encoding.createEncoder(); f(e); return encoding.toUint8Array(e) }
const out = {}

const doc = new Y.Doc()
doc.clientID = 1
doc.getText('t').insert(0, 'hi')
const update = Y.encodeStateAsUpdate(doc)
out.UPDATE_FRAME = frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeUpdate(e, update) })

const empty = new Y.Doc()
empty.clientID = 2
out.STEP1_EMPTY = frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, empty) })
out.STEP2_FULL = frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep2(e, doc, Y.encodeStateVector(empty)) })

const half = new Y.Doc()
half.clientID = 3
Y.applyUpdate(half, Y.encodeStateAsUpdate(doc, Y.encodeStateVector(new Y.Doc())))
// A peer that has the document up to clock 1 of client 1 ("h") only.
const sv = encoding.createEncoder()
encoding.writeVarUint(sv, 1); encoding.writeVarUint(sv, 1); encoding.writeVarUint(sv, 1)
const svBytes = encoding.toUint8Array(sv)
out.STEP1_PARTIAL = frame(e => { encoding.writeVarUint(e, 0); encoding.writeVarUint(e, 0); encoding.writeVarUint8Array(e, svBytes) })
out.STEP2_PARTIAL = frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep2(e, doc, svBytes) })
out.SERVER_STEP1_AFTER_UPDATE = frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, doc) })
out.SERVER_STEP1_EMPTY = frame(e => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, new Y.Doc()) })

const adoc = new Y.Doc()
adoc.clientID = 7
const aw = new awarenessProtocol.Awareness(adoc)
aw.setLocalState({ user: { name: 'ann', color: '#f00' } })
out.AWARENESS_SET = frame(e => { encoding.writeVarUint(e, 1); encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(aw, [7])) })
aw.setLocalState(null)
out.AWARENESS_NULL = frame(e => { encoding.writeVarUint(e, 1); encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(aw, [7])) })
aw.destroy()
out.QUERY_AWARENESS = frame(e => { encoding.writeVarUint(e, 3) })

for (const [k, v] of Object.entries(out)) {
  console.log(`/// Recorded with yjs ${'13'}: \`${k.toLowerCase()}\`.\nconst ${k}: &str = "${hex(v)}";`)
}
