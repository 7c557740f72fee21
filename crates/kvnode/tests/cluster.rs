//! Process-level tests: real `kvnode` processes on loopback ports, driven over
//! HTTP (testing ladder, step 3). One test binary, one module per concern, so the
//! workspace links it once.
//!
//! - [`prototype_client`]: the prototype's `client.py`, reproduced request for
//!   request, must pass unchanged.
//! - [`out_of_order`]: the prototype's scenario 2, produced with the fault hook
//!   instead of a sleep: the dependent write is buffered, then applied.
//! - [`repair`]: a write reaches a node cut off from its origin through another
//!   replica, after the origin died.
//! - [`concurrent_writes`]: concurrent writes to one key converge to the same
//!   siblings and the same winner everywhere, and a write with their context
//!   resolves them.
//! - [`bad_input`]: every kind of bad request gets a 4xx JSON error and changes
//!   nothing; contexts that cannot be satisfied get 409 or 503.
//! - [`sessions`]: concurrent client sessions; every read is checked against the
//!   recorded writes, and the cluster converges afterwards. Also: a clock a node
//!   has shown is a context it accepts at once, under concurrent writes.
//!
//! - [`traces`]: the trace records of both prototype scenarios, as `/v1/trace`
//!   and `/v1/trace/stream` serve them.
//!
//! Every node runs with the fault hook on and durable storage in a temporary
//! directory (see `common`). Nothing waits with a fixed sleep except the
//! reproduction of `client.py`, whose sleeps are part of the client.

mod common;

use common::TestCluster;

/// The prototype's `client.py`, reproduced exactly: same requests, same headers,
/// same sleeps, same assertions.
mod prototype_client {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::common::{self, vclock};
    use super::TestCluster;

    /// What the client does per request: `Content-Type: application/json` on
    /// every request (GETs too), a 20 s timeout, up to 3 attempts 2 s apart when
    /// the node cannot be reached. A non-2xx answer is a failure of the client.
    #[derive(Debug)]
    struct Client {
        agent: ureq::Agent,
        nodes: Vec<(String, String)>,
    }

    impl Client {
        fn new(cluster: &TestCluster) -> Self {
            Self {
                agent: ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(20))
                    .build(),
                nodes: cluster
                    .numbers()
                    .map(|n| (cluster.id(n).to_owned(), cluster.url(n).to_owned()))
                    .collect(),
            }
        }

        fn url(&self, node: &str) -> &str {
            &self
                .nodes
                .iter()
                .find(|(id, _)| id == node)
                .expect("one of the client's nodes")
                .1
        }

        fn send(&self, method: &str, url: &str, body: Option<&Value>) -> Value {
            let mut last = String::new();
            for attempt in 1..=3 {
                let request = self
                    .agent
                    .request(method, url)
                    .set("Content-Type", "application/json");
                let result = match body {
                    Some(body) => request.send_string(&body.to_string()),
                    None => request.call(),
                };
                match result {
                    Ok(response) => {
                        return response
                            .into_json()
                            .unwrap_or_else(|e| panic!("{method} {url}: not JSON: {e}"))
                    }
                    Err(ureq::Error::Status(code, response)) => panic!(
                        "{method} {url}: HTTP {code}: {}",
                        response.into_string().unwrap_or_default()
                    ),
                    Err(e) => {
                        println!("{method} {url}: attempt {attempt} failed: {e}");
                        last = e.to_string();
                        if attempt < 3 {
                            std::thread::sleep(Duration::from_secs(2));
                        }
                    }
                }
            }
            panic!("{method} {url}: failed 3 times, last: {last}")
        }

        fn health(&self, node: &str) -> Value {
            self.send("GET", &format!("{}/health", self.url(node)), None)
        }

        fn write(&self, node: &str, key: &str, value: Value, context: Option<&Value>) -> Value {
            let mut body = json!({ "key": key, "value": value });
            if let Some(context) = context {
                body["context"] = context.clone();
            }
            self.send("POST", &format!("{}/write", self.url(node)), Some(&body))
        }

        fn read(&self, node: &str, key: &str) -> Value {
            self.send("GET", &format!("{}/read?key={key}", self.url(node)), None)
        }
    }

    #[test]
    fn client_py_passes_unchanged() {
        let cluster = TestCluster::start(3);
        let client = Client::new(&cluster);
        let zero = json!({"node1": 0, "node2": 0, "node3": 0});

        println!("Checking node availability...");
        for node in ["node1", "node2", "node3"] {
            let health = client.health(node);
            println!("✓ {node} ready | Clock: {}", health["timestamp"]);
            // The prototype's exact answer, every node named in the clock.
            assert_eq!(
                health,
                json!({"status": "healthy", "node": node, "timestamp": zero})
            );
        }

        println!("\n=== Testing Causal Consistency ===");
        println!("Writing x=5 to node1...");
        let written = client.write("node1", "x", json!(5), None);
        println!("Write successful. Clock: {}", written["timestamp"]);
        assert_eq!(written["status"], "success");
        std::thread::sleep(Duration::from_secs(1));
        println!("Reading from node2...");
        let read = client.read("node2", "x");
        println!(
            "Read value: {} | Clock: {}",
            read["value"], read["timestamp"]
        );
        let value = read["value"]
            .as_i64()
            .unwrap_or_else(|| panic!("value + 5 needs a number, got {}", read["value"]));
        println!("Updating to x={} at node2...", value + 5);
        let updated = client.write("node2", "x", json!(value + 5), Some(&read["timestamp"]));
        println!("Update successful. Clock: {}", updated["timestamp"]);
        std::thread::sleep(Duration::from_secs(1));
        let last = client.read("node3", "x");
        println!(
            "Final value at node3: {} | Clock: {}",
            last["value"], last["timestamp"]
        );
        assert_eq!(last["value"], json!(10), "causal consistency");
        println!("✓ Causal consistency verified");

        println!("\n=== Testing Out-of-Order Delivery Handling ===");
        println!("Writing x=100 to node1...");
        let written2 = client.write("node1", "x", json!(100), None);
        println!("Write successful. Clock: {}", written2["timestamp"]);
        std::thread::sleep(Duration::from_millis(500));
        println!("Reading from node2...");
        let read2 = client.read("node2", "x");
        println!(
            "Read value: {} | Clock: {}",
            read2["value"], read2["timestamp"]
        );
        println!("Updating to x=200 at node2...");
        let updated2 = client.write("node2", "x", json!(200), Some(&read2["timestamp"]));
        println!("Update successful. Clock: {}", updated2["timestamp"]);
        std::thread::sleep(Duration::from_secs(3));
        let last2 = client.read("node3", "x");
        println!(
            "Final value at node3: {} | Clock: {}",
            last2["value"], last2["timestamp"]
        );
        assert_eq!(last2["value"], json!(200), "out-of-order delivery");
        println!("✓ Out-of-order delivery handled correctly");
        println!("\nAll tests passed!");

        // The clocks the prototype's report printed for the same run. They hold
        // under the same condition as the client's own assertions: replication
        // finishes within the client's sleeps.
        let expected = [
            (&written, vclock(&[("node1", 1)])),
            (&read, vclock(&[("node1", 1)])),
            (&updated, vclock(&[("node1", 1), ("node2", 1)])),
            (&last, vclock(&[("node1", 1), ("node2", 1)])),
            (&written2, vclock(&[("node1", 2), ("node2", 1)])),
            (&read2, vclock(&[("node1", 2), ("node2", 1)])),
            (&updated2, vclock(&[("node1", 2), ("node2", 2)])),
            (&last2, vclock(&[("node1", 2), ("node2", 2)])),
        ];
        for (answer, clock) in expected {
            assert_eq!(common::clock(&answer["timestamp"]), clock, "{answer}");
            // Every node named, as in the prototype's clocks.
            assert_eq!(answer["timestamp"].as_object().map(|o| o.len()), Some(3));
        }
        assert_eq!(read["value"], json!(5));
        assert_eq!(read2["value"], json!(100));
    }
}

/// Scenario 2 of the prototype, produced with the fault hook: node3 receives
/// node2's write before the node1 write it depends on, buffers it, and applies
/// it once the node1 write arrives.
mod out_of_order {
    use serde_json::{json, Value};

    use super::common::{clock, vclock, wait_for, EVENTUALLY};
    use super::TestCluster;

    #[test]
    fn dependent_write_is_buffered_until_its_dependency_arrives() {
        // No repair through node2 while the link is paused: node3 must get
        // node1's write from node1, after the resume.
        let cluster = TestCluster::start_with(3, &[("KVNODE_REPAIR_AFTER", "1h")]);
        cluster.pause(1, 3);
        let (status, links) = cluster.get(1, "/admin/v1/links");
        assert_eq!(
            (status, &links["paused"]),
            (200, &json!(["node3"])),
            "{links}"
        );

        let first = cluster.write(1, "x", json!(100), None);
        assert_eq!(first, vclock(&[("node1", 1)]));
        let context = wait_for(EVENTUALLY, "node2 to read x = 100", || {
            match cluster.read(2, "x") {
                (value, context) if value == json!(100) => Ok(context),
                (value, context) => Err(format!("x = {value} at {context}")),
            }
        });
        let second = cluster.write(2, "x", json!(200), Some(&context));
        assert_eq!(second, vclock(&[("node1", 1), ("node2", 1)]));

        // node3 holds node2's write, waiting for node1's.
        let buffered = wait_for(EVENTUALLY, "node3 to buffer node2's write", || {
            let status = cluster.status(3);
            if status["buffered_total"] == json!(1) {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        });
        assert_eq!(buffered["buffered"], json!({"node2": 1}), "{buffered}");
        assert_eq!(
            buffered["buffered_events"],
            json!([{
                "dot": {"origin": "node2", "seq": 1},
                "key": "x",
                "waiting_for": [{"node": "node1", "have": 0, "want": 1}],
            }]),
            "{buffered}"
        );
        assert_eq!(clock(&buffered["applied"]), vclock(&[]), "{buffered}");
        let (value, read_clock) = cluster.read(3, "x");
        assert_eq!(value, Value::Null, "node3 must not show x = 200 yet");
        assert_eq!(read_clock, vclock(&[]));
        let paused = &cluster.status(1)["peers"];
        assert_eq!(
            paused
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p["node"].clone(), p["paused"].clone()))
                .collect::<Vec<_>>(),
            vec![
                (json!("node2"), json!(false)),
                (json!("node3"), json!(true))
            ],
            "{paused}"
        );

        cluster.resume(1, 3);
        let done = wait_for(EVENTUALLY, "node3 to apply both writes", || {
            let (value, _) = cluster.read(3, "x");
            let status = cluster.status(3);
            if value == json!(200)
                && status["buffered_total"] == json!(0)
                && clock(&status["applied"]).covers(&second)
            {
                Ok(status)
            } else {
                Err(format!("x = {value}, status {status}"))
            }
        });
        assert_eq!(done["buffered_events"], json!([]), "{done}");
        // node2's write saw node1's: it replaced it, no sibling is left over.
        let (status, kv) = cluster.get(3, "/v1/kv/x");
        assert_eq!(status, 200, "{kv}");
        assert_eq!(kv["value"], json!(200), "{kv}");
        assert_eq!(kv["siblings"].as_array().map(Vec::len), Some(1), "{kv}");
        cluster.wait_converged(&second);
    }
}

/// Repair through any replica: a write reaches a node whose link from the
/// write's origin is cut, through another node, even after the origin died.
mod repair {
    use serde_json::json;

    use super::common::{vclock, wait_until, EVENTUALLY};
    use super::TestCluster;

    #[test]
    fn a_write_reaches_a_cut_off_node_through_another_replica() {
        let mut cluster = TestCluster::start_with(
            3,
            &[
                ("KVNODE_REPAIR_AFTER", "300ms"),
                ("KVNODE_SYNC_INTERVAL", "100ms"),
            ],
        );
        cluster.pause(1, 3);
        let ts = cluster.write(1, "r", json!("repaired"), None);
        assert_eq!(ts, vclock(&[("node1", 1)]));
        wait_until(EVENTUALLY, "node2 to apply node1's write", || {
            cluster.clock(2).covers(&ts)
        });
        // The origin dies; only node2 holds the write now.
        cluster.kill(1);
        // Shown once applied, and in the published clock once synced.
        wait_until(EVENTUALLY, "node3 to get node1's write from node2", || {
            cluster.read(3, "r").0 == json!("repaired") && cluster.clock(3) == ts
        });
        assert_eq!(cluster.clock(2), ts);
    }
}

/// Concurrent writes to one key: every node ends with the same siblings and the
/// same winner, and a write with their context replaces them all.
mod concurrent_writes {
    use serde_json::{json, Value};
    use vclock_proto::VClock;

    use super::common::{clock, vclock, wait_for, EVENTUALLY};
    use super::TestCluster;

    fn kv(cluster: &TestCluster, n: usize, key: &str) -> Value {
        let (status, body) = cluster.get(n, &format!("/v1/kv/{key}"));
        assert_eq!(status, 200, "GET /v1/kv/{key} on node{n}: {body}");
        body
    }

    /// The answers of `GET /v1/kv/{key}` on every node, checked to be the same
    /// (siblings, winner, found) everywhere, and `/read` to agree with them.
    fn same_everywhere(cluster: &TestCluster, key: &str) -> Value {
        let answers: Vec<Value> = cluster.numbers().map(|n| kv(cluster, n, key)).collect();
        for (i, answer) in answers.iter().enumerate() {
            for field in ["siblings", "value", "found", "context"] {
                assert_eq!(
                    answer[field],
                    answers[0][field],
                    "{field} differs between node1 and node{}:\n{}\n{}",
                    i + 1,
                    answers[0],
                    answer
                );
            }
            let (value, _) = cluster.read(i + 1, key);
            assert_eq!(value, answer["value"], "/read on node{}", i + 1);
        }
        answers[0].clone()
    }

    #[test]
    fn siblings_converge_and_a_write_with_their_context_resolves_them() {
        let cluster = TestCluster::start(3);
        cluster.pause_all();
        let mut all = VClock::new();
        for n in cluster.numbers() {
            let ts = cluster.write(n, "k", json!(format!("from node{n}")), None);
            assert_eq!(
                ts,
                vclock(&[(cluster.id(n), 1)]),
                "no write reached node{n}"
            );
            all.merge(&ts);
        }
        // Each node sees only its own write while the links are paused.
        for n in cluster.numbers() {
            assert_eq!(
                kv(&cluster, n, "k")["siblings"].as_array().unwrap().len(),
                1
            );
        }

        cluster.resume_all();
        cluster.wait_converged(&all);
        let merged = same_everywhere(&cluster, "k");
        let siblings = merged["siblings"].as_array().unwrap();
        assert_eq!(siblings.len(), 3, "{merged}");
        let mut dots: Vec<Value> = siblings.iter().map(|s| s["dot"].clone()).collect();
        dots.sort_by_key(|d| d.to_string());
        assert_eq!(
            dots,
            vec![
                json!({"origin": "node1", "seq": 1}),
                json!({"origin": "node2", "seq": 1}),
                json!({"origin": "node3", "seq": 1}),
            ]
        );
        // The winner is the largest (sum of timestamp, origin): node3's, listed last.
        assert_eq!(merged["value"], json!("from node3"), "{merged}");
        assert_eq!(siblings[2]["value"], json!("from node3"), "{merged}");
        assert_eq!(merged["found"], json!(true));
        assert_eq!(clock(&merged["context"]), all);

        // Resolve at node1 with the context that saw all three.
        let (status, put) = cluster.put(
            1,
            "/v1/kv/k",
            &json!({"value": "resolved", "context": merged["context"]}),
        );
        assert_eq!(status, 200, "{put}");
        assert_eq!(put["dot"], json!({"origin": "node1", "seq": 2}), "{put}");
        let resolved = clock(&put["timestamp"]);
        assert_eq!(
            resolved,
            vclock(&[("node1", 2), ("node2", 1), ("node3", 1)])
        );
        cluster.wait_converged(&resolved);
        let after = same_everywhere(&cluster, "k");
        assert_eq!(after["siblings"].as_array().unwrap().len(), 1, "{after}");
        assert_eq!(after["value"], json!("resolved"), "{after}");

        // A delete with that context: absent everywhere at once (the tombstone
        // is the only sibling), and the tombstone is collected everywhere once
        // every node has applied the delete.
        let (status, deleted) = super::common::delete(&format!(
            "{}/v1/kv/k?context={}",
            cluster.url(2),
            super::common::encode(&after["context"].to_string())
        ));
        assert_eq!(status, 200, "{deleted}");
        assert_eq!(
            deleted["dot"],
            json!({"origin": "node2", "seq": 2}),
            "{deleted}"
        );
        let deleted = clock(&deleted["timestamp"]);
        cluster.wait_converged(&deleted);
        for n in cluster.numbers() {
            let gone = kv(&cluster, n, "k");
            assert_eq!(gone["found"], json!(false), "node{n}: {gone}");
            assert_eq!(gone["value"], Value::Null, "node{n}: {gone}");
            assert!(
                gone["siblings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|s| s["deleted"] == json!(true)),
                "node{n}: only a tombstone may remain: {gone}"
            );
            assert_eq!(cluster.read(n, "k").0, Value::Null, "node{n}");
        }
        wait_for(
            EVENTUALLY,
            "every node to collect the stable tombstone",
            || {
                let answers: Vec<Value> = cluster.numbers().map(|n| kv(&cluster, n, "k")).collect();
                if answers.iter().all(|a| a["siblings"] == json!([])) {
                    Ok(())
                } else {
                    Err(format!("{answers:?}"))
                }
            },
        );
        let collected = same_everywhere(&cluster, "k");
        assert_eq!(collected["found"], json!(false), "{collected}");
        assert_eq!(clock(&collected["context"]), deleted, "{collected}");
    }
}

/// Bad requests: a 4xx JSON error `{"error":{"code","message"}}`, and nothing
/// changes. Contexts that cannot be satisfied: 409 when the origin says the
/// writes were never made, 503 after `causal_wait` when it cannot be asked.
mod bad_input {
    use serde_json::{json, Value};
    use vclock_proto::VClock;

    use super::common::{request, vclock, wait_until, EVENTUALLY};
    use super::TestCluster;

    const JSON: Option<&str> = Some("application/json");

    /// What a case expects: an exact status (or any 4xx) and maybe an error code.
    #[derive(Debug, Clone, Copy)]
    enum Status {
        Exactly(u16),
        Any4xx,
    }

    #[derive(Debug)]
    struct Case {
        name: &'static str,
        node: usize,
        method: &'static str,
        path: String,
        body: Option<(Option<&'static str>, Vec<u8>)>,
        status: Status,
        code: Option<&'static str>,
    }

    fn case(name: &'static str, method: &'static str, path: &str) -> Case {
        Case {
            name,
            node: 2,
            method,
            path: path.to_owned(),
            body: None,
            status: Status::Any4xx,
            code: None,
        }
    }

    impl Case {
        fn json(mut self, body: Value) -> Self {
            self.body = Some((JSON, body.to_string().into_bytes()));
            self
        }
        fn raw(mut self, content_type: Option<&'static str>, body: &[u8]) -> Self {
            self.body = Some((content_type, body.to_vec()));
            self
        }
        fn status(mut self, status: u16) -> Self {
            self.status = Status::Exactly(status);
            self
        }
        fn code(mut self, code: &'static str) -> Self {
            self.code = Some(code);
            self
        }
    }

    /// Checks the shape of an error answer and returns its `error` object.
    fn check_error(what: &str, status: u16, body: &Value, expected: Status) -> Value {
        match expected {
            Status::Exactly(want) => assert_eq!(status, want, "{what}: {body}"),
            Status::Any4xx => assert!((400..500).contains(&status), "{what}: {status} {body}"),
        }
        let error = &body["error"];
        assert!(
            error["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{what}: no error.code in {body}"
        );
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: no error.message in {body}"
        );
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(1),
            "{what}: only `error` expected in {body}"
        );
        error.clone()
    }

    fn write_body(key: Value, value: Value, context: Option<Value>) -> Value {
        let mut body = json!({ "key": key, "value": value });
        if let Some(context) = context {
            body["context"] = context;
        }
        body
    }

    fn with_context(context: Value) -> Value {
        write_body(json!("pre"), json!("after"), Some(context))
    }

    fn event(origin: &str, seq: u64, deps: Value) -> Value {
        json!({"origin": origin, "seq": seq, "key": "pre", "op": {"put": "after"}, "deps": deps})
    }

    fn cases() -> Vec<Case> {
        let long_key = "k".repeat(1025);
        let big_value = "v".repeat(1024 * 1024);
        let huge_value = "v".repeat(3 * 1024 * 1024);
        vec![
            // Bodies that are not a JSON object.
            case("malformed JSON", "POST", "/write")
                .raw(JSON, br#"{"key": "pre", "value": "#)
                .status(400)
                .code("bad_request"),
            case("empty body", "POST", "/write").raw(JSON, b"").status(400),
            case("invalid UTF-8", "POST", "/write")
                .raw(JSON, b"{\"key\": \"\xff\xfe\", \"value\": 1}")
                .status(400),
            case("a JSON array", "POST", "/write").json(json!([1, 2])).status(400),
            case("a JSON string", "POST", "/write").json(json!("pre")).status(400),
            case("text/plain", "POST", "/write")
                .raw(Some("text/plain"), br#"{"key":"pre","value":"after"}"#)
                .status(415)
                .code("unsupported_media_type"),
            case("no content type", "POST", "/write")
                .raw(None, br#"{"key":"pre","value":"after"}"#)
                .status(415)
                .code("unsupported_media_type"),
            case("form data", "POST", "/write")
                .raw(Some("application/x-www-form-urlencoded"), b"key=pre&value=after")
                .status(415),
            // Keys.
            case("missing key", "POST", "/write")
                .json(json!({"value": "after"}))
                .status(400),
            case("key is a number", "POST", "/write")
                .json(write_body(json!(1), json!("after"), None))
                .status(400),
            case("key is null", "POST", "/write")
                .json(write_body(Value::Null, json!("after"), None))
                .status(400),
            case("key is an object", "POST", "/write")
                .json(write_body(json!({"k": "pre"}), json!("after"), None))
                .status(400),
            case("key is a list", "POST", "/write")
                .json(write_body(json!(["pre"]), json!("after"), None))
                .status(400),
            case("empty key", "POST", "/write")
                .json(write_body(json!(""), json!("after"), None))
                .status(400),
            case("key over 1 KiB", "POST", "/write")
                .json(write_body(json!(long_key), json!("after"), None))
                .status(413)
                .code("too_large"),
            // Values.
            case("missing value", "POST", "/write")
                .json(json!({"key": "pre"}))
                .status(400),
            case("value over 1 MiB", "POST", "/write")
                .json(write_body(json!("pre"), json!(big_value), None))
                .status(413)
                .code("too_large"),
            case("body far over the limit", "POST", "/write")
                .json(write_body(json!("pre"), json!(huge_value), None))
                .status(413)
                .code("too_large"),
            // Contexts.
            case("context is a list", "POST", "/write")
                .json(with_context(json!([1, 2, 3])))
                .status(400),
            case("context is a string", "POST", "/write")
                .json(with_context(json!("node1:1")))
                .status(400),
            case("context is a number", "POST", "/write")
                .json(with_context(json!(1)))
                .status(400),
            case("negative counter", "POST", "/write")
                .json(with_context(json!({"node1": -1})))
                .status(400),
            case("fractional counter", "POST", "/write")
                .json(with_context(json!({"node1": 1.5})))
                .status(400),
            case("string counter", "POST", "/write")
                .json(with_context(json!({"node1": "1"})))
                .status(400),
            case("counter past u64", "POST", "/write")
                .raw(
                    JSON,
                    br#"{"key":"pre","value":"after","context":{"node1":18446744073709551616}}"#,
                )
                .status(400),
            case("context names an unknown node", "POST", "/write")
                .json(with_context(json!({"node9": 1})))
                .status(400)
                .code("unknown_node"),
            // Native API.
            case("native: malformed JSON", "PUT", "/v1/kv/pre")
                .raw(JSON, b"{value:")
                .status(400),
            case("native: text/plain", "PUT", "/v1/kv/pre")
                .raw(Some("text/plain"), br#"{"value":"after"}"#)
                .status(415),
            case("native: empty key", "PUT", "/v1/kv/")
                .json(json!({"value": "after"}))
                .status(400),
            case("native: key over 1 KiB", "PUT", &format!("/v1/kv/{}", "k".repeat(1025)))
                .json(json!({"value": "after"}))
                .status(413),
            case("native: context is not JSON", "GET", "/v1/kv/pre?context=node1")
                .status(400),
            case(
                "native: context names an unknown node",
                "GET",
                "/v1/kv/pre?context=%7B%22node9%22%3A1%7D",
            )
            .status(400)
            .code("unknown_node"),
            case(
                "native: negative counter",
                "DELETE",
                "/v1/kv/pre?context=%7B%22node1%22%3A-1%7D",
            )
            .status(400),
            case("native: put with a string context", "PUT", "/v1/kv/pre")
                .json(json!({"value": "after", "context": "x"}))
                .status(400),
            // Reads.
            case("read without key", "GET", "/read").status(400),
            case("read with an empty key", "GET", "/read?key=").status(400),
            case("read with a long key", "GET", &format!("/read?key={}", "k".repeat(1025)))
                .status(413),
            // Routes and methods.
            case("unknown route", "GET", "/nope").status(404).code("not_found"),
            case("root", "GET", "/").status(404),
            case("unknown fault action", "POST", "/admin/v1/links/node1/explode")
                .json(json!({}))
                .status(404),
            case("fault hook for a non-peer", "POST", "/admin/v1/links/node2/pause")
                .json(json!({}))
                .status(404),
            case("GET /write", "GET", "/write").status(405),
            case("POST /read", "POST", "/read")
                .json(json!({"key": "pre"}))
                .status(405),
            case("DELETE /health", "DELETE", "/health").status(405),
            case("POST /v1/kv/pre", "POST", "/v1/kv/pre")
                .json(json!({"value": "after"}))
                .status(405),
            case("GET /peer/v1/events", "GET", "/peer/v1/events").status(405),
            // Peer API.
            case("batch from a non-member", "POST", "/peer/v1/events")
                .json(json!({"from": "node9", "events": []}))
                .status(400),
            case("batch from the node itself", "POST", "/peer/v1/events")
                .json(json!({"from": "node2", "events": []}))
                .status(400),
            case("batch with an unknown origin", "POST", "/peer/v1/events")
                .json(json!({"from": "node1", "events": [event("node9", 1, json!({}))]}))
                .status(400),
            case("batch with deps naming an unknown node", "POST", "/peer/v1/events")
                .json(json!({"from": "node1", "events": [event("node1", 2, json!({"node1": 1, "node9": 1}))]}))
                .status(400),
            case("batch with seq 0", "POST", "/peer/v1/events")
                .json(json!({"from": "node1", "events": [event("node1", 0, json!({}))]}))
                .status(400),
            case("batch with inconsistent deps", "POST", "/peer/v1/events")
                .json(json!({"from": "node1", "events": [event("node1", 3, json!({"node1": 1}))]}))
                .status(400),
            case("batch claiming the receiver's own writes", "POST", "/peer/v1/events")
                .json(json!({"from": "node1", "events": [event("node2", 5, json!({"node2": 4}))]}))
                .status(400),
            case("batch with an invalid event after a valid one", "POST", "/peer/v1/events")
                .json(json!({"from": "node3", "events": [
                    event("node3", 1, json!({"node1": 1})),
                    event("node9", 1, json!({})),
                ]}))
                .status(400),
            case("malformed batch", "POST", "/peer/v1/events")
                .raw(JSON, br#"{"from": "node1", "events": [{"origin"#)
                .status(400),
            case("clock exchange from a non-member", "POST", "/peer/v1/sync")
                .json(json!({"node": "node9", "applied": {}}))
                .status(400),
            case("clock exchange naming an unknown node", "POST", "/peer/v1/sync")
                .json(json!({"node": "node1", "applied": {"node9": 3}}))
                .status(400),
        ]
    }

    /// The state that bad input must not change: every node's clock and the
    /// value of `pre` on every node.
    fn snapshot(cluster: &TestCluster) -> Vec<(VClock, Value)> {
        cluster
            .numbers()
            .map(|n| (cluster.clock(n), cluster.read(n, "pre").0))
            .collect()
    }

    fn converged_cluster(env: &[(&str, &str)]) -> (TestCluster, Vec<(VClock, Value)>) {
        let cluster = TestCluster::start_with(3, env);
        let ts = cluster.write(1, "pre", json!("before"), None);
        let clock = cluster.wait_converged(&ts);
        let before = snapshot(&cluster);
        assert!(
            before
                .iter()
                .all(|s| *s == (clock.clone(), json!("before"))),
            "{before:?}"
        );
        (cluster, before)
    }

    #[test]
    fn bad_requests_get_a_json_4xx_and_change_nothing() {
        let (cluster, before) = converged_cluster(&[("KVNODE_CAUSAL_WAIT", "2s")]);
        for case in cases() {
            let url = format!("{}{}", cluster.url(case.node), case.path);
            let body = case.body.as_ref().map(|(t, b)| (*t, b.as_slice()));
            let (status, answer) = request(case.method, &url, body);
            let what = format!("{} ({} {})", case.name, case.method, case.path);
            let error = check_error(&what, status, &answer, case.status);
            if let Some(code) = case.code {
                assert_eq!(error["code"], json!(code), "{what}: {answer}");
            }
            assert_eq!(snapshot(&cluster), before, "{what} changed the state");
        }
    }

    #[test]
    fn contexts_with_writes_never_made_get_409() {
        let (cluster, before) = converged_cluster(&[("KVNODE_CAUSAL_WAIT", "2s")]);
        // node2 asks node1, which answers that it made one write, not 50.
        let cases = [
            ("/write", with_context(json!({"node1": 50}))),
            (
                "/v1/kv/pre",
                json!({"value": "after", "context": {"node1": 50}}),
            ),
        ];
        for (path, body) in cases {
            let method = if path == "/write" { "POST" } else { "PUT" };
            let (status, answer) = request(
                method,
                &format!("{}{path}", cluster.url(2)),
                Some((JSON, body.to_string().as_bytes())),
            );
            let error = check_error(path, status, &answer, Status::Exactly(409));
            assert_eq!(error["code"], json!("unknown_history"), "{answer}");
            assert_eq!(
                error["missing"],
                json!([{"node": "node1", "have": 1, "want": 50}]),
                "{answer}"
            );
            assert_eq!(snapshot(&cluster), before, "{path} changed the state");
        }
        // Writes of the receiving node itself that it never made: refused at once.
        let (status, answer) = cluster.post(2, "/write", &with_context(json!({"node2": 7})));
        let error = check_error("own writes", status, &answer, Status::Exactly(409));
        assert_eq!(
            error["missing"],
            json!([{"node": "node2", "have": 0, "want": 7}]),
            "{answer}"
        );
        // The absurd counter: u64::MAX.
        let (status, answer) = cluster.post(2, "/write", &with_context(json!({"node3": u64::MAX})));
        check_error("u64::MAX", status, &answer, Status::Exactly(409));
        let (status, answer) = cluster.get(2, "/v1/kv/pre?context=%7B%22node2%22%3A7%7D");
        check_error(
            "read with own writes",
            status,
            &answer,
            Status::Exactly(409),
        );
        assert_eq!(snapshot(&cluster), before);
    }

    #[test]
    fn context_of_a_dead_origin_times_out_with_503() {
        let (mut cluster, before) = converged_cluster(&[("KVNODE_CAUSAL_WAIT", "1s")]);
        cluster.kill(1);
        let live = |s: &[(VClock, Value)]| s[1..].to_vec();
        let snapshot_live = |cluster: &TestCluster| {
            [2, 3]
                .map(|n| (cluster.clock(n), cluster.read(n, "pre").0))
                .to_vec()
        };
        let cases = [
            (
                "POST",
                "/write".to_owned(),
                Some(with_context(json!({"node1": 3}))),
            ),
            (
                "PUT",
                "/v1/kv/pre".to_owned(),
                Some(json!({"value": "after", "context": {"node1": 3, "node2": 0}})),
            ),
            (
                "GET",
                "/v1/kv/pre?context=%7B%22node1%22%3A3%7D".to_owned(),
                None,
            ),
        ];
        for (method, path, body) in cases {
            let text = body.map(|b| b.to_string());
            let (status, answer) = request(
                method,
                &format!("{}{path}", cluster.url(2)),
                text.as_deref().map(|t| (JSON, t.as_bytes())),
            );
            let what = format!("{method} {path}");
            assert_eq!(status, 503, "{what}: {answer}");
            let error = &answer["error"];
            assert_eq!(error["code"], json!("causal_timeout"), "{what}: {answer}");
            assert!(error["message"].as_str().is_some(), "{what}: {answer}");
            assert_eq!(
                error["missing"],
                json!([{"node": "node1", "have": 1, "want": 3}]),
                "{what}: {answer}"
            );
            assert_eq!(snapshot_live(&cluster), live(&before), "{what}");
        }
        // The rest of the cluster still works.
        let ts = cluster.write(3, "other", json!(1), None);
        wait_until(EVENTUALLY, "node2 to apply node3's write", || {
            cluster.clock(2).covers(&ts)
        });
        assert_eq!(ts, vclock(&[("node1", 1), ("node3", 1)]));
    }
}

/// Concurrent client sessions through the compatibility API. Each session sends
/// the merge of every timestamp it has received as the context of its writes.
/// Every operation is recorded and the history, with every node's final state
/// once the cluster has converged, is checked by kvctl's causal checker; the
/// winner each read shows is checked here.
mod sessions {
    use std::time::{SystemTime, UNIX_EPOCH};

    use kvctl::check::{self, Api, FinalState, OpKind, Recorder};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::{json, Value};
    use vclock_proto::{GetResponse, ReadResponse, VClock};

    use super::common::{encode, get, post, TestCluster};

    const SESSIONS: usize = 6;
    const OPS: usize = 150;
    const KEYS: [&str; 3] = ["a", "b", "c"];

    /// An answer's JSON as the message it must be.
    fn parse<T: serde::de::DeserializeOwned>(what: &str, answer: Value) -> T {
        serde_json::from_value(answer.clone())
            .unwrap_or_else(|e| panic!("{what}: unexpected answer {answer}: {e}"))
    }

    /// The value a read shows is the winner of its siblings, listed last: the
    /// live sibling with the largest (sum of its timestamp, origin).
    fn assert_winner(what: &str, answer: &GetResponse) {
        let winner = answer
            .siblings
            .iter()
            .filter(|s| !s.deleted)
            .max_by_key(|s| (s.timestamp.sum(), s.dot.origin.clone()));
        let shown = answer.value.to_json_value().unwrap();
        match winner {
            None => assert_eq!(shown, Value::Null, "{what}: a value without a sibling"),
            Some(w) => {
                assert_eq!(
                    shown,
                    w.value.to_json_value().unwrap(),
                    "{what}: the winner"
                );
                assert_eq!(
                    answer.siblings.last(),
                    Some(w),
                    "{what}: the winner is listed last"
                );
            }
        }
    }

    /// One session of `OPS` random operations at random nodes: compatibility
    /// writes with the session's context, and reads through either API (the
    /// native one with the context). Each is recorded with `recorder`.
    fn run_session(urls: &[String], session: usize, seed: u64, recorder: &Recorder) {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(session as u64));
        let mut context = VClock::new();
        for i in 0..OPS {
            let node = &urls[rng.random_range(0..urls.len())];
            let key = KEYS[rng.random_range(0..KEYS.len())];
            if rng.random_bool(0.5) {
                let value = format!("s{session}-{i}");
                let call = recorder.invoke_write(session, node, key, &value, &context);
                let body = json!({"key": key, "value": value, "context": context});
                let (status, answer) = post(&format!("{node}/write"), &body);
                let what = format!("session {session}: write {body} at {node}");
                assert_eq!(status, 200, "{what}: {answer}");
                let ts: VClock = parse(&what, answer["timestamp"].clone());
                context.merge(&ts);
                recorder.written(call, ts);
            } else if rng.random_bool(0.5) {
                let call = recorder.invoke_read(session, node, key, &context);
                let url = format!("{node}/read?key={}", encode(key));
                let (status, answer) = get(&url);
                assert_eq!(status, 200, "session {session}: GET {url}: {answer}");
                let answer: ReadResponse = parse(&url, answer);
                context.merge(&answer.timestamp);
                recorder.read_value(call, &answer);
            } else {
                let call = recorder
                    .invoke_read(session, node, key, &context)
                    .via(Api::Native);
                let url = format!(
                    "{node}/v1/kv/{key}?context={}",
                    encode(&json!(context).to_string())
                );
                let (status, answer) = get(&url);
                assert_eq!(status, 200, "session {session}: GET {url}: {answer}");
                let answer: GetResponse = parse(&url, answer);
                assert_winner(&format!("session {session}: GET {url}"), &answer);
                context.merge(&answer.context);
                recorder.read_siblings(call, &answer);
            }
        }
    }

    #[test]
    fn concurrent_sessions_read_causally_and_converge() {
        let seed = std::env::var("KVNODE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            });
        println!("seed {seed} (set KVNODE_TEST_SEED={seed} to repeat the same choices)");
        let cluster = TestCluster::start_with(3, &[("KVNODE_CAUSAL_WAIT", "5s")]);
        let urls = cluster.urls();
        let recorder = Recorder::new(Api::Compat, urls.iter().cloned());
        std::thread::scope(|scope| {
            for s in 0..SESSIONS {
                let (urls, recorder) = (&urls, &recorder);
                scope.spawn(move || run_session(urls, s, seed, recorder));
            }
        });
        let mut history = recorder.into_history();

        // Every write has its own dot, and the nodes apply exactly those.
        let mut all = VClock::new();
        let mut writes = 0;
        for op in &history.ops {
            if let OpKind::Write {
                timestamp: Some(ts),
                ..
            } = &op.kind
            {
                all.merge(ts);
                writes += 1;
            }
        }
        assert_eq!(all.sum(), writes, "every write has its own dot");
        let converged = cluster.wait_converged(&all);
        assert_eq!(converged, all, "no node applied a write that was not made");

        // Every node's final state; each shows the winner of its siblings, as
        // the prototype's read does.
        let mut states = Vec::new();
        for (n, url) in cluster.numbers().zip(&urls) {
            let mut state = FinalState::new(url.clone(), cluster.clock(n));
            for key in KEYS {
                let (status, body) = cluster.get(n, &format!("/v1/kv/{key}"));
                assert_eq!(status, 200, "{body}");
                let answer: GetResponse = parse(key, body);
                assert_winner(&format!("{key} on node{n}"), &answer);
                let (value, _) = cluster.read(n, key);
                assert_eq!(
                    value,
                    answer.value.to_json_value().unwrap(),
                    "{key} on node{n}"
                );
                state.insert(key, &answer);
            }
            states.push(state);
        }
        history.finish(states);

        let report = check::check(&history);
        let reads = history.ops.len() - writes as usize;
        println!(
            "{writes} writes, {reads} reads, {} checked",
            report.reads_checked
        );
        assert!(
            report.violations.is_empty(),
            "{} causal anomalies (seed {seed}), first: {:#?}",
            report.violations.len(),
            &report.violations[..report.violations.len().min(5)]
        );
        assert_eq!(report.converged, Some(true), "the nodes agree");
        assert!(report.reads_checked > 0, "{report:?}");
    }

    /// The prototype client's pattern, read at a node then write there with the
    /// read's timestamp as context, while other clients write to the same node.
    /// A clock a node has shown must be one it accepts as a context at once: its
    /// `/health` must cover it and a write with it must succeed.
    #[test]
    fn a_clock_a_node_has_shown_is_a_context_it_accepts() {
        use std::sync::atomic::{AtomicBool, Ordering};

        const ROUNDS: usize = 300;
        let cluster = TestCluster::start(3);
        let url = cluster.url(1).to_owned();
        let stop = AtomicBool::new(false);
        let failures: Vec<String> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..3)
                .map(|t| {
                    let (url, stop) = (&url, &stop);
                    scope.spawn(move || {
                        let mut i = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let body = json!({"key": format!("load{t}"), "value": i});
                            let (status, answer) = post(&format!("{url}/write"), &body);
                            assert_eq!(status, 200, "load writer {t}: {answer}");
                            i += 1;
                        }
                    })
                })
                .collect();
            let mut failures = Vec::new();
            for round in 0..ROUNDS {
                let (_, shown) = cluster.read(1, "load0");
                let health = cluster.clock(1);
                if !health.covers(&shown) {
                    failures.push(format!(
                        "round {round}: /read showed {shown}, the /health after it {health}"
                    ));
                }
                let body = json!({"key": "rw", "value": round, "context": shown});
                let (status, answer) = post(&format!("{url}/write"), &body);
                if status != 200 {
                    failures.push(format!(
                        "round {round}: write with context {shown}: {status} {answer}"
                    ));
                }
            }
            stop.store(true, Ordering::Relaxed);
            for writer in writers {
                writer.join().expect("a load writer panicked");
            }
            failures
        });
        assert!(
            failures.is_empty(),
            "{} of {ROUNDS} rounds failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// The trace of both prototype scenarios: what each node recorded, in order,
/// with its clock, and the send each receive came from.
mod traces {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;

    use serde_json::{json, Value};
    use vclock_proto::{TraceEvent, TraceKind, TraceResponse};

    use super::common::{get, vclock, wait_for, EVENTUALLY};
    use super::TestCluster;

    fn trace(cluster: &TestCluster, n: usize) -> Vec<TraceEvent> {
        let (status, body) = get(&format!("{}/v1/trace", cluster.url(n)));
        assert_eq!(status, 200, "{body}");
        let trace: TraceResponse = serde_json::from_value(body).unwrap();
        assert!(trace.enabled);
        trace.events
    }

    /// The records of node `n` about key `key` (sends and receives carry no
    /// key: kept when the batch holds a write to it).
    fn about(events: &[TraceEvent], key: &str, dots: &[vclock_proto::Dot]) -> Vec<TraceEvent> {
        events
            .iter()
            .filter(|e| e.key.as_deref() == Some(key) || e.dots.iter().any(|d| dots.contains(d)))
            .cloned()
            .collect()
    }

    fn kinds(events: &[TraceEvent]) -> Vec<TraceKind> {
        events.iter().map(|e| e.kind).collect()
    }

    fn start() -> TestCluster {
        TestCluster::start_with(
            3,
            &[
                ("KVNODE_TRACE_BUFFER", "1000"),
                ("KVNODE_REPAIR_AFTER", "1h"),
            ],
        )
    }

    fn read_value(cluster: &TestCluster, n: usize, key: &str, want: Value) -> vclock_proto::VClock {
        wait_for(
            EVENTUALLY,
            format!("node{n} to read {key} = {want}"),
            || match cluster.read(n, key) {
                (value, context) if value == want => Ok(context),
                (value, context) => Err(format!("{key} = {value} at {context}")),
            },
        )
    }

    #[test]
    fn scenario_2_shows_node3_buffering_then_delivering_from_the_buffer() {
        use vclock_proto::Dot;
        let cluster = start();
        cluster.pause(1, 3);
        cluster.write(1, "x", json!(100), None);
        let context = read_value(&cluster, 2, "x", json!(100));
        cluster.write(2, "x", json!(200), Some(&context));
        wait_for(EVENTUALLY, "node3 to buffer node2's write", || {
            let status = cluster.status(3);
            (status["buffered_total"] == json!(1))
                .then_some(())
                .ok_or(status.to_string())
        });
        cluster.resume(1, 3);
        read_value(&cluster, 3, "x", json!(200));

        let (x1, x2) = (Dot::new("node1", 1), Dot::new("node2", 1));
        let all = about(&trace(&cluster, 3), "x", &[x1.clone(), x2.clone()]);
        use TraceKind::*;
        // The reads that waited for x = 200 come last; none saw a value before.
        let last = all.last().unwrap();
        assert_eq!(
            (last.kind, last.value.as_ref().map(|v| v.json())),
            (Read, Some("200"))
        );
        let node3: Vec<TraceEvent> = all.iter().filter(|e| e.kind != Read).cloned().collect();
        assert!(all
            .iter()
            .filter(|e| e.kind == Read)
            .all(|e| e.value.is_none() || e.id > node3.last().unwrap().id));
        assert_eq!(
            kinds(&node3),
            [Receive, Buffered, Receive, Deliver, DeliverFromBuffer],
            "{node3:#?}"
        );
        let (first, buffered, second, deliver, from_buffer) =
            (&node3[0], &node3[1], &node3[2], &node3[3], &node3[4]);
        assert_eq!(
            (first.peer.as_deref(), &first.dots),
            (Some("node2"), &vec![x2.clone()])
        );
        assert_eq!(buffered.dot.as_ref(), Some(&x2));
        assert_eq!(
            serde_json::to_value(&buffered.missing).unwrap(),
            json!([{"node": "node1", "have": 0, "want": 1}])
        );
        assert_eq!(
            buffered.clock,
            vclock(&[]),
            "nothing applied while it waits"
        );
        assert_eq!(
            (second.peer.as_deref(), &second.dots),
            (Some("node1"), &vec![x1.clone()])
        );
        assert_eq!(deliver.dot.as_ref(), Some(&x1));
        assert_eq!(deliver.clock, vclock(&[("node1", 1)]));
        assert_eq!(from_buffer.dot.as_ref(), Some(&x2));
        assert_eq!(from_buffer.clock, vclock(&[("node1", 1), ("node2", 1)]));
        assert_eq!(from_buffer.value.as_ref().map(|v| v.json()), Some("200"));
        assert!(node3.windows(2).all(|w| w[0].id < w[1].id));

        // Each receive names the send it came from, in the sender's trace.
        for receive in [first, second] {
            let cause = receive.cause.as_ref().expect("a receive names its send");
            let sender = cause.node.strip_prefix("node").unwrap().parse().unwrap();
            let send = trace(&cluster, sender)
                .into_iter()
                .find(|e| e.id == cause.id)
                .expect("the send is in the sender's trace");
            assert_eq!(send.kind, Send);
            assert_eq!(send.peer.as_deref(), Some("node3"));
            assert_eq!(send.dots, receive.dots);
        }
        // node2: it received node1's write, read it, wrote over it.
        let node2 = about(&trace(&cluster, 2), "x", &[x1, x2]);
        assert_eq!(
            node2
                .iter()
                .filter(|e| e.kind != Send && !(e.kind == Read && e.value.is_none()))
                .map(|e| e.kind)
                .collect::<Vec<_>>(),
            [Receive, Deliver, Read, Write],
            "{node2:#?}"
        );
        let write = node2.iter().find(|e| e.kind == Write).unwrap();
        assert_eq!(write.clock, vclock(&[("node1", 1), ("node2", 1)]));
        assert_eq!(write.siblings, Some(1));
    }

    #[test]
    fn scenario_1_and_concurrent_writes_show_siblings_then_their_resolution() {
        let cluster = start();
        // Scenario 1: x = 5 at node1, read at node2, x = 10 at node2, read at node3.
        cluster.write(1, "x", json!(5), None);
        let context = read_value(&cluster, 2, "x", json!(5));
        cluster.write(2, "x", json!(10), Some(&context));
        read_value(&cluster, 3, "x", json!(10));
        let node3 = trace(&cluster, 3);
        let applied: Vec<(TraceKind, String)> = node3
            .iter()
            .filter(|e| matches!(e.kind, TraceKind::Deliver | TraceKind::DeliverFromBuffer))
            .map(|e| (e.kind, e.dot.as_ref().unwrap().to_string()))
            .collect();
        assert_eq!(applied.len(), 2, "{node3:#?}");
        assert_eq!(applied[0].1, "node1:1");
        assert_eq!(applied[1].1, "node2:1");

        // Concurrent writes to y at node1 and node2: siblings, then resolved.
        cluster.pause_all();
        cluster.write(1, "y", json!("a"), None);
        cluster.write(2, "y", json!("b"), None);
        cluster.resume_all();
        let (_, kv) = wait_for(EVENTUALLY, "node1 to hold both siblings of y", || {
            let (status, kv) = cluster.get(1, "/v1/kv/y");
            (kv["siblings"].as_array().map(Vec::len) == Some(2))
                .then_some((status, kv.clone()))
                .ok_or(kv.to_string())
        });
        let both = super::common::clock(&kv["context"]);
        let (status, body) = cluster.put(
            1,
            &format!(
                "/v1/kv/y?context={}",
                super::common::encode(&both.to_string())
            ),
            &json!({"value": "c"}),
        );
        assert_eq!(status, 200, "{body}");
        let node1 = trace(&cluster, 1);
        let conflict: Vec<TraceKind> = node1
            .iter()
            .filter(|e| e.key.as_deref() == Some("y"))
            .map(|e| e.kind)
            .filter(|k| matches!(k, TraceKind::Siblings | TraceKind::Resolved))
            .collect();
        assert_eq!(
            conflict,
            [TraceKind::Siblings, TraceKind::Resolved],
            "{node1:#?}"
        );
    }

    #[test]
    fn the_stream_sends_held_records_then_new_ones() {
        let cluster = start();
        cluster.write(1, "k", json!(1), None);
        let response = ureq::get(&format!("{}/v1/trace/stream?after=0", cluster.url(1)))
            .timeout(Duration::from_secs(20))
            .call()
            .unwrap();
        assert_eq!(response.content_type(), "text/event-stream");
        let mut lines = BufReader::new(response.into_reader()).lines();
        let mut next_record = || loop {
            let line = lines.next().expect("the stream stays open").unwrap();
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str::<TraceEvent>(data).unwrap();
            }
        };
        let held = next_record();
        assert_eq!((held.id, held.kind), (1, TraceKind::Write));
        cluster.write(1, "k", json!(2), None);
        let live = loop {
            let record = next_record();
            if record.kind == TraceKind::Write {
                break record;
            }
        };
        assert_eq!(live.value.as_ref().map(|v| v.json()), Some("2"));
        assert!(live.id > held.id);

        // SIGTERM ends the stream rather than waiting for it: with a shutdown
        // timeout longer than the harness's deadline, stop() fails otherwise.
        let mut cluster = cluster;
        let log = cluster.log_path(1).to_owned();
        assert!(cluster.stop(1).success(), "see {}", log.display());
        // The stream has ended: reading it runs out instead of blocking.
        for line in lines {
            if line.is_err() {
                break;
            }
        }

        // A node without a trace says how to turn it on.
        let plain = TestCluster::start(1);
        let (status, body) = get(&format!("{}/v1/trace/stream", plain.url(1)));
        assert_eq!(status, 404, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("trace_buffer"),
            "{body}"
        );
    }
}
