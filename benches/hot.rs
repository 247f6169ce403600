//! Criterion micro-benchmarks of the hot paths, in-process and without
//! sockets: the native and y-protocols codecs, a room's apply + encode-once
//! fan-out (the work the room actor does per update, minus the actor
//! mailboxes), presence coalescing, and store appends (memory and redb).
//!
//! `cargo bench --bench hot` (add `-- codec` to run one group).
//! Speed is measured here, never asserted.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Text, Transact, Update};

use chorus::ids::MemberId;
use chorus::presence::Presence;
use chorus::protocol::native::{
    decode_client, decode_server, encode_client, encode_server, Bin, ClientMessage, ServerMessage,
};
use chorus::protocol::yjs;
use chorus::store::memory::MemoryStore;
use chorus::store::redb::{RedbStore, WriterOptions};
use chorus::store::DocStore;

/// A document of `chars` characters and the update appending one more.
fn doc_and_update(chars: usize) -> (Doc, Vec<u8>) {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &"x".repeat(chars));
    }
    let writer = Doc::new();
    let wtext = writer.get_or_insert_text("t");
    writer
        .transact_mut()
        .apply_update(
            Update::decode_v1(
                &doc.transact()
                    .encode_state_as_update_v1(&Default::default()),
            )
            .expect("own update"),
        )
        .expect("apply");
    let before = writer.transact().state_vector();
    {
        let mut txn = writer.transact_mut();
        let len = wtext.len(&txn);
        wtext.insert(&mut txn, len, "y");
    }
    let update = writer.transact().encode_diff_v1(&before);
    (doc, update)
}

fn codec(c: &mut Criterion) {
    let (_, update) = doc_and_update(16);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    let server_update = ServerMessage::Update {
        room: "bench-room".into(),
        data: Bin(update.clone()),
        origin: Some("m-0123456789".into()),
    };
    let client_update = ClientMessage::Update {
        room: "bench-room".into(),
        data: Bin(update.clone()),
        rid: Some(42),
    };
    let client_bytes = encode_client(&client_update);
    let server_bytes = encode_server(&server_update);
    let yjs_frame = yjs::sync_update(update.clone());
    g.bench_function("native_encode_server_update", |b| {
        b.iter(|| encode_server(black_box(&server_update)))
    });
    g.bench_function("native_decode_client_update", |b| {
        b.iter(|| decode_client(black_box(&client_bytes)).expect("valid"))
    });
    g.bench_function("native_decode_server_update", |b| {
        b.iter(|| decode_server(black_box(&server_bytes)).expect("valid"))
    });
    g.bench_function("yjs_encode_update", |b| {
        b.iter(|| yjs::sync_update(black_box(update.clone())))
    });
    g.bench_function("yjs_decode_frame", |b| {
        b.iter(|| yjs::decode_frame(black_box(&yjs_frame)).expect("valid"))
    });
    g.finish();
}

fn room(c: &mut Criterion) {
    let mut g = c.benchmark_group("room");
    for members in [10usize, 1000] {
        g.throughput(Throughput::Elements(members as u64));
        // What the room does per update: apply in one transaction, encode
        // the outgoing frame once, hand every member a reference to it.
        g.bench_function(format!("apply_encode_fanout_{members}"), |b| {
            b.iter_batched(
                || doc_and_update(10_000),
                |(doc, update)| {
                    let u = Update::decode_v1(&update).expect("valid");
                    doc.transact_mut().apply_update(u).expect("apply");
                    let frame = Bytes::from(encode_server(&ServerMessage::Update {
                        room: "bench-room".into(),
                        data: Bin(update),
                        origin: None,
                    }));
                    let outboxes: Vec<Bytes> = (0..members).map(|_| frame.clone()).collect();
                    black_box(outboxes)
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

fn presence(c: &mut Criterion) {
    let mut g = c.benchmark_group("presence");
    let n = 500;
    let ids: Vec<MemberId> = (0..n).map(|i| Arc::from(format!("m-{i}"))).collect();
    let pos = yrs::StickyIndex::new(
        yrs::IndexScope::Relative(yrs::ID::new(yrs::block::ClientID::new(1), 0)),
        yrs::Assoc::After,
    )
    .encode_v1();
    let mut p = Presence::default();
    for id in &ids {
        p.join(id.clone(), None, json!({"name": id.to_string()}));
    }
    let _ = p.take_diff();
    g.throughput(Throughput::Elements(n as u64));
    // One tick of a 500-member room where everyone moved: 500 moves
    // coalesced into one cursor message, encoded once.
    g.bench_function("coalesce_500_cursor_moves", |b| {
        b.iter(|| {
            for id in &ids {
                p.set_cursor(id, Some(pos.clone()), Some(pos.clone()));
            }
            let cursors = p.take_cursors();
            encode_server(&ServerMessage::Cursor {
                room: "bench-room".into(),
                cursors,
            })
        })
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_, update) = doc_and_update(16);
    let update = Bytes::from(update);
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let memory = MemoryStore::new();
    g.bench_function("append_memory", |b| {
        b.iter(|| {
            rt.block_on(memory.append("bench-room", update.clone(), None))
                .expect("append")
        })
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let redb = RedbStore::open_at(dir.path(), WriterOptions::batch(1024)).expect("open redb");
    // One append at a time: each waits for its own commit and fsync.
    g.sample_size(20);
    g.bench_function("append_redb_one_at_a_time", |b| {
        b.iter(|| {
            rt.block_on(redb.append("bench-room", update.clone(), None))
                .expect("append")
        })
    });
    // 256 appends in flight: group commit shares fsyncs.
    g.throughput(Throughput::Elements(256));
    g.bench_function("append_redb_256_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let futs: Vec<_> = (0..256)
                    .map(|i| redb.append(if i % 2 == 0 { "a" } else { "b" }, update.clone(), None))
                    .collect();
                for f in futs {
                    f.await.expect("append");
                }
            })
        })
    });
    g.finish();
    rt.block_on(redb.close()).expect("close");
}

criterion_group!(benches, codec, room, presence, store);
criterion_main!(benches);
