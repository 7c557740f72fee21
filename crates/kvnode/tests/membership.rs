//! Membership changes with real processes, under a write load.
//!
//! - `a_fourth_node_joins_under_load_and_serves`: node4 runs from the start
//!   with the four nodes as its list, but nodes 1 to 3 know only each other,
//!   and their logs are collected: node4 is refused and waits. It is added
//!   at node1 while clients write to the three; it copies a snapshot, catches
//!   up, then serves reads and writes, and all four converge on the same value
//!   of every key, each acknowledged write included.
//! - `a_removed_node_stops_holding_back_the_log`: node3 is down, so node1's
//!   and node2's logs keep every write for it. node3 is removed at node1
//!   under load: both collect their logs, stop sending to it, and keep every
//!   write. Started again, node3 learns it was removed and refuses writes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use vclock_proto::VClock;

use common::{wait_until, TestCluster, EVENTUALLY};

fn phase(cluster: &TestCluster, n: usize) -> Option<String> {
    let url = format!("{}/status", cluster.url(n));
    match common::try_request("GET", &url, None) {
        Ok((200, status)) => status["recovery"]["phase"].as_str().map(str::to_owned),
        _ => None,
    }
}

/// The active members in node `n`'s `/status`.
fn active_members(cluster: &TestCluster, n: usize) -> Vec<String> {
    let status = cluster.status(n);
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["removed"] != json!(true))
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Clients writing distinct keys `load-i` round robin to `nodes` until
/// stopped; the writes each acknowledged, with their timestamps.
struct Load {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Vec<(String, i64, VClock)>>,
}

impl Load {
    fn start(urls: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0i64;
            while !stopping.load(Ordering::Acquire) {
                let url = &urls[i as usize % urls.len()];
                let key = format!("load-{i}");
                let body = serde_json::to_vec(&json!({"key": key, "value": i})).expect("json");
                let sent = common::try_request(
                    "POST",
                    &format!("{url}/write"),
                    Some((Some("application/json"), &body)),
                );
                if let Ok((200, answer)) = sent {
                    acked.push((key, i, common::clock(&answer["timestamp"])));
                }
                i += 1;
            }
            acked
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<(String, i64, VClock)> {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("the load thread")
    }
}

/// Every acknowledged write reads back at every node in `nodes`.
fn assert_everywhere(cluster: &TestCluster, nodes: &[usize], writes: &[(String, i64, VClock)]) {
    for (key, value, _) in writes {
        for &n in nodes {
            assert_eq!(cluster.read(n, key).0, json!(value), "{key} at node{n}");
        }
    }
}

fn all_clocks(writes: &[(String, i64, VClock)]) -> VClock {
    let mut all = VClock::new();
    for (_, _, clock) in writes {
        all.merge(clock);
    }
    all
}

#[test]
fn a_fourth_node_joins_under_load_and_serves() {
    let ports = common::free_ports(4);
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let three: Vec<String> = (0..3)
        .map(|i| format!("node{}={}", i + 1, urls[i]))
        .collect();
    let three = three.join(",");
    let mut builder = common::nodes(4)
        .ports(ports)
        .env("KVNODE_SYNC_INTERVAL", "200ms")
        .env("KVNODE_BOOTSTRAP_CHUNK_KEYS", "50")
        .no_wait();
    for n in 1..=3 {
        builder = builder.node_env(n, "KVNODE_NODES", three.clone());
    }
    let cluster = TestCluster::from_kit(builder.start().unwrap_or_else(|e| panic!("{e}")));
    wait_until(EVENTUALLY, "nodes 1 to 3 to be live", || {
        (1..=3).all(|n| phase(&cluster, n).as_deref() == Some("live"))
    });

    // History node4 can get only from a snapshot: every log is collected.
    let mut before = Vec::new();
    for i in 0..300i64 {
        let n = 1 + i as usize % 3;
        let key = format!("before-{i}");
        let clock = cluster.write(n, &key, json!(i), None);
        before.push((key, i, clock));
    }
    cluster.wait_same(&[1, 2, 3], &all_clocks(&before));
    wait_until(
        EVENTUALLY,
        "the logs of nodes 1 to 3 to be collected",
        || (1..=3).all(|n| cluster.log_len(n) == 0),
    );
    assert_ne!(
        phase(&cluster, 4).as_deref(),
        Some("live"),
        "node4 is no member yet"
    );

    let load = Load::start(urls[..3].to_vec());
    wait_until(EVENTUALLY, "the load to be under way", || {
        cluster.log_len(1) > 0
    });
    let (status, answer) = cluster.post(
        1,
        "/admin/v1/members",
        &json!({"id": "node4", "url": urls[3]}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], json!(1), "{answer}");
    let again = cluster.post(
        1,
        "/admin/v1/members",
        &json!({"id": "node4", "url": urls[3]}),
    );
    assert_eq!(again.0, 200, "adding it again changes nothing: {}", again.1);
    assert_eq!(again.1["version"], json!(1));

    wait_until(Duration::from_secs(60), "node4 to be live", || {
        phase(&cluster, 4).as_deref() == Some("live")
    });
    let copied = cluster.status(4)["recovery"]["keys_copied"]
        .as_u64()
        .unwrap_or(0);
    assert!(copied >= 300, "node4 copied {copied} keys from a snapshot");
    let mut written = load.finish();
    assert!(written.len() > 20, "the load wrote {} keys", written.len());
    let own = cluster.write(4, "from-node4", json!(4), Some(&all_clocks(&written)));
    assert_eq!(own.get("node4"), 1, "node4's first write");
    written.push(("from-node4".into(), 4, own));
    written.extend(before);

    cluster.wait_same(&[1, 2, 3, 4], &all_clocks(&written));
    assert_everywhere(&cluster, &[1, 2, 3, 4], &written);
    for n in 1..=4 {
        assert_eq!(
            active_members(&cluster, n),
            ["node1", "node2", "node3", "node4"],
            "node{n}"
        );
    }
    // node4 holds back collection no more than any member: the logs empty.
    wait_until(EVENTUALLY, "every log to be collected", || {
        (1..=4).all(|n| cluster.log_len(n) == 0)
    });
}

#[test]
fn a_removed_node_stops_holding_back_the_log() {
    let mut cluster = TestCluster::start_with(3, &[("KVNODE_SYNC_INTERVAL", "200ms")]);
    let first = cluster.write(1, "first", json!(1), None);
    cluster.wait_same(&[1, 2, 3], &first);
    cluster.kill9(3);

    let load = Load::start(vec![cluster.url(1).to_owned(), cluster.url(2).to_owned()]);
    wait_until(EVENTUALLY, "node1's log to keep writes for node3", || {
        cluster.log_len(1) > 20
    });
    let refused = common::delete(&format!("{}/admin/v1/members/node1", cluster.url(1)));
    assert_eq!(
        refused.0, 409,
        "a node does not remove itself: {}",
        refused.1
    );
    let (status, answer) = common::delete(&format!("{}/admin/v1/members/node3", cluster.url(1)));
    assert_eq!(status, 200, "{answer}");
    let written = load.finish();
    assert!(!written.is_empty(), "the load wrote nothing");

    wait_until(EVENTUALLY, "nodes 1 and 2 to collect their logs", || {
        (1..=2).all(|n| cluster.log_len(n) == 0)
    });
    cluster.wait_same(&[1, 2], &all_clocks(&written));
    assert_everywhere(&cluster, &[1, 2], &written);
    for n in 1..=2 {
        let peers: Vec<Value> = cluster.status(n)["peers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(peers.len(), 1, "node{n} sends to one peer: {peers:?}");
        assert_eq!(active_members(&cluster, n), ["node1", "node2"], "node{n}");
    }

    cluster.restart(3);
    wait_until(EVENTUALLY, "node3 to learn it was removed", || {
        active_members(&cluster, 3) == ["node1", "node2"]
    });
    let (status, answer) = cluster.post(3, "/write", &json!({"key": "late", "value": 3}));
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("removed"),
        "{answer}"
    );
    let (status, answer) = cluster.post(
        1,
        "/admin/v1/members",
        &json!({"id": "node3", "url": cluster.url(3)}),
    );
    assert_eq!(status, 409, "a removed id is never reused: {answer}");
}
