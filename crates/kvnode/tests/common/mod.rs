//! Harness for the process-level cluster tests: real `kvnode` processes on free
//! loopback ports, driven over HTTP with `ureq`.
//!
//! - [`TestCluster::start`] picks free ports, starts one process per node and
//!   polls `GET /health` until every node answers; if a port was taken in the
//!   meantime (a node exits at start-up) it starts the whole cluster again on new
//!   ports. Dropping the cluster kills every process it started.
//! - Each node keeps its data (durable storage, the default) in the cluster's
//!   temporary directory, never in the working directory, so clusters of tests
//!   running in parallel share nothing.
//! - Each node's stderr and stdout go to `nodeN.log` in that directory.
//!   When a test fails, the directory is kept, its path is printed and the tail
//!   of each log is copied into the test's output.
//! - Nodes are numbered from 1, as their ids are: node `1` is `node1`.
//! - A node can be killed ([`TestCluster::kill9`], SIGKILL), stopped
//!   ([`TestCluster::stop`], SIGTERM) and started again
//!   ([`TestCluster::restart`]): same id, port, data directory and environment,
//!   its log appended to the same file.
//! - Every "eventually" is [`wait_until`] or [`wait_for`]: poll with a deadline,
//!   never a fixed sleep.

#![allow(dead_code)]

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vclock_proto::VClock;

/// How long a cluster may take to answer `/health` on every node.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How many times a cluster start is retried when a port was taken.
const START_ATTEMPTS: usize = 5;
/// Poll interval of [`wait_until`] and [`wait_for`].
const POLL: Duration = Duration::from_millis(20);
/// Lines of each node's log copied into the output of a failed test.
const LOG_TAIL: usize = 40;
/// How long a node stopped with SIGTERM may take to exit.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A reasonable deadline for "eventually" in these tests: replication on
/// loopback takes milliseconds, so this only matters when something is wrong.
pub const EVENTUALLY: Duration = Duration::from_secs(15);

/// Variables the harness sets itself, or that would change a node's
/// configuration if inherited from the environment of the test run.
fn is_node_setting(var: &str) -> bool {
    var.starts_with("KVNODE_") || matches!(var, "NODE_ID" | "NODES" | "PORT")
}

/// One `kvnode` process, and what it takes to start it again.
#[derive(Debug)]
struct NodeProcess {
    id: String,
    url: String,
    child: Option<Child>,
    log: PathBuf,
    /// Its data directory (also in `env`, as `KVNODE_DATA_DIR`).
    data: PathBuf,
    /// The node's variables, in the order they are set (later ones win).
    env: Vec<(String, String)>,
}

impl NodeProcess {
    /// Starts the process, appending to its log. Inherited variables that would
    /// configure the node are removed first: only `env` configures it.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.id);
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("a node log file");
        if out.metadata().map_or(0, |m| m.len()) > 0 {
            let _ = writeln!(out, "==== test harness: starting {} again ====", self.id);
        }
        let err = out.try_clone().expect("a node log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_kvnode"));
        for (var, _) in std::env::vars() {
            if is_node_setting(&var) {
                command.env_remove(var);
            }
        }
        for (var, value) in &self.env {
            command.env(var, value);
        }
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        self.child = Some(command.spawn().expect("kvnode starts"));
    }

    /// SIGKILL, then waits for the process to exit. Nothing if it is not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running cluster of `kvnode` processes.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<NodeProcess>,
    /// `None` once the directory has been kept for a failed test.
    logs: Option<tempfile::TempDir>,
}

impl TestCluster {
    /// Starts `n` nodes, `node1`..`nodeN`, with the fault hook enabled.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// Starts `n` nodes with extra environment variables for every node (such as
    /// `("KVNODE_CAUSAL_WAIT", "1s")`); they override the harness's defaults.
    pub fn start_with(n: usize, env: &[(&str, &str)]) -> Self {
        assert!(n >= 1, "a cluster has at least one node");
        let logs = tempfile::Builder::new()
            .prefix("kvnode-cluster-")
            .tempdir()
            .expect("a temporary directory for node logs");
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Self::spawn(n, env, logs.path(), attempt);
            match cluster.wait_ready() {
                Ok(()) => {
                    cluster.logs = Some(logs);
                    return cluster;
                }
                Err(reason) => {
                    cluster.kill_all();
                    eprintln!("cluster start, attempt {attempt}: {reason}");
                    failures.push(reason);
                }
            }
        }
        let kept = logs.keep();
        panic!(
            "cannot start a cluster of {n} nodes after {START_ATTEMPTS} attempts \
             (logs kept in {}):\n{}",
            kept.display(),
            failures.join("\n")
        );
    }

    fn spawn(n: usize, env: &[(&str, &str)], dir: &Path, attempt: usize) -> Self {
        let ports = free_ports(n);
        let members: Vec<(String, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| (format!("node{}", i + 1), format!("http://127.0.0.1:{port}")))
            .collect();
        let nodes_var = members
            .iter()
            .map(|(id, url)| format!("{id}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = members
            .into_iter()
            .zip(&ports)
            .map(|((id, url), port)| {
                let log = dir.join(format!("{id}.log"));
                // A fresh data directory per attempt: a node that failed to
                // start may have created its database already.
                let data = dir.join(format!("data-{attempt}")).join(&id);
                // A fresh log per attempt too.
                File::create(&log).expect("a node log file");
                let mut vars: Vec<(String, String)> = vec![
                    ("KVNODE_NODE_ID".into(), id.clone()),
                    ("KVNODE_NODES".into(), nodes_var.clone()),
                    ("KVNODE_LISTEN".into(), "127.0.0.1".into()),
                    ("KVNODE_PORT".into(), port.to_string()),
                    ("KVNODE_FAULTS".into(), "true".into()),
                    ("KVNODE_DATA_DIR".into(), data.display().to_string()),
                    ("RUST_LOG".into(), "info".into()),
                ];
                vars.extend(env.iter().map(|&(k, v)| (k.to_owned(), v.to_owned())));
                let mut node = NodeProcess {
                    id,
                    url,
                    child: None,
                    log,
                    data,
                    env: vars,
                };
                node.spawn();
                node
            })
            .collect();
        Self { nodes, logs: None }
    }

    /// Polls every node's `/health` until all answer as themselves. Fails when a
    /// node exits (typically: its port was taken) or at the deadline.
    fn wait_ready(&mut self) -> Result<(), String> {
        let all: Vec<usize> = self.numbers().collect();
        self.wait_nodes_ready(&all)
    }

    /// [`Self::wait_ready`] for nodes `which` only.
    fn wait_nodes_ready(&mut self, which: &[usize]) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let mut ready: Vec<bool> = self.numbers().map(|n| !which.contains(&n)).collect();
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if ready[i] {
                    continue;
                }
                let child = node.child.as_mut().expect("a started node");
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "{} exited at start-up with {status}:\n{}",
                        node.id,
                        tail(&node.log, LOG_TAIL)
                    ));
                }
                if let Ok((200, body)) = try_request("GET", &format!("{}/health", node.url), None) {
                    if body["node"] == json!(node.id) {
                        ready[i] = true;
                    }
                }
            }
            if ready.iter().all(|r| *r) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nodes not ready after {START_DEADLINE:?}: {:?}",
                    self.nodes
                        .iter()
                        .zip(&ready)
                        .filter(|(_, r)| !**r)
                        .map(|(n, _)| &n.id)
                        .collect::<Vec<_>>()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    fn node(&self, n: usize) -> &NodeProcess {
        assert!(
            (1..=self.nodes.len()).contains(&n),
            "no node{n} in a cluster of {}",
            self.nodes.len()
        );
        &self.nodes[n - 1]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node numbers, `1..=len`.
    pub fn numbers(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.nodes.len()
    }

    /// The id of node `n` (`node{n}`).
    pub fn id(&self, n: usize) -> &str {
        &self.node(n).id
    }

    /// The ids of every node.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// The base URL of node `n`, without a trailing slash.
    pub fn url(&self, n: usize) -> &str {
        &self.node(n).url
    }

    /// The base URLs of every node, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// The path of node `n`'s log file.
    pub fn log_path(&self, n: usize) -> &Path {
        &self.node(n).log
    }

    /// The data directory of node `n`.
    pub fn data_dir(&self, n: usize) -> &Path {
        &self.node(n).data
    }

    /// True while node `n`'s process runs (it was not killed or stopped, and did
    /// not exit by itself).
    pub fn is_running(&mut self, n: usize) -> bool {
        self.node(n);
        match self.nodes[n - 1].child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// Kills node `n` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, n: usize) {
        self.kill9(n);
    }

    /// `kill -9` node `n`: SIGKILL, no chance to flush or clean up; waits until
    /// the process is gone. Its data directory stays for [`Self::restart`].
    pub fn kill9(&mut self, n: usize) {
        self.node(n);
        let node = &mut self.nodes[n - 1];
        assert!(node.child.is_some(), "{} is not running", node.id);
        node.kill();
    }

    /// Stops node `n` gracefully (SIGTERM) and waits until it exits (SIGKILL
    /// and a panic after a deadline). Returns its exit status.
    pub fn stop(&mut self, n: usize) -> ExitStatus {
        self.node(n);
        let node = &mut self.nodes[n - 1];
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", node.id));
        let signal = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("the kill command runs");
        assert!(signal.success(), "kill -TERM {} failed", child.id());
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} did not exit within {STOP_DEADLINE:?} of SIGTERM",
                        node.id
                    );
                }
            }
        }
    }

    /// Starts node `n` again, after [`Self::kill9`] or [`Self::stop`]: same id,
    /// port, data directory and environment. Waits until it answers `/health`.
    pub fn restart(&mut self, n: usize) {
        self.restart_many(&[n]);
    }

    /// Starts nodes `which` again, all at once, and waits until every one of
    /// them answers `/health`. A node that exits at start-up is started again
    /// until a deadline: its port may be held for a moment by another socket
    /// (nothing else can be done, the other nodes know it by that port).
    pub fn restart_many(&mut self, which: &[usize]) {
        for &n in which {
            self.node(n);
            self.nodes[n - 1].spawn();
        }
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.wait_nodes_ready(which) {
                Ok(()) => return,
                Err(reason) if Instant::now() < deadline => {
                    eprintln!("restart of {which:?}: {reason}; trying again");
                    for &n in which {
                        if !self.is_running(n) {
                            self.nodes[n - 1].child = None;
                            std::thread::sleep(POLL);
                            self.nodes[n - 1].spawn();
                        }
                    }
                }
                Err(reason) => panic!("cannot restart nodes {which:?}: {reason}"),
            }
        }
    }

    fn kill_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    // ---- shortcuts for common requests ------------------------------------------

    /// `GET path` on node `n`.
    pub fn get(&self, n: usize, path: &str) -> (u16, Value) {
        get(&format!("{}{path}", self.url(n)))
    }

    /// `POST path` on node `n` with a JSON body.
    pub fn post(&self, n: usize, path: &str, body: &Value) -> (u16, Value) {
        post(&format!("{}{path}", self.url(n)), body)
    }

    /// `PUT path` on node `n` with a JSON body.
    pub fn put(&self, n: usize, path: &str, body: &Value) -> (u16, Value) {
        put(&format!("{}{path}", self.url(n)), body)
    }

    /// Node `n`'s `/health` timestamp (its `applied` clock).
    pub fn clock(&self, n: usize) -> VClock {
        let (status, body) = self.get(n, "/health");
        assert_eq!(status, 200, "GET /health on node{n}: {body}");
        clock(&body["timestamp"])
    }

    /// Node `n`'s `/status`.
    pub fn status(&self, n: usize) -> Value {
        let (status, body) = self.get(n, "/status");
        assert_eq!(status, 200, "GET /status on node{n}: {body}");
        body
    }

    /// `POST /write` on node `n`; panics unless it succeeds. Returns the timestamp.
    pub fn write(&self, n: usize, key: &str, value: Value, context: Option<&VClock>) -> VClock {
        let mut body = json!({ "key": key, "value": value });
        if let Some(context) = context {
            body["context"] = json!(context);
        }
        let (status, answer) = self.post(n, "/write", &body);
        assert_eq!(status, 200, "POST /write {body} on node{n}: {answer}");
        assert_eq!(
            answer["status"], "success",
            "POST /write on node{n}: {answer}"
        );
        clock(&answer["timestamp"])
    }

    /// `GET /read?key=` on node `n`; panics unless it succeeds. Returns the value
    /// and the timestamp.
    pub fn read(&self, n: usize, key: &str) -> (Value, VClock) {
        let (status, answer) = self.get(n, &format!("/read?key={}", encode(key)));
        assert_eq!(status, 200, "GET /read?key={key} on node{n}: {answer}");
        (answer["value"].clone(), clock(&answer["timestamp"]))
    }

    /// Pauses replication from node `from` to node `to` (the fault hook).
    pub fn pause(&self, from: usize, to: usize) {
        self.set_link(from, to, "pause");
    }

    /// Resumes replication from node `from` to node `to`.
    pub fn resume(&self, from: usize, to: usize) {
        self.set_link(from, to, "resume");
    }

    fn set_link(&self, from: usize, to: usize, action: &str) {
        let path = format!("/admin/v1/links/{}/{action}", self.id(to));
        let (status, body) = self.post(from, &path, &json!({}));
        assert_eq!(status, 200, "POST {path} on node{from}: {body}");
        let paused = body["paused"].as_array().expect("a list of paused links");
        assert_eq!(
            paused.contains(&json!(self.id(to))),
            action == "pause",
            "POST {path} on node{from}: {body}"
        );
    }

    /// Pauses every link, from every node to every peer.
    pub fn pause_all(&self) {
        for from in self.numbers() {
            for to in self.numbers().filter(|&to| to != from) {
                self.pause(from, to);
            }
        }
    }

    /// Resumes every link.
    pub fn resume_all(&self) {
        for from in self.numbers() {
            for to in self.numbers().filter(|&to| to != from) {
                self.resume(from, to);
            }
        }
    }

    /// Waits until every node's `/health` timestamp is the same clock and covers
    /// `want`; returns that clock.
    pub fn wait_converged(&self, want: &VClock) -> VClock {
        wait_for(EVENTUALLY, format!("every node to apply {want}"), || {
            let clocks: Vec<VClock> = self.numbers().map(|n| self.clock(n)).collect();
            let first = &clocks[0];
            if clocks.iter().all(|c| c == first) && first.covers(want) {
                Ok(first.clone())
            } else {
                Err(format!("clocks {}", display_all(&clocks)))
            }
        })
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            if let Some(logs) = self.logs.take() {
                let kept = logs.keep();
                eprintln!("---- node logs kept in {}", kept.display());
            }
            for node in &self.nodes {
                eprintln!(
                    "---- {} ({}), last {LOG_TAIL} lines of {}:\n{}",
                    node.id,
                    node.url,
                    node.log.display(),
                    tail(&node.log, LOG_TAIL)
                );
            }
        }
    }
}

/// `n` distinct free ports on 127.0.0.1: all are bound at once, then released.
/// Another process may take one before a node binds it; the cluster start then
/// retries with new ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("(cannot open {})", path.display());
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- waiting ---------------------------------------------------------------------

/// Polls `condition` until it holds; panics after `timeout` naming `what`.
pub fn wait_until(timeout: Duration, what: impl Display, mut condition: impl FnMut() -> bool) {
    wait_for(timeout, what, || {
        if condition() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
}

/// Polls `probe` until it returns `Ok`; panics after `timeout` naming `what` and
/// the last state `probe` described in its `Err`.
pub fn wait_for<T>(
    timeout: Duration,
    what: impl Display,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

// ---- HTTP --------------------------------------------------------------------------

fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .redirects(0)
            .build()
    })
}

/// Sends a request; `Err` only for transport failures (connection refused,
/// timeout). Any status, 4xx and 5xx included, is `Ok((status, body))`; the body
/// is parsed as JSON, or kept as a JSON string when it is not JSON, or `null`
/// when empty.
pub fn try_request(
    method: &str,
    url: &str,
    body: Option<(Option<&str>, &[u8])>,
) -> Result<(u16, Value), String> {
    let mut request = agent().request(method, url);
    let result = match body {
        None => request.call(),
        Some((content_type, bytes)) => {
            if let Some(content_type) = content_type {
                request = request.set("Content-Type", content_type);
            }
            request.send_bytes(bytes)
        }
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => return Err(format!("{method} {url}: {e}")),
    };
    let status = response.status();
    let text = response
        .into_string()
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}

/// Sends a request; panics on a transport failure.
pub fn request(method: &str, url: &str, body: Option<(Option<&str>, &[u8])>) -> (u16, Value) {
    try_request(method, url, body).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET url`.
pub fn get(url: &str) -> (u16, Value) {
    request("GET", url, None)
}

/// `POST url` with a JSON body.
pub fn post(url: &str, body: &Value) -> (u16, Value) {
    let bytes = body.to_string();
    request(
        "POST",
        url,
        Some((Some("application/json"), bytes.as_bytes())),
    )
}

/// `PUT url` with a JSON body.
pub fn put(url: &str, body: &Value) -> (u16, Value) {
    let bytes = body.to_string();
    request(
        "PUT",
        url,
        Some((Some("application/json"), bytes.as_bytes())),
    )
}

/// `DELETE url`, without a body.
pub fn delete(url: &str) -> (u16, Value) {
    request("DELETE", url, None)
}

/// Percent-encodes a query parameter or path segment.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---- clocks --------------------------------------------------------------------------

/// Parses a clock from a JSON answer; panics when it is not one.
pub fn clock(value: &Value) -> VClock {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{value} is not a vector clock: {e}"))
}

/// A clock from `(node, counter)` pairs.
pub fn vclock(entries: &[(&str, u64)]) -> VClock {
    entries.iter().map(|&(n, s)| (n, s)).collect()
}

/// The clocks of a list, for messages.
pub fn display_all(clocks: &[VClock]) -> String {
    clocks
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
