//! The schemathesis step of `cargo xtask ci`: one live `kvnode` (in memory, fault
//! hook on) on a free loopback port, and schemathesis generating requests from
//! the node's own `/openapi.json`, checking that none gets a 5xx.
//!
//! Skipped, with the reason, when the `schemathesis` command is missing (`.ci/run`
//! installs it with pip). A single node never waits for another's writes, so the
//! only designed 503s (`causal_timeout`, `buffer_full`; see `docs/design.md`,
//! "Interfaces") cannot happen here: any 5xx is a bug.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Test cases per operation.
const MAX_EXAMPLES: &str = "100";
/// How long the node may take to answer `/health`.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the step. `Ok(Some(why))` when it was skipped.
pub(crate) fn run(root: &Path) -> anyhow::Result<Option<String>> {
    match Command::new("schemathesis")
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {
            println!("{}", String::from_utf8_lossy(&out.stdout).trim());
        }
        _ => {
            return Ok(Some(
                "the `schemathesis` command is not installed (`pip install schemathesis`)".into(),
            ))
        }
    }

    let status = Command::new(crate::cargo())
        .args(["build", "--quiet", "-p", "kvnode"])
        .current_dir(root)
        .status()
        .context("cannot run `cargo build -p kvnode`")?;
    if !status.success() {
        bail!("`cargo build -p kvnode` exited with {status}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let report = target.join("schemathesis");
    std::fs::create_dir_all(&report)
        .with_context(|| format!("cannot create {}", report.display()))?;

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free port")?
        .port();
    let log = report.join("kvnode.log");
    let mut node = Node::start(&target.join("debug").join("kvnode"), port, &log)?;
    node.wait_ready(port)?;

    let url = format!("http://127.0.0.1:{port}/openapi.json");
    println!("schemathesis run {url} --checks not_a_server_error");
    let status = Command::new("schemathesis")
        .args([
            "run",
            &url,
            "--checks",
            "not_a_server_error",
            "--max-examples",
            MAX_EXAMPLES,
            "--generation-database",
            "none",
            "--no-color",
        ])
        .current_dir(&report)
        .status()
        .context("cannot run schemathesis")?;
    let crashed = node.child.try_wait()?.is_some();
    drop(node);
    if crashed {
        bail!("kvnode exited during the run; its log is {}", log.display());
    }
    if !status.success() {
        bail!(
            "schemathesis found failures (exit {status}); the node's log is {}",
            log.display()
        );
    }
    Ok(None)
}

/// The node under test; killed when dropped.
struct Node {
    child: Child,
}

impl Node {
    fn start(binary: &Path, port: u16, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(binary);
        for (var, _) in std::env::vars() {
            if var.starts_with("KVNODE_") || matches!(var.as_str(), "NODE_ID" | "NODES" | "PORT") {
                command.env_remove(var);
            }
        }
        let child = command
            .envs([
                ("KVNODE_NODE_ID", "node1"),
                ("KVNODE_LISTEN", "127.0.0.1"),
                ("KVNODE_PORT", &port.to_string()),
                ("KVNODE_MEMORY", "true"),
                ("KVNODE_FAULTS", "true"),
                ("RUST_LOG", "info"),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Ok(Self { child })
    }

    fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("kvnode exited at start with {status}");
            }
            if health(port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kvnode did not answer /health within {START_DEADLINE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True when `GET /health` on the port answers 200.
fn health(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}
