//! Harness for the process-level cluster tests: real `kvnode` processes of this
//! build on free loopback ports, started by the workspace's test kit
//! (`kv_testkit`), driven over HTTP.
//!
//! - [`TestCluster::start`] starts one process per node with the fault hook on
//!   and waits until every node answers `GET /health` as itself; a start in
//!   which a port was taken meanwhile is tried again on new ports. Dropping the
//!   cluster kills every process it started.
//! - Each node keeps its data (durable storage, the default) in the cluster's
//!   temporary directory, and its output in `nodeN.log` there. When a test
//!   fails, the directory is kept, its path is printed and the tail of each
//!   log is copied into the test's output.
//! - Nodes are numbered from 1, as their ids are: node `1` is `node1`.
//! - A node can be killed ([`TestCluster::kill9`], SIGKILL), stopped
//!   ([`TestCluster::stop`], SIGTERM) and started again
//!   ([`TestCluster::restart`]): same id, port, data directory and environment,
//!   its log appended to the same file. The kit's own methods (`url`, `id`,
//!   `numbers`, `data_dir`, `freeze`...) are reached through `Deref`.
//! - Every "eventually" is [`wait_until`] or [`wait_for`]: poll with a deadline,
//!   never a fixed sleep.

#![allow(dead_code, unused_imports)] // each test binary uses its own part of this module

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

pub use kv_testkit::http::{delete, encode, get, post, put, request, try_request};
use kv_testkit::Cluster;
pub use kv_testkit::{wait_for, wait_until};
use serde_json::{json, Value};
use vclock_proto::VClock;

/// A reasonable deadline for "eventually" in these tests: replication on
/// loopback takes milliseconds, so this only matters when something is wrong.
pub const EVENTUALLY: Duration = Duration::from_secs(15);

/// The kit's builder for `n` processes of this build's `kvnode`.
pub fn nodes(n: usize) -> kv_testkit::Builder {
    Cluster::processes(env!("CARGO_BIN_EXE_kvnode"), n)
}

/// A running cluster of `kvnode` processes, with shortcuts for the requests
/// the tests make.
#[derive(Debug)]
pub struct TestCluster {
    kit: Cluster,
}

impl Deref for TestCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.kit
    }
}

impl DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.kit
    }
}

impl TestCluster {
    /// Starts `n` nodes, `node1`..`nodeN`, with the fault hook enabled.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    /// Starts `n` nodes with extra environment variables for every node (such as
    /// `("KVNODE_CAUSAL_WAIT", "1s")`); they override the harness's defaults.
    pub fn start_with(n: usize, env: &[(&str, &str)]) -> Self {
        let kit = nodes(n)
            .envs(env.iter().copied())
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        Self { kit }
    }

    /// A cluster started by the kit's own builder (see [`nodes`]), for
    /// settings that [`Self::start_with`] does not give.
    pub fn from_kit(kit: Cluster) -> Self {
        Self { kit }
    }

    /// The path of node `n`'s log file.
    pub fn log_path(&self, n: usize) -> &Path {
        self.kit.log_path(n).expect("process nodes log to files")
    }

    /// Kills node `n` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, n: usize) {
        self.kill9(n);
    }

    /// `kill -9` node `n`: SIGKILL, no chance to flush or clean up; waits until
    /// the process is gone. Its data directory stays for [`Self::restart`].
    pub fn kill9(&mut self, n: usize) {
        self.kit.kill9(n).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stops node `n` gracefully (SIGTERM) and waits until it exits (SIGKILL
    /// and a panic after a deadline). Returns its exit status.
    pub fn stop(&mut self, n: usize) -> ExitStatus {
        self.kit.stop(n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts node `n` again, after [`Self::kill9`] or [`Self::stop`]: same id,
    /// port, data directory and environment. Waits until it answers `/health`.
    pub fn restart(&mut self, n: usize) {
        self.restart_many(&[n]);
    }

    /// Starts nodes `which` again, all at once, and waits until every one of
    /// them answers `/health`.
    pub fn restart_many(&mut self, which: &[usize]) {
        self.kit
            .restart_many(which)
            .unwrap_or_else(|e| panic!("{e}"));
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
        self.kit
            .set_link(from, to, action == "pause")
            .unwrap_or_else(|e| panic!("{e}"));
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
        self.wait_same(&self.numbers().collect::<Vec<_>>(), want)
    }

    /// Waits until nodes `nodes` answer `/health` with the same clock, covering
    /// `want`; returns that clock.
    pub fn wait_same(&self, nodes: &[usize], want: &VClock) -> VClock {
        wait_for(
            EVENTUALLY,
            format!("nodes {nodes:?} to apply {want}"),
            || {
                let clocks: Vec<VClock> = nodes.iter().map(|&n| self.clock(n)).collect();
                let first = &clocks[0];
                if clocks.iter().all(|c| c == first) && first.covers(want) {
                    Ok(first.clone())
                } else {
                    Err(format!("clocks {}", display_all(&clocks)))
                }
            },
        )
    }

    /// Events in node `n`'s log (`/status`).
    pub fn log_len(&self, n: usize) -> u64 {
        let status = self.status(n);
        status["log_len"]
            .as_u64()
            .unwrap_or_else(|| panic!("no log_len in {status}"))
    }
}

/// `n` distinct free ports on 127.0.0.1 (see [`kv_testkit::free_ports`]).
pub fn free_ports(n: usize) -> Vec<u16> {
    kv_testkit::free_ports(n).expect("free ports")
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
