//! Durable writes per second of `DurableStore`, by group size and durability.
//!
//! One logical write is what the core does to apply a local write: read the
//! key's siblings, replace them, append the event to the log. A group of writes
//! is one commit. Each run starts from an empty directory.
//!
//! ```text
//! cargo run --release -p kvnode --example store_bench -- \
//!     [--secs 3] [--dir DIR] [--groups 1,8,64,256] [--durability fsync,none] [--collected-only]
//! ```
//!
//! `--secs` is the length of each run; `--dir` (default: a temporary directory)
//! chooses the file system measured. The last rows, for the largest group, keep
//! the log collected (truncated to its last 10,000 events after each commit), as
//! a node does once writes are stable; `--collected-only` runs only those.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvnode::storage::durable::{Durability, DurableStore};
use kvnode::storage::Store;
use vclock_proto::{Event, Op, VClock, Value};

const KEYS: u64 = 100_000;

struct Run {
    writes: u64,
    elapsed: Duration,
    commits: Vec<Duration>,
    fsyncs: u64,
    /// Writes done in each 10-second window.
    windows: Vec<u64>,
}

fn run(dir: &Path, durability: Durability, group: u64, secs: f64, keep_log: Option<u64>) -> Run {
    let mut store = DurableStore::open(dir, durability).expect("open");
    let value = Value::from_json(&format!(
        r#"{{"user":"someone","n":1,"pad":"{}"}}"#,
        "x".repeat(68)
    ))
    .expect("json");
    let mut deps: VClock = [("node1", 0), ("node2", 0), ("node3", 0)]
        .into_iter()
        .collect();
    let mut seq: u64 = 0;
    let mut commits = Vec::new();
    let mut windows = vec![0];
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    while start.elapsed() < limit {
        for _ in 0..group {
            seq += 1;
            // Spread the writes over the key space.
            let key = format!("key-{:011}", seq.wrapping_mul(2_654_435_761) % KEYS);
            let event = Arc::new(Event {
                origin: "node1".into(),
                seq,
                key: key.clone(),
                op: Op::Put(value.clone()),
                also: Vec::new(),
                deps: deps.clone(),
            });
            let mut siblings = store.siblings(&key).expect("siblings");
            siblings.retain(|s| !event.saw(&s.origin, s.seq));
            siblings.push(event.clone());
            store.set_siblings(&key, siblings).expect("set_siblings");
            store.append(event).expect("append");
            deps.set("node1", seq);
        }
        if let Some(keep) = keep_log {
            store
                .truncate("node1", seq.saturating_sub(keep))
                .expect("truncate");
        }
        let t = Instant::now();
        store.commit(&deps).expect("commit");
        commits.push(t.elapsed());
        let window = (start.elapsed().as_secs() / 10) as usize;
        windows.resize(windows.len().max(window + 1), 0);
        windows[window] += group;
    }
    let elapsed = start.elapsed();
    let fsyncs = store.fsyncs();
    Run {
        writes: seq,
        elapsed,
        commits,
        fsyncs,
        windows,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut secs = 3.0;
    let mut base = None;
    let mut groups = vec![1, 8, 64, 256];
    let mut durabilities = vec![Durability::Fsync, Durability::None];
    let mut grows = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match arg.as_str() {
            "--secs" => secs = value().parse().expect("--secs takes a number"),
            "--dir" => base = Some(value()),
            "--groups" => {
                groups = value()
                    .split(',')
                    .map(|g| g.parse().expect("--groups takes numbers"))
                    .collect()
            }
            "--durability" => {
                durabilities = value()
                    .split(',')
                    .map(|d| match d {
                        "fsync" => Durability::Fsync,
                        "none" => Durability::None,
                        _ => panic!("--durability takes fsync and/or none"),
                    })
                    .collect()
            }
            "--collected-only" => grows = false,
            _ => panic!(
                "usage: store_bench [--secs S] [--dir DIR] [--groups 1,8,64,256] \
                 [--durability fsync,none] [--collected-only]"
            ),
        }
    }
    let tmp = match &base {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");

    println!(
        "| durability | group | log | writes/s | commits/s | fsyncs | commit p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut cases = Vec::new();
    if grows {
        for &g in &groups {
            for &d in &durabilities {
                cases.push((d, g, None));
            }
        }
    }
    let biggest = groups.iter().copied().max().unwrap_or(256);
    for &d in &durabilities {
        cases.push((d, biggest, Some(10_000)));
    }
    for (n, (durability, group, keep_log)) in cases.into_iter().enumerate() {
        let dir = tmp.path().join(format!("run{n}"));
        let mut r = run(&dir, durability, group, secs, keep_log);
        r.commits.sort();
        let pct = |p: f64| r.commits[((r.commits.len() - 1) as f64 * p) as usize];
        println!(
            "| {durability:?} | {group} | {} | {:.0} | {:.0} | {} | {:.2} | {:.2} | {:.2} |",
            if keep_log.is_some() {
                "collected"
            } else {
                "grows"
            },
            r.writes as f64 / r.elapsed.as_secs_f64(),
            r.commits.len() as f64 / r.elapsed.as_secs_f64(),
            r.fsyncs,
            ms(pct(0.5)),
            ms(pct(0.99)),
            ms(*r.commits.last().expect("a commit")),
        );
        if r.windows.len() > 2 {
            let rates: Vec<String> = r
                .windows
                .iter()
                .map(|w| format!("{}k", w / 10_000))
                .collect();
            eprintln!("writes/s per 10 s: {}", rates.join(" "));
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
