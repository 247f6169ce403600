// chorus-client's version history methods against the in-memory server:
// list (paged), name, view, restore, delete, the `versions` event, errors
// (forbidden for read-only tokens, not_found, not_joined, disconnected).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as Y from 'yjs';
import { ChorusClient, ChorusRequestError, encodeClient, decodeClient, encodeServer, decodeServer } from '../../src/client/index.js';
import { MockServer, until } from '../mock-server.js';

const fast = { backoff: { initialMs: 5, maxMs: 40, factor: 2 }, pingIntervalMs: 0 };
const client = (server, opts = {}) => new ChorusClient('ws://mock/ws', { WebSocket: server.WebSocket, ...fast, ...opts });
const text = (room) => room.doc.getText('t').toString();

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (e) => {
    assert.ok(e instanceof ChorusRequestError, `a ChorusRequestError, got ${e}`);
    assert.equal(e.code, code);
    return true;
  });
}

test('name a version, edit, view it, restore it: everyone shows the old content and the list shows the restore', async () => {
  const server = new MockServer();
  const a = client(server);
  const b = client(server);
  const ra = a.join('doc', { presence: { name: 'Ann' } });
  const rb = b.join('doc');
  await Promise.all([ra.whenSynced(), rb.whenSynced()]);
  let changes = 0;
  rb.on('versions', (room) => {
    assert.equal(room, rb);
    changes++;
  });

  ra.doc.getText('t').insert(0, 'A');
  await until(() => text(rb) === 'A', 'B has A');
  const named = await ra.createVersion('first draft');
  assert.equal(named.kind, 'named');
  assert.equal(named.name, 'first draft');
  assert.deepEqual(named.authors, [{ user: a.session, name: 'Ann' }]);
  assert.equal(typeof named.id, 'string');
  assert.equal(typeof named.time, 'number');
  await until(() => changes === 1, 'B told of the new version');

  ra.doc.getText('t').delete(0, 1);
  ra.doc.getText('t').insert(0, 'B');
  await until(() => text(rb) === 'B', 'B has B');

  // View: an update that rebuilds the version's document.
  const update = await rb.viewVersion(named.id);
  assert.ok(update instanceof Uint8Array);
  const preview = new Y.Doc();
  Y.applyUpdate(preview, update);
  assert.equal(preview.getText('t').toString(), 'A');
  assert.equal(text(rb), 'B', 'viewing changes nothing');

  const restored = await rb.restoreVersion(named.id);
  assert.equal(restored.kind, 'restore');
  assert.equal(restored.restored_from, named.id);
  await until(() => text(ra) === 'A' && text(rb) === 'A', 'both show A again');
  await until(() => changes === 2, 'B told of the restore');

  const { versions, next } = await ra.versions();
  assert.deepEqual(versions.map((v) => v.kind), ['restore', 'named']);
  assert.ok(Number(versions[0].id) > Number(versions[1].id), 'newest first');
  assert.equal(next, null);
  // The wire: the request carried room, id and a rid.
  const sent = server.received.find((m) => m.t === 'version_restore');
  assert.deepEqual(Object.keys(sent), ['t', 'room', 'id', 'rid']);
  a.close();
  b.close();
});

test('paging: limit and before walk the list, next is null at the end', async () => {
  const server = new MockServer();
  const c = client(server);
  const room = c.join('paged');
  await room.whenSynced();
  for (let i = 1; i <= 5; i++) {
    room.doc.getText('t').insert(0, String(i));
    await room.createVersion(`v${i}`);
  }
  const seen = [];
  let before;
  for (let pages = 0; pages < 10; pages++) {
    const page = await room.versions({ limit: 2, before });
    seen.push(...page.versions.map((v) => v.name));
    assert.ok(page.versions.length <= 2);
    if (page.next == null) break;
    before = page.next;
  }
  assert.deepEqual(seen, ['v5', 'v4', 'v3', 'v2', 'v1']);
  const req = server.received.filter((m) => m.t === 'versions');
  assert.equal(req[0].limit, 2);
  assert.equal(req[0].before, undefined, 'no before on the first page');
  assert.equal(req[1].before, '4');
  c.close();
});

test('delete removes a version and tells the room; unknown ids are not_found', async () => {
  const server = new MockServer();
  const c = client(server);
  const room = c.join('del');
  await room.whenSynced();
  const v = await room.createVersion('x');
  let events = 0;
  room.on('versions', () => events++);
  assert.equal(await room.deleteVersion(v.id), undefined);
  assert.deepEqual((await room.versions()).versions, []);
  await until(() => events === 1, 'versions event after delete');
  await rejectsWith(room.viewVersion(v.id), 'not_found');
  await rejectsWith(room.restoreVersion('999'), 'not_found');
  await rejectsWith(room.deleteVersion('999'), 'not_found');
  c.close();
});

test('a read-only token lists and views but cannot name, restore or delete (forbidden); the room keeps working', async () => {
  const server = new MockServer();
  const w = client(server);
  const rw = w.join('ro');
  await rw.whenSynced();
  rw.doc.getText('t').insert(0, 'A');
  const v = await rw.createVersion('kept');
  const r = client(server, { token: 'read-only' });
  const room = r.join('ro');
  await room.whenSynced();
  const errors = [];
  room.on('error', (e) => errors.push(e));
  assert.equal((await room.versions()).versions.length, 1);
  assert.ok((await room.viewVersion(v.id)).length > 0);
  await rejectsWith(room.createVersion('nope'), 'forbidden');
  await rejectsWith(room.restoreVersion(v.id), 'forbidden');
  await rejectsWith(room.deleteVersion(v.id), 'forbidden');
  assert.deepEqual(errors, [], 'request errors reject their promise, not the room\'s error event');
  assert.equal(room.state, 'synced');
  assert.equal((await rw.versions()).versions.length, 1);
  w.close();
  r.close();
});

test('requests before the join, after a drop, after leave, and without an answer reject with a code', async () => {
  const server = new MockServer();
  const c = client(server, { autoConnect: false, requestTimeoutMs: 50 });
  const room = c.join('x');
  await rejectsWith(room.versions(), 'not_joined');
  c.connect();
  await room.whenSynced();
  // In flight when the connection drops.
  const inFlight = room.versions();
  server.dropAll();
  await rejectsWith(inFlight, 'disconnected');
  await until(() => room.state === 'synced', 'rejoined');
  assert.equal((await room.versions()).versions.length, 0);
  // The server never answers: timeout, and a late answer is ignored.
  const real = server.history.bind(server);
  server.history = () => {};
  await rejectsWith(room.versions(), 'timeout');
  server.history = real;
  const pending = room.versions();
  room.leave();
  await rejectsWith(pending, 'left');
  c.close();
});

test('an answer of the wrong type or an unknown rid does not settle a request', async () => {
  const server = new MockServer();
  const c = client(server);
  const room = c.join('odd');
  await room.whenSynced();
  const real = server.history.bind(server);
  let held;
  server.history = (sock, r, msg) => {
    held = { sock, r, msg };
    // A `version_doc` answer to a `versions` request, and a stray rid.
    sock._deliver({ t: 'version_doc', room: msg.room, id: '1', update: new Uint8Array([0, 0]), rid: msg.rid });
    sock._deliver({ t: 'versions', room: msg.room, versions: [], next: null, rid: 987654 });
  };
  let settled = false;
  const p = room.versions().then((v) => {
    settled = true;
    return v;
  });
  await until(() => held, 'request seen');
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(settled, false);
  real(held.sock, held.r, held.msg);
  assert.deepEqual(await p, { versions: [], next: null });
  c.close();
});

test('the codec writes the history messages in the contract\'s field order', () => {
  const cases = [
    [{ t: 'versions', room: 'r', limit: 10, before: '7', rid: 1 }, ['t', 'room', 'limit', 'before', 'rid']],
    [{ rid: 2, t: 'versions', room: 'r' }, ['t', 'room', 'rid']],
    [{ t: 'version_create', name: 'n', room: 'r', rid: 3 }, ['t', 'room', 'name', 'rid']],
    [{ t: 'version_view', id: '1', room: 'r' }, ['t', 'room', 'id']],
    [{ t: 'version_restore', id: '1', room: 'r', rid: 4 }, ['t', 'room', 'id', 'rid']],
    [{ t: 'version_delete', id: '1', room: 'r', rid: 5 }, ['t', 'room', 'id', 'rid']],
  ];
  for (const [msg, keys] of cases) assert.deepEqual(Object.keys(decodeClient(encodeClient(msg))), keys, msg.t);
  const version = { bytes: 5, authors: [{ name: null, user: 'u' }], restored_from: null, kind: 'auto', name: null, time: 1, id: '3' };
  const back = decodeServer(encodeServer({ t: 'versions', room: 'r', versions: [version], next: null, rid: 1 }));
  assert.deepEqual(Object.keys(back), ['t', 'room', 'versions', 'next', 'rid']);
  assert.deepEqual(Object.keys(back.versions[0]), ['id', 'time', 'name', 'kind', 'restored_from', 'authors', 'bytes']);
  assert.deepEqual(Object.keys(back.versions[0].authors[0]), ['user', 'name']);
  const one = decodeServer(encodeServer({ t: 'version', room: 'r', version, rid: 2 }));
  assert.deepEqual(Object.keys(one.version), ['id', 'time', 'name', 'kind', 'restored_from', 'authors', 'bytes']);
  assert.throws(() => decodeServer(encodeServer({ t: 'version_doc', room: 'r', id: '1', update: 'not bytes' })), /Uint8Array|bin/);
});

test('tokenRights reads the widest matching grant from a JWT payload, null for anything else', async () => {
  const { tokenRights } = await import('../../src/client/index.js');
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const jwt = (claims) => `${b64({ alg: 'HS256' })}.${b64(claims)}.sig`;
  const t = jwt({ sub: 'u', grants: [{ room: 'doc:*', rights: 'r' }, { room: 'doc:a', rights: 'rw' }, { room: 'lobby', rights: 'rp' }] });
  assert.equal(tokenRights(t, 'doc:a'), 'rw');
  assert.equal(tokenRights(t, 'doc:b'), 'r');
  assert.equal(tokenRights(t, 'lobby'), 'rp');
  assert.equal(tokenRights(t, 'lobby2'), null);
  assert.equal(tokenRights(jwt({ grants: [{ room: '*', rights: 'rw' }] }), 'anything'), 'rw');
  for (const bad of [undefined, '', 'secret', 'a.b.c', `${b64({})}.${b64([1])}.x`, `x.${b64({ grants: 'all' })}.y`, 'a.%%%.b']) assert.equal(tokenRights(bad, 'doc:a'), null, String(bad));
});
