// Browser tests of the demo's people-facing polish: three people in a room
// get three distinct colours (their names hash to the same palette entry),
// one's own chat bubble has no member's hue, and on a 390 px wide phone the
// chat is one tap away (tabs) with an unread count. A stock y-websocket
// editor (tests/interop's packages) sees the widgets' colours as
// awareness `user.color`, and a widget joining after it avoids its colour.
// Run by `cargo test --test browser` (see demo.e2e.test.js).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = process.env.CHORUS_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const ARTIFACTS = process.env.CHORUS_ARTIFACTS || path.join(repo, 'artifacts', 'e2e');
const WAIT = 15_000;
if (!BASE) throw new Error('CHORUS_URL is not set: run these through `cargo test --test browser`');

let browser;
before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'] });
});
after(async () => browser?.close());

async function open(room, name, viewport = { width: 1200, height: 780 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(`${BASE}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
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
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** name -> colour of every member, as this page's presence shows them. */
const colours = (page) => page.evaluate(() => Object.fromEntries([...window.chorusDemo.room.members.values()].map((m) => [m.state.name, String(m.state.color).toLowerCase()])));
/** The background of each entry of the online list, by name. */
const dots = (page) => page.$$eval('.chorus-online-item', (els) => Object.fromEntries(els.map((e) => [e.childNodes[1].textContent, getComputedStyle(e.querySelector('.chorus-online-dot')).backgroundColor])));

test('three people whose names hash alike get three distinct colours, the same on every page', async () => {
  const room = `colours-${Date.now().toString(36)}`;
  // The three names hash to the same entry of the palette (mod 8 and mod 10).
  const names = ['Erin', 'Frank', 'Ivan'];
  const pages = [];
  for (const n of names) pages.push(await open(room, n));
  // Generous wait: presence is batched per room, and the machine may be busy.
  let seen;
  const agreed = await until(async () => {
    const views = await Promise.all(pages.map(colours));
    seen = views;
    const first = JSON.stringify(views[0]);
    const ok = views.every((v) => Object.keys(v).length === 3 && JSON.stringify(v) === first) && new Set(Object.values(views[0])).size === 3;
    return ok && views[0];
  }, 'three distinct colours, agreed by all pages', 30_000).catch((e) => {
    throw new Error(`${e.message}; pages see ${JSON.stringify(seen)}`);
  });
  console.log(`colours: ${JSON.stringify(agreed)}`);
  // What is drawn matches: three distinct dots in every online list.
  for (const p of pages) {
    const d = await until(async () => {
      const v = await dots(p);
      return Object.keys(v).length === 3 && new Set(Object.values(v)).size === 3 && v;
    }, 'three distinct dots');
    assert.equal(new Set(Object.values(d)).size, 3);
  }
  // Each widget's own colour is what the others see.
  for (const [i, p] of pages.entries()) assert.equal((await p.evaluate(() => window.chorusDemo.widget.color)).toLowerCase(), agreed[names[i]]);

  // One's own bubble: neutral, not any member's hue; the others see the author's colour.
  await pages[0].fill('.chorus-input', 'hello from Erin');
  await pages[0].press('.chorus-input', 'Enter');
  const mine = await until(() => pages[0].$eval('.chorus-msg.chorus-mine .chorus-bubble', (e) => getComputedStyle(e).backgroundColor).catch(() => null), 'own bubble');
  assert.equal(mine, 'rgb(31, 41, 55)');
  // (Until styled: the list is redrawn as read receipts arrive, and an element
  // read while being replaced has no computed style yet.)
  const theirs = await until(() => pages[1].$eval('.chorus-msg:not(.chorus-mine) .chorus-author', (e) => [e.textContent, getComputedStyle(e).color]).then((v) => (v[1] ? v : null)).catch(() => null), 'Erin\'s message at Frank');
  assert.equal(theirs[0], 'Erin');
  const hex = agreed.Erin;
  const rgb = `rgb(${parseInt(hex.slice(1, 3), 16)}, ${parseInt(hex.slice(3, 5), 16)}, ${parseInt(hex.slice(5, 7), 16)})`;
  assert.equal(theirs[1], rgb);
  assert.equal(await pages[0].$eval('.chorus-msg.chorus-mine .chorus-author', (e) => e.textContent), 'You');

  // Someone leaves and comes back: the two who stayed keep their colours.
  await pages[2].context().close();
  const back = await open(room, 'Ivan');
  const after = await until(async () => {
    const views = await Promise.all([pages[0], pages[1], back].map(colours));
    return views.every((v) => Object.keys(v).length === 3 && JSON.stringify(v) === JSON.stringify(views[0])) && new Set(Object.values(views[0])).size === 3 && views[0];
  }, 'three distinct colours after Ivan came back');
  assert.equal(after.Erin, agreed.Erin);
  assert.equal(after.Frank, agreed.Frank);
  for (const p of [pages[0], pages[1], back]) await p.context().close();
});

test('on a 390 px phone the chat is one tap away, with an unread count', async () => {
  const room = `phone-${Date.now().toString(36)}`;
  const phone = await open(room, 'Pat', { width: 390, height: 844 });
  const desk = await open(room, 'Dee');
  // First screen: the document fills it, tabs show both.
  assert.ok(await phone.isVisible('.cm-content'));
  assert.ok(!(await phone.isVisible('.chorus-input')), 'chat hidden behind its tab');
  assert.ok(await phone.isVisible('.chorus-tab[data-tab="chat"]'));
  const tabBox = await phone.locator('.chorus-tab[data-tab="chat"]').boundingBox();
  assert.ok(tabBox.y + tabBox.height <= 844, `the chat tab is on the first screen (${JSON.stringify(tabBox)})`);
  const docBox = await phone.locator('.chorus-doc').boundingBox();
  assert.ok(docBox.y + docBox.height <= 844 && docBox.height > 400, `the document fills the screen (${JSON.stringify(docBox)})`);

  // A message arrives while the document is shown: the tab counts it.
  await desk.fill('.chorus-input', 'ping from desk');
  await desk.press('.chorus-input', 'Enter');
  await until(async () => (await phone.textContent('.chorus-unread')) === '1' && (await phone.isVisible('.chorus-unread')), 'unread count 1');

  // One tap: the chat, its input on screen without scrolling.
  await phone.click('.chorus-tab[data-tab="chat"]');
  assert.ok(await phone.isVisible('.chorus-input'));
  assert.ok(!(await phone.isVisible('.cm-content')));
  assert.ok(!(await phone.isVisible('.chorus-unread')), 'count cleared');
  const box = await phone.locator('.chorus-input').boundingBox();
  assert.ok(box.y >= 0 && box.y + box.height <= 844, `input on the first screen (${JSON.stringify(box)})`);
  assert.equal(await phone.evaluate(() => window.scrollY), 0);
  assert.ok((await phone.$$eval('.chorus-msg .chorus-text', (els) => els.map((e) => e.textContent))).includes('ping from desk'));
  await phone.fill('.chorus-input', 'pong from phone');
  await phone.press('.chorus-input', 'Enter');
  await until(async () => (await desk.$$eval('.chorus-msg .chorus-text', (els) => els.map((e) => e.textContent))).includes('pong from phone'), 'the reply at the desk');
  await phone.screenshot({ path: path.join(ARTIFACTS, 'phone-chat-tab.png') });
  // And back to the document.
  await phone.click('.chorus-tab[data-tab="doc"]');
  assert.ok(await phone.isVisible('.cm-content'));
  // Wide screens show both and no tabs.
  assert.ok(!(await desk.isVisible('.chorus-tabs')));
  assert.ok(await desk.isVisible('.chorus-input'));
  for (const p of [phone, desk]) await p.context().close();
});

/** The widget's first choice for `name` (its hash into the 10-colour palette). */
function hashColour(name) {
  const PALETTE = ['#e11d48', '#2563eb', '#059669', '#d97706', '#9333ea', '#0891b2', '#65a30d', '#db2777', '#92400e', '#0f766e'];
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}

test('a y-websocket editor sees the widgets\' colours as user.color; a widget joining after it avoids its colour', async () => {
  // tests/interop's y-websocket helpers (cargo test --test browser installs them).
  const { connect, synced, waitFor, destroy } = await import('../../../tests/interop/helpers.mjs');
  const room = `yjs-colours-${Date.now().toString(36)}`;
  const ws = `${BASE.replace(/^http/, 'ws')}/yjs`;
  // The editor took the colour the widget named Zoe would pick first.
  const taken = hashColour('Zoe');
  const editor = connect(ws, room);
  await synced(editor.provider);
  editor.awareness.setLocalStateField('user', { name: 'Yuri', color: taken });
  const a = await open(room, 'Zoe');
  const b = await open(room, 'Erin');
  const seen = await until(async () => {
    const v = await colours(a);
    return Object.keys(v).length === 3 && new Set(Object.values(v)).size === 3 && v;
  }, 'three distinct colours with the editor');
  assert.equal(seen.Yuri, taken, 'the editor keeps its own colour');
  assert.notEqual(seen.Zoe, taken, 'Zoe avoided the editor\'s colour');
  // The editor sees each widget's colour as user.color, the same the pages show.
  await waitFor(() => {
    const users = [...editor.awareness.getStates().values()].map((st) => st.user).filter(Boolean);
    return ['Zoe', 'Erin'].every((n) => users.some((u) => u.name === n && String(u.color).toLowerCase() === seen[n]));
  }, 'user.color of both widgets in the editor\'s awareness', WAIT);
  destroy(editor);
  for (const p of [a, b]) await p.context().close();
});
