// Browser end-to-end tests of the demo page: two pages (separate browser
// contexts, like two people) in one room, driven by playwright-core on
// Debian's headless Chromium. Run by `cargo test --test browser`, which
// builds the demo, starts a server and sets CHORUS_URL; by hand:
//   CHORUS_URL=http://127.0.0.1:8080 node --test demo/test/e2e/
// Screenshots go to $CHORUS_ARTIFACTS (default <repo>/artifacts/e2e).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const BASE = process.env.CHORUS_URL;
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const ARTIFACTS = process.env.CHORUS_ARTIFACTS || path.join(repo, 'artifacts', 'e2e');
const WAIT = 15_000;

if (!BASE) {
  throw new Error('CHORUS_URL is not set: run these through `cargo test --test browser`, or start a server and set CHORUS_URL=http://127.0.0.1:PORT');
}

let browser;
const contexts = [];

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  for (const c of contexts) await c.close().catch(() => {});
  await browser?.close();
});

/** A page for `name` in `room`, in its own browser context, once online and synced. */
async function open(room, name, viewport = { width: 1200, height: 780 }) {
  const context = await browser.newContext({ viewport });
  contexts.push(context);
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') console.error(`[${name}] console: ${m.text()}`);
  });
  await page.goto(`${BASE}/?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);
  await synced(page);
  return { page, context, name };
}

async function synced(page) {
  await page.waitForSelector('.chorus-badge[data-status="online"]', { timeout: WAIT });
  await page.waitForFunction(() => window.chorusDemo?.room.state === 'synced', null, { timeout: WAIT });
}

const docText = (page) => page.evaluate(() => window.chorusDemo.text());
const editorText = (page) => page.evaluate(() => window.chorusDemo.view.state.doc.toString());

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
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function converged(a, b, ...needles) {
  return until(async () => {
    const [ta, tb, ea, eb] = await Promise.all([docText(a.page), docText(b.page), editorText(a.page), editorText(b.page)]);
    return ta === tb && ea === ta && eb === tb && needles.every((n) => ta.includes(n)) && ta;
  }, `both editors to show ${JSON.stringify(needles)}`);
}

async function shoot(page, file) {
  await page.screenshot({ path: path.join(ARTIFACTS, file), fullPage: true });
}

const room = `e2e-${Date.now().toString(36)}`;
let alice;
let bob;

test('two pages type concurrently, converge, and show each other\'s named cursor', async () => {
  alice = await open(room, 'Alice');
  bob = await open(room, 'Bob', { width: 390, height: 844 });
  // A first line so the two can type in different places at the same time.
  await alice.page.click('.cm-content');
  await alice.page.keyboard.type('Agenda\n');
  await converged(alice, bob, 'Agenda\n');

  await alice.page.click('.cm-content');
  await alice.page.keyboard.press('Control+End');
  await bob.page.click('.cm-content');
  await bob.page.keyboard.press('Control+Home');
  await Promise.all([
    alice.page.keyboard.type('alice writes at the end', { delay: 15 }),
    bob.page.keyboard.type('bob writes first ', { delay: 15 }),
  ]);
  const text = await converged(alice, bob, 'alice writes at the end', 'bob writes first ');
  assert.equal(text.length, 'Agenda\n'.length + 'alice writes at the end'.length + 'bob writes first '.length);

  // Each shows the other's cursor, labelled with the other's name.
  await alice.page.waitForSelector('.cm-chorus-label:text-is("Bob")', { timeout: WAIT });
  await bob.page.waitForSelector('.cm-chorus-label:text-is("Alice")', { timeout: WAIT });
  const labelsA = await alice.page.$$eval('.cm-chorus-label', (els) => els.map((e) => e.textContent));
  assert.deepEqual(labelsA, ['Bob'], 'Alice sees only Bob\'s cursor');
  // The online list shows both.
  for (const p of [alice.page, bob.page]) {
    await until(async () => (await p.$$eval('.chorus-online-item', (els) => els.length)) === 2, 'two people online');
  }
});

test('chat: a message from A appears in B; "A is typing…" shows while A types and is gone 6 s after A stops', async () => {
  const typing = bob.page.locator('.chorus-typing');
  await alice.page.click('.chorus-input');
  await alice.page.keyboard.type('Hello from Alice', { delay: 20 });
  await until(async () => (await typing.textContent()) === 'Alice is typing…', 'B to show "Alice is typing…"');
  await alice.page.keyboard.press('Enter');
  await until(async () => (await bob.page.$$eval('.chorus-msg .chorus-text', (els) => els.map((e) => e.textContent))).includes('Hello from Alice'), 'the message in B');

  // Read receipt: B (on a phone: the document tab is showing) has not seen
  // it until B opens the chat tab; then A's page says so.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal((await alice.page.locator('.chorus-msg.chorus-mine .chorus-receipt').allTextContents()).filter((t) => t.includes('Bob')).length, 0, 'no receipt while Bob\'s chat tab is closed');
  await bob.page.click('.chorus-tab[data-tab="chat"]');
  await until(async () => (await alice.page.locator('.chorus-msg.chorus-mine .chorus-receipt').allTextContents()).some((t) => t.includes('Seen by Bob')), 'the read receipt in A');

  // Typing for longer than the server's 5 s typing TTL: the indicator is
  // renewed and never drops while A types.
  await alice.page.keyboard.type('s');
  await until(async () => (await typing.textContent()) === 'Alice is typing…', 'typing shown again');
  const samples = [];
  for (let i = 0; i < 26; i++) {
    await alice.page.keyboard.type('t', { delay: 0 });
    await new Promise((r) => setTimeout(r, 250));
    samples.push(await typing.textContent());
  }
  assert.deepEqual(samples.filter((t) => t !== 'Alice is typing…'), [], 'the indicator stayed on while A typed');
  const stoppedAt = Date.now();
  await until(async () => (await typing.textContent()) === '', 'the typing line to clear', 6_000);
  assert.ok(Date.now() - stoppedAt <= 6_000);
  // And it stays clear (no stray renewals).
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await typing.textContent(), '');
  await alice.page.fill('.chorus-input', '');
});

test('B goes offline, edits, comes back: both converge', async () => {
  await bob.context.setOffline(true);
  await bob.page.waitForSelector('.chorus-badge[data-status="offline"]', { timeout: WAIT });
  assert.equal(await bob.page.locator('.chorus-badge').textContent(), 'Offline');
  await bob.page.click('.chorus-tab[data-tab="doc"]');
  await bob.page.click('.cm-content');
  await bob.page.keyboard.press('Control+End');
  await bob.page.keyboard.type(' [bob offline]', { delay: 10 });
  await alice.page.click('.cm-content');
  await alice.page.keyboard.press('Control+Home');
  await alice.page.keyboard.type('[alice online] ', { delay: 10 });
  // Alice must not have Bob's offline edit yet.
  assert.ok(!(await docText(alice.page)).includes('[bob offline]'));
  await bob.page.click('.chorus-tab[data-tab="chat"]');
  await bob.page.locator('.chorus-input').fill('');
  await bob.page.click('.chorus-input');
  await bob.page.keyboard.type('sent while offline');
  await bob.page.keyboard.press('Enter');
  await bob.page.click('.chorus-tab[data-tab="doc"]');
  await bob.context.setOffline(false);
  await synced(bob.page);
  await converged(alice, bob, '[bob offline]', '[alice online]');
  await until(async () => (await alice.page.$$eval('.chorus-msg .chorus-text', (els) => els.map((e) => e.textContent))).includes('sent while offline'), 'the offline chat message in A');
});

test('reloading a page shows the same document and chat history', async () => {
  const before = await docText(alice.page);
  const chatBefore = await alice.page.evaluate(() => window.chorusDemo.chat().map((m) => m.text));
  assert.ok(chatBefore.length >= 2);
  await alice.page.reload();
  await synced(alice.page);
  assert.equal(await docText(alice.page), before);
  await until(async () => (await editorText(alice.page)) === before, 'the editor to show the document');
  const shown = await alice.page.$$eval('.chorus-msg .chorus-text', (els) => els.map((e) => e.textContent));
  assert.deepEqual(shown, chatBefore);
  // Bob still sees Alice (a new session) and her cursor comes back after she clicks.
  await alice.page.click('.cm-content');
  await bob.page.waitForSelector('.cm-chorus-label:text-is("Alice")', { timeout: WAIT });
});

test('screenshots of both pages are saved', async () => {
  await bob.page.click('.chorus-tab[data-tab="chat"]');
  await bob.page.click('.chorus-input');
  await bob.page.keyboard.type('Looks good');
  await until(async () => (await alice.page.locator('.chorus-typing').textContent()) === 'Bob is typing…', 'typing before the screenshot');
  const a = 'page-a-desktop.png';
  const b = 'page-b-phone.png';
  await shoot(alice.page, a);
  await shoot(bob.page, b);
  for (const f of [a, b]) assert.ok(fs.statSync(path.join(ARTIFACTS, f)).size > 10_000, `${f} written`);
  console.log(`screenshots in ${ARTIFACTS}`);
});
