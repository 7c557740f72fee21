//! The kvctl command line and the `Session` library against real nodes.
//!
//! Each test starts its own cluster of three kvnode processes (built once into
//! target/check-nodes, as `check_cluster` does) and runs the kvctl binary with
//! its own state directory, so that sessions are isolated. Links are paused
//! with the nodes' fault hook, so that a session that moves between nodes has
//! to wait for its writes (or fail clearly) instead of reading stale data.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{build_kvnode, set_link, start, wait_until, Cluster};
use serde_json::Value as Json;

/// kvnode, built once per test process.
fn kvnode() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_kvnode(&[], "cli"))
}

/// What one kvctl run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs kvctl with `args`, sessions kept under `state`, and `stdin` as input.
fn kvctl_with_input(state: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    kvctl_with(state, args, stdin, &[])
}

/// Runs kvctl with `args`, sessions kept under `state`, `stdin` as input and
/// `env` set (no other `KVCTL_` variable).
fn kvctl_with(state: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .env("XDG_STATE_HOME", state)
        .env_remove("KVCTL_NODES")
        .env_remove("KVCTL_SESSION")
        .env_remove("KVCTL_TOKEN")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvctl starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("kvctl ends");
    Run {
        code: out.status.code().expect("kvctl exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

fn kvctl(state: &Path, args: &[&str]) -> Run {
    kvctl_with_input(state, args, None)
}

/// Runs kvctl and asserts its exit code.
fn expect(state: &Path, args: &[&str], code: i32) -> Run {
    let run = kvctl(state, args);
    assert_eq!(run.code, code, "kvctl {args:?}: {run:#?}");
    run
}

/// The `-o json get` of `key` at `node`, parsed.
fn get_json(state: &Path, node: &str, key: &str) -> Json {
    let run = kvctl(state, &["--node", node, "-o", "json", "get", key]);
    assert!(matches!(run.code, 0 | 1), "get {key} at {node}: {run:#?}");
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("-o json get is not JSON ({e}): {:?}", run.stdout))
}

fn sibling_values(answer: &Json) -> Vec<Json> {
    answer["siblings"]
        .as_array()
        .expect("siblings is an array")
        .iter()
        .map(|s| s["value"].clone())
        .collect()
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").port()
}

/// The issue's "done when": a session that writes at node1 and reads at node3,
/// with node1 -> node3 cut, reads its own write every time (node3 gets it
/// through node2's repair, and the read waits for it).
#[test]
fn a_session_reads_its_writes_across_nodes_with_a_cut_link() {
    let cluster = start(
        kvnode(),
        &[
            ("KVNODE_REPAIR_AFTER", "200ms"),
            ("KVNODE_SYNC_INTERVAL", "50ms"),
            ("KVNODE_CAUSAL_WAIT", "5s"),
        ],
    );
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    set_link(&cluster, 1, 3, "pause");
    for i in 1..=20 {
        let i = i.to_string();
        expect(
            state,
            &["--session", "S", "--node", cluster.url(1), "put", "K", &i],
            0,
        );
        let run = expect(
            state,
            &[
                "--session",
                "S",
                "--node",
                cluster.url(3),
                "--output",
                "plain",
                "get",
                "K",
            ],
            0,
        );
        assert_eq!(run.stdout, format!("{i}\n"), "round {i}: {run:#?}");
    }
    // The link stayed cut: node3 got node1's writes only through repair.
    let status = expect(state, &["--node", cluster.url(1), "status"], 0);
    assert!(
        status.stdout.contains("node3=") && status.stdout.contains("paused"),
        "{status:#?}"
    );
}

#[test]
fn exit_codes_output_formats_and_value_sources() {
    let cluster = start(kvnode(), &[]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let n1 = cluster.url(1);

    // A missing key exits 1, in every format.
    let run = expect(state, &["--node", n1, "get", "missing"], 1);
    assert!(run.stdout.contains("missing: not found"), "{run:#?}");
    let run = expect(state, &["--node", n1, "-o", "plain", "get", "missing"], 1);
    assert_eq!(run.stdout, "");
    let answer = get_json(state, n1, "missing");
    assert_eq!(answer["found"], false);
    assert_eq!(answer["siblings"], serde_json::json!([]));

    // No node reachable: exit 3, and every URL tried is named.
    let dead1 = format!("http://127.0.0.1:{}", dead_port());
    let dead2 = format!("http://127.0.0.1:{}", dead_port());
    let run = expect(state, &["--node", &dead1, "--node", &dead2, "get", "k"], 3);
    assert!(
        run.stderr.contains(&dead1) && run.stderr.contains(&dead2),
        "{run:#?}"
    );
    let run = expect(state, &["--node", &dead1, "put", "k", "1"], 3);
    assert!(run.stderr.contains(&dead1), "{run:#?}");
    // ...but a dead node followed by a live one is fine.
    expect(
        state,
        &["--node", &dead1, "--node", n1, "get", "missing"],
        1,
    );

    // JSON values stay JSON; -o json get is one JSON document with the siblings.
    expect(state, &["--node", n1, "put", "doc", r#"{"a":[1,2]}"#], 0);
    let answer = get_json(state, n1, "doc");
    assert_eq!(answer["key"], "doc");
    assert_eq!(answer["found"], true);
    assert_eq!(answer["value"], serde_json::json!({"a": [1, 2]}));
    assert_eq!(sibling_values(&answer), [serde_json::json!({"a": [1, 2]})]);
    assert!(answer["context"].is_object(), "{answer}");
    let put: Json = serde_json::from_str(
        &expect(state, &["--node", n1, "-o", "json", "put", "n", "5"], 0).stdout,
    )
    .expect("-o json put is JSON");
    assert!(put["timestamp"].is_object(), "{put}");
    // Text that is not JSON is a string; plain prints strings without quotes.
    expect(state, &["--node", n1, "put", "text", "hello world"], 0);
    let run = expect(state, &["--node", n1, "-o", "plain", "get", "text"], 0);
    assert_eq!(run.stdout, "hello world\n");
    assert_eq!(get_json(state, n1, "text")["value"], "hello world");

    // Negative numbers are values, not options.
    expect(state, &["--node", n1, "put", "neg", "-5"], 0);
    let run = expect(state, &["--node", n1, "-o", "plain", "get", "neg"], 0);
    assert_eq!(run.stdout, "-5\n");
    assert_eq!(get_json(state, n1, "neg")["value"], -5);

    // A request the node refuses exits 4 with the node's message.
    let long_key = "k".repeat(4096);
    let run = expect(state, &["--node", n1, "put", &long_key, "1"], 4);
    assert!(
        run.stderr.contains(n1) && run.stderr.contains("refused"),
        "{run:#?}"
    );

    // --file PATH and --file - (standard input).
    let file = state.join("value.json");
    std::fs::write(&file, "[1, 2, 3]\n").unwrap();
    expect(
        state,
        &[
            "--node",
            n1,
            "put",
            "from-file",
            "--file",
            file.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(
        get_json(state, n1, "from-file")["value"],
        serde_json::json!([1, 2, 3])
    );
    let run = kvctl_with_input(
        state,
        &["--node", n1, "put", "from-stdin", "--file", "-"],
        Some("line one\nline two\n"),
    );
    assert_eq!(run.code, 0, "{run:#?}");
    let run = expect(
        state,
        &["--node", n1, "-o", "plain", "get", "from-stdin"],
        0,
    );
    assert_eq!(run.stdout, "line one\nline two\n");

    // Usage errors exit 2.
    for args in [
        &["--node", n1, "put", "k"][..],
        &["--node", n1, "put", "k", "v", "--file", "x"],
        &["--node", n1, "frobnicate"],
        &["--node", n1, "-o", "yaml", "get", "k"],
        &["--node", n1, "--timeout", "soon", "get", "k"],
        &["--node", "", "get", "k"],
    ] {
        let run = expect(state, args, 2);
        assert!(!run.stderr.is_empty(), "{args:?}: {run:#?}");
    }

    // status: a row per node.
    let mut args = vec!["status"];
    for url in &cluster.urls {
        args.extend(["--node", url.as_str()]);
    }
    let run = expect(state, &args, 0);
    for (i, url) in cluster.urls.iter().enumerate() {
        let row = run
            .stdout
            .lines()
            .find(|l| l.starts_with(url.as_str()))
            .unwrap_or_else(|| panic!("no row for {url}: {run:#?}"));
        assert!(row.contains(&format!("node{}", i + 1)), "{row}");
    }
    args.extend(["-o", "json"]);
    let doc: Json = serde_json::from_str(&expect(state, &args, 0).stdout).expect("JSON status");
    assert_eq!(doc.as_array().map(Vec::len), Some(3), "{doc}");

    // del, then get: not found.
    expect(state, &["--node", n1, "put", "gone", "1"], 0);
    expect(state, &["--node", n1, "del", "gone"], 0);
    let run = expect(state, &["--node", n1, "-o", "plain", "get", "gone"], 1);
    assert_eq!(run.stdout, "");
    assert_eq!(get_json(state, n1, "gone")["found"], false);
}

/// Nodes with a client_token: every command sends it, from --token (before or
/// after the command) or KVCTL_TOKEN; without it, or with a wrong one, the
/// node's 401 is shown with how to give the token, and kvctl exits 4.
#[test]
fn every_command_sends_the_token_and_a_missing_one_is_a_clear_401() {
    const TOKEN: &str = "kvctl-client-token-0123456789";
    let cluster = start(
        kvnode(),
        &[
            ("KVNODE_CLUSTER_SECRET", "kvctl-cluster-secret-0123456789"),
            ("KVNODE_CLIENT_TOKEN", TOKEN),
            ("KVNODE_TRACE_BUFFER", "1000"),
        ],
    );
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let n1 = cluster.url(1);
    let with_token = |args: &[&'static str]| -> Vec<&str> {
        let mut all = vec!["--node", n1, "--token", TOKEN];
        all.extend(args);
        all
    };

    // Without the token, or with a wrong one: refused, and the message says why.
    for token in [None, Some("wrong-token-0123456789")] {
        for args in [
            &["put", "k", "1"][..],
            &["get", "k"],
            &["del", "k"],
            &["status"],
            &["trace"],
        ] {
            let mut all = vec!["--node", n1];
            if let Some(token) = token {
                all.extend(["--token", token]);
            }
            all.extend(args);
            let run = expect(state, &all, 4);
            assert!(
                run.stderr.contains("401")
                    && run.stderr.contains("token")
                    && run.stderr.contains("--token or KVCTL_TOKEN"),
                "{all:?}: {run:#?}"
            );
        }
    }
    let run = expect(state, &["--node", n1, "get", "k"], 4);
    assert!(
        run.stderr.contains("requires the client token"),
        "the node's own message: {run:#?}"
    );

    // With --token: put, get, del and status work.
    expect(state, &with_token(&["put", "k", "1"]), 0);
    let run = expect(state, &with_token(&["-o", "plain", "get", "k"]), 0);
    assert_eq!(run.stdout, "1\n");
    expect(state, &with_token(&["del", "k"]), 0);
    let run = expect(state, &with_token(&["-o", "plain", "get", "k"]), 1);
    assert_eq!(run.stdout, "");
    let run = expect(state, &with_token(&["status"]), 0);
    let row = run.stdout.lines().find(|l| l.starts_with(n1));
    assert!(row.is_some_and(|r| r.contains("node1")), "{run:#?}");
    // A global option: after the command too.
    expect(state, &["--node", n1, "put", "k", "2", "--token", TOKEN], 0);

    // KVCTL_TOKEN.
    let env = [("KVCTL_TOKEN", TOKEN)];
    let run = kvctl_with(state, &["--node", n1, "put", "k", "3"], None, &env);
    assert_eq!(run.code, 0, "{run:#?}");
    let run = kvctl_with(
        state,
        &["--node", n1, "-o", "plain", "get", "k"],
        None,
        &env,
    );
    assert_eq!((run.code, run.stdout.as_str()), (0, "3\n"), "{run:#?}");
    let run = kvctl_with(state, &["--node", n1, "status"], None, &env);
    assert_eq!(run.code, 0, "{run:#?}");

    // check, trace and bench take the same option.
    let mut all_nodes = vec!["--token", TOKEN];
    for url in &cluster.urls {
        all_nodes.extend(["--node", url.as_str()]);
    }
    let run = expect(
        state,
        &[&all_nodes[..], &["check", "--sessions", "2", "--ops", "20"]].concat(),
        0,
    );
    assert!(run.stdout.contains("violations=0"), "{run:#?}");
    let run = expect(state, &[&all_nodes[..], &["trace"]].concat(), 0);
    assert!(run.stdout.contains(" \"write "), "{run:#?}");
    let bench = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--node", n1, "-o", "json", "bench"];
        all.extend(["write", "-r", "20", "-c", "2", "-q"]);
        all.splice(0..0, args.iter().copied());
        let run = kvctl_with(state, &all, None, env);
        let report: Json = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("bench -o json ({e}): {run:#?}"));
        (run.code, report)
    };
    let (code, report) = bench(&["--token", TOKEN], &[]);
    assert_eq!(
        (code, &report["load"]["ok"]),
        (0, &Json::from(20)),
        "{report}"
    );
    let (code, report) = bench(&[], &env);
    assert_eq!(
        (code, &report["load"]["ok"]),
        (0, &Json::from(20)),
        "{report}"
    );
    let (code, report) = bench(&[], &[]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["load"]["errors_by_kind"]["http_401"], 20, "{report}");

    // The library: Client::with_token.
    use kvctl::{Client, Error, Session};
    let system = actix_rt::System::new();
    system.block_on(async {
        let mut session = Session::new(Client::new([n1]).with_token(TOKEN));
        session.put("lib", kvctl::parse_value("4")).await.unwrap();
        assert_eq!(session.get("lib").await.unwrap().value.json(), "4");
        match Client::new([n1]).get("lib", None).await {
            Err(Error::Refused { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (401, "unauthorized"));
            }
            other => panic!("expected a 401, got {other:?}"),
        }
    });
}

/// Concurrent writes at node1 and node2 (their link cut both ways) become two
/// siblings everywhere; a session that reads them and writes resolves them.
#[test]
fn siblings_are_shown_and_resolved_by_a_session() {
    let cluster = start(kvnode(), &[("KVNODE_SYNC_INTERVAL", "50ms")]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let (n1, n2) = (cluster.url(1), cluster.url(2));
    set_link(&cluster, 1, 2, "pause");
    set_link(&cluster, 2, 1, "pause");
    expect(state, &["--node", n1, "put", "K", "left"], 0);
    expect(state, &["--node", n2, "put", "K", "right"], 0);
    set_link(&cluster, 1, 2, "resume");
    set_link(&cluster, 2, 1, "resume");

    for node in [n1, n2] {
        wait_until(&format!("{node} has both siblings"), || {
            let answer = get_json(state, node, "K");
            let mut values = sibling_values(&answer);
            values.sort_by_key(|v| v.to_string());
            if values == ["left", "right"] {
                Ok(())
            } else {
                Err(answer.to_string())
            }
        });
    }
    let run = expect(state, &["--node", n1, "-o", "table", "get", "K"], 0);
    assert!(run.stdout.contains("2 concurrent siblings"), "{run:#?}");
    let rows: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.ends_with(" left") || l.ends_with(" right"))
        .collect();
    assert_eq!(rows.len(), 2, "{run:#?}");
    assert_eq!(
        rows.iter().filter(|r| r.starts_with("winner ")).count(),
        1,
        "{run:#?}"
    );
    // plain shows the winner and warns about the siblings.
    let run = expect(state, &["--node", n2, "-o", "plain", "get", "K"], 0);
    assert!(run.stderr.contains("2 concurrent siblings"), "{run:#?}");

    expect(state, &["--session", "R", "--node", n1, "get", "K"], 0);
    expect(
        state,
        &["--session", "R", "--node", n1, "put", "K", "merged"],
        0,
    );
    for node in &cluster.urls {
        wait_until(&format!("{node} has only the merged value"), || {
            let answer = get_json(state, node, "K");
            if sibling_values(&answer) == ["merged"] {
                Ok(())
            } else {
                Err(answer.to_string())
            }
        });
    }
}

/// The library: a session that wrote at node1 and reads at node3, while node3
/// cannot get the write, fails with `causal_timeout` rather than read stale
/// data; once the link is back, the same read returns the write.
#[test]
fn a_session_refuses_stale_reads_until_the_write_arrives() {
    use kvctl::{Client, Error, Session};

    let cluster: Cluster = start(
        kvnode(),
        &[
            ("KVNODE_REPAIR_AFTER", "1h"),
            ("KVNODE_CAUSAL_WAIT", "300ms"),
        ],
    );
    let system = actix_rt::System::new();
    set_link(&cluster, 1, 3, "pause");
    let mut at3 = system.block_on(async {
        let mut at1 = Session::new(Client::new([cluster.url(1)]));
        // node1 -> node3 is cut and node2's repair is slow: neither write
        // reaches node3.
        at1.put("k", kvctl::parse_value("old")).await.unwrap();
        at1.put("k", kvctl::parse_value("new")).await.unwrap();
        let at3 = Session::resume(Client::new([cluster.url(3)]), at1.context().clone());
        assert_eq!(at3.context().get("node1"), 2);
        at3
    });
    let started = Instant::now();
    match system.block_on(at3.get("k")) {
        Err(Error::Refused { code, status, .. }) => {
            assert_eq!(code, "causal_timeout");
            assert_eq!(status, 503);
        }
        other => panic!("expected causal_timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A session with nothing to wait for reads node3's (older) state at once.
    let fresh = system
        .block_on(Session::new(Client::new([cluster.url(3)])).get("k"))
        .unwrap();
    assert!(!fresh.found, "{fresh:?}");

    set_link(&cluster, 1, 3, "resume");
    let answer = wait_until("node3 serves the session's write", || {
        match system.block_on(at3.get("k")) {
            Ok(answer) => Ok(answer),
            Err(Error::Refused { code, .. }) if code == "causal_timeout" => Err(code),
            Err(e) => panic!("unexpected error: {e}"),
        }
    });
    assert!(answer.found);
    assert_eq!(answer.value.json(), "\"new\"");
    assert_eq!(answer.siblings.len(), 1);
    assert!(at3.context().get("node1") >= 2);
}

/// A value nested deeper than JSON parsers' usual recursion limit (a node
/// started with a larger `max_value_depth` stores one, and so may a peer whose
/// limit is larger) is shown as it was written, in every format, with or
/// without a session; so is a string no Rust string holds (a lone surrogate),
/// as its JSON text.
#[test]
fn values_nested_at_any_depth_are_shown_as_written() {
    let cluster = start(kvnode(), &[("KVNODE_MAX_VALUE_DEPTH", "1000")]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let n1 = cluster.url(1);
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let deep_object = format!(r#"{{"a": {}"x"{}}}"#, "[".repeat(200), "]".repeat(200));
    expect(state, &["--node", n1, "put", "deep", &deep], 0);
    expect(
        state,
        &["--node", n1, "put", "deep-object", &deep_object],
        0,
    );
    let surrogate = r#""\ud800""#.to_owned();
    expect(state, &["--node", n1, "put", "surrogate", &surrogate], 0);

    for (key, value) in [
        ("deep", &deep),
        ("deep-object", &deep_object),
        ("surrogate", &surrogate),
    ] {
        let run = expect(state, &["--node", n1, "-o", "plain", "get", key], 0);
        assert_eq!(run.stdout, format!("{value}\n"), "{run:#?}");

        let run = expect(state, &["--session", "S", "--node", n1, "get", key], 0);
        let winner = run
            .stdout
            .lines()
            .find(|l| l.starts_with("winner "))
            .unwrap_or_else(|| panic!("no winner row: {run:#?}"));
        assert!(winner.ends_with(&format!(" {value}")), "{run:#?}");

        let run = expect(state, &["--node", n1, "-o", "json", "get", key], 0);
        let answer: vclock_proto::GetResponse = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("-o json get is not the answer ({e}): {run:#?}"));
        assert!(answer.found);
        assert_eq!(answer.value.json(), value.as_str());
        assert_eq!(answer.siblings.len(), 1);
        assert_eq!(answer.siblings[0].value.json(), value.as_str());
    }
}

/// `kvctl txn get` reads several keys from one cut, in every format; a
/// missing key exits 1; a session carries the cut's clock; a key listed twice
/// is the node's clear 400 (exit 4).
#[test]
fn txn_get_reads_several_keys_from_one_cut() {
    let cluster = start(kvnode(), &[]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let (n1, n2) = (cluster.url(1), cluster.url(2));
    expect(
        state,
        &["--session", "S", "--node", n1, "put", "post", "hello"],
        0,
    );
    expect(
        state,
        &["--session", "S", "--node", n1, "put", "comments", "[1,2]"],
        0,
    );

    // At node2, the session waits until both writes are there.
    let run = expect(
        state,
        &[
            "--session",
            "S",
            "--node",
            n2,
            "-o",
            "plain",
            "txn",
            "get",
            "post",
            "comments",
        ],
        0,
    );
    assert_eq!(run.stdout, "post\thello\ncomments\t[1,2]\n", "{run:#?}");

    let run = expect(
        state,
        &["--node", n2, "-o", "json", "txn", "get", "comments", "post"],
        0,
    );
    let answer: vclock_proto::TxnReadResponse = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("-o json txn get is the answer ({e}): {run:#?}"));
    let keys: Vec<&str> = answer.reads.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, ["comments", "post"]);
    assert!(answer.reads.iter().all(|r| r.context == answer.context));
    assert_eq!(answer.context.get("node1"), 2);

    let run = expect(state, &["--node", n1, "txn", "get", "post", "missing"], 1);
    assert!(run.stdout.contains("snapshot at"), "{run:#?}");
    assert!(run.stdout.contains("missing: not found"), "{run:#?}");

    let run = expect(state, &["--node", n1, "txn", "get", "post", "post"], 4);
    assert!(run.stderr.contains("listed twice"), "{run:#?}");
}

/// `kvctl txn put` writes puts and deletes under one dot, which the other
/// node shows on every key; bad arguments are refused before anything is sent.
#[test]
fn txn_put_writes_several_keys_under_one_dot() {
    let cluster = start(kvnode(), &[]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let (n1, n2) = (cluster.url(1), cluster.url(2));
    expect(state, &["--node", n1, "put", "draft", "old"], 0);
    let run = expect(
        state,
        &[
            "--session",
            "S",
            "--node",
            n1,
            "-o",
            "json",
            "txn",
            "put",
            "post={\"t\":\"hi\"}",
            "count=-3",
            "note=a=b",
            "--del",
            "draft",
        ],
        0,
    );
    let answer: vclock_proto::PutResponse = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("-o json txn put is the answer ({e}): {run:#?}"));
    assert_eq!(answer.dot, vclock_proto::Dot::new("node1", 2));

    // The session waits at node2 for the transaction, then sees all of it.
    let run = expect(
        state,
        &[
            "--session",
            "S",
            "--node",
            n2,
            "-o",
            "json",
            "txn",
            "get",
            "post",
            "count",
            "note",
            "draft",
        ],
        1,
    );
    let read: vclock_proto::TxnReadResponse = serde_json::from_str(&run.stdout).unwrap();
    let values: Vec<String> = read
        .reads
        .iter()
        .map(|r| r.value.json().to_owned())
        .collect();
    assert_eq!(
        values,
        [r#"{"t":"hi"}"#, "-3", r#""a=b""#, "null"],
        "{run:#?}"
    );
    for r in &read.reads {
        assert_eq!(r.siblings[0].dot, answer.dot, "{r:?}");
    }
    assert!(read.reads[3].siblings[0].deleted);

    for (args, says) in [
        (&["txn", "put", "novalue"][..], "not KEY=VALUE"),
        (&["txn", "put", "=1"][..], "empty key"),
        (&["txn", "put"][..], "nothing to write"),
    ] {
        let mut all = vec!["--node", n1];
        all.extend_from_slice(args);
        let run = expect(state, &all, 2);
        assert!(run.stderr.contains(says), "{args:?}: {run:#?}");
    }
    let run = expect(state, &["--node", n1, "txn", "put", "a=1", "--del", "a"], 4);
    assert!(run.stderr.contains("listed twice"), "{run:#?}");
}

#[test]
fn cluster_shows_and_changes_the_membership() {
    const SECRET: &str = "cli-cluster-secret-0123456789";
    let cluster = start(kvnode(), &[("KVNODE_CLUSTER_SECRET", SECRET)]);
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let n1 = cluster.url(1);
    let with_secret = |args: &[&'static str]| -> Vec<&str> {
        let mut all = vec!["--node", n1, "cluster", "--cluster-secret", SECRET];
        all.extend(args);
        all
    };

    let run = expect(state, &["--node", n1, "cluster", "status"], 4);
    assert!(run.stderr.contains("401"), "{run:#?}");
    let run = expect(state, &with_secret(&["status"]), 0);
    assert!(run.stdout.contains("membership version 0"), "{run:#?}");
    for id in ["node1", "node2", "node3"] {
        let row = run.stdout.lines().find(|l| l.starts_with(id));
        assert!(row.is_some_and(|r| r.contains("live")), "{id}: {run:#?}");
    }

    // A node nobody runs: added, shown unreachable (exit 1), removed.
    let run = expect(state, &with_secret(&["add", "node4=http://127.0.0.1:9"]), 0);
    assert!(
        run.stdout.contains("membership version 1") && run.stdout.contains("node4"),
        "{run:#?}"
    );
    let run = expect(state, &with_secret(&["status"]), 1);
    let row = run.stdout.lines().find(|l| l.starts_with("node4"));
    assert!(row.is_some_and(|r| r.contains("unreachable")), "{run:#?}");
    expect(state, &with_secret(&["remove", "node4"]), 0);
    // Every member holds version 2 once the change has spread.
    wait_until("the removal to reach every node", || {
        let run = kvctl(state, &with_secret(&["status"]));
        if run.code == 0 {
            Ok(())
        } else {
            Err(run.stdout)
        }
    });
    let run = expect(state, &with_secret(&["-o", "json", "status"]), 0);
    let doc: Json = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(doc["version"], 2, "{doc}");
    let run = expect(state, &["--node", n1, "status"], 0);
    assert!(
        run.stdout.contains(
            "members (version 2, as node1 holds them): node1 node2 node3; removed: node4"
        ),
        "{run:#?}"
    );

    let run = expect(state, &with_secret(&["add", "node4=http://127.0.0.1:9"]), 4);
    assert!(run.stderr.contains("never reused"), "{run:#?}");
    let run = expect(state, &with_secret(&["remove", "node1"]), 4);
    assert!(run.stderr.contains("itself"), "{run:#?}");
    let run = expect(state, &with_secret(&["add", "node5"]), 2);
    assert!(run.stderr.contains("ID=URL"), "{run:#?}");
}
