//! `cargo xtask pytest`: the Python client (`clients/python`) against live clusters.
//!
//! Builds `kvnode` and `kvctl` (debug), starts three nodes (in memory, fault hook
//! on, `causal_wait` of 1 s so that a causal timeout is quick to provoke) and one
//! node with a client token, then runs, from the checkout's sources:
//! `mypy --strict` on the package, its tests and examples; `pytest`; and each
//! example in `clients/python/examples`. The tests find the clusters in
//! `CAUSAL_KV_NODES`, `CAUSAL_KV_TOKEN_NODE` and `CAUSAL_KV_TOKEN`, and kvctl in
//! `KVCTL`. The nodes are stopped at the end, after a failure too; their logs
//! stay in `target/pytest`.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use kv_testkit::Cluster;

use crate::cluster::{build, target_dir};

/// The nodes' `causal_wait`, in seconds; the tests read it too.
const CAUSAL_WAIT_SECS: &str = "1";
/// How long the nodes may take to answer `/health`.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a node gets to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The token node's client token and cluster secret (the test cluster's only).
const CLIENT_TOKEN: &str = "pytest-client-token-0123456789";
const CLUSTER_SECRET: &str = "pytest-cluster-secret-0123456789";
/// The Python modules the step needs.
const MODULES: &str = "httpx, pytest, mypy, anyio";

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let package = root.join("clients").join("python");
    check_modules(&python)?;
    build(root, &["kvnode", "kvctl"], false)?;
    let debug = target_dir(root).join("debug");
    let logs = target_dir(root).join("pytest");

    let mut nodes = Cluster::processes(debug.join("kvnode"), 3)
        .dir(logs.join("cluster"))
        .env("KVNODE_MEMORY", "true")
        .env("KVNODE_CAUSAL_WAIT", format!("{CAUSAL_WAIT_SECS}s"))
        .ready_timeout(READY_DEADLINE)
        .start()
        .context("cannot start the 3-node cluster")?;
    let mut token_node = Cluster::processes(debug.join("kvnode"), 1)
        .dir(logs.join("token"))
        .env("KVNODE_MEMORY", "true")
        .env("KVNODE_CLIENT_TOKEN", CLIENT_TOKEN)
        .env("KVNODE_CLUSTER_SECRET", CLUSTER_SECRET)
        .ready_timeout(READY_DEADLINE)
        .start()
        .context("cannot start the node with a client token")?;
    println!(
        "nodes: {} (causal_wait {CAUSAL_WAIT_SECS}s); token node: {}; logs in {}",
        nodes.urls().join(" "),
        token_node.url(1),
        logs.display()
    );

    let src = package.join("src");
    let python_path = match std::env::var_os("PYTHONPATH") {
        Some(old) => std::env::join_paths([src.into_os_string(), old])?,
        None => src.into_os_string(),
    };
    let env: Vec<(&str, OsString)> = vec![
        ("CAUSAL_KV_NODES", nodes.urls().join(",").into()),
        ("CAUSAL_KV_TOKEN_NODE", token_node.url(1).into()),
        ("CAUSAL_KV_TOKEN", CLIENT_TOKEN.into()),
        ("CAUSAL_KV_CAUSAL_WAIT", CAUSAL_WAIT_SECS.into()),
        ("KVCTL", debug.join("kvctl").into_os_string()),
        ("PYTHONPATH", python_path),
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ];
    let python_step = |what: &str, args: &[&str]| -> anyhow::Result<()> {
        println!("\n--> {what}: python3 {}", args.join(" "));
        let status = Command::new(&python)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&package)
            .status()
            .with_context(|| format!("cannot run {}", python.to_string_lossy()))?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    };
    let mut result = python_step("mypy", &["-m", "mypy", "--strict"])
        .and_then(|()| python_step("pytest", &["-m", "pytest", "-q", "-p", "no:cacheprovider"]));
    if result.is_ok() {
        for example in examples(&package)? {
            result = python_step("example", &[&example]);
            if result.is_err() {
                break;
            }
        }
    }
    for cluster in [&mut nodes, &mut token_node] {
        cluster.check_alive()?;
        for id in cluster.stop_all(STOP_GRACE) {
            println!("{id} did not stop within {STOP_GRACE:?}, killed it");
        }
    }
    result
}

/// Fails, saying how to install them, when the Python modules are missing.
fn check_modules(python: &std::ffi::OsStr) -> anyhow::Result<()> {
    let found = Command::new(python)
        .args(["-c", &format!("import {MODULES}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!(
            "{} cannot import {MODULES}: run `python3 -m pip install './clients/python[test]'` \
             (set PYTHON to use another interpreter)",
            python.to_string_lossy()
        );
    }
    Ok(())
}

/// The example scripts, relative to the package, in name order.
fn examples(package: &Path) -> anyhow::Result<Vec<String>> {
    let dir = package.join("examples");
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".py") {
            found.push(format!("examples/{name}"));
        }
    }
    found.sort();
    Ok(found)
}
