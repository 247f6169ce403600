// Browser test of the history panel against the real server: name a
// version, edit, preview it (read-only, with what changed since), restore
// it in one click; both pages' editors show the version's content and the
// list shows the restore, live. A reader (token with `r` only) lists and
// previews but sees no naming or restore controls, and the server refuses
// its restore. The server checks tokens (HS256 with CHORUS_AUTH_SECRET):
// versions record who edited by the tokens' user ids.
// Run by `cargo test --test browser browser_history` (see demo.e2e.test.js).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = process.env.CHORUS_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const ARTIFACTS = process.env.CHORUS_ARTIFACTS || path.join(repo, 'artifacts', 'e2e');
const WAIT = 15_000;
const SECRET = process.env.CHORUS_AUTH_SECRET;
if (!BASE || !SECRET) throw new Error('CHORUS_URL and CHORUS_AUTH_SECRET are not set: run these through `cargo test --test browser`');

let browser;
before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
});
after(async () => browser?.close());

async function open(room, name, { viewport = { width: 1200, height: 780 }, rights = 'rw' } = {}) {
  const token = tokenFor(name.toLowerCase(), rights);
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  const q = new URLSearchParams({ room, name });
  if (token) q.set('token', token);
  await page.goto(`${BASE}/?${q}`);
  await page.waitForSelector('.chorus-badge[data-status="online"]', { timeout: WAIT });
  await page.waitForFunction(() => window.chorusDemo?.room.state === 'synced', null, { timeout: WAIT });
  return page;
}

async function until(fn, what, ms = WAIT) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last?.message ?? last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const editorText = (page) => page.evaluate(() => window.chorusDemo.view.state.doc.toString());
const titles = (page) => page.$$eval('.chorus-version', (els) => els.map((e) => [e.dataset.kind, e.querySelector('.chorus-version-title').textContent]));

/** An HS256 token for user `sub` with `rights` in every room. */
function tokenFor(sub, rights) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + 3600, grants: [{ room: '*', rights }] })}`;
  return `${body}.${crypto.createHmac('sha256', SECRET).update(body).digest('base64url')}`;
}

test('history panel: name a version, edit, preview with changes highlighted, restore in one click', async () => {
  const room = `history-${Date.now().toString(36)}`;
  const alice = await open(room, 'Alice');
  const bob = await open(room, 'Bob', { viewport: { width: 390, height: 844 } });

  await alice.click('.cm-content');
  await alice.keyboard.type('Alpha plan: ship on Monday');
  await until(async () => (await editorText(bob)) === 'Alpha plan: ship on Monday', 'Bob has the first text');

  // Alice opens the panel (wide screen: in the chat's place) and names the state.
  await alice.click('.chorus-history-btn');
  assert.ok(await alice.isVisible('.chorus-history'));
  assert.ok(!(await alice.isVisible('.chorus-chat')));
  await alice.fill('.chorus-version-name', 'Draft A');
  await alice.press('.chorus-version-name', 'Enter');
  await until(async () => (await titles(alice)).some(([k, t]) => k === 'named' && t === 'Draft A'), '"Draft A" in Alice\'s list');
  // Who edited: Alice's avatar on the version.
  const avatars = await alice.$$eval('.chorus-version[data-kind="named"] .chorus-version-authors .chorus-avatar', (els) => els.map((e) => e.getAttribute('title')));
  assert.ok(avatars.includes('Alice'), `authors: ${avatars}`);

  // Bob (phone) has the panel as a tab, refreshed live.
  await bob.click('.chorus-tab[data-tab="history"]');
  await until(async () => (await titles(bob)).some(([, t]) => t === 'Draft A'), '"Draft A" in Bob\'s list');

  // Alice rewrites the text.
  await alice.click('.cm-content');
  await alice.keyboard.press('Control+A');
  await alice.keyboard.type('Beta plan: ship on Friday');
  await until(async () => (await editorText(bob)) === 'Beta plan: ship on Friday', 'Bob has the rewrite');

  // Bob previews Draft A: read-only, the editor hidden, the changes since marked.
  await bob.click('.chorus-version[data-kind="named"] .chorus-preview-btn');
  await bob.waitForSelector('.chorus-diff', { state: 'visible', timeout: WAIT });
  assert.ok(!(await bob.isVisible('.cm-content')), 'editor hidden during the preview');
  const del = await bob.$$eval('.chorus-diff del', (els) => els.map((e) => e.textContent).join('|'));
  const ins = await bob.$$eval('.chorus-diff ins', (els) => els.map((e) => e.textContent).join('|'));
  assert.equal(del, 'Alpha|Monday');
  assert.equal(ins, 'Beta|Friday');
  assert.equal(await bob.$eval('.chorus-diff', (e) => e.textContent), 'AlphaBeta plan: ship on MondayFriday');
  assert.equal(await bob.getAttribute('.chorus-diff', 'contenteditable'), null, 'the preview is not editable');
  assert.equal(await editorText(alice), 'Beta plan: ship on Friday', 'previewing changes nothing');
  await bob.screenshot({ path: path.join(ARTIFACTS, 'history-preview-phone.png') });

  // One click restores; both editors show the version's content.
  await bob.click('.chorus-restore');
  await until(async () => (await editorText(alice)) === 'Alpha plan: ship on Monday' && (await editorText(bob)) === 'Alpha plan: ship on Monday', 'both editors show Draft A again');
  assert.ok(await bob.isVisible('.cm-content'), 'back to the live editor');
  // The list shows the restore, newest first, on both pages.
  for (const p of [alice, bob]) {
    await until(async () => {
      const t = await titles(p);
      return t[0] && t[0][0] === 'restore' && t[0][1] === 'Restored from Draft A';
    }, 'the restore at the top of the list');
  }
  await alice.screenshot({ path: path.join(ARTIFACTS, 'history-panel-desktop.png') });

  // A reader lists and previews but has no naming or restore controls.
  const reader = await open(room, 'Rita', { rights: 'r' });
  await reader.click('.chorus-history-btn');
  await until(async () => (await titles(reader)).some(([, t]) => t === 'Draft A'), 'the list for the reader');
  assert.ok(!(await reader.isVisible('.chorus-version-name')), 'no naming form for a reader');
  await reader.click('.chorus-version[data-kind="named"] .chorus-preview-btn');
  await reader.waitForSelector('.chorus-diff', { state: 'visible', timeout: WAIT });
  assert.ok(!(await reader.isVisible('.chorus-restore')), 'no restore button for a reader');
  assert.ok(await reader.isVisible('.chorus-back'));
  // Readers cannot edit the document or chat either.
  assert.equal(await reader.getAttribute('.cm-content', 'contenteditable'), 'false');
  assert.ok(await reader.isDisabled('.chorus-input'));
  // And were the control shown, the server would refuse: forbidden.
  const refused = await reader.evaluate(async () => {
    const { versions } = await window.chorusDemo.room.versions();
    try {
      await window.chorusDemo.room.restoreVersion(versions[0].id);
      return 'restored';
    } catch (e) {
      return e.code;
    }
  });
  assert.equal(refused, 'forbidden');
  for (const p of [alice, bob, reader]) await p.context().close();
});
