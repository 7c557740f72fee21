//! Peers that lie, against real `kvnode` processes: a second copy of a dot
//! with other content is refused and shown (`/status`, `/metrics`), and a junk
//! copy waiting in the buffer does not keep the real event out.

mod common;

use serde_json::{json, Value};

use common::{vclock, TestCluster};

/// A batch of one event of `node1`, as a peer sends it to another.
fn batch(seq: u64, value: Value, deps: Value) -> Value {
    json!({
        "from": "node1",
        "events": [{"origin": "node1", "seq": seq, "key": "x", "op": {"put": value}, "deps": deps}],
    })
}

fn conflicting_events_metric(cluster: &TestCluster, n: usize) -> u64 {
    let url = format!("{}/metrics", cluster.url(n));
    let text = kv_testkit::http::agent()
        .get(&url)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("kvnode_conflicting_events_total "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no kvnode_conflicting_events_total in:\n{text}"))
}

#[test]
fn a_second_history_for_one_dot_is_refused_and_shown() {
    let cluster = TestCluster::start(3);
    let first = cluster.write(1, "x", json!("real"), None);
    cluster.wait_converged(&first);
    assert_eq!(cluster.status(2)["conflicts"], json!(0));

    // Another node1:1, sent to node2 as if by node1.
    let (status, body) = cluster.post(
        2,
        "/peer/v1/events",
        &batch(1, json!("forged"), json!({"node1": 0})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(cluster.read(2, "x").0, json!("real"));
    assert_eq!(cluster.status(2)["conflicts"], json!(1));
    assert_eq!(conflicting_events_metric(&cluster, 2), 1);
    let log = std::fs::read_to_string(cluster.log_path(2)).unwrap();
    assert!(
        log.contains("refused node1:1: this node holds a different event with the same dot"),
        "node2's log does not say it refused the second node1:1"
    );

    // A junk node1:2 that waits for writes nobody made sits in node2's buffer;
    // the real node1:2 is still applied when it comes.
    let (status, body) = cluster.post(
        2,
        "/peer/v1/events",
        &batch(2, json!("junk"), json!({"node1": 1, "node3": 1_000_000})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(cluster.status(2)["buffered_total"], json!(1));
    let second = cluster.write(1, "x", json!("second"), Some(&first));
    assert_eq!(second, vclock(&[("node1", 2)]));
    cluster.wait_converged(&second);
    assert_eq!(cluster.read(2, "x").0, json!("second"));
    let status = cluster.status(2);
    assert_eq!(status["buffered_total"], json!(0), "{status}");
    assert_eq!(status["conflicts"], json!(2), "{status}");
}
