//! `kvctl trace` against real nodes: the prototype's scenario 2, written as a
//! ShiViz log and read back with the regular expression on its first line, the
//! way ShiViz reads an uploaded file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::{build_kvnode, set_link, start, wait_until, Cluster};
use kvctl::Client;
use vclock_proto::{TraceEvent, TraceKind, VClock, Value};

/// kvnode, built once per test process.
fn kvnode() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_kvnode(&[], "trace"))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    actix_rt::System::new().block_on(f)
}

/// Reads `key` at `url` until it is `want`; returns the read's context.
fn read_until(url: &str, key: &str, want: &str) -> VClock {
    let client = Client::new([url]);
    wait_until(&format!("{url} to read {key} = {want}"), || {
        let answer = block_on(client.get(key, None)).map_err(|e| e.to_string())?;
        if answer.found && answer.value.json() == want {
            Ok(answer.context)
        } else {
            Err(format!("{key} = {} at {}", answer.value, answer.context))
        }
    })
}

/// The prototype's scenario 2: node3 gets node2's x = 200 before node1's
/// x = 100, which it depends on, buffers it, and applies it once x = 100 comes.
fn scenario_2(cluster: &Cluster) {
    set_link(cluster, 1, 3, "pause");
    block_on(Client::new([cluster.url(1)]).put("x", Value::from_json("100").unwrap(), None))
        .expect("write x = 100 at node1");
    let context = read_until(cluster.url(2), "x", "100");
    block_on(Client::new([cluster.url(2)]).put(
        "x",
        Value::from_json("200").unwrap(),
        Some(&context),
    ))
    .expect("write x = 200 at node2");
    let node3 = Client::new([cluster.url(3)]);
    wait_until("node3 to buffer node2's write", || {
        let status = block_on(node3.status_of(cluster.url(3))).map_err(|e| e.to_string())?;
        (status.buffered_total == 1)
            .then_some(())
            .ok_or(format!("buffered_total {}", status.buffered_total))
    });
    set_link(cluster, 1, 3, "resume");
    read_until(cluster.url(3), "x", "200");
}

/// One line of the log, as ShiViz's expression reads it.
#[derive(Debug)]
struct Line {
    host: String,
    event: String,
    clock: BTreeMap<String, u64>,
}

impl Line {
    fn own(&self) -> u64 {
        self.clock[&self.host]
    }

    fn covers(&self, other: &Line) -> bool {
        other
            .clock
            .iter()
            .all(|(h, s)| self.clock.get(h).copied().unwrap_or(0) >= *s)
    }
}

/// Reads `text` as ShiViz reads an uploaded file (first line the regular
/// expression, second the delimiter, the rest the log, matched with `^...$`
/// in multi-line mode), and checks what ShiViz requires of it.
fn read_shiviz(text: &str) -> Vec<Line> {
    let mut parts = text.splitn(3, '\n');
    let regex = parts.next().expect("a first line");
    let delimiter = parts.next().expect("a second line");
    let log = parts.next().expect("a log");
    assert_eq!(delimiter, "", "no multiple executions");
    for name in ["host", "event", "clock"] {
        assert!(regex.contains(&format!("(?<{name}>")), "{regex}");
    }
    // JavaScript's named groups, in the syntax every version of `regex` reads.
    let rust = regex.replace("(?<", "(?P<");
    let anchored = regex::Regex::new(&format!("(?m)^{rust}$")).expect("a valid expression");
    let whole = regex::Regex::new(&format!("^{rust}$")).unwrap();

    let mut lines = Vec::new();
    for text in log.lines().filter(|l| !l.trim().is_empty()) {
        let caps = whole
            .captures(text)
            .unwrap_or_else(|| panic!("a line the expression does not read: {text}"));
        let clock: BTreeMap<String, u64> = serde_json::from_str(&caps["clock"])
            .unwrap_or_else(|e| panic!("the clock of {text} is not a JSON clock: {e}"));
        lines.push(Line {
            host: caps["host"].to_owned(),
            event: caps["event"].to_owned(),
            clock,
        });
    }
    assert!(!lines.is_empty(), "an empty log: {text}");
    assert_eq!(
        anchored.captures_iter(log).count(),
        lines.len(),
        "ShiViz's multi-line reading finds the same lines"
    );

    // Each host's own entry counts its lines 1, 2, 3..., in the log's order.
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for line in &lines {
        let count = counts.entry(&line.host).or_default();
        *count += 1;
        assert_eq!(line.own(), *count, "{line:?}");
    }
    // Every entry names a host of the log, at most at its number of lines.
    for line in &lines {
        for (host, seq) in &line.clock {
            assert!(
                counts.get(host.as_str()).is_some_and(|n| seq <= n),
                "{line:?} counts {host}:{seq}, the log has {:?}",
                counts.get(host.as_str())
            );
        }
    }
    // Every receive names a send in the log, to it, that its clock covers.
    let line_of = |host: &str, own: u64| {
        lines
            .iter()
            .find(|l| l.host == host && l.own() == own)
            .unwrap_or_else(|| panic!("no line {host}:{own}"))
    };
    let mut receives = 0;
    for line in lines.iter().filter(|l| l.event.starts_with("receive ")) {
        receives += 1;
        assert!(!line.event.contains("not in the log"), "{line:?}");
        let rest = line.event.strip_prefix("receive from ").unwrap();
        let (peer, rest) = rest.split_once(' ').unwrap();
        let dots = rest.split(' ').next().unwrap();
        let send = line_of(peer, line.clock[peer]);
        assert!(
            send.event
                .starts_with(&format!("send to {} {dots} ", line.host)),
            "{line:?} does not come from {send:?}"
        );
        assert!(line.covers(send), "{line:?} does not cover {send:?}");
    }
    assert!(receives > 0, "no receive in the log");
    lines
}

/// The scenario's mark in node3's lines: node2's write buffered, then
/// delivered from the buffer, after node1's write.
fn check_node3(lines: &[Line]) {
    let node3: Vec<&Line> = lines.iter().filter(|l| l.host == "node3").collect();
    let position = |prefix: &str| {
        node3
            .iter()
            .position(|l| l.event.starts_with(prefix))
            .unwrap_or_else(|| panic!("node3 has no {prefix}: {node3:#?}"))
    };
    let buffered = position("buffered node2:1 x waiting for node1");
    let deliver = position("deliver node1:1 x=100");
    let from_buffer = position("deliver_from_buffer node2:1 x=200");
    assert!(buffered < deliver && deliver < from_buffer, "{node3:#?}");
    // The store's applied clock is in the description, ShiViz's in the clock.
    assert!(
        node3[from_buffer]
            .event
            .ends_with("applied={node1:1,node2:1,node3:0}"),
        "{:?}",
        node3[from_buffer]
    );
    assert!(node3[from_buffer].clock["node2"] > 0 && node3[from_buffer].clock["node1"] > 0);
}

fn kvctl(cluster: &Cluster) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    command
        .env_remove("KVCTL_NODES")
        .env_remove("KVCTL_SESSION")
        .env_remove("KVCTL_TOKEN");
    for url in &cluster.urls {
        command.args(["--node", url]);
    }
    command
}

/// Kills a follower left running by a failed test.
struct Follower(Child);

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn scenario_2_as_a_shiviz_log_reads_back_with_its_own_expression() {
    let cluster = start(kvnode(), &[("KVNODE_TRACE_BUFFER", "1000")]);
    let dir = tempfile::tempdir().unwrap();

    // A follower from the start sees the records as they are made.
    let live = dir.path().join("live.log");
    let mut follower = Follower(
        kvctl(&cluster)
            .args(["trace", "--follow", "--wait", "2s", "--file"])
            .arg(&live)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvctl trace --follow starts"),
    );

    scenario_2(&cluster);

    // The snapshot.
    let file = dir.path().join("trace.log");
    let out = kvctl(&cluster)
        .args(["trace", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines = read_shiviz(&text);
    check_node3(&lines);
    for host in ["node1", "node2", "node3"] {
        assert!(lines.iter().any(|l| l.host == host), "{host} is missing");
    }

    // The same records as JSON lines.
    let out = kvctl(&cluster)
        .args(["-o", "json", "trace"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let events: Vec<TraceEvent> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a trace event per line"))
        .collect();
    assert!(
        events.len() >= lines.len(),
        "{} < {}",
        events.len(),
        lines.len()
    );
    assert!(events
        .iter()
        .any(|e| e.node == "node3" && e.kind == TraceKind::Buffered));

    // The follower has written the scenario too; Ctrl-C ends it cleanly.
    wait_until(
        "the follower to write node3's delivery from the buffer",
        || {
            let text = std::fs::read_to_string(&live).unwrap_or_default();
            text.contains("node3 \"deliver_from_buffer node2:1")
                .then_some(())
                .ok_or(text)
        },
    );
    interrupt(&follower.0);
    let status = wait_until("the follower to stop on Ctrl-C", || {
        follower
            .0
            .try_wait()
            .unwrap()
            .ok_or_else(|| "running".to_owned())
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(follower.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    let lines = read_shiviz(&std::fs::read_to_string(&live).unwrap());
    check_node3(&lines);
}

#[test]
fn nodes_without_a_trace_are_skipped_or_refused() {
    let cluster = start(kvnode(), &[]);
    let out = kvctl(&cluster).arg("trace").output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no node keeps a trace") && stderr.contains("KVNODE_TRACE_BUFFER"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let out = kvctl(&cluster)
        .args(["trace", "--follow"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
}

/// Sends SIGINT (Ctrl-C) to `child`.
fn interrupt(child: &Child) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(status.success());
}
