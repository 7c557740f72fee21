//! Property tests of the HTTP handlers against hostile input, in-process (no
//! sockets): random and mutated bodies, queries, paths and content types, sent
//! to a node over the in-memory store.
//!
//! Every answer must be a 2xx, or a 4xx with a JSON error that changed nothing
//! (the applied clock, the buffer and the log are as before). The only 5xx
//! allowed are the two designed 503s (`docs/design.md`, "Interfaces"):
//! `causal_timeout` (a context the node cannot satisfy within `causal_wait`)
//! and `buffer_full` (the buffer of undeliverable events is at `max_buffered`;
//! the sender retries). A panic fails the test.
//!
//! Bodies start from valid messages (write, put, event batch, clock exchange)
//! with random keys, values, clocks and events, then get up to four mutations:
//! a value in the JSON tree replaced by an odd one (negative, fractional or
//! huge counters, unknown nodes, wrong types, deep nesting, long strings), or a
//! byte-level edit (flip, cut, insert, splice a token, truncate).
//! `HOSTILE_CASES=N` sets the cases per test (default 500).

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::rt::System;
use actix_web::test::{self, TestRequest};
use actix_web::App;
use kvnode::config::Config;
use kvnode::node::Node;
use kvnode::storage::MemStore;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

fn cases() -> u32 {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500)
}

/// node `n1` of `n1`, `n2`, `n3` (the peers are unreachable and no sender
/// runs), with small limits so that random input reaches them.
fn node() -> Arc<Node> {
    let env = [
        ("KVNODE_NODE_ID", "n1"),
        (
            "KVNODE_NODES",
            "n1=http://127.0.0.1:9,n2=http://127.0.0.1:9,n3=http://127.0.0.1:9",
        ),
        ("KVNODE_CAUSAL_WAIT", "50ms"),
        ("KVNODE_PEER_TIMEOUT", "50ms"),
        ("KVNODE_MAX_KEY_BYTES", "64"),
        ("KVNODE_MAX_VALUE_BYTES", "4096"),
        ("KVNODE_MAX_BATCH_EVENTS", "8"),
        ("KVNODE_MAX_BATCH_BYTES", "32768"),
        ("KVNODE_MAX_BUFFERED", "16"),
        ("KVNODE_FAULTS", "true"),
        // Its peers never answer: it starts its history without them.
        ("KVNODE_FORCE_NEW_HISTORY", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = Config::load_from(None, env).expect("a valid configuration");
    Node::start(config, Box::new(MemStore::new())).expect("a node")
}

// ---- generators ----------------------------------------------------------------------

fn node_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["n1", "n2", "n3"]).prop_map(String::from),
        1 => prop::sample::select(vec!["n9", "", "N1", "n1 ", "\u{0}"]).prop_map(String::from),
    ]
}

fn clock() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(node_id(), 0u64..4, 0..4).prop_map(|m| json!(m))
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["k", "a/b", "ключ", "x y", "%2F", "k?x=1"])
            .prop_map(String::from),
        "[a-z]{1,8}",
        ".{0,12}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What a write does, on the wire.
fn op() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value().prop_map(|v| json!({ "put": v })),
        Just(json!("delete")),
    ]
}

/// A transaction's writes: 0 to 4 of them, keys drawn from few, so that some
/// repeat.
fn writes() -> impl Strategy<Value = Value> {
    let write = ("[a-c]", op()).prop_map(|(key, op)| json!({"key": key, "op": op}));
    prop::collection::vec(write, 0..5).prop_map(Value::Array)
}

/// An event: mostly plausible (a peer's origin, `deps[origin] = seq - 1`, small
/// counters, so that batches are delivered, buffered or refused as full),
/// some of them transactions, sometimes anything.
fn event() -> impl Strategy<Value = Value> {
    let plausible = (
        prop::sample::select(vec!["n2", "n3"]),
        1u64..6,
        key(),
        op(),
        prop_oneof![4 => Just(0u64), 1 => 1u64..3],
        0u64..3,
    )
        .prop_map(|(origin, seq, key, op, own, other)| {
            let mut deps = json!({"n1": own, "n2": other, "n3": other});
            deps[origin] = json!(seq - 1);
            json!({"origin": origin, "seq": seq, "key": key, "op": op, "deps": deps})
        });
    let txn = (
        prop::sample::select(vec!["n2", "n3"]),
        1u64..6,
        writes(),
        0u64..3,
    )
        .prop_map(|(origin, seq, writes, other)| {
            let mut deps = json!({"n1": 0, "n2": other, "n3": other});
            deps[origin] = json!(seq - 1);
            json!({"origin": origin, "seq": seq, "writes": writes, "deps": deps})
        });
    let anything = (node_id(), 0u64..5, key(), op(), clock()).prop_map(
        |(origin, seq, key, op, deps)| {
            json!({"origin": origin, "seq": seq, "key": key, "op": op, "deps": deps})
        },
    );
    prop_oneof![9 => plausible, 3 => txn, 1 => anything]
}

/// Odd values to put anywhere in a body.
fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(-1)),
        Just(json!(1.5)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e300)),
        Just(json!("")),
        Just(json!("n9")),
        Just(json!(null)),
        Just(json!(true)),
        Just(json!([])),
        Just(json!({})),
        Just(json!({"n9": 1})),
        Just(json!({"n1": 1_000_000})),
        Just(json!({"n2": u64::MAX})),
        Just(json!("x".repeat(5000))),
        Just(json!({"put": 1})),
        Just(json!("delete")),
        (1usize..200).prop_map(|depth| {
            let mut v = json!(0);
            for _ in 0..depth {
                v = json!([v]);
            }
            v
        }),
        json_value(),
    ]
}

/// Byte sequences to splice into a body.
const TOKENS: &[&str] = &[
    "18446744073709551616",
    "-0",
    "1e400",
    "NaN",
    "\"\\ud800\"",
    "\\u0000",
    "\u{fffd}",
    "\"n9\"",
    ",",
    "{",
    "}",
    "[",
    "]",
    ":",
    "\"",
    "null",
    "\"context\":",
    "\"key\":",
    "\"events\":[",
    "\u{feff}",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the value at a random place of the tree (the index picks it).
    Replace(usize, Value),
    /// Remove a random member of an object.
    Remove(usize),
    /// Add an unknown member to the top-level object.
    Extra(String, Value),
    FlipByte(usize, u8),
    Cut(usize, usize),
    Insert(usize, Vec<u8>),
    Splice(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), odd_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => any::<usize>().prop_map(Mutation::Remove),
        1 => ("[a-z]{1,6}", odd_value()).prop_map(|(k, v)| Mutation::Extra(k, v)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipByte(i, b)),
        1 => (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::Cut(i, n)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Splice(i, t)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// Visits every value of `tree`; calls `f` on the `n`-th (modulo their count).
fn nth_value(tree: &mut Value, n: usize, f: impl FnOnce(&mut Value)) {
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Object(o) => o.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter_mut().find_map(|c| walk(c, n)),
            Value::Object(o) => o.values_mut().find_map(|c| walk(c, n)),
            _ => None,
        }
    }
    let mut n = n % count(tree);
    if let Some(v) = walk(tree, &mut n) {
        f(v);
    }
}

/// Applies the mutations: tree edits first, then byte edits on the text.
fn mutate(mut body: Value, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Replace(i, v) => nth_value(&mut body, *i, |at| *at = v.clone()),
            Mutation::Remove(i) => nth_value(&mut body, *i, |at| {
                if let Value::Object(o) = at {
                    if let Some(k) = o.keys().next().cloned() {
                        o.remove(&k);
                    }
                }
            }),
            Mutation::Extra(k, v) => {
                if let Value::Object(o) = &mut body {
                    o.insert(k.clone(), v.clone());
                }
            }
            _ => {}
        }
    }
    let mut bytes = body.to_string().into_bytes();
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::FlipByte(i, b) if !bytes.is_empty() => bytes[i % len] ^= b | 1,
            Mutation::Cut(i, n) => {
                let at = (i % len).min(bytes.len());
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            Mutation::Insert(i, b) => {
                let at = (i % len).min(bytes.len());
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Splice(i, t) => {
                let at = (i % len).min(bytes.len());
                bytes.splice(at..at, TOKENS[*t].bytes());
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
            _ => {}
        }
    }
    bytes
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
        1 => Just(Some("application/x-www-form-urlencoded")),
        1 => Just(Some("application/json; charset=latin1")),
    ]
}

/// A request: method, URI, content type and body.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    uri: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn with_body(
    method: Method,
    uri: String,
    base: impl Strategy<Value = Value>,
) -> impl Strategy<Value = Request> {
    (
        base,
        prop_oneof![
            1 => Just(Vec::new()),
            2 => prop::collection::vec(mutation(), 1..4),
        ],
        content_type(),
    )
        .prop_map(move |(body, mutations, content_type)| Request {
            method: method.clone(),
            uri: uri.clone(),
            content_type,
            body: Some(mutate(body, &mutations)),
        })
}

fn client_request() -> impl Strategy<Value = Request> {
    let write = (key(), json_value(), prop::option::of(clock())).prop_map(|(k, v, c)| {
        let mut body = json!({"key": k, "value": v});
        if let Some(c) = c {
            body["context"] = c;
        }
        body
    });
    let put = (json_value(), prop::option::of(clock())).prop_map(|(v, c)| {
        let mut body = json!({ "value": v });
        if let Some(c) = c {
            body["context"] = c;
        }
        body
    });
    let query = prop_oneof![
        Just(String::new()),
        clock().prop_map(|c| format!("?context={}", encode(&c.to_string()))),
        ".{0,12}".prop_map(|c| format!("?context={}", encode(&c))),
        "[a-z=&%0-9]{0,12}".prop_map(|q| format!("?{q}")),
    ];
    let txn_write = (writes(), prop::option::of(clock())).prop_map(|(writes, c)| {
        let mut body = json!({ "writes": writes });
        if let Some(c) = c {
            body["context"] = c;
        }
        body
    });
    let txn_read = (
        prop::collection::vec(key(), 0..5),
        prop::option::of(clock()),
    )
        .prop_map(|(keys, c)| {
            let mut body = json!({ "keys": keys });
            if let Some(c) = c {
                body["context"] = c;
            }
            body
        });
    prop_oneof![
        2 => with_body(Method::POST, "/v1/txn/write".into(), txn_write),
        1 => with_body(Method::POST, "/v1/txn/read".into(), txn_read),
        3 => with_body(Method::POST, "/write".into(), write),
        3 => (key(), put).prop_flat_map(|(k, put)| {
            with_body(Method::PUT, format!("/v1/kv/{}", encode(&k)), Just(put))
        }),
        1 => (key(), query.clone()).prop_map(|(k, q)| Request {
            method: Method::GET,
            uri: format!("/v1/kv/{}{q}", encode(&k)),
            content_type: None,
            body: None,
        }),
        1 => (key(), query).prop_map(|(k, q)| Request {
            method: Method::DELETE,
            uri: format!("/v1/kv/{}{q}", encode(&k)),
            content_type: None,
            body: None,
        }),
        1 => ".{0,12}".prop_map(|k| Request {
            method: Method::GET,
            uri: format!("/read?key={}", encode(&k)),
            content_type: None,
            body: None,
        }),
    ]
}

fn peer_request() -> impl Strategy<Value = Request> {
    let batch = (
        prop_oneof![4 => Just("n2".to_owned()), 1 => node_id()],
        prop::collection::vec(event(), 0..10),
    )
        .prop_map(|(from, events)| json!({"from": from, "events": events}));
    let sync =
        (node_id(), clock()).prop_map(|(node, applied)| json!({"node": node, "applied": applied}));
    let snapshot = (
        prop_oneof![3 => Just("n2".to_owned()), 1 => node_id()],
        clock(),
        prop::option::of(key()),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(node, applied, after, limit)| {
            json!({"node": node, "applied": applied, "after": after, "limit": limit})
        });
    prop_oneof![
        3 => with_body(Method::POST, "/peer/v1/events".into(), batch),
        1 => with_body(Method::POST, "/peer/v1/sync".into(), sync),
        1 => with_body(Method::POST, "/peer/v1/snapshot".into(), snapshot),
    ]
}

fn any_request() -> impl Strategy<Value = Request> {
    let methods = prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ]);
    let paths = prop_oneof![
        prop::sample::select(vec![
            "/health",
            "/write",
            "/read",
            "/status",
            "/metrics",
            "/openapi.json",
            "/v1/kv/",
            "/v1/kv/k",
            "/v1/txn/read",
            "/v1/txn/write",
            "/peer/v1/events",
            "/peer/v1/sync",
            "/peer/v1/snapshot",
            "/admin/v1/links",
            "/admin/v1/links/n2/pause",
            "/admin/v1/links/n2/resume",
            "/admin/v1/links/n9/pause",
            "/admin/v1/links/n2/explode",
            "/v1/kv/%FF%FE",
            "/read?key=%FF",
            "/read?key=a&key=b",
            "/",
        ])
        .prop_map(String::from),
        "/[a-z/%0-9?=&]{0,20}",
    ];
    (
        methods,
        paths,
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        content_type(),
    )
        .prop_map(|(method, uri, body, content_type)| Request {
            method,
            uri,
            content_type,
            body,
        })
}

// ---- the property ----------------------------------------------------------------------

/// What a 4xx must leave as it was.
#[derive(Debug, PartialEq)]
struct State {
    applied: vclock_proto::VClock,
    buffered: u64,
    log_len: u64,
    paused: Vec<bool>,
}

fn state(node: &Node) -> State {
    let status = node.status();
    State {
        applied: status.applied,
        buffered: status.buffered_total,
        log_len: status.log_len,
        paused: node.links().iter().map(|l| l.is_paused()).collect(),
    }
}

/// Runs `strategy`'s requests against one node and checks every answer.
fn check(strategy: impl Strategy<Value = Request>) {
    let system = System::new();
    let node = node();
    let app = system.block_on(test::init_service(
        App::new().configure(kvnode::http::configure(node.clone())),
    ));
    let mut runner = TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<(u16, String), u32>::new());
    let result = runner.run(&strategy, |request| {
        let before = state(&node);
        let mut req = TestRequest::default()
            .method(request.method.clone())
            .uri(&request.uri);
        if let Some(content_type) = request.content_type {
            req = req.insert_header(("content-type", content_type));
        }
        if let Some(body) = &request.body {
            req = req.set_payload(body.clone());
        }
        let (status, body) = system.block_on(async {
            let res = test::call_service(&app, req.to_request()).await;
            let status = res.status();
            (status, test::read_body(res).await)
        });
        let text = String::from_utf8_lossy(&body);
        let what = format!("{} {} -> {status}: {text}", request.method, request.uri);
        if status.is_success() {
            *seen
                .borrow_mut()
                .entry((status.as_u16(), String::new()))
                .or_default() += 1;
            return Ok(());
        }
        let error: Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("{what}: the error is not JSON: {e}")))?;
        let code = error["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        prop_assert!(
            !code.is_empty() && error["error"]["message"].is_string(),
            "{what}: not an error body"
        );
        *seen
            .borrow_mut()
            .entry((status.as_u16(), code.clone()))
            .or_default() += 1;
        match status.as_u16() {
            400..=499 => {
                prop_assert_eq!(state(&node), before, "{} changed the state", what);
            }
            503 if code == "causal_timeout" => {
                prop_assert_eq!(state(&node), before, "{} changed the state", what);
            }
            503 if code == "buffer_full" => {}
            _ => return Err(TestCaseError::fail(format!("{what}: a server error"))),
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // What the cases reached, for the test's output (--nocapture).
    eprintln!("answers (status, code) -> count: {:?}", seen.borrow());
    eprintln!("final state: {:?}", state(&node));
}

#[test]
fn client_bodies_get_2xx_or_a_4xx_that_changes_nothing() {
    check(client_request());
}

#[test]
fn peer_bodies_get_2xx_or_a_4xx_that_changes_nothing() {
    check(peer_request());
}

#[test]
fn any_method_path_and_bytes_get_2xx_or_a_4xx_that_changes_nothing() {
    check(any_request());
}

#[test]
fn random_bytes_on_every_body_route() {
    let routes = prop::sample::select(vec![
        (Method::POST, "/write"),
        (Method::PUT, "/v1/kv/k"),
        (Method::POST, "/peer/v1/events"),
        (Method::POST, "/peer/v1/sync"),
        (Method::POST, "/peer/v1/snapshot"),
    ]);
    check(
        (routes, prop::collection::vec(any::<u8>(), 0..256)).prop_map(|((method, uri), body)| {
            Request {
                method,
                uri: uri.into(),
                content_type: Some("application/json"),
                body: Some(body),
            }
        }),
    );
}
