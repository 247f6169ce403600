// TipTap 3 as its documentation sets it up for collaboration: Collaboration +
// CollaborationCaret over `@hocuspocus/provider`, unchanged, pointed at
// Chorus' /hocuspocus. Page parameters:
//   tiptap.html?server=ws://127.0.0.1:PORT/hocuspocus&doc=ROOM&name=Alice&color=%23e11d48
import { Editor } from '@tiptap/core';
import Document from '@tiptap/extension-document';
import Paragraph from '@tiptap/extension-paragraph';
import Text from '@tiptap/extension-text';
import Collaboration from '@tiptap/extension-collaboration';
import CollaborationCaret from '@tiptap/extension-collaboration-caret';
import { HocuspocusProvider } from '@hocuspocus/provider';
import * as Y from 'yjs';

const params = new URLSearchParams(location.search);
const doc = new Y.Doc();
const provider = new HocuspocusProvider({
  url: params.get('server'),
  name: params.get('doc'),
  document: doc,
  token: params.get('token') || undefined,
});

const editor = new Editor({
  element: document.querySelector('#editor'),
  extensions: [
    Document,
    Paragraph,
    Text,
    Collaboration.configure({ document: doc }),
    CollaborationCaret.configure({
      provider,
      user: { name: params.get('name'), color: params.get('color') },
    }),
  ],
});

let synced = false;
provider.on('synced', () => {
  synced = true;
});

// What the test reads: the editor's own text and the provider's state.
window.editorPage = {
  editor,
  provider,
  text: () => editor.getText(),
  synced: () => synced,
  unsynced: () => provider.hasUnsyncedChanges,
};
