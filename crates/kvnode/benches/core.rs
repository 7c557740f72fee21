//! Hot paths of the causal core: clock comparison and merge, a local write,
//! and delivering a batch that first lands in the buffer.
//!
//! `cargo bench -p kvnode --bench core`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kvnode::core::{Core, Limits};
use kvnode::storage::MemStore;
use vclock_proto::{Event, Op, VClock, Value};

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

criterion_group!(benches, clocks, local_write, buffered_batch);
criterion_main!(benches);
