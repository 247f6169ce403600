// chorus-client against an in-memory server: sync, acks, presence,
// cursors, typing, events, reconnect with backoff, offline edits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as Y from 'yjs';
import { ChorusClient, backoffDelay, relativeCursor, absoluteCursor } from '../../src/client/index.js';
import { MockServer, until } from '../mock-server.js';

const fast = { backoff: { initialMs: 5, maxMs: 40, factor: 2 }, pingIntervalMs: 0 };

function client(server, opts = {}) {
  return new ChorusClient('ws://mock/ws', { WebSocket: server.WebSocket, ...fast, ...opts });
}

const text = (room) => room.doc.getText('t').toString();

test('hello, join: the doc receives the server state and status goes online', async () => {
  const server = new MockServer();
  server.room('team').doc.getText('t').insert(0, 'from server');
  const statuses = [];
  const c = client(server, { autoConnect: false });
  c.on('status', (s) => statuses.push(s.status));
  const room = c.join('team', { presence: { name: 'Ann' } });
  c.connect();
  await room.whenSynced();
  assert.equal(text(room), 'from server');
  assert.deepEqual(statuses, ['connecting', 'online']);
  assert.ok(c.session.startsWith('mock-'));
  const hello = server.received[0];
  assert.equal(hello.t, 'hello');
  assert.equal(hello.v, 1);
  const join = server.received.find((m) => m.t === 'join');
  assert.deepEqual(join.presence, { name: 'Ann' });
  assert.ok(join.sv instanceof Uint8Array);
  c.close();
});

test('the token is sent in hello', async () => {
  const server = new MockServer();
  const c = client(server, { token: 'tok-1' });
  await until(() => c.status === 'online', 'online');
  assert.equal(server.received[0].token, 'tok-1');
  c.close();
});

test('edits made before the join completes are sent after synced; acks mark saved', async () => {
  const server = new MockServer();
  const c = client(server);
  const doc = new Y.Doc();
  doc.getText('t').insert(0, 'early');
  const room = c.join('r', { doc });
  const saved = [];
  room.on('saved', (s) => saved.push(s));
  await room.whenSynced();
  await until(() => server.room('r').doc.getText('t').toString() === 'early', 'server has the early edit');
  doc.getText('t').insert(5, ' bird');
  await until(() => server.room('r').doc.getText('t').toString() === 'early bird', 'server has the later edit');
  await until(() => saved.at(-1) === true && room.unacked.size === 0, 'all acked');
  assert.ok(saved.includes(false));
  c.close();
});

test('two clients converge through the server', async () => {
  const server = new MockServer();
  const a = client(server);
  const b = client(server);
  const ra = a.join('r');
  const rb = b.join('r');
  await Promise.all([ra.whenSynced(), rb.whenSynced()]);
  ra.doc.getText('t').insert(0, 'AAA');
  rb.doc.getText('t').insert(0, 'BBB');
  await until(() => text(ra).length === 6 && text(ra) === text(rb), 'convergence');
  a.close();
  b.close();
});

test('one socket carries several rooms', async () => {
  const server = new MockServer();
  const c = client(server);
  const r1 = c.join('one');
  const r2 = c.join('two');
  await Promise.all([r1.whenSynced(), r2.whenSynced()]);
  r1.doc.getText('t').insert(0, '1');
  r2.doc.getText('t').insert(0, '2');
  await until(() => server.room('one').doc.getText('t').toString() === '1' && server.room('two').doc.getText('t').toString() === '2', 'both rooms');
  assert.equal(server.received.filter((m) => m.t === 'hello').length, 1);
  assert.throws(() => c.join('one'), /already joined/);
  c.close();
});

test('reconnect: backoff, then resync from the state vector; offline edits survive both ways', async () => {
  const server = new MockServer();
  const a = client(server, { random: () => 0.5 });
  const b = client(server);
  const ra = a.join('r');
  const rb = b.join('r');
  await Promise.all([ra.whenSynced(), rb.whenSynced()]);
  ra.doc.getText('t').insert(0, 'base ');
  await until(() => text(rb) === 'base ', 'b has base');

  const statuses = [];
  a.on('status', (s) => statuses.push(s));
  server.down = true;
  for (const s of [...server.sockets]) if (s.id === a.session) s._serverClose(1006, '');
  await until(() => statuses.filter((s) => s.status === 'reconnecting' && s.delayMs != null).length >= 2, 'two failed attempts');
  // Offline edits on both sides.
  ra.doc.getText('t').insert(5, 'offline-a ');
  rb.doc.getText('t').insert(0, 'online-b ');
  assert.equal(ra.state, 'disconnected');
  assert.equal(ra.unsaved, true, 'offline edits are not saved yet');
  server.down = false;
  await until(() => a.status === 'online' && ra.state === 'synced', 'a back online');
  await until(() => ra.unsaved === false, 'offline edits acknowledged after the resync');
  await until(() => text(ra) === text(rb) && text(ra).includes('offline-a') && text(ra).includes('online-b'), 'convergence after reconnect');
  const delays = statuses.filter((s) => s.status === 'reconnecting' && s.delayMs != null).map((s) => s.delayMs);
  // random 0.5 → 3/4 of the exponential base 5, 10, …
  assert.deepEqual(delays.slice(0, 2), [4, 8]);
  a.close();
  b.close();
});

test('backoff delays: exponential, capped, jitter between half and all of the base', () => {
  const cfg = { initialMs: 100, maxMs: 1000, factor: 2 };
  assert.equal(backoffDelay(0, cfg, () => 0), 50);
  assert.equal(backoffDelay(0, cfg, () => 1), 100);
  assert.equal(backoffDelay(3, cfg, () => 1), 800);
  assert.equal(backoffDelay(10, cfg, () => 1), 1000);
  for (let i = 0; i < 100; i++) {
    const d = backoffDelay(5, cfg);
    assert.ok(d >= 500 && d <= 1000, `delay ${d}`);
  }
});

test('presence, cursors, typing and events', async () => {
  const server = new MockServer();
  const a = client(server);
  const b = client(server);
  const ra = a.join('r', { presence: { name: 'Ann', color: '#f00' } });
  await ra.whenSynced();
  const rb = b.join('r', { presence: { name: 'Ben' } });
  await rb.whenSynced();
  await until(() => ra.members.size === 2 && rb.members.size === 2, 'both see both');
  assert.equal(rb.members.get(a.session).state.name, 'Ann');

  rb.setPresence({ name: 'Benjamin' });
  await until(() => ra.members.get(b.session)?.state.name === 'Benjamin', 'presence update');

  const ytext = rb.doc.getText('t');
  ytext.insert(0, 'hello world');
  const cur = relativeCursor(ytext, 6, 11);
  rb.setCursor(cur.anchor, cur.head);
  await until(() => ra.cursors.has(b.session), 'cursor arrives');
  await until(() => text(ra) === 'hello world', 'text arrives');
  assert.deepEqual(absoluteCursor(ra.doc, ra.cursors.get(b.session)), { anchor: 6, head: 11 });
  // Relative positions follow concurrent edits.
  ra.doc.getText('t').insert(0, '>> ');
  assert.deepEqual(absoluteCursor(ra.doc, ra.cursors.get(b.session)), { anchor: 9, head: 14 });

  rb.setTyping(true);
  await until(() => ra.typing.has(b.session), 'typing on');
  rb.setTyping(false);
  await until(() => !ra.typing.has(b.session), 'typing off');

  const events = [];
  ra.on('event', (e) => events.push(e));
  assert.equal(rb.sendEvent('seen', { id: 'm-1' }), true);
  await until(() => events.length === 1, 'event');
  assert.deepEqual(events[0], { from: b.session, name: 'seen', data: { id: 'm-1' } });

  // Leaving clears the member, its cursor and typing.
  rb.setTyping(true);
  await until(() => ra.typing.has(b.session), 'typing on again');
  const bId = b.session;
  b.close();
  await until(() => !ra.members.has(bId), 'member left');
  assert.equal(ra.cursors.has(bId), false);
  assert.equal(ra.typing.has(bId), false);
  a.close();
});

test('an unsupported-version close is final: no reconnect', async () => {
  const server = new MockServer();
  const orig = server.receive.bind(server);
  server.receive = (sock, bytes) => sock._serverClose(4002, 'unsupported protocol version');
  const c = client(server);
  await until(() => c.status === 'closed', 'closed');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(c.status, 'closed');
  server.receive = orig;
});

test('a silent connection is dropped by the ping timeout and reconnected', async () => {
  const server = new MockServer();
  server.answerPings = false;
  const c = client(server, { pingIntervalMs: 20, pongTimeoutMs: 20 });
  const seen = [];
  c.on('status', (s) => seen.push(s.status));
  const room = c.join('r');
  await room.whenSynced();
  await until(() => seen.includes('reconnecting'), 'ping timeout', 2000);
  server.answerPings = true;
  await until(() => c.status === 'online' && room.state === 'synced', 'back');
  c.close();
});

test('browser offline/online events: offline status, then immediate resync', async () => {
  const server = new MockServer();
  const net = new EventTarget();
  net.onLine = true;
  const c = client(server, { network: net, backoff: { initialMs: 60_000, maxMs: 60_000, factor: 2 } });
  const room = c.join('r');
  await room.whenSynced();
  net.onLine = false;
  net.dispatchEvent(new Event('offline'));
  assert.equal(c.status, 'offline');
  room.doc.getText('t').insert(0, 'written offline');
  net.onLine = true;
  net.dispatchEvent(new Event('online'));
  // No 60 s backoff: the online event reconnects at once.
  await until(() => server.room('r').doc.getText('t').toString() === 'written offline', 'offline edit delivered', 1000);
  c.close();
});
