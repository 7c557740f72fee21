//! The schemathesis step of `cargo xtask ci`: one live `kvnode` (in memory, fault
//! hook on) on a free loopback port, and schemathesis generating requests from
//! the node's own `/openapi.json`, checking that none gets a 5xx.
//!
//! Skipped, with the reason, when the `schemathesis` command is missing (`.ci/run`
//! installs it with pip). A single node never waits for another's writes, so the
//! only designed 503s (`causal_timeout`, `buffer_full`; see `docs/design.md`,
//! "Interfaces") cannot happen here: any 5xx is a bug.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use kv_testkit::Cluster;

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

    let mut node = Cluster::processes(target.join("debug").join("kvnode"), 1)
        .dir(&report)
        .env("KVNODE_MEMORY", "true")
        .ready_timeout(START_DEADLINE)
        .start()?;
    let log = node
        .log_path(1)
        .expect("the node logs to a file")
        .to_owned();

    let url = format!("{}/openapi.json", node.url(1));
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
    let crashed = node.exit_status(1)?.is_some();
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
