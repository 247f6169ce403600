// The widget's history panel: the room's versions (time, name, avatars of
// who edited), a read-only preview of one with what changed since
// highlighted (word diff of the editor text, version → now), restore in
// one click, and naming the current state. Lists again on every
// `versions` event. Controls that change anything show only when the
// widget may write (see `writable`).

import * as Y from 'yjs';
import { diffText } from './diff.js';

const PAGE = 50;

const dateFmt =
  typeof Intl !== 'undefined' ? new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' }) : null;

/**
 * Builds the panel.
 * @param {object} o
 * @param {import('../client/index.js').ChorusRoom} o.room
 * @param {Y.Text} o.ytext           the live editor text (for "changed since")
 * @param {HTMLElement} o.editorHost  hidden while a version is previewed
 * @param {HTMLElement} o.preview    where the preview is drawn (in the document card)
 * @param {() => boolean} o.writable
 * @param {(name: string, user?: string) => string} o.colorOf
 * @param {Function} o.h             the widget's element helper
 * @param {Function} o.avatar        the widget's avatar helper
 * @param {() => void} o.onPreview   called when a preview opens (to show the document)
 * @returns {{card: HTMLElement, refresh(): void, refreshControls(): void, closePreview(): void, destroy(): void}}
 */
export function createHistory({ room, ytext, editorHost, preview, writable, colorOf, h, avatar, onPreview }) {
  const nameInput = h('input', { class: 'chorus-field chorus-version-name', type: 'text', placeholder: 'Name this version…', 'aria-label': 'Version name', maxlength: '200', autocomplete: 'off' });
  const nameBtn = h('button', { class: 'chorus-send', type: 'submit' }, 'Save');
  const nameForm = h('form', { class: 'chorus-compose chorus-name-version' }, nameInput, nameBtn);
  const list = h('ol', { class: 'chorus-versions', 'aria-label': 'Versions' });
  const empty = h('div', { class: 'chorus-empty' }, 'No versions yet. They appear as the document is edited.');
  const more = h('button', { class: 'chorus-btn chorus-more-versions', type: 'button', hidden: true }, 'Older versions');
  const status = h('div', { class: 'chorus-history-status', role: 'status', 'aria-live': 'polite' });
  const card = h(
    'section',
    { class: 'chorus-card chorus-history', 'aria-label': 'History' },
    h('div', { class: 'chorus-card-title' }, 'History'),
    nameForm,
    h('div', { class: 'chorus-scroll' }, empty, list, more),
    status,
  );

  const restoreBtn = h('button', { class: 'chorus-send chorus-restore', type: 'button' }, 'Restore this version');
  const backBtn = h('button', { class: 'chorus-btn chorus-back', type: 'button' }, 'Back to the live document');
  const previewLabel = h('div', { class: 'chorus-preview-label' });
  const diffBox = h('pre', { class: 'chorus-diff', 'aria-label': 'Version preview (read-only)' });
  preview.replaceChildren(
    h(
      'div',
      { class: 'chorus-preview-bar' },
      previewLabel,
      h('div', { class: 'chorus-preview-legend' }, h('ins', {}, 'added since'), ' ', h('del', {}, 'removed since')),
      h('div', { class: 'chorus-preview-actions' }, restoreBtn, backBtn),
    ),
    diffBox,
  );
  preview.hidden = true;

  /** Versions shown, newest first. */
  let versions = [];
  let next = null;
  /** The version previewed: its id and its editor text. */
  let previewing = null;
  let listing = null;
  let again = false;
  let destroyed = false;

  function say(text, bad = false) {
    status.textContent = text;
    status.dataset.bad = String(bad);
  }

  function label(v) {
    if (v.name) return v.name;
    if (v.kind === 'restore') {
      const from = versions.find((x) => x.id === v.restored_from);
      return `Restored from ${from ? label(from) : `version ${v.restored_from}`}`;
    }
    return v.kind === 'named' ? 'Named version' : 'Auto-saved';
  }

  function when(v) {
    return dateFmt ? dateFmt.format(new Date(v.time)) : new Date(v.time).toISOString();
  }

  function render() {
    empty.hidden = versions.length > 0;
    more.hidden = next == null;
    list.replaceChildren(
      ...versions.map((v) => {
        const authors = v.authors || [];
        const who = authors.map((a) => String(a.name || a.user || '?'));
        return h(
          'li',
          { class: `chorus-version${previewing?.id === v.id ? ' chorus-selected' : ''}`, 'data-id': v.id, 'data-kind': v.kind },
          h(
            'div',
            { class: 'chorus-version-main' },
            h('div', { class: 'chorus-version-title', title: label(v) }, label(v)),
            h('time', { datetime: new Date(v.time).toISOString() }, when(v)),
          ),
          h(
            'div',
            { class: 'chorus-version-authors', title: who.length ? `Edited by ${who.join(', ')}` : 'No edits' },
            ...authors.slice(0, 4).map((a, i) => avatar(who[i], colorOf(who[i], a.user), 'chorus-avatar-sm')),
            authors.length > 4 ? h('span', { class: 'chorus-avatar chorus-avatar-sm chorus-more' }, `+${authors.length - 4}`) : null,
          ),
          h('button', { class: 'chorus-btn chorus-preview-btn', type: 'button', 'data-id': v.id, 'aria-label': `Preview ${label(v)} of ${when(v)}` }, 'Preview'),
        );
      }),
    );
  }

  /** Lists the newest page again (coalescing calls made meanwhile). */
  async function refresh() {
    if (room.state !== 'synced' || destroyed) return;
    if (listing) {
      again = true;
      return listing;
    }
    listing = (async () => {
      try {
        const page = await room.versions({ limit: PAGE });
        versions = page.versions;
        next = page.next;
        render();
        if (status.dataset.bad !== 'true') say('');
      } catch (e) {
        say(`Could not list versions: ${e.code || e.message}`, true);
      }
    })();
    await listing;
    listing = null;
    if (again) {
      again = false;
      return refresh();
    }
  }

  async function loadMore() {
    if (next == null) return;
    try {
      const page = await room.versions({ limit: PAGE, before: next });
      versions = versions.concat(page.versions.filter((v) => !versions.some((x) => x.id === v.id)));
      next = page.next;
      render();
    } catch (e) {
      say(`Could not list versions: ${e.code || e.message}`, true);
    }
  }

  function drawDiff() {
    if (!previewing) return;
    const ops = diffText(previewing.text, ytext.toString());
    diffBox.replaceChildren(...ops.map(([op, text]) => (op === 'eq' ? text : h(op === 'ins' ? 'ins' : 'del', {}, text))));
    const added = ops.filter(([op]) => op === 'ins').reduce((n, [, t]) => n + t.length, 0);
    const removed = ops.filter(([op]) => op === 'del').reduce((n, [, t]) => n + t.length, 0);
    diffBox.dataset.added = String(added);
    diffBox.dataset.removed = String(removed);
  }

  async function openPreview(id) {
    const v = versions.find((x) => x.id === id);
    if (!v) return;
    say('Loading the version…');
    try {
      const update = await room.viewVersion(id);
      const doc = new Y.Doc();
      Y.applyUpdate(doc, update);
      previewing = { id, text: doc.getText('editor').toString() };
      doc.destroy();
    } catch (e) {
      say(`Could not load the version: ${e.code || e.message}`, true);
      return;
    }
    say('');
    previewLabel.replaceChildren(h('strong', {}, label(v)), ` · ${when(v)} · read-only, compared with now`);
    drawDiff();
    editorHost.hidden = true;
    preview.hidden = false;
    refreshControls();
    render();
    onPreview?.();
  }

  function closePreview() {
    previewing = null;
    preview.hidden = true;
    editorHost.hidden = false;
    render();
  }

  async function restore() {
    if (!previewing) return;
    const id = previewing.id;
    restoreBtn.disabled = true;
    try {
      const v = await room.restoreVersion(id);
      closePreview();
      say(`Restored (${label(v)}).`);
      await refresh();
    } catch (e) {
      say(`Could not restore: ${e.code || e.message}`, true);
    } finally {
      restoreBtn.disabled = false;
    }
  }

  function refreshControls() {
    const w = writable();
    nameForm.hidden = !w;
    restoreBtn.hidden = !w;
  }

  nameForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const name = nameInput.value.trim();
    if (!name) return;
    nameBtn.disabled = true;
    try {
      await room.createVersion(name);
      nameInput.value = '';
      say(`Saved "${name}".`);
      await refresh();
    } catch (err) {
      say(`Could not name the version: ${err.code || err.message}`, true);
    } finally {
      nameBtn.disabled = false;
    }
  });
  list.addEventListener('click', (e) => {
    const btn = e.target.closest?.('.chorus-preview-btn');
    if (btn) openPreview(btn.dataset.id);
  });
  more.addEventListener('click', loadMore);
  restoreBtn.addEventListener('click', restore);
  backBtn.addEventListener('click', closePreview);

  let diffTimer = null;
  const onText = () => {
    if (!previewing || diffTimer) return;
    diffTimer = setTimeout(() => {
      diffTimer = null;
      drawDiff();
    }, 100);
  };
  ytext.observe(onText);
  const offs = [room.on('versions', () => refresh()), room.on('synced', () => refresh())];
  refreshControls();
  render();
  refresh();

  return {
    card,
    refresh,
    refreshControls,
    closePreview,
    get previewing() {
      return previewing?.id ?? null;
    },
    destroy() {
      destroyed = true;
      clearTimeout(diffTimer);
      ytext.unobserve(onText);
      offs.forEach((off) => off());
    },
  };
}
