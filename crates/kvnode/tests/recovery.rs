//! Recovery with real processes: a node that lost its data never reuses a dot.
//!
//! - `a_node_that_lost_its_data_gets_its_writes_back_and_reuses_no_dot`: the
//!   operator's routine mistake. node1 writes, every node applies and collects
//!   its log, node1 is killed and its data directory deleted, then started
//!   again with the same id. It refuses writes until it has bootstrapped from
//!   a peer; then it holds its old writes again, numbers its next write after
//!   them, and every node converges on the same value of every key.
//! - `a_node_without_data_waits_for_every_peer`: with a peer down, that peer
//!   may be the only one holding the node's last writes: the node answers 503
//!   `recovering` until it answers, then bootstraps and serves.
//! - `a_node_that_never_wrote_gets_every_key_back`: a node with no writes of
//!   its own loses its data; its peers' logs no longer hold the others'
//!   writes, so it bootstraps too rather than serve an empty store.
//! - `a_bootstrap_killed_half_way_goes_on_from_where_it_stopped`: SIGKILL in
//!   the middle of a bootstrap; started again, the node goes on after the
//!   last chunk it installed and ends with every key.
//!
//! Each fails against a build that numbers writes from the local store alone
//! and trusts an empty store (`KVNODE_FORCE_NEW_HISTORY=true` on every node
//! gives that build): on the reused dot and the divergent values, on the 503
//! it expects, on the keys missing at the node.

mod common;

use std::time::Duration;

use serde_json::{json, Value};
use vclock_proto::VClock;

use common::{wait_for, wait_until, TestCluster, EVENTUALLY};

/// Keys node1 writes before it loses its data.
const KEYS: usize = 300;

fn phase(cluster: &TestCluster, n: usize) -> String {
    cluster.status(n)["recovery"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Node `n`'s `recovery` in `/status`, or why there is none yet (a node
/// started again may not listen yet).
fn recovery(cluster: &TestCluster, n: usize) -> Result<Value, String> {
    let url = format!("{}/status", cluster.url(n));
    match common::try_request("GET", &url, None)? {
        (200, status) => Ok(status["recovery"].clone()),
        (code, body) => Err(format!("{code} {body}")),
    }
}

/// node1 writes `KEYS` keys, node2 one and deletes one of node1's; returns
/// the clock every node converges on, once every log is collected.
fn write_and_collect(cluster: &TestCluster) -> VClock {
    let mut all = VClock::new();
    for i in 0..KEYS {
        all.merge(&cluster.write(1, &format!("k{i}"), json!(i), None));
    }
    cluster.wait_converged(&all);
    all.merge(&cluster.write(2, "from-node2", json!("two"), Some(&all)));
    let (status, deleted) = common::delete(&format!("{}/v1/kv/k0", cluster.url(2)));
    assert_eq!(status, 200, "{deleted}");
    all.merge(&common::clock(&deleted["timestamp"]));
    let converged = cluster.wait_converged(&all);
    // Nothing of node1's history is left in any log: only a snapshot can
    // give it back.
    wait_until(EVENTUALLY, "every log to be collected", || {
        cluster.numbers().all(|n| cluster.log_len(n) == 0)
    });
    converged
}

/// Every node answers the same for every key.
fn assert_same_everywhere(cluster: &TestCluster, keys: &[String]) {
    for key in keys {
        let answers: Vec<Value> = cluster
            .numbers()
            .map(|n| {
                let (status, body) = cluster.get(n, &format!("/v1/kv/{key}"));
                assert!(status == 200 || status == 404, "{key} on node{n}: {body}");
                json!([body["siblings"], body["value"]])
            })
            .collect();
        assert!(
            answers.iter().all(|a| a == &answers[0]),
            "{key} differs between nodes: {answers:?}"
        );
    }
}

#[test]
fn a_node_that_lost_its_data_gets_its_writes_back_and_reuses_no_dot() {
    let mut cluster = TestCluster::start_with(3, &[("KVNODE_SYNC_INTERVAL", "200ms")]);
    let before = write_and_collect(&cluster);
    let made = before.get("node1");
    assert_eq!(made, KEYS as u64);

    cluster.kill9(1);
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("delete node1's data directory");
    cluster.restart(1);

    let live = wait_for(EVENTUALLY, "node1 to be live again", || {
        let (status, answer) = cluster.post(1, "/write", &json!({"key": "new", "value": 1}));
        match status {
            200 => Ok(common::clock(&answer["timestamp"])),
            503 if answer["error"]["code"] == "recovering" => Err(answer.to_string()),
            _ => panic!("a write at a recovering node: {status} {answer}"),
        }
    });
    assert_eq!(phase(&cluster, 1), "live");
    assert_eq!(
        live.get("node1"),
        made + 1,
        "node1's first write after losing its data must follow its old ones"
    );
    assert!(
        cluster.status(1)["recovery"]["keys_copied"].as_u64() >= Some(KEYS as u64 - 1),
        "{}",
        cluster.status(1)
    );

    let mut want = before.clone();
    want.merge(&live);
    cluster.wait_converged(&want);
    let mut keys: Vec<String> = (0..KEYS).map(|i| format!("k{i}")).collect();
    keys.extend(["new", "from-node2"].map(String::from));
    assert_same_everywhere(&cluster, &keys);
    for i in [1, KEYS / 2, KEYS - 1] {
        assert_eq!(cluster.read(1, &format!("k{i}")).0, json!(i), "k{i}");
    }
    let (_, k0) = cluster.get(1, "/v1/kv/k0");
    assert_eq!(k0["found"], json!(false), "the delete came back too: {k0}");
    for n in cluster.numbers() {
        assert_eq!(cluster.status(n)["conflicts"], json!(0), "node{n}");
    }
}

#[test]
fn a_node_without_data_waits_for_every_peer() {
    let mut cluster = TestCluster::start_with(3, &[("KVNODE_SYNC_INTERVAL", "200ms")]);
    let before = write_and_collect(&cluster);

    cluster.kill9(1);
    cluster.kill9(3);
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("delete node1's data directory");
    // Started without waiting for /health: it answers 503 until it is live.
    cluster.start_again(1).expect("start node1 again");
    // node2 answers (and holds all of node1's writes), but node3 might hold
    // more: node1 bootstraps from node2, then waits for node3, and says so.
    wait_for(EVENTUALLY, "node1 to bootstrap and wait for node3", || {
        let recovery = recovery(&cluster, 1)?;
        let waits = recovery["waiting_for"].as_str().unwrap_or_default();
        match recovery["phase"] == "checking"
            && recovery["keys_copied"].as_u64() >= Some(KEYS as u64 - 1)
            && waits.contains("node3")
        {
            true => Ok(()),
            false => Err(recovery.to_string()),
        }
    });
    let (status, answer) = cluster.post(1, "/write", &json!({"key": "x", "value": 1}));
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "recovering", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("node3"),
        "the 503 names the peer it waits for: {answer}"
    );

    cluster.restart(3);
    let live = wait_for(EVENTUALLY, "node1 to be live", || {
        let (status, answer) = cluster.post(1, "/write", &json!({"key": "x", "value": 1}));
        match status {
            200 => Ok(common::clock(&answer["timestamp"])),
            _ => Err(answer.to_string()),
        }
    });
    assert_eq!(live.get("node1"), before.get("node1") + 1);
    let mut want = before;
    want.merge(&live);
    cluster.wait_converged(&want);
    assert_eq!(cluster.read(3, "k7").0, json!(7));
    assert_eq!(cluster.read(1, "k7").0, json!(7));
    wait_for(
        Duration::from_secs(5),
        "node1 to report live",
        || match phase(&cluster, 1).as_str() {
            "live" => Ok(()),
            other => Err(other.to_owned()),
        },
    );
}

#[test]
fn a_node_restarted_before_it_was_live_still_waits_for_its_writes() {
    let mut cluster = TestCluster::start_with(3, &[("KVNODE_SYNC_INTERVAL", "200ms")]);
    let before = write_and_collect(&cluster);

    for n in 1..=3 {
        cluster.kill9(n);
    }
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("delete node1's data directory");
    cluster.start_again(1).expect("start node1 again");
    let waiting = |cluster: &TestCluster| {
        wait_for(EVENTUALLY, "node1 to wait for both peers", || {
            let recovery = recovery(cluster, 1)?;
            let waits = recovery["waiting_for"].as_str().unwrap_or_default();
            match recovery["phase"] == "checking" && waits.contains("node2, node3") {
                true => Ok(waits.to_owned()),
                false => Err(recovery.to_string()),
            }
        })
    };
    waiting(&cluster);
    // Killed before it was ever live on its new data directory: the
    // directory is no more trusted than when it was empty, although it now
    // holds a store. (Trusted, node1 would go live as soon as both peers
    // failed once, and number its next write 1.)
    cluster.kill9(1);
    cluster.start_again(1).expect("start node1 once more");
    let waits = waiting(&cluster);
    assert!(waits.contains("may be incomplete"), "{waits}");
    let (status, answer) = cluster.post(1, "/write", &json!({"key": "x", "value": 1}));
    assert_eq!(status, 503, "{answer}");

    cluster.start_again(2).expect("start node2 again");
    cluster.start_again(3).expect("start node3 again");
    let live = wait_for(EVENTUALLY, "node1 to be live", || {
        let (status, answer) = cluster.post(1, "/write", &json!({"key": "x", "value": 1}));
        match status {
            200 => Ok(common::clock(&answer["timestamp"])),
            _ => Err(answer.to_string()),
        }
    });
    assert_eq!(live.get("node1"), before.get("node1") + 1, "no dot reused");
    let mut want = before;
    want.merge(&live);
    cluster.wait_converged(&want);
    assert_eq!(cluster.read(1, "k7").0, json!(7));
}

/// Writes `count` keys `bulk0`.. at node `n`, 500 to an atomic write.
fn write_many(cluster: &TestCluster, n: usize, count: usize) -> VClock {
    let mut all = VClock::new();
    for start in (0..count).step_by(500) {
        let writes: Vec<Value> = (start..count.min(start + 500))
            .map(|i| json!({"key": format!("bulk{i:05}"), "op": {"put": i}}))
            .collect();
        let (status, answer) = cluster.post(n, "/v1/txn/write", &json!({ "writes": writes }));
        assert_eq!(status, 200, "{answer}");
        all.merge(&common::clock(&answer["timestamp"]));
    }
    all
}

#[test]
fn a_node_that_never_wrote_gets_every_key_back() {
    let mut cluster = TestCluster::start_with(3, &[("KVNODE_SYNC_INTERVAL", "200ms")]);
    let before = write_and_collect(&cluster);
    assert_eq!(before.get("node3"), 0);

    cluster.kill9(3);
    std::fs::remove_dir_all(cluster.data_dir(3)).expect("delete node3's data directory");
    cluster.restart(3);
    assert_eq!(phase(&cluster, 3), "live", "/health answered 200");
    assert_eq!(cluster.clock(3), before, "node3 holds everything again");
    for i in [1, KEYS - 1] {
        assert_eq!(cluster.read(3, &format!("k{i}")).0, json!(i), "k{i}");
    }
    assert_eq!(cluster.read(3, "from-node2").0, json!("two"));
}

#[test]
fn a_bootstrap_killed_half_way_goes_on_from_where_it_stopped() {
    const BULK: usize = 4000;
    let mut cluster = TestCluster::start_with(
        3,
        &[
            ("KVNODE_SYNC_INTERVAL", "200ms"),
            ("KVNODE_BOOTSTRAP_CHUNK_KEYS", "20"),
        ],
    );
    let mut want = write_many(&cluster, 1, BULK);
    want.merge(&cluster.write(2, "last", json!("of node2"), Some(&want)));
    cluster.wait_converged(&want);
    wait_until(EVENTUALLY, "every log to be collected", || {
        cluster.numbers().all(|n| cluster.log_len(n) == 0)
    });

    cluster.kill9(1);
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("delete node1's data directory");
    // Started without waiting for /health: it answers 503 until it is live.
    cluster.start_again(1).expect("start node1 again");
    let copied = wait_for(EVENTUALLY, "node1 to be half-way through", || {
        let recovery = recovery(&cluster, 1)?;
        match recovery["keys_copied"].as_u64() {
            Some(n) if recovery["phase"] == "bootstrapping" && n >= 200 => Ok(n),
            _ => Err(recovery.to_string()),
        }
    });
    cluster.kill9(1);
    assert!(copied < BULK as u64, "the bootstrap was over: {copied}");
    cluster.restart(1);
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap_or_default();
    assert!(
        log.contains("going on after key"),
        "the second bootstrap started from the first key"
    );
    assert_eq!(cluster.clock(1), cluster.clock(2));
    assert_eq!(cluster.read(1, "bulk00000").0, json!(0));
    assert_eq!(cluster.read(1, "bulk03999").0, json!(3999));
    assert_eq!(cluster.read(1, "last").0, json!("of node2"));
    let (_, status) = cluster.get(1, "/status");
    assert!(
        status["recovery"]["keys_copied"].as_u64() >= Some(BULK as u64),
        "{status}"
    );
    let live = cluster.write(1, "after", json!(1), None);
    assert_eq!(live.get("node1"), want.get("node1") + 1);
}
