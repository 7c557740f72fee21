//! Durability and repair, with real processes (issue 3, item 8): nodes killed
//! with SIGKILL during concurrent writes and started again on the same data
//! directory, repair through another replica, log collection, the bounded
//! buffer, and a graceful restart.
//!
//! - [`kill_9_loses_no_acknowledged_write`]: writers hammer a 3-node cluster
//!   while each node in turn is killed with `kill -9` and restarted; every
//!   acknowledged write is on every node afterwards and all nodes agree. Also
//!   checks that group commit shares fsyncs among writes.
//! - [`whole_cluster_crash_loses_no_acknowledged_write`]: the same with all
//!   three nodes killed at once.
//! - [`origin_killed_after_one_peer_has_the_write`]: the third node gets the
//!   write through the surviving peer; the origin, restarted, still has it.
//! - [`cut_link_is_repaired_while_both_nodes_stay_up`]: repair around a cut link.
//! - [`log_is_collected_once_every_node_has_applied`]: the log empties when all
//!   nodes have applied it, and keeps what a dead node lacks, mostly on disk
//!   (`log_memory_events`), from where the node gets it when it returns.
//! - [`restart_keeps_data`]: SIGTERM, start again, same values and clocks.
//! - [`full_buffer_answers_503_and_loses_nothing`]: `max_buffered` is a bound.
//!
//! The crash tests can fail, tried against deliberately broken builds: one
//! whose writer answers a client write just before committing its group fails
//! them on reused dots (acknowledged writes lost, their seqs given to later
//! writes; the window is short, so it takes many kills: in 10 runs of both
//! tests, every run had a failure, the first test alone failed in 9); one that
//! commits at most every 200 ms fails both with thousands of lost writes; with
//! in-memory storage every test that restarts a node fails. A SIGKILL cannot tell a node that syncs from one that
//! only hands its writes to the OS (`durability = "none"` passes), so the first
//! test also checks that fsyncs happen.
//!
//! Every "eventually" is a poll with a deadline; the load is random (seed
//! printed, `KVNODE_TEST_SEED` repeats it) but what is asserted does not
//! depend on it.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use vclock_proto::{Causality, VClock};

use common::{clock, encode, try_request, wait_for, wait_until, TestCluster, EVENTUALLY};

/// Writer threads of the crash tests: enough for several writes to be in
/// flight at each node when it is killed, and for group commit to share fsyncs.
const WRITERS: usize = 16;
/// Crash rounds of each crash test. Many short rounds: each kill is a chance to
/// hit a write between its answer and its commit, were there such a window.
const ROUNDS: usize = 16;
/// Keys the crash tests write to: few, so that writes overwrite each other and
/// concurrent ones become siblings.
const KEYS: usize = 12;
/// Acknowledged writes between two steps of a crash schedule.
const PHASE: usize = 50;
/// Writes a restarted node must acknowledge itself before the load stops, so
/// that it goes on numbering its writes after the crash (a node that lost an
/// acknowledged write would then give its dot to another write).
const AFTER_RESTART: usize = 20;
/// Writes made before the fsync counters are read (test 1, no crash yet).
const FSYNC_SAMPLE: usize = 300;
/// How long log collection may take once writes stop (issue 3: "returns to near
/// zero"); sync_interval is 200 ms in that test.
const LOG_DEADLINE: Duration = Duration::from_secs(10);

// ---- helpers ---------------------------------------------------------------------

fn seed() -> u64 {
    let seed = std::env::var("KVNODE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    println!("seed {seed} (set KVNODE_TEST_SEED={seed} to repeat the same load)");
    seed
}

/// `GET /v1/kv/{key}` on node `n`; panics unless it answers 200.
fn kv(cluster: &TestCluster, n: usize, key: &str) -> Value {
    let (status, body) = cluster.get(n, &format!("/v1/kv/{}", encode(key)));
    assert_eq!(status, 200, "GET /v1/kv/{key} on node{n}: {body}");
    body
}

/// The peer entry for `peer` in node `n`'s `/status`.
fn peer_status(cluster: &TestCluster, n: usize, peer: usize) -> Value {
    let status = cluster.status(n);
    status["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["node"] == json!(cluster.id(peer))))
        .cloned()
        .unwrap_or_else(|| panic!("no {} in the peers of node{n}: {status}", cluster.id(peer)))
}

/// Waits until every node's log is empty; returns how long it took.
fn wait_logs_empty(cluster: &TestCluster, deadline: Duration) -> Duration {
    let started = Instant::now();
    wait_for(deadline, "every node's log_len to return to 0", || {
        let lens: Vec<u64> = cluster.numbers().map(|n| cluster.log_len(n)).collect();
        if lens.iter().all(|&l| l == 0) {
            Ok(())
        } else {
            Err(format!("log_len per node {lens:?}"))
        }
    });
    started.elapsed()
}

/// Checks that every node answers the same for `keys` (siblings, value,
/// context); returns node1's answers.
fn same_everywhere(cluster: &TestCluster, keys: &[String]) -> Vec<Value> {
    keys.iter()
        .map(|key| {
            let first = kv(cluster, 1, key);
            for n in cluster.numbers().skip(1) {
                let other = kv(cluster, n, key);
                for field in ["siblings", "value", "found", "context"] {
                    assert_eq!(
                        other[field], first[field],
                        "{key}: {field} differs between node1 and node{n}:\n{first}\n{other}"
                    );
                }
            }
            first
        })
        .collect()
}

// ---- the load of the crash tests ---------------------------------------------------

/// One acknowledged write.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    value: String,
    /// The node that acknowledged it: the write's origin.
    origin: String,
    /// The timestamp it answered; `timestamp[origin]` is the write's seq.
    ts: VClock,
}

impl Acked {
    fn seq(&self) -> u64 {
        self.ts.get(&self.origin)
    }
}

/// Concurrent writers of unique values to [`KEYS`] keys, at random nodes,
/// through `POST /write` and `PUT /v1/kv/{key}`. Only writes answered 200 are
/// acknowledged; a node that is down just fails the request.
struct Load {
    urls: Vec<String>,
    ids: Vec<String>,
    seed: u64,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    acked_count: AtomicUsize,
    acked_by: Vec<AtomicUsize>,
    failed: AtomicUsize,
    /// Every value sent, acknowledged or not.
    sent: Mutex<HashSet<String>>,
    /// Answers that no write should get, even from a node going down (4xx).
    anomalies: Mutex<Vec<String>>,
}

impl Load {
    fn new(cluster: &TestCluster, seed: u64) -> Self {
        Self {
            urls: cluster.urls(),
            ids: cluster.ids(),
            seed,
            stop: AtomicBool::new(false),
            acked: Mutex::new(Vec::new()),
            acked_count: AtomicUsize::new(0),
            acked_by: cluster.numbers().map(|_| AtomicUsize::new(0)).collect(),
            failed: AtomicUsize::new(0),
            sent: Mutex::new(HashSet::new()),
            anomalies: Mutex::new(Vec::new()),
        }
    }

    fn acked(&self) -> usize {
        self.acked_count.load(Ordering::SeqCst)
    }

    fn acked_by(&self, n: usize) -> usize {
        self.acked_by[n - 1].load(Ordering::SeqCst)
    }

    /// Waits until `more` writes were acknowledged after `from` acknowledged
    /// writes (by any node, or by node `by`).
    fn wait_acked(&self, what: &str, by: Option<usize>, from: usize, more: usize) {
        let count = || by.map_or_else(|| self.acked(), |n| self.acked_by(n));
        wait_for(
            EVENTUALLY,
            format!("{more} more acknowledged writes ({what})"),
            || {
                let now = count();
                if now >= from + more {
                    Ok(())
                } else {
                    Err(format!(
                        "{} acknowledged after {from}; {} failed requests",
                        now - from,
                        self.failed.load(Ordering::SeqCst)
                    ))
                }
            },
        );
    }

    fn writer(&self, t: usize) {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(t as u64));
        let mut i = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            let node = rng.random_range(0..self.urls.len());
            let key = format!("k{}", rng.random_range(0..KEYS));
            let value = format!("w{t}-{i}");
            i += 1;
            self.sent.lock().unwrap().insert(value.clone());
            let native = rng.random_bool(0.5);
            let result = if native {
                let body = json!({ "value": value }).to_string();
                try_request(
                    "PUT",
                    &format!("{}/v1/kv/{}", self.urls[node], encode(&key)),
                    Some((Some("application/json"), body.as_bytes())),
                )
            } else {
                let body = json!({ "key": key, "value": value }).to_string();
                try_request(
                    "POST",
                    &format!("{}/write", self.urls[node]),
                    Some((Some("application/json"), body.as_bytes())),
                )
            };
            match result {
                Ok((200, answer)) => {
                    let origin = self.ids[node].clone();
                    let ts = clock(&answer["timestamp"]);
                    if native {
                        let dot = json!({ "origin": origin, "seq": ts.get(&origin) });
                        if answer["dot"] != dot {
                            self.anomalies.lock().unwrap().push(format!(
                                "PUT {key} = {value} at {origin}: dot {} but timestamp {ts}",
                                answer["dot"]
                            ));
                        }
                    }
                    self.acked.lock().unwrap().push(Acked {
                        key,
                        value,
                        origin,
                        ts,
                    });
                    self.acked_by[node].fetch_add(1, Ordering::SeqCst);
                    self.acked_count.fetch_add(1, Ordering::SeqCst);
                }
                Ok((status, _)) if status >= 500 => {
                    // A node going down may answer 5xx to what it had in hand.
                    self.failed.fetch_add(1, Ordering::SeqCst);
                }
                Ok((status, answer)) => {
                    self.anomalies.lock().unwrap().push(format!(
                        "write {key} = {value} at {}: {status} {answer}",
                        self.ids[node]
                    ));
                }
                Err(_) => {
                    // Down (connection refused or reset): not acknowledged. Do
                    // not spin on a dead node.
                    self.failed.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }

    /// Runs `schedule` while [`WRITERS`] threads write; returns every
    /// acknowledged write once the writers have stopped.
    fn run(&self, schedule: impl FnOnce()) -> Vec<Acked> {
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..WRITERS)
                .map(|t| scope.spawn(move || self.writer(t)))
                .collect();
            // Stop the writers even if the schedule panics.
            struct StopOnDrop<'a>(&'a AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let stop = StopOnDrop(&self.stop);
            schedule();
            drop(stop);
            for writer in writers {
                writer.join().expect("a writer panicked");
            }
        });
        let anomalies = self.anomalies.lock().unwrap();
        assert!(
            anomalies.is_empty(),
            "unexpected answers to writes:\n{}",
            anomalies.join("\n")
        );
        self.acked.lock().unwrap().clone()
    }
}

/// The checks of the crash tests, once every node is up again:
///
/// 1. every acknowledged write has its own dot (a node that lost an
///    acknowledged write and went on writing would give its dot to another);
/// 2. all nodes reach the same `applied` clock, which counts every
///    acknowledged write;
/// 3. for every key, every node shows the same siblings; each acknowledged write
///    to the key is one of them (same value, same dot) or was overwritten by a
///    sibling whose timestamp is causally after its own; every sibling is a
///    value some writer sent, with the dot it was acknowledged with.
///
/// A node that lost a write and then wrote the same key again passes 3 (its new
/// write's timestamp is after the lost one's): 1 is what catches it.
fn check_no_acknowledged_write_lost(
    cluster: &TestCluster,
    acked: &[Acked],
    sent: &HashSet<String>,
) {
    let mut failures = Failures::default();

    let mut by_dot: HashMap<(&str, u64), &Acked> = HashMap::new();
    for w in acked {
        if let Some(other) = by_dot.insert((w.origin.as_str(), w.seq()), w) {
            failures.push(
                "reused dot",
                format!(
                    "dot {}:{} acknowledged twice: {other:?} and {w:?} (the first was lost)",
                    w.origin,
                    w.seq()
                ),
            );
        }
    }

    let mut all = VClock::new();
    for w in acked {
        all.merge(&w.ts);
    }
    // Not `wait_converged`: when the nodes never agree, the failures below
    // say which acknowledged writes are missing where.
    let deadline = Instant::now() + EVENTUALLY;
    let converged = loop {
        let clocks: Vec<VClock> = cluster.numbers().map(|n| cluster.clock(n)).collect();
        if clocks.iter().all(|c| *c == clocks[0]) && clocks[0].covers(&all) {
            break Some(clocks[0].clone());
        }
        if Instant::now() >= deadline {
            failures.push(
                "no convergence",
                format!(
                "the nodes did not converge within {EVENTUALLY:?} to a clock covering {all}: {}",
                common::display_all(&clocks)
            ),
            );
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for n in cluster.numbers() {
        let applied = cluster.clock(n);
        for w in acked {
            if !applied.contains(&w.origin, w.seq()) {
                failures.push(
                    "not applied",
                    format!("node{n} (applied {applied}) lacks {w:?}"),
                );
            }
        }
    }

    let by_value: HashMap<&str, &Acked> = acked.iter().map(|w| (w.value.as_str(), w)).collect();
    let mut by_key: BTreeMap<&str, Vec<&Acked>> = BTreeMap::new();
    for w in acked {
        by_key.entry(w.key.as_str()).or_default().push(w);
    }
    let mut sibling_count = 0;
    for k in 0..KEYS {
        let key = format!("k{k}");
        let answers: Vec<Value> = cluster.numbers().map(|n| kv(cluster, n, &key)).collect();
        for (i, answer) in answers.iter().enumerate().skip(1) {
            if answer["siblings"] != answers[0]["siblings"]
                || answer["value"] != answers[0]["value"]
            {
                failures.push(
                    "nodes differ",
                    format!(
                        "{key}: node1 and node{} differ:\n  {}\n  {answer}",
                        i + 1,
                        answers[0]
                    ),
                );
            }
        }
        sibling_count += answers[0]["siblings"].as_array().map_or(0, Vec::len);
        for (i, answer) in answers.iter().enumerate() {
            let n = i + 1;
            let siblings: Vec<(String, String, u64, VClock)> = answer["siblings"]
                .as_array()
                .unwrap_or_else(|| panic!("{key} on node{n}: no siblings in {answer}"))
                .iter()
                .map(|s| {
                    (
                        s["value"].as_str().unwrap_or_default().to_owned(),
                        s["dot"]["origin"].as_str().unwrap_or_default().to_owned(),
                        s["dot"]["seq"].as_u64().unwrap_or_default(),
                        clock(&s["timestamp"]),
                    )
                })
                .collect();
            for (value, origin, seq, _) in &siblings {
                if !sent.contains(value) {
                    failures.push(
                        "unknown value",
                        format!("{key} on node{n}: sibling {value:?} was never written"),
                    );
                } else if let Some(w) = by_value.get(value.as_str()) {
                    if (&w.origin, w.seq()) != (origin, *seq) || w.key != key {
                        failures.push(
                            "wrong dot",
                            format!(
                                "{key} on node{n}: sibling {value:?} has dot {origin}:{seq}, \
                             acknowledged as {w:?}"
                            ),
                        );
                    }
                }
            }
            for w in by_key.get(key.as_str()).into_iter().flatten() {
                let present = siblings.iter().any(|(value, ..)| *value == w.value);
                let overwritten = siblings
                    .iter()
                    .any(|(.., ts)| ts.compare(&w.ts) == Causality::After);
                if !present && !overwritten {
                    failures.push(
                        "lost write",
                        format!(
                            "{key} on node{n}: acknowledged {w:?} is lost: neither a sibling nor \
                         overwritten by one; siblings {siblings:?}"
                        ),
                    );
                }
            }
        }
    }
    println!(
        "checked {} acknowledged writes ({} sent) on {} nodes: converged at {}, \
         {sibling_count} siblings over {KEYS} keys",
        acked.len(),
        sent.len(),
        cluster.len(),
        converged.map_or_else(|| "(not converged)".to_owned(), |c| c.to_string())
    );
    failures.check();
}

/// Failures of the crash checks, by kind.
#[derive(Default)]
struct Failures(BTreeMap<&'static str, Vec<String>>);

impl Failures {
    fn push(&mut self, kind: &'static str, message: String) {
        self.0.entry(kind).or_default().push(message);
    }

    /// Panics with the count of each kind and its first examples, if any.
    fn check(&self) {
        if self.0.is_empty() {
            return;
        }
        let mut report = String::new();
        for (kind, messages) in &self.0 {
            report.push_str(&format!("{} x {kind}, e.g.:\n", messages.len()));
            for message in messages.iter().take(5) {
                report.push_str(&format!("  {message}\n"));
            }
        }
        panic!("acknowledged writes lost or nodes disagree:\n{report}");
    }
}

/// Sum of the nodes' `fsyncs` counters; prints each node's.
fn fsyncs(cluster: &TestCluster) -> u64 {
    cluster
        .numbers()
        .map(|n| {
            let status = cluster.status(n);
            let fsyncs = status["fsyncs"]
                .as_u64()
                .unwrap_or_else(|| panic!("no fsyncs in node{n}'s status: {status}"));
            let applied = clock(&status["applied"]).sum();
            println!(
                "  node{n}: {fsyncs} fsyncs, {applied} writes committed (its own and \
                 replicated): {:.2} per fsync",
                applied as f64 / fsyncs.max(1) as f64
            );
            fsyncs
        })
        .sum()
}

// ---- the tests -------------------------------------------------------------------

/// Each node in turn is killed with SIGKILL while 16 threads write, and started
/// again once the others have acknowledged more writes; [`ROUNDS`] times.
/// Durability is `fsync`, the default.
#[test]
fn kill_9_loses_no_acknowledged_write() {
    let started = Instant::now();
    let mut cluster = TestCluster::start(3);
    let load = Load::new(&cluster, seed());
    let acked = load.run(|| {
        load.wait_acked("before any crash", None, 0, FSYNC_SAMPLE);
        // Group commit: the writes acknowledged so far (read first, so they
        // are all counted in the fsyncs read next) share fsyncs. The fsyncs
        // include the commits of replicated batches on the other nodes.
        let writes = load.acked();
        let syncs = fsyncs(&cluster);
        println!(
            "group commit: {writes} acknowledged writes, {syncs} fsyncs on 3 nodes: \
             {:.2} writes per fsync (every write is committed on 3 nodes)",
            writes as f64 / syncs.max(1) as f64
        );
        // Durability is fsync: a kill -9 cannot tell a node that syncs from one
        // that only hands its writes to the OS, so check that it syncs at all.
        assert!(
            syncs > 0,
            "no fsync for {writes} writes with durability = fsync"
        );
        assert!(
            syncs < writes as u64,
            "{syncs} fsyncs for {writes} writes: group commit does not share fsyncs"
        );
        for round in 1..=ROUNDS {
            for n in cluster.numbers() {
                let before = load.acked();
                cluster.kill9(n);
                let killed_at = load.acked();
                println!("round {round}: killed node{n} after {before} acknowledged writes");
                load.wait_acked(&format!("node{n} down"), None, killed_at, PHASE);
                let restarted_by = load.acked_by(n);
                cluster.restart(n);
                println!(
                    "round {round}: restarted node{n} at {} acknowledged writes",
                    load.acked()
                );
                load.wait_acked(
                    &format!("node{n} restarted"),
                    Some(n),
                    restarted_by,
                    AFTER_RESTART,
                );
            }
        }
        load.wait_acked("after the last restart", None, load.acked(), PHASE);
    });
    println!(
        "{} writes acknowledged, {} requests failed",
        acked.len(),
        load.failed.load(Ordering::SeqCst)
    );
    check_no_acknowledged_write_lost(&cluster, &acked, &load.sent.lock().unwrap());
    println!(
        "kill_9_loses_no_acknowledged_write: {:?}",
        started.elapsed()
    );
}

/// Every node is killed with SIGKILL mid-stream, then all are started again;
/// [`ROUNDS`] times.
#[test]
fn whole_cluster_crash_loses_no_acknowledged_write() {
    let started = Instant::now();
    let mut cluster = TestCluster::start(3);
    let load = Load::new(&cluster, seed());
    let acked = load.run(|| {
        for round in 1..=ROUNDS {
            load.wait_acked("before the crash", None, load.acked(), PHASE);
            for n in cluster.numbers() {
                cluster.kill9(n);
            }
            println!(
                "round {round}: killed every node after {} acknowledged writes",
                load.acked()
            );
            let failed = load.failed.load(Ordering::SeqCst);
            wait_until(
                EVENTUALLY,
                "the writers to fail against the dead cluster",
                || load.failed.load(Ordering::SeqCst) >= failed + WRITERS,
            );
            let by: Vec<usize> = cluster.numbers().map(|n| load.acked_by(n)).collect();
            cluster.restart_many(&[1, 2, 3]);
            for n in cluster.numbers() {
                load.wait_acked(
                    &format!("node{n} restarted"),
                    Some(n),
                    by[n - 1],
                    AFTER_RESTART,
                );
            }
        }
    });
    println!(
        "{} writes acknowledged, {} requests failed",
        acked.len(),
        load.failed.load(Ordering::SeqCst)
    );
    check_no_acknowledged_write_lost(&cluster, &acked, &load.sent.lock().unwrap());
    println!(
        "whole_cluster_crash_loses_no_acknowledged_write: {:?}",
        started.elapsed()
    );
}

/// node1's writes reach node2 but not node3 (link paused); node1 dies; node3
/// still gets them, from node2. node1, started again, has kept them and numbers
/// its next write after them.
#[test]
fn origin_killed_after_one_peer_has_the_write() {
    // repair_after leaves time to kill node1 before node2 repairs node3.
    let mut cluster = TestCluster::start_with(
        3,
        &[
            ("KVNODE_REPAIR_AFTER", "1s"),
            ("KVNODE_SYNC_INTERVAL", "100ms"),
        ],
    );
    cluster.pause(1, 3);
    let keys: Vec<String> = (0..3).map(|i| format!("o{i}")).collect();
    let mut last = VClock::new();
    for (i, key) in keys.iter().enumerate() {
        last = cluster.write(1, key, json!(format!("from node1 #{i}")), None);
    }
    assert_eq!(last.get("node1"), 3);
    wait_until(EVENTUALLY, "node2 to apply node1's writes", || {
        cluster.clock(2).covers(&last)
    });
    cluster.kill9(1);
    assert_eq!(
        cluster.clock(3).get("node1"),
        0,
        "node3 must not have node1's writes when node1 dies (its link was paused)"
    );

    wait_until(EVENTUALLY, "node3 to get node1's writes from node2", || {
        cluster.clock(3).covers(&last)
    });
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cluster.read(3, key).0, json!(format!("from node1 #{i}")));
    }
    assert_eq!(cluster.clock(3), cluster.clock(2));

    // The origin comes back with its writes, and goes on after them.
    cluster.restart(1);
    assert!(
        cluster.clock(1).covers(&last),
        "node1 restarted with {}, it had acknowledged {last}",
        cluster.clock(1)
    );
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cluster.read(1, key).0, json!(format!("from node1 #{i}")));
    }
    let next = cluster.write(1, "o-after", json!("after the restart"), None);
    assert_eq!(next.get("node1"), 4, "node1 must not reuse a seq: {next}");
    let mut keys = keys;
    keys.push("o-after".into());
    cluster.wait_converged(&next);
    same_everywhere(&cluster, &keys);
}

/// The link node1 -> node3 is cut while every node stays up: node3 gets
/// node1's writes through node2, and after the link is resumed everything
/// still flows.
#[test]
fn cut_link_is_repaired_while_both_nodes_stay_up() {
    let cluster = TestCluster::start_with(
        3,
        &[
            ("KVNODE_REPAIR_AFTER", "500ms"),
            ("KVNODE_SYNC_INTERVAL", "100ms"),
        ],
    );
    cluster.pause(1, 3);
    let keys: Vec<String> = (0..5).map(|i| format!("c{i}")).collect();
    let mut last = VClock::new();
    for (i, key) in keys.iter().enumerate() {
        last = cluster.write(1, key, json!(i), None);
    }
    wait_until(
        EVENTUALLY,
        "node3 to get node1's writes through node2",
        || cluster.clock(3).covers(&last),
    );
    // The link stayed cut the whole time: node2 repaired node3.
    assert_eq!(
        cluster.get(1, "/admin/v1/links").1["paused"],
        json!(["node3"])
    );
    assert_eq!(peer_status(&cluster, 1, 3)["paused"], json!(true));
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(cluster.read(3, key).0, json!(i));
    }
    cluster.wait_converged(&last);
    same_everywhere(&cluster, &keys);

    cluster.resume(1, 3);
    let next = cluster.write(1, "c-after", json!("after the resume"), None);
    cluster.wait_converged(&next);
    wait_for(EVENTUALLY, "node3 to acknowledge node1's writes", || {
        let peer = peer_status(&cluster, 1, 3);
        if clock(&peer["acked"]).covers(&next) && peer["lag"] == json!(0) {
            Ok(())
        } else {
            Err(peer.to_string())
        }
    });
    assert_eq!(cluster.read(3, "c-after").0, json!("after the resume"));
}

/// The log empties once every node has applied it; while a node is down the
/// others keep exactly the events it lacks, and drop them once it is back.
#[test]
fn log_is_collected_once_every_node_has_applied() {
    // Fewer events in memory than node3 will lack: the rest stay on disk, and
    // node3 gets them from there.
    const IN_MEMORY: u64 = 16;
    let mut cluster = TestCluster::start_with(
        3,
        &[
            ("KVNODE_SYNC_INTERVAL", "200ms"),
            ("KVNODE_LOG_MEMORY_EVENTS", &IN_MEMORY.to_string()),
        ],
    );
    let urls = cluster.urls();
    // 300 writes, 100 at each node, from 3 threads.
    let clocks: Vec<VClock> = std::thread::scope(|scope| {
        let handles: Vec<_> = urls
            .iter()
            .enumerate()
            .map(|(n, url)| {
                scope.spawn(move || {
                    let mut last = VClock::new();
                    for i in 0..100 {
                        let body = json!({"key": format!("g{}", i % 20), "value": i});
                        let (status, answer) = common::post(&format!("{url}/write"), &body);
                        assert_eq!(status, 200, "write at node{}: {answer}", n + 1);
                        last = clock(&answer["timestamp"]);
                    }
                    last
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = VClock::new();
    for c in &clocks {
        all.merge(c);
    }
    assert_eq!(all.sum(), 300);
    cluster.wait_converged(&all);
    let took = wait_logs_empty(&cluster, LOG_DEADLINE);
    println!("300 writes: every log empty {took:?} after convergence");

    // node3 goes down having applied `all`; what is written now stays in the
    // logs of node1 and node2, which have both applied it, until node3 has.
    cluster.kill9(3);
    const DOWN: u64 = 40;
    let mut during = all.clone();
    for i in 0..DOWN {
        let n = 1 + (i as usize % 2);
        during.merge(&cluster.write(n, &format!("d{}", i % 5), json!(i), None));
    }
    assert_eq!(during.sum(), 300 + DOWN);
    wait_until(
        EVENTUALLY,
        "node1 and node2 to acknowledge each other's writes",
        || {
            cluster.clock(1) == during
                && cluster.clock(2) == during
                && clock(&peer_status(&cluster, 1, 2)["acked"]).covers(&during)
                && clock(&peer_status(&cluster, 2, 1)["acked"]).covers(&during)
        },
    );
    for n in [1, 2] {
        let status = cluster.status(n);
        assert_eq!(
            status["log_len"],
            json!(DOWN),
            "node{n} must keep exactly the {DOWN} events node3 lacks: {status}"
        );
        assert_eq!(
            clock(&status["stable"]),
            all,
            "node{n}: stable is what node3 had applied: {status}"
        );
        assert_eq!(
            status["log_in_memory"],
            json!(IN_MEMORY),
            "node{n} holds the newest {IN_MEMORY} in memory: {status}"
        );
    }
    // A restart reads the log back within the same bound.
    cluster.kill9(1);
    cluster.restart(1);
    let status = cluster.status(1);
    assert_eq!(status["log_len"], json!(DOWN), "node1 restarted: {status}");
    assert_eq!(
        status["log_in_memory"],
        json!(IN_MEMORY),
        "node1 restarted: {status}"
    );

    cluster.restart(3);
    cluster.wait_converged(&during);
    let took = wait_logs_empty(&cluster, LOG_DEADLINE);
    println!("node3 back: every log empty {took:?} after convergence");
}

/// Values and clocks survive a graceful stop (SIGTERM) of every node:
/// overwritten, concurrent (siblings) and deleted keys, values of every JSON
/// type.
#[test]
fn restart_keeps_data() {
    let mut cluster = TestCluster::start_with(3, &[("KVNODE_SYNC_INTERVAL", "200ms")]);
    let a = cluster.write(1, "a", json!(5), None);
    let b = cluster.write(2, "b", json!({"nested": [1, 2.5, "three", null]}), None);
    // node3 overwrites b once it has node2's write.
    let b_read = wait_for(EVENTUALLY, "node3 to read b", || {
        match cluster.read(3, "b") {
            (value, ts) if !value.is_null() => Ok(ts),
            (_, ts) => Err(ts.to_string()),
        }
    });
    let b2 = cluster.write(3, "b", json!("überschrieben ✓"), Some(&b_read));
    // Concurrent writes to c: node1 and node2 cannot see each other's.
    cluster.pause(1, 2);
    cluster.pause(2, 1);
    let c1 = cluster.write(1, "c", json!([1, 2, 3]), None);
    let c2 = cluster.write(2, "c", json!(-1.5), None);
    cluster.resume(1, 2);
    cluster.resume(2, 1);
    // A deleted key.
    let d = cluster.write(1, "d", json!(true), None);
    cluster.wait_converged(&d);
    let (status, deleted) = common::delete(&format!("{}/v1/kv/d", cluster.url(2)));
    assert_eq!(status, 200, "{deleted}");
    let mut all = VClock::new();
    for ts in [&a, &b, &b2, &c1, &c2, &d, &clock(&deleted["timestamp"])] {
        all.merge(ts);
    }
    let before = cluster.wait_converged(&all);
    // Every event is stable and collected (the tombstone of d too): nothing
    // changes any more on its own.
    wait_logs_empty(&cluster, LOG_DEADLINE);
    let keys: Vec<String> = ["a", "b", "c", "d", "never-written"]
        .map(String::from)
        .to_vec();
    let answers = same_everywhere(&cluster, &keys);
    assert_eq!(
        answers[2]["siblings"].as_array().map(Vec::len),
        Some(2),
        "c has two concurrent writes: {}",
        answers[2]
    );
    assert_eq!(answers[3]["found"], json!(false), "{}", answers[3]);

    for n in cluster.numbers() {
        let status = cluster.stop(n);
        assert!(status.success(), "node{n} stopped with {status}");
    }
    cluster.restart_many(&[1, 2, 3]);
    // At once: the same clock and the same values everywhere.
    for n in cluster.numbers() {
        assert_eq!(
            cluster.clock(n),
            before,
            "node{n}'s clock after the restart"
        );
        for (key, answer) in keys.iter().zip(&answers) {
            let now = kv(&cluster, n, key);
            for field in ["value", "found", "context"] {
                assert_eq!(
                    now[field], answer[field],
                    "{key} on node{n} after the restart"
                );
            }
        }
        assert_eq!(cluster.read(n, "a").0, json!(5));
        assert_eq!(cluster.read(n, "b").0, json!("überschrieben ✓"));
    }
    // The same siblings, once the logs are collected again (a collection is
    // not synced, so a restart may bring back a stable tombstone until then).
    wait_logs_empty(&cluster, LOG_DEADLINE);
    for n in cluster.numbers() {
        for (key, answer) in keys.iter().zip(&answers) {
            assert_eq!(
                &kv(&cluster, n, key),
                answer,
                "{key} on node{n} after the restart"
            );
        }
    }
    // The nodes go on from where they were.
    let next = cluster.write(2, "e", json!("after"), None);
    assert_eq!(next.get("node2"), before.get("node2") + 1, "{next}");
    cluster.wait_converged(&next);
}

/// node3 may hold only 2 undeliverable events. With node1 -> node3 cut, node2's
/// writes that depend on node1's cannot be delivered at node3: it buffers two
/// and answers 503 to the rest. Once the link is back, nothing is missing.
#[test]
fn full_buffer_answers_503_and_loses_nothing() {
    // No repair: node1's writes must wait for the link (else node2 would send
    // them to node3 and nothing would stay undeliverable).
    let cluster = TestCluster::start_with(
        3,
        &[
            ("KVNODE_MAX_BUFFERED", "2"),
            ("KVNODE_REPAIR_AFTER", "1h"),
            ("KVNODE_SYNC_INTERVAL", "100ms"),
        ],
    );
    cluster.pause(1, 3);
    const WRITES: usize = 6;
    let keys: Vec<String> = (0..WRITES).map(|i| format!("b{i}")).collect();
    let mut last = VClock::new();
    for (i, key) in keys.iter().enumerate() {
        let first = cluster.write(1, key, json!(i), None);
        // node2 writes after reading node1's write: it depends on it.
        last = cluster.write(2, key, json!(100 + i), Some(&first));
        assert_eq!(last.get("node1"), first.get("node1"), "{last}");
    }

    let check_bound = |status: &Value| {
        let buffered = status["buffered_total"].as_u64().unwrap_or(u64::MAX);
        assert!(
            buffered <= 2,
            "node3 buffers more than max_buffered: {status}"
        );
        buffered
    };
    wait_for(EVENTUALLY, "node3 to refuse node2's batch with 503", || {
        check_bound(&cluster.status(3));
        let peer = peer_status(&cluster, 2, 3);
        match peer["last_error"].as_str() {
            Some(error) if error.contains("503") => Ok(()),
            _ => Err(peer.to_string()),
        }
    });
    let status = wait_for(EVENTUALLY, "node3 to hold 2 events", || {
        let status = cluster.status(3);
        if check_bound(&status) == 2 {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    assert_eq!(status["buffered"], json!({"node2": 2}), "{status}");
    assert_eq!(
        (
            clock(&status["applied"]).get("node1"),
            clock(&status["applied"]).get("node2")
        ),
        (0, 0),
        "node3 cannot have applied anything: {status}"
    );
    assert_eq!(check_bound(&cluster.status(3)), 2);

    cluster.resume(1, 3);
    cluster.wait_converged(&last);
    let status = cluster.status(3);
    assert_eq!(status["buffered_total"], json!(0), "{status}");
    let answers = same_everywhere(&cluster, &keys);
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer["value"], json!(100 + i), "{answer}");
        assert_eq!(
            answer["siblings"].as_array().map(Vec::len),
            Some(1),
            "{answer}"
        );
    }
}
