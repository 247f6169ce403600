// The Chorus widget: a collaborative editor (CodeMirror 6 + Yjs) and a
// chat whose history lives in the same shared document, with presence,
// remote cursors, typing indicators, read receipts and a connection badge.
//
//   import { mount } from 'https://chorus.example/assets/widget.js';
//   mount(element, { room: 'team', name: 'Alice', color: '#e11d48', token });
//
// or, with no code: <chorus-room room="team" name="Alice"></chorus-room>
// after loading this module. The widget's styles are injected once per page.

import * as Y from 'yjs';
import { EditorState } from '@codemirror/state';
import { EditorView, keymap, placeholder, drawSelection } from '@codemirror/view';
import { defaultKeymap, indentWithTab } from '@codemirror/commands';
import { markdown } from '@codemirror/lang-markdown';
import { syntaxHighlighting, defaultHighlightStyle } from '@codemirror/language';
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next';
import { ChorusClient, relativeCursor, tokenRights } from '../client/index.js';
import { createHistory } from './history.js';
import { remoteCursors, attachRemoteCursors } from './cursors.js';
import css from './style.css';

export { ChorusClient } from '../client/index.js';

/**
 * Colours for members that did not choose one: readable on white, far apart
 * in hue, none close to the widget's indigo accent (one's own chat bubble is
 * neutral dark, so no member's colour is mistaken for "me").
 */
export const PALETTE = ['#e11d48', '#2563eb', '#059669', '#d97706', '#9333ea', '#0891b2', '#65a30d', '#db2777', '#92400e', '#0f766e'];

const ADJECTIVES = ['Quick', 'Calm', 'Bright', 'Brave', 'Clever', 'Gentle', 'Lucky', 'Sunny'];
const ANIMALS = ['Otter', 'Falcon', 'Panda', 'Lynx', 'Heron', 'Koala', 'Fox', 'Orca'];

function hash(s) {
  let h = 0;
  for (const ch of String(s)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h;
}

/** A colour picked from the palette by hashing `s` (the first choice of `pickColor`). */
export function colorFor(s) {
  return PALETTE[hash(s) % PALETTE.length];
}

/** `#rrggbb` of an HSL colour (h in degrees, s and l in 0..1). */
function hslHex(h, s, l) {
  const f = (n) => {
    const k = (n + h / 30) % 12;
    const c = l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1));
    return Math.round(c * 255).toString(16).padStart(2, '0');
  };
  return `#${f(0)}${f(8)}${f(4)}`;
}

/**
 * The colour for `name` that no one in `taken` (lower-case `#rrggbb`) has:
 * the free palette colour nearest the name's hash (going round the
 * palette), or, once the palette is used up, golden-angle hues from the
 * hash (137.5° apart: each new one far from the previous ones).
 */
export function pickColor(name, taken) {
  const h = hash(name);
  for (let i = 0; i < PALETTE.length; i++) {
    const c = PALETTE[(h + i) % PALETTE.length];
    if (!taken.has(c)) return c;
  }
  for (let k = 0; ; k++) {
    const c = hslHex((h + k * 137.508) % 360, 0.7, 0.4);
    if (!taken.has(c)) return c;
  }
}

/**
 * Orders member ids `{node}-{n}` by node, then by `n` as a number (on one
 * node, the earlier connection first).
 */
export function compareMemberIds(a, b) {
  const split = (id) => {
    const i = String(id).lastIndexOf('-');
    return i < 0 ? [String(id), 0] : [String(id).slice(0, i), Number(String(id).slice(i + 1)) || 0];
  };
  const [na, ia] = split(a);
  const [nb, ib] = split(b);
  return na < nb ? -1 : na > nb ? 1 : ia - ib;
}

const norm = (c) => String(c || '').toLowerCase();
const validColor = (c) => /^#[0-9a-fA-F]{3,8}$/.test(c || '');

function storedAuthorId() {
  const fresh = () => Math.random().toString(36).slice(2, 12);
  try {
    let id = localStorage.getItem('chorus:author');
    if (!id) localStorage.setItem('chorus:author', (id = fresh()));
    return id;
  } catch {
    return fresh();
  }
}

function randomName() {
  const pick = (a) => a[Math.floor(Math.random() * a.length)];
  return `${pick(ADJECTIVES)} ${pick(ANIMALS)}`;
}

/** The `ws(s)://host/ws` URL of the server that served `base`. */
export function wsUrlFor(base) {
  const u = new URL(base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  u.pathname = '/ws';
  u.search = '';
  u.hash = '';
  return u.toString();
}

function injectStyles(doc) {
  if (doc.getElementById('chorus-widget-style')) return;
  const style = doc.createElement('style');
  style.id = 'chorus-widget-style';
  style.textContent = css;
  doc.head.appendChild(style);
}

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c != null) el.append(c);
  return el;
}

function initials(name) {
  const parts = String(name).trim().split(/\s+/).filter(Boolean);
  return ((parts[0]?.[0] || '?') + (parts[1]?.[0] || '')).toUpperCase();
}

function avatar(name, color, extra = '') {
  return h('span', { class: `chorus-avatar ${extra}`, style: `background:${color}`, title: name, 'aria-hidden': 'true' }, initials(name));
}

const timeFmt = typeof Intl !== 'undefined' ? new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' }) : null;

const STATUS_TEXT = {
  idle: 'Connecting…',
  connecting: 'Connecting…',
  online: 'Online',
  reconnecting: 'Reconnecting…',
  offline: 'Offline',
  closed: 'Disconnected',
};

/**
 * Mounts the widget into `target`.
 * @param {HTMLElement} target
 * @param {{room?: string, name?: string, color?: string, token?: string,
 *          server?: string, compact?: boolean, client?: ChorusClient}} [options]
 *   `server`: the WebSocket URL (default: the server that served this script).
 * @returns {{client: ChorusClient, room: import('../client/index.js').ChorusRoom,
 *            view: EditorView, setName(name: string): void, destroy(): void}}
 */
export function mount(target, options = {}) {
  injectStyles(target.ownerDocument);
  const roomId = options.room || 'lobby';
  let name = (options.name || '').trim() || randomName();
  // A colour given by the embedder is kept as is; else the widget claims one
  // that no one present has (see `claimColor`).
  const fixedColor = validColor(options.color) ? options.color : null;
  let color = fixedColor || colorFor(name);
  /** Who wrote a chat message: stable for this browser (when it has storage). */
  const authorId = options.authorId || storedAuthorId();
  const url = options.server || wsUrlFor(import.meta.url);
  const client = options.client || new ChorusClient(url, { token: options.token, clientName: 'chorus-widget/0.1' });
  // Rights: from the token's grants when it has any (a JWT), else assume
  // everything is allowed (the server says `forbidden` otherwise). A reader
  // (`r`) joins without presence and cannot edit; `rp` shows presence.
  const granted = tokenRights(options.token, roomId);
  const mayPresence = granted !== 'r';
  const mayEdit = !granted || granted === 'rw';
  const room = client.join(roomId, mayPresence ? { presence: { name, color } } : {});
  const doc = room.doc;
  const ytext = doc.getText('editor');
  /** @type {Y.Array<{id: string, user: string, color: string, text: string, ts: number}>} */
  const chat = doc.getArray('chat');

  // ---- Layout ---------------------------------------------------------
  const badge = h('span', { class: 'chorus-badge', 'data-status': 'connecting', role: 'status', 'aria-live': 'polite' }, h('span', { class: 'chorus-dot' }), h('span', { class: 'chorus-badge-text' }, 'Connecting…'));
  const saved = h('span', { class: 'chorus-saved', 'aria-live': 'polite' }, '');
  const avatars = h('div', { class: 'chorus-avatars', 'aria-label': 'People online' });
  const nameInput = h('input', { class: 'chorus-name', 'aria-label': 'Your name', value: name, maxlength: '40', spellcheck: 'false' });
  const shareBtn = h('button', { class: 'chorus-btn', type: 'button', title: 'Copy a link to this room' }, 'Share');
  const header = h(
    'header',
    { class: 'chorus-header' },
    h('div', { class: 'chorus-brand' }, h('span', { class: 'chorus-logo', 'aria-hidden': 'true' }), h('span', { class: 'chorus-brand-name' }, 'Chorus'), h('span', { class: 'chorus-room', title: 'Room' }, `# ${roomId}`)),
    h('div', { class: 'chorus-header-right' }, saved, badge, avatars, h('label', { class: 'chorus-you' }, h('span', { class: 'chorus-you-dot', style: `background:${color}` }), nameInput), shareBtn),
  );
  const editorHost = h('div', { class: 'chorus-editor', 'aria-label': 'Shared document' });
  const previewEl = h('div', { class: 'chorus-preview' });
  const historyBtn = h('button', { class: 'chorus-btn chorus-history-btn', type: 'button', 'aria-pressed': 'false', title: 'Versions of this document' }, 'History');
  const editorCard = h('section', { class: 'chorus-card chorus-doc', 'aria-label': 'Document' }, h('div', { class: 'chorus-card-title' }, 'Document', historyBtn), editorHost, previewEl);
  const onlineList = h('ul', { class: 'chorus-online', 'aria-label': 'Online' });
  // Narrow screens show one card at a time, picked by these tabs.
  const docTab = h('button', { class: 'chorus-tab', type: 'button', role: 'tab', 'aria-selected': 'true', 'data-tab': 'doc' }, 'Document');
  const unreadEl = h('span', { class: 'chorus-unread', hidden: true }, '');
  const chatTab = h('button', { class: 'chorus-tab', type: 'button', role: 'tab', 'aria-selected': 'false', 'data-tab': 'chat' }, 'Chat', unreadEl);
  const historyTab = h('button', { class: 'chorus-tab', type: 'button', role: 'tab', 'aria-selected': 'false', 'data-tab': 'history' }, 'History');
  const tabs = h('nav', { class: 'chorus-tabs', role: 'tablist', 'aria-label': 'Show' }, docTab, chatTab, historyTab);
  const messages = h('ol', { class: 'chorus-messages', 'aria-label': 'Messages', 'aria-live': 'polite' });
  const empty = h('div', { class: 'chorus-empty' }, 'No messages yet. Say hello!');
  const typingLine = h('div', { class: 'chorus-typing', 'aria-live': 'polite' });
  const input = h('input', { class: 'chorus-input', type: 'text', placeholder: 'Message…', 'aria-label': 'Message', maxlength: '2000', autocomplete: 'off' });
  const sendBtn = h('button', { class: 'chorus-send', type: 'submit', 'aria-label': 'Send' }, 'Send');
  const form = h('form', { class: 'chorus-compose' }, input, sendBtn);
  if (!mayEdit) {
    // The chat lives in the document: without `rw` it is read-only too.
    input.disabled = sendBtn.disabled = true;
    input.placeholder = 'Read-only';
  }
  const chatCard = h(
    'section',
    { class: 'chorus-card chorus-chat', 'aria-label': 'Chat' },
    h('div', { class: 'chorus-card-title' }, 'Chat', h('span', { class: 'chorus-count' }, '')),
    onlineList,
    h('div', { class: 'chorus-scroll' }, empty, messages),
    typingLine,
    form,
  );
  let writable = mayEdit;
  const history = createHistory({
    room,
    ytext,
    editorHost,
    preview: previewEl,
    writable: () => writable,
    colorOf: (who, user) => {
      const present = [...room.members.values()].find((m) => (user && m.user === user) || m.state.name === who);
      return present && validColor(present.state.color) ? present.state.color : colorFor(who);
    },
    h,
    avatar,
    onPreview: () => {
      if (narrow()) showTab('doc');
    },
  });
  const root = h('div', { class: `chorus-root${options.compact ? ' chorus-compact' : ''}`, 'data-tab': 'doc', 'data-side': 'chat' }, header, tabs, h('main', { class: 'chorus-main' }, editorCard, chatCard, history.card));
  target.replaceChildren(root);
  const scroller = chatCard.querySelector('.chorus-scroll');
  const countEl = chatCard.querySelector('.chorus-count');

  // ---- Editor ---------------------------------------------------------
  const undoManager = new Y.UndoManager(ytext);
  const view = new EditorView({
    parent: editorHost,
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        keymap.of([...yUndoManagerKeymap, ...defaultKeymap, indentWithTab]),
        drawSelection(),
        EditorView.lineWrapping,
        markdown(),
        syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
        placeholder('Start writing together… (Markdown works)'),
        yCollab(ytext, null, { undoManager }),
        EditorView.editable.of(mayEdit),
        EditorState.readOnly.of(!mayEdit),
        remoteCursors,
        EditorView.contentAttributes.of({ 'aria-label': 'Shared document editor' }),
        EditorView.updateListener.of((u) => {
          if (u.selectionSet || u.docChanged) scheduleCursor();
        }),
      ],
    }),
  });
  const stopCursors = attachRemoteCursors(view, room);

  let cursorTimer = null;
  function scheduleCursor() {
    if (cursorTimer || !mayPresence) return;
    cursorTimer = setTimeout(() => {
      cursorTimer = null;
      const sel = view.state.selection.main;
      const cur = relativeCursor(ytext, sel.anchor, sel.head);
      room.setCursor(cur.anchor, cur.head);
    }, 40);
  }

  // ---- Status, presence ----------------------------------------------
  const onStatus = ({ status }) => {
    badge.dataset.status = status;
    badge.querySelector('.chorus-badge-text').textContent = STATUS_TEXT[status] || status;
    root.dataset.status = status;
  };
  onStatus({ status: client.status });
  const offs = [client.on('status', onStatus)];

  offs.push(
    room.on('error', (e) => {
      if (e.code === 'forbidden' && writable) {
        writable = false;
        history.refreshControls();
      }
    }),
    room.on('saved', (ok) => {
      saved.textContent = ok ? 'Saved' : 'Saving…';
      saved.dataset.saved = String(ok);
    }),
  );

  const memberName = (id) => String(room.members.get(id)?.state.name || 'Someone');
  const memberColor = (id) => room.members.get(id)?.state.color || '#64748b';

  /**
   * Gives this member a colour no one else present has. Two members with
   * the same colour: the one with the smaller id keeps it (on one node, the
   * one who came first), the other takes the free colour nearest its
   * name's hash. Everyone applies the same rule to the same presence, so a
   * person keeps their colour while present and newcomers adapt.
   */
  function claimColor() {
    if (fixedColor || !mayPresence || !room.self || !room.members.has(room.self)) return;
    const others = [...room.members.values()].filter((m) => m.id !== room.self);
    const yieldTo = others.some((m) => norm(m.state.color) === norm(color) && compareMemberIds(m.id, room.self) < 0);
    if (!yieldTo) return;
    const taken = new Set(others.map((m) => norm(m.state.color)).filter(Boolean));
    setColor(pickColor(name, taken));
  }

  function setColor(next) {
    if (next === color) return;
    color = next;
    header.querySelector('.chorus-you-dot').style.background = color;
    if (mayPresence) room.setPresence({ name, color });
    renderMessages();
  }

  function renderMembers() {
    const list = [...room.members.values()];
    // In a big room `members` is partial: the count is the room's total.
    const count = Math.max(room.memberCount, list.length);
    avatars.replaceChildren(...list.slice(0, 5).map((m) => avatar(String(m.state.name || '?'), m.state.color || '#64748b', m.id === room.self ? 'chorus-me' : '')));
    if (count > 5) avatars.append(h('span', { class: 'chorus-avatar chorus-more' }, `+${count - 5}`));
    onlineList.replaceChildren(
      ...list.map((m) =>
        h('li', { class: 'chorus-online-item', 'data-member': m.id }, h('span', { class: 'chorus-online-dot', style: `background:${m.state.color || '#64748b'}` }), String(m.state.name || 'Anonymous'), m.id === room.self ? h('span', { class: 'chorus-you-tag' }, ' (you)') : null),
      ),
    );
    if (count > list.length) onlineList.append(h('li', { class: 'chorus-online-item chorus-online-more' }, `+${count - list.length} more`));
    countEl.textContent = count ? `${count} online` : '';
  }
  offs.push(room.on('members', (_, change) => {
    claimColor();
    renderMembers();
    renderMessages();
    // Newcomers have not seen our receipts: repeat the last one.
    if (change.joined.some((id) => id !== room.self) && lastSeenSent) room.sendEvent('seen', { id: lastSeenSent });
  }));
  renderMembers();

  function setName(next) {
    const n = String(next).trim().slice(0, 40);
    if (!n || n === name) return;
    name = n;
    // The colour stays: it is how the others recognise this person.
    if (mayPresence) room.setPresence({ name, color });
    options.onNameChange?.(name);
  }
  nameInput.addEventListener('change', () => setName(nameInput.value));
  nameInput.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') nameInput.blur();
  });
  shareBtn.addEventListener('click', async () => {
    const link = new URL(target.ownerDocument.location.href);
    link.searchParams.set('room', roomId);
    link.searchParams.delete('name');
    try {
      await navigator.clipboard.writeText(link.toString());
      shareBtn.textContent = 'Copied!';
    } catch {
      shareBtn.textContent = 'Copy failed';
    }
    setTimeout(() => (shareBtn.textContent = 'Share'), 1500);
  });

  // ---- Typing -----------------------------------------------------------
  function renderTyping() {
    const names = [...room.typing].filter((id) => id !== room.self && room.members.has(id)).map(memberName);
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names.length} people are typing…`;
    typingLine.textContent = text;
    typingLine.classList.toggle('chorus-typing-on', Boolean(text));
  }
  offs.push(room.on('typing', renderTyping), room.on('members', renderTyping));

  let typingOn = false;
  let typingSentAt = 0;
  let typingIdle = null;
  function typingPulse() {
    if (!mayPresence) return;
    const now = Date.now();
    if (!input.value.trim()) return typingStop();
    // Renew well inside the server's TTL (5 s by default).
    if (!typingOn || now - typingSentAt > 2000) {
      room.setTyping(true);
      typingOn = true;
      typingSentAt = now;
    }
    clearTimeout(typingIdle);
    typingIdle = setTimeout(typingStop, 3000);
  }
  function typingStop() {
    clearTimeout(typingIdle);
    if (typingOn) room.setTyping(false);
    typingOn = false;
  }
  input.addEventListener('input', typingPulse);
  input.addEventListener('blur', typingStop);

  // ---- Chat -------------------------------------------------------------
  let counter = 0;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    chat.push([{ id: `${doc.clientID.toString(36)}-${Date.now().toString(36)}-${(counter++).toString(36)}`, user: name, color, author: authorId, text, ts: Date.now() }]);
    input.value = '';
    typingStop();
    input.focus();
  });

  /** Last message id each member has seen (read receipts), by member id. */
  const seenBy = new Map();
  let lastSeenSent = null;
  offs.push(
    room.on('event', (e) => {
      if (e.name === 'seen' && e.data && typeof e.data.id === 'string') {
        seenBy.set(e.from, e.data.id);
        renderMessages();
      }
    }),
    room.on('members', (_, change) => {
      for (const id of change.left) seenBy.delete(id);
      if (change.snapshot) for (const id of [...seenBy.keys()]) if (!room.members.has(id)) seenBy.delete(id);
    }),
  );

  function renderMessages() {
    const items = chat.toArray();
    const nearBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 60;
    empty.hidden = items.length > 0;
    const receipts = new Map();
    for (const [member, id] of seenBy) {
      if (!room.members.has(member)) continue;
      if (!receipts.has(id)) receipts.set(id, []);
      receipts.get(id).push(member);
    }
    messages.replaceChildren(
      ...items.map((m) => {
        const mine = m.author ? m.author === authorId : m.user === name && m.color === color;
        const seen = (receipts.get(m.id) || []).filter((id) => memberName(id) !== m.user);
        return h(
          'li',
          { class: `chorus-msg${mine ? ' chorus-mine' : ''}`, 'data-id': m.id },
          avatar(m.user, m.color),
          h(
            'div',
            { class: 'chorus-bubble' },
            h('div', { class: 'chorus-meta' }, h('span', { class: 'chorus-author', style: mine ? null : `color:${m.color}` }, mine ? 'You' : m.user), h('time', { datetime: new Date(m.ts).toISOString() }, timeFmt ? timeFmt.format(new Date(m.ts)) : '')),
            h('div', { class: 'chorus-text' }, m.text),
            seen.length ? h('div', { class: 'chorus-receipt', title: 'Read receipts' }, `Seen by ${seen.map(memberName).join(', ')}`) : null,
          ),
        );
      }),
    );
    if (nearBottom) scroller.scrollTop = scroller.scrollHeight;
    if (root.dataset.tab !== 'chat' && items.length > chatSeenCount) {
      unreadEl.textContent = String(items.length - chatSeenCount);
      unreadEl.hidden = false;
    }
    if (root.dataset.tab === 'chat' || !narrow()) chatSeenCount = items.length;
    markSeen();
  }

  // ---- Tabs (narrow screens) ------------------------------------------
  let chatSeenCount = chat.length;
  const narrowQuery = target.ownerDocument.defaultView?.matchMedia?.('(max-width: 760px)');
  const narrow = () => Boolean(narrowQuery?.matches);
  function showTab(which) {
    root.dataset.tab = which;
    for (const t of [docTab, chatTab, historyTab]) t.setAttribute('aria-selected', String(t.dataset.tab === which));
    if (which === 'chat') {
      chatSeenCount = chat.length;
      unreadEl.hidden = true;
      scroller.scrollTop = scroller.scrollHeight;
      markSeen();
    } else view.requestMeasure();
  }
  docTab.addEventListener('click', () => showTab('doc'));
  chatTab.addEventListener('click', () => showTab('chat'));
  historyTab.addEventListener('click', () => showTab('history'));
  /** Wide screens: the history panel takes the chat's place while open. */
  function showHistory(open) {
    root.dataset.side = open ? 'history' : 'chat';
    historyBtn.setAttribute('aria-pressed', String(open));
    if (open) history.refresh();
    else history.closePreview();
  }
  historyBtn.addEventListener('click', () => showHistory(root.dataset.side !== 'history'));

  function markSeen() {
    if (!mayPresence) return;
    const last = chat.length ? chat.get(chat.length - 1) : null;
    if (!last || last.id === lastSeenSent) return;
    if (target.ownerDocument.visibilityState === 'hidden') return;
    if (narrow() && root.dataset.tab !== 'chat') return;
    if (room.sendEvent('seen', { id: last.id })) lastSeenSent = last.id;
  }
  const onVisible = () => markSeen();
  target.ownerDocument.addEventListener('visibilitychange', onVisible);
  offs.push(room.on('synced', () => {
    lastSeenSent = null;
    markSeen();
  }));
  chat.observe(renderMessages);
  renderMessages();

  return {
    client,
    room,
    view,
    setName,
    showTab,
    showHistory,
    history,
    get name() {
      return name;
    },
    get color() {
      return color;
    },
    destroy() {
      offs.forEach((off) => off());
      history.destroy();
      stopCursors();
      chat.unobserve(renderMessages);
      target.ownerDocument.removeEventListener('visibilitychange', onVisible);
      view.destroy();
      room.leave();
      if (!options.client) client.close();
      target.replaceChildren();
    },
  };
}

/** `<chorus-room room="team" name="Alice" color="#e11d48" token="…" server="wss://…/ws">`. */
if (typeof customElements !== 'undefined' && !customElements.get('chorus-room')) {
  customElements.define(
    'chorus-room',
    class extends HTMLElement {
      connectedCallback() {
        if (this.widget) return;
        const attr = (n) => this.getAttribute(n) || undefined;
        this.widget = mount(this, { room: attr('room'), name: attr('name'), color: attr('color'), token: attr('token'), server: attr('server'), compact: this.hasAttribute('compact') });
      }
      disconnectedCallback() {
        this.widget?.destroy();
        this.widget = null;
      }
    },
  );
}
