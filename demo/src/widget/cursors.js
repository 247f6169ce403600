// Remote cursors and selections for CodeMirror 6, fed by chorus-client's
// cursor and presence events (not a y-protocols Awareness: the native
// protocol carries cursors as their own coalesced message, so we render
// them directly instead of faking an Awareness with numeric client ids).

import { StateEffect, StateField } from '@codemirror/state';
import { Decoration, EditorView, WidgetType } from '@codemirror/view';
import { absoluteCursor } from '../client/index.js';

const setRemote = StateEffect.define();

class CaretWidget extends WidgetType {
  constructor(name, color) {
    super();
    this.name = name;
    this.color = color;
  }

  eq(other) {
    return other.name === this.name && other.color === this.color;
  }

  toDOM() {
    const caret = document.createElement('span');
    caret.className = 'cm-chorus-caret';
    caret.style.borderLeftColor = this.color;
    caret.setAttribute('aria-hidden', 'true');
    const label = document.createElement('span');
    label.className = 'cm-chorus-label';
    label.style.backgroundColor = this.color;
    label.textContent = this.name;
    caret.appendChild(label);
    return caret;
  }

  ignoreEvent() {
    return true;
  }
}

const remoteField = StateField.define({
  create: () => Decoration.none,
  update(deco, tr) {
    for (const e of tr.effects) if (e.is(setRemote)) return e.value;
    return deco.map(tr.changes);
  },
  provide: (f) => EditorView.decorations.from(f),
});

/** The extension; pair it with `attachRemoteCursors`. */
export const remoteCursors = [remoteField];

/**
 * Renders `room`'s remote cursors into `view`, following cursor moves,
 * presence changes (names, colours) and document changes. Returns a
 * function that stops it.
 */
export function attachRemoteCursors(view, room, { fallbackColor = '#64748b' } = {}) {
  let scheduled = false;
  const render = () => {
    scheduled = false;
    const len = view.state.doc.length;
    const ranges = [];
    for (const [id, cursor] of room.cursors) {
      if (id === room.self) continue;
      const member = room.members.get(id);
      if (!member) continue;
      const pos = absoluteCursor(room.doc, cursor);
      if (!pos) continue;
      const name = String(member.state.name || 'Anonymous');
      const color = /^#[0-9a-fA-F]{3,8}$/.test(member.state.color || '') ? member.state.color : fallbackColor;
      const anchor = Math.min(pos.anchor, len);
      const head = Math.min(pos.head, len);
      if (anchor !== head) {
        ranges.push(
          Decoration.mark({
            class: 'cm-chorus-selection',
            attributes: { style: `background-color: ${color}33` },
          }).range(Math.min(anchor, head), Math.max(anchor, head)),
        );
      }
      ranges.push(Decoration.widget({ widget: new CaretWidget(name, color), side: 1 }).range(head));
    }
    view.dispatch({ effects: setRemote.of(Decoration.set(ranges, true)) });
  };
  // Never dispatch inside another view update: batch to the next microtask.
  const schedule = () => {
    if (scheduled) return;
    scheduled = true;
    queueMicrotask(render);
  };
  const offs = [room.on('cursors', schedule), room.on('members', schedule), room.on('synced', schedule)];
  const onDoc = () => schedule();
  room.doc.on('afterTransaction', onDoc);
  schedule();
  return () => {
    offs.forEach((off) => off());
    room.doc.off('afterTransaction', onDoc);
  };
}
