// CodeMirror 6 with y-codemirror.next over the stock y-websocket provider on
// Chorus' /yjs/{room}, sharing the demo's `editor` text. Page parameters:
//   codemirror.html?server=ws://127.0.0.1:PORT/yjs&room=ROOM&name=Carol&color=%230d9488
import { EditorView, keymap } from '@codemirror/view';
import { EditorState } from '@codemirror/state';
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next';
import { WebsocketProvider } from 'y-websocket';
import * as Y from 'yjs';

const params = new URLSearchParams(location.search);
const doc = new Y.Doc();
const provider = new WebsocketProvider(params.get('server'), params.get('room'), doc);
const ytext = doc.getText('editor');
const color = params.get('color');
// The convention of every editor binding: awareness `user: {name, color}`.
provider.awareness.setLocalStateField('user', { name: params.get('name'), color, colorLight: `${color}33` });

const view = new EditorView({
  parent: document.querySelector('#editor'),
  state: EditorState.create({
    doc: ytext.toString(),
    extensions: [keymap.of(yUndoManagerKeymap), yCollab(ytext, provider.awareness)],
  }),
});

window.editorPage = {
  view,
  provider,
  text: () => view.state.doc.toString(),
  synced: () => provider.synced,
};
