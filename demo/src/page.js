// The demo page at `/`: the widget, full screen, configured from the URL:
//   /?room=team&name=Alice&color=%23e11d48&token=…&embed=1
// (`embed=1` is the compact look for iframes). The name is remembered.
import { mount } from './widget/widget.js';

const params = new URLSearchParams(location.search);
const room = params.get('room') || 'lobby';
let stored = null;
try {
  stored = localStorage.getItem('chorus:name');
} catch {
  /* storage can be blocked in iframes */
}
const widget = mount(document.getElementById('app'), {
  room,
  name: params.get('name') || stored || undefined,
  color: params.get('color') || undefined,
  token: params.get('token') || undefined,
  compact: params.get('embed') === '1',
  onNameChange(name) {
    try {
      localStorage.setItem('chorus:name', name);
    } catch {
      /* ignore */
    }
  },
});
if (!params.get('name')) {
  try {
    localStorage.setItem('chorus:name', widget.name);
  } catch {
    /* ignore */
  }
}
document.title = `${room} · Chorus`;

// For tests and the curious: the live objects.
window.chorusDemo = {
  widget,
  client: widget.client,
  room: widget.room,
  view: widget.view,
  text: () => widget.room.doc.getText('editor').toString(),
  chat: () => widget.room.doc.getArray('chat').toArray(),
};
