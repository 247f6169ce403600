// Stock editors in headless Chromium against a Chorus server, as a person
// would use them (run by `cargo test --test browser editors_e2e`, which
// builds dist/ and the demo, starts a server and sets CHORUS_URL; by hand:
//   node build.mjs && CHORUS_URL=http://127.0.0.1:8080 node --test .
// with the demo built and served by that server):
// - TipTap 3 (Collaboration + CollaborationCaret) with `HocuspocusProvider`
//   on /hocuspocus in two pages: both converge and each shows the other's
//   caret, labelled with the other's name in the other's colour;
// - CodeMirror 6 (y-codemirror.next, y-websocket on /yjs/{room}) beside the
//   demo (native protocol) in one room: text both ways, the editor shows the
//   demo user's caret by name and colour, the demo lists the editor user.
// Screenshots go to $CHORUS_ARTIFACTS (default <repo>/artifacts/e2e).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = process.env.CHORUS_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const here = path.dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = process.env.CHORUS_ARTIFACTS || path.join(here, '..', '..', 'artifacts', 'e2e');
const WAIT = 20_000;

if (!BASE) {
  throw new Error('CHORUS_URL is not set: run these through `cargo test --test browser editors_e2e`');
}
const WS = BASE.replace(/^http/, 'ws');

let browser;
const contexts = [];

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
});

/** `url` in a browser context of its own (one person), page errors logged. */
async function open(url, who) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  contexts.push(context);
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${who}] page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') console.error(`[${who}] console: ${m.text()}`);
  });
  await page.goto(url);
  return page;
}

const pageUrl = (name, params) => `${pathToFileURL(path.join(here, 'dist', `${name}.html`))}?${new URLSearchParams(params)}`;

/** Polls `fn` until it returns a truthy value; fails with `what` after `ms`. */
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

/** `#rrggbb` as the browser reports a computed colour. */
function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return `rgb(${n >> 16}, ${(n >> 8) & 255}, ${n & 255})`;
}

const text = (page) => page.evaluate(() => window.editorPage.text());

/** The labels of the remote carets a page shows: [{name, color}]. */
const labels = (page, selector) =>
  page.$$eval(selector, (els) => els.map((e) => ({ name: e.textContent, color: getComputedStyle(e).backgroundColor })));

const suffix = Date.now().toString(36);

test('TipTap with HocuspocusProvider: two pages converge and show each other\'s named caret', async () => {
  const doc = `tiptap-${suffix}`;
  const people = { Alice: '#e11d48', Bob: '#2563eb' };
  const [alice, bob] = await Promise.all(
    Object.entries(people).map(([name, color]) => open(pageUrl('tiptap', { server: `${WS}/hocuspocus`, doc, name, color }), name)),
  );
  for (const p of [alice, bob]) await until(() => p.evaluate(() => window.editorPage.synced()), 'the provider to sync');

  // A → B.
  await alice.click('.tiptap');
  await alice.keyboard.type('Hello from Alice', { delay: 10 });
  await until(async () => (await text(bob)) === 'Hello from Alice', 'Bob to see Alice\'s text');
  // B → A, at the start while A types at the end.
  // (Home / Control+Home do not move ProseMirror's caret in headless
  // Chromium: place it through the editor.)
  await bob.click('.tiptap');
  await bob.evaluate(() => window.editorPage.editor.commands.focus('start'));
  await alice.evaluate(() => window.editorPage.editor.commands.focus('end'));
  const caretAt = (p) => p.evaluate(() => window.editorPage.editor.view.hasFocus() && window.editorPage.editor.state.selection.from);
  await until(async () => (await caretAt(bob)) === 1, 'Bob\'s caret at the start');
  await until(async () => (await caretAt(alice)) === 'Hello from Alice'.length + 1, 'Alice\'s caret at the end');
  await Promise.all([
    alice.keyboard.type(' and more', { delay: 15 }),
    bob.keyboard.type('Bob: ', { delay: 15 }),
  ]);
  const want = 'Bob: Hello from Alice and more';
  await until(async () => (await text(alice)) === want && (await text(bob)) === want, `both to show ${JSON.stringify(want)}`).catch(async (e) => {
    throw new Error(`${e.message}; Alice shows ${JSON.stringify(await text(alice))}, Bob ${JSON.stringify(await text(bob))}`);
  });

  // Each page shows the other's caret with the other's name and colour, and only that.
  const sel = '.collaboration-carets__label';
  await until(async () => (await labels(alice, sel)).some((l) => l.name === 'Bob'), 'Alice to see Bob\'s caret');
  await until(async () => (await labels(bob, sel)).some((l) => l.name === 'Alice'), 'Bob to see Alice\'s caret');
  assert.deepEqual(await labels(alice, sel), [{ name: 'Bob', color: rgb(people.Bob) }]);
  assert.deepEqual(await labels(bob, sel), [{ name: 'Alice', color: rgb(people.Alice) }]);
  // Everything sent was acknowledged (SyncStatus).
  for (const p of [alice, bob]) await until(async () => !(await p.evaluate(() => window.editorPage.unsynced())), 'no unsynced changes');
  await alice.screenshot({ path: path.join(ARTIFACTS, 'tiptap-alice.png') });
  await bob.screenshot({ path: path.join(ARTIFACTS, 'tiptap-bob.png') });
});

test('y-codemirror.next on /yjs and the demo in one room: text both ways, each shows the other by name and colour', async () => {
  const room = `cm-${suffix}`;
  const carol = { name: 'Carol', color: '#0d9488' };
  const dave = { name: 'Dave', color: '#9333ea' };
  const cm = await open(pageUrl('codemirror', { server: `${WS}/yjs`, room, ...carol }), carol.name);
  const demo = await open(`${BASE}/?${new URLSearchParams({ room, ...dave })}`, dave.name);
  await until(() => cm.evaluate(() => window.editorPage.synced()), 'y-websocket to sync');
  await demo.waitForFunction(() => window.chorusDemo?.room.state === 'synced', null, { timeout: WAIT });
  const demoText = () => demo.evaluate(() => window.chorusDemo.view.state.doc.toString());

  // Demo → editor.
  await demo.click('.cm-content');
  await demo.keyboard.type('from the demo', { delay: 10 });
  await until(async () => (await text(cm)) === 'from the demo', 'the editor to show the demo\'s text');
  // Editor → demo.
  await cm.click('.cm-content');
  await cm.keyboard.press('Control+End');
  await cm.keyboard.type(', from CodeMirror', { delay: 10 });
  const want = 'from the demo, from CodeMirror';
  await until(async () => (await demoText()) === want, 'the demo to show the editor\'s text');

  // The editor shows the demo user's caret: named, in the demo user's colour.
  await demo.click('.cm-content');
  await demo.keyboard.press('Control+Home');
  await until(async () => (await labels(cm, '.cm-ySelectionInfo')).some((l) => l.name === dave.name), 'the editor to show Dave\'s caret');
  assert.deepEqual(await labels(cm, '.cm-ySelectionInfo'), [{ name: dave.name, color: rgb(dave.color) }]);
  // y-codemirror.next shows the name while the pointer is on the caret.
  await cm.hover('.cm-ySelectionCaret');
  await until(async () => (await cm.$eval('.cm-ySelectionInfo', (e) => getComputedStyle(e).opacity)) === '1', 'Dave\'s name to show on hover');

  // The demo lists the editor user by name, with the editor user's colour.
  const online = () =>
    demo.$$eval('.chorus-online-item', (els) =>
      els.map((e) => ({ name: e.childNodes[1]?.textContent, color: getComputedStyle(e.querySelector('.chorus-online-dot')).backgroundColor })));
  await until(async () => (await online()).some((m) => m.name === carol.name), 'the demo to list Carol');
  assert.deepEqual(
    (await online()).map((m) => m.name).sort(),
    [carol.name, dave.name],
    'the demo lists both people by name (no "Anonymous")',
  );
  assert.equal((await online()).find((m) => m.name === carol.name).color, rgb(carol.color));
  // And the demo's editor shows Carol's caret, named, in her colour.
  await until(async () => (await labels(demo, '.cm-chorus-label')).some((l) => l.name === carol.name), 'the demo to show Carol\'s caret');
  assert.deepEqual(await labels(demo, '.cm-chorus-label'), [{ name: carol.name, color: rgb(carol.color) }]);
  await cm.screenshot({ path: path.join(ARTIFACTS, 'codemirror-carol.png') });
  await demo.screenshot({ path: path.join(ARTIFACTS, 'demo-dave.png') });
});
