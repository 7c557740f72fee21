//! Hot paths of the causal core: clock comparison and merge, a local write,
//! delivering a batch that first lands in the buffer, and a peer batch's
//! JSON encoding and decoding, and a received batch applied and committed to
//! the durable store (without the fsync, which is the disk's cost).
//!
//! `cargo bench -p kvnode --bench core`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kvnode::core::{Core, Limits};
use kvnode::storage::durable::{Durability, DurableStore};
use kvnode::storage::MemStore;
use vclock_proto::{Event, EventBatch, Op, VClock, Value};

fn nodes() -> Vec<String> {
    ["node1", "node2", "node3"].map(String::from).to_vec()
}

fn core(id: &str) -> Core<MemStore> {
    Core::new(id.into(), nodes(), MemStore::new(), Limits::default()).expect("a core")
}

fn clocks(c: &mut Criterion) {
    let a: VClock = [("node1", 1000), ("node2", 2000), ("node3", 3000)]
        .into_iter()
        .collect();
    let b: VClock = [("node1", 1001), ("node2", 1999), ("node3", 3000)]
        .into_iter()
        .collect();
    c.bench_function("clock compare (3 nodes)", |bench| {
        bench.iter(|| black_box(&a).compare(black_box(&b)))
    });
    c.bench_function("clock merge (3 nodes)", |bench| {
        bench.iter_batched(
            || a.clone(),
            |mut m| {
                m.merge(black_box(&b));
                m
            },
            BatchSize::SmallInput,
        )
    });
}

fn local_write(c: &mut Criterion) {
    let value = Value::from_json("{\"field\":\"a value of a few dozen bytes\"}").expect("JSON");
    let mut node = core("node1");
    let mut i = 0u64;
    c.bench_function("local write + commit (1000 keys)", |bench| {
        bench.iter(|| {
            i += 1;
            node.local_write(format!("key-{}", i % 1000), Op::Put(value.clone()))
                .expect("write");
            node.commit().expect("commit")
        })
    });
}

/// 256 events of node2 that depend on node1's first write, delivered before it:
/// all are buffered, then released in one drain.
fn buffered_batch(c: &mut Criterion) {
    let value = Value::from_json("1").expect("JSON");
    let mut origin1 = core("node1");
    let first = (*origin1
        .local_write("x".into(), Op::Put(value.clone()))
        .expect("write"))
    .clone();
    let mut origin2 = core("node2");
    origin2.receive(vec![first.clone()]).expect("receive");
    let batch: Vec<Event> = (0..256)
        .map(|i| {
            (*origin2
                .local_write(format!("k{i}"), Op::Put(value.clone()))
                .expect("write"))
            .clone()
        })
        .collect();
    c.bench_function("deliver 256 buffered events", |bench| {
        bench.iter_batched(
            || (core("node3"), batch.clone(), first.clone()),
            |(mut node, batch, first)| {
                node.receive(batch).expect("buffered");
                node.receive(vec![first]).expect("delivered")
            },
            BatchSize::LargeInput,
        )
    });
}

/// A batch as peers send them under a write load: 24 single writes of
/// 100-character values, each depending on all three nodes.
fn peer_batch(c: &mut Criterion) {
    let value = Value::from_serialize(&"v".repeat(100)).expect("JSON");
    let events = (1..=24)
        .map(|seq| {
            let deps: VClock = [("node1", seq - 1), ("node2", 5000 + seq), ("node3", 7000)]
                .into_iter()
                .collect();
            Event::single(
                "node1",
                seq,
                format!("bench-{}", seq * 37),
                Op::Put(value.clone()),
                deps,
            )
        })
        .collect();
    let batch = EventBatch {
        from: "node1".into(),
        events,
    };
    let json = serde_json::to_vec(&batch).expect("JSON");
    c.bench_function("peer batch of 24: encode JSON", |bench| {
        bench.iter(|| serde_json::to_vec(black_box(&batch)).expect("JSON"))
    });
    c.bench_function("peer batch of 24: decode JSON", |bench| {
        bench.iter(|| serde_json::from_slice::<EventBatch>(black_box(&json)).expect("JSON"))
    });
    println!("peer batch of 24: {} bytes of JSON", json.len());
}

/// A peer's batches of 24 events, each applied and committed as the writer
/// does, to a durable store on disk (`durability = "none"`: the fsync is the
/// disk's cost, not the node's), over 10,000 keys as `cargo xtask bench`;
/// the peers acknowledge each batch, so the log is collected as it is then.
fn durable_receive(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = DurableStore::open(dir.path(), Durability::None).expect("a store");
    let mut node = Core::new("node1".into(), nodes(), store, Limits::default()).expect("a core");
    let value = Value::from_serialize(&"v".repeat(100)).expect("JSON");
    let mut seq = 0u64;
    c.bench_function(
        "receive 24 events + commit (durable store, no fsync)",
        |bench| {
            bench.iter_batched(
                || {
                    (0..24)
                        .map(|_| {
                            seq += 1;
                            let deps: VClock = [("node2", seq - 1)].into_iter().collect();
                            let key = format!("bench-{}", seq.wrapping_mul(7919) % 10_000);
                            Event::single("node2", seq, key, Op::Put(value.clone()), deps)
                        })
                        .collect::<Vec<_>>()
                },
                |events| {
                    node.receive(events).expect("receive");
                    node.commit().expect("commit");
                    // Both peers acknowledge, as they do under load, so that the
                    // log is collected at the next commit.
                    let applied = node.applied().clone();
                    node.record_ack("node2", &applied).expect("ack");
                    node.record_ack("node3", &applied).expect("ack")
                },
                BatchSize::SmallInput,
            )
        },
    );
}

criterion_group!(
    benches,
    clocks,
    local_write,
    buffered_batch,
    peer_batch,
    durable_receive
);
criterion_main!(benches);
