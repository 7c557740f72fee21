//! Local kvnode clusters for tests and developer tasks.
//!
//! One way to start, watch and stop nodes, for the integration tests of every
//! crate and for `cargo xtask cluster`, `bench` and the schemathesis step:
//!
//! - [`Cluster::processes`] runs each node as a `kvnode` process: it can be
//!   killed (`kill -9`), paused with SIGSTOP, stopped with SIGTERM and started
//!   again over the same data directory and port.
//! - [`Cluster::in_process`] (feature `in-process`) runs each node on a thread
//!   of the calling process through `kvnode::server::run`, stopped by its
//!   shutdown signal: no binary to build, no process to spawn.
//!
//! Both take their settings as the node's variables (`KVNODE_*`, see the
//! README's configuration table), so a cluster means the same in both modes.
//! Nodes are `node1`..`nodeN` on 127.0.0.1, on free ports unless given; the
//! kit waits until every node answers `GET /health` as itself ([`probe_health`],
//! the probe of `kvnode healthcheck`), polling with a deadline.
//!
//! ```no_run
//! use kv_testkit::Cluster;
//!
//! let mut cluster = Cluster::processes("target/debug/kvnode", 3)
//!     .env("KVNODE_CAUSAL_WAIT", "1s")
//!     .start()?;
//! let (status, answer) = kv_testkit::http::get(&format!("{}/health", cluster.url(1)));
//! assert_eq!(status, 200, "{answer}");
//! cluster.kill9(2)?;
//! cluster.restart(2)?;
//! # Ok::<(), kv_testkit::Error>(())
//! ```

mod cluster;
#[cfg(feature = "in-process")]
mod in_process;
mod process;

pub mod http;

// The probe is the server's own file, which needs nothing but `std`: the
// container health check and every harness probe a node the same way.
#[path = "../../kvnode/src/probe.rs"]
mod probe;

use std::fmt::Display;
use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use cluster::{Builder, Cluster, Output};
pub use probe::probe_health;
pub use process::{describe_exit, die_with_parent};

/// A failure to start, probe or stop nodes; the message says which node and
/// why, with the end of its log when it has one.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Error(message.into())
    }
}

impl Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

/// What the kit's functions return.
pub type Result<T> = std::result::Result<T, Error>;

/// How often the kit and [`wait_for`] poll.
pub const POLL: Duration = Duration::from_millis(20);

/// `n` distinct free ports on 127.0.0.1: all are bound at once, then released.
/// Another process may take one before a node binds it; a cluster on free
/// ports is then started again on new ones.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

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

/// Polls `probe` every [`POLL`] until it returns `Ok`; panics after `timeout`
/// naming `what` and the last state `probe` described in its `Err`.
pub fn wait_for<T>(
    timeout: Duration,
    what: impl Display,
    mut probe: impl FnMut() -> std::result::Result<T, String>,
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Duration;

    use super::*;

    /// Answers one connection with `answer`, after reading the request head.
    fn serve_once(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            assert!(head.starts_with(b"GET /health HTTP/1.1\r\n"));
            stream.write_all(answer.as_bytes()).unwrap();
        });
        address
    }

    #[test]
    fn the_probe_returns_the_body_of_a_200_only() {
        let second = Duration::from_secs(1);
        let ok = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"node\":\"n1\"}\r\n");
        assert_eq!(probe_health(&ok, second).unwrap(), "{\"node\":\"n1\"}\r\n");
        let old = serve_once("HTTP/1.0 200\r\n\r\n{}");
        assert_eq!(probe_health(&old, second).unwrap(), "{}");
        let busy = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n{}");
        let err = probe_health(&busy, second).unwrap_err().to_string();
        assert!(err.contains("503"), "{err}");
        let garbage = serve_once("SSH-2.0-OpenSSH\r\n");
        assert!(probe_health(&garbage, second).is_err());
        let closed = free_ports(1).unwrap()[0];
        assert!(probe_health(&format!("127.0.0.1:{closed}"), second).is_err());
    }

    #[test]
    fn free_ports_are_distinct() {
        let mut ports = free_ports(8).unwrap();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8);
    }

    #[test]
    fn wait_for_returns_the_first_success() {
        let mut calls = 0;
        let value = wait_for(Duration::from_secs(5), "the third call", || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(value, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for nothing; last seen: never")]
    fn wait_for_names_what_it_waited_for() {
        wait_for(Duration::from_millis(50), "nothing", || {
            Err::<(), _>("never".to_owned())
        });
    }
}
