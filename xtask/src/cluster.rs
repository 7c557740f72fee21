//! `cargo xtask cluster`: build `kvnode` in release mode and run a local cluster.
//!
//! Node `nodeI` listens on `127.0.0.1:(base_port + I - 1)` and keeps its data in
//! `./data/nodeI`. Every line a node prints is shown prefixed with its id. The cluster
//! runs until Ctrl-C or SIGTERM, which stops every node (SIGTERM, then SIGKILL after a
//! grace period), or until a node exits by itself, which stops the others and fails.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kv_testkit::{Cluster, Output};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// Port of node1; nodeI listens on base-port + I - 1.
    #[arg(long, default_value_t = 5001)]
    base_port: u16,
    /// Delete each node's data directory (./data/nodeI) before starting.
    #[arg(long)]
    fresh: bool,
}

/// How long the nodes get to answer `GET /health` after they are started.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a node gets to exit after SIGTERM before it is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let Some(last_port) = args.base_port.checked_add(args.nodes - 1) else {
        bail!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port,
            args.nodes
        );
    };
    let ports: Vec<u16> = (args.base_port..=last_port).collect();

    build(root, &["kvnode"], true)?;
    for port in &ports {
        ensure!(
            TcpListener::bind(("127.0.0.1", *port)).is_ok(),
            "127.0.0.1:{port} is already in use (is a cluster already running?)"
        );
    }
    if args.fresh {
        for n in 1..=args.nodes {
            remove_dir_if_exists(&root.join("data").join(format!("node{n}")))?;
        }
    }

    let (stop_requests, stop_requested) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_requests.send(());
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;

    let mut cluster = local_nodes(
        &target_dir(root).join("release").join("kvnode"),
        usize::from(args.nodes),
    )
    .ports(ports)
    .current_dir(root)
    .data_root("data")
    .env("KVNODE_TRACE_BUFFER", "10000")
    .output(Output::Prefixed)
    .no_wait()
    .start()?;

    println!("started {} nodes:", cluster.len());
    for n in cluster.numbers() {
        println!("  {}  {}", cluster.id(n), cluster.url(n));
    }
    println!(
        "demo settings: the fault hook (/admin/v1/links) and an in-memory trace of the \
         last 10000 records (/v1/trace) are on"
    );
    println!(
        "try: curl {}/health   (Ctrl-C stops the cluster)",
        cluster.url(1)
    );

    let result = supervise(&mut cluster, &stop_requested);
    stop(&mut cluster);
    result
}

/// The nodes of a local cluster, as xtask starts them: processes of `binary`
/// that keep the `KVNODE_*` settings of xtask's environment, log at `RUST_LOG`
/// (default info), are left alone by a terminal's Ctrl-C and get SIGTERM if
/// xtask dies (start them from the main thread).
pub(crate) fn local_nodes(binary: &Path, nodes: usize) -> kv_testkit::Builder {
    Cluster::processes(binary, nodes)
        .inherit_settings()
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .detach_from_terminal()
}

/// Builds `packages` (in release mode when `release`).
pub(crate) fn build(root: &Path, packages: &[&str], release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build"];
    if release {
        args.push("--release");
    }
    for package in packages {
        args.extend(["-p", package]);
    }
    let status = Command::new(crate::cargo())
        .args(&args)
        .current_dir(root)
        .status()
        .context("cannot run cargo build")?;
    ensure!(
        status.success(),
        "cargo {} failed ({status})",
        args.join(" ")
    );
    Ok(())
}

/// The cargo target directory.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// Deletes `dir` and everything in it; nothing to do when it does not exist.
pub(crate) fn remove_dir_if_exists(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("cannot delete {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Runs until a stop request (`Ok`), a node exits, or the cluster never gets ready.
fn supervise(cluster: &mut Cluster, stop_requested: &mpsc::Receiver<()>) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_DEADLINE;
    let mut ready = false;
    loop {
        match stop_requested.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the signal handler went away"),
        }
        cluster.check_alive()?;
        if !ready {
            let pending = cluster.not_ready()?;
            if pending.is_empty() {
                println!("cluster ready");
                ready = true;
            } else if Instant::now() >= deadline {
                bail!(
                    "{} did not answer GET /health within {READY_DEADLINE:?}",
                    pending.join(", ")
                );
            }
        }
    }
}

/// Stops every node still running: SIGTERM, then SIGKILL after [`STOP_GRACE`].
pub(crate) fn stop(cluster: &mut Cluster) {
    println!("stopping the cluster");
    for id in cluster.stop_all(STOP_GRACE) {
        println!("{id} did not stop within {STOP_GRACE:?}, killed it");
    }
}
