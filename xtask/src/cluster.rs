//! `cargo xtask cluster`: build `kvnode` in release mode and run a local cluster
//! to break on purpose.
//!
//! Node `nodeI` listens on `127.0.0.1:(base_port + I - 1)` and keeps its data in
//! `./data/nodeI`. Every line a node prints is shown prefixed with its id. The
//! running command supervises the nodes ([`supervisor`]): a node that exits or is
//! killed is reported, and the others keep running. From another terminal,
//! `cargo xtask cluster kill|stop|pause|resume|restart nodeI` and `status` talk to
//! it through `./data/cluster.sock` ([`control`]), without building anything.
//! Ctrl-C or SIGTERM stops every node (SIGTERM, then SIGKILL after a grace period).

mod control;
mod supervisor;
#[cfg(test)]
mod tests;

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use kv_testkit::{Cluster, Output};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Option<Control>,
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

/// What to do to the running cluster, from another terminal. NODE is `node2`
/// or `2`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub(crate) enum Control {
    /// Kill a node with SIGKILL (`kill -9`): no chance to flush or clean up.
    Kill { node: String },
    /// Stop a node gracefully: SIGTERM, then SIGKILL after 5 s.
    Stop { node: String },
    /// Freeze a node with SIGSTOP: it keeps its connections and answers nothing.
    Pause { node: String },
    /// Unfreeze a paused node (SIGCONT).
    Resume { node: String },
    /// Start a stopped node again with the same data, port and settings (a running
    /// one is stopped first); waits until it answers GET /health.
    Restart { node: String },
    /// Each node's URL, pid and state, and whether it answers GET /health.
    Status,
}

/// How long the nodes get to answer `GET /health` after they are started.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a node gets to exit after SIGTERM before it is killed.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    let socket = socket_path(&root.join("data"));
    match &args.command {
        Some(command) => control::run(&socket, command),
        None => start(root, args, &socket),
    }
}

/// The supervisor's control socket for the data directory `data`.
fn socket_path(data: &Path) -> PathBuf {
    data.join("cluster.sock")
}

/// Builds kvnode, starts the cluster and supervises it until Ctrl-C.
fn start(root: &Path, args: &Args, socket: &Path) -> anyhow::Result<()> {
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
    let data = root.join("data");
    if args.fresh {
        for n in 1..=args.nodes {
            remove_dir_if_exists(&data.join(format!("node{n}")))?;
        }
    }
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;

    let (stop_requests, stop_requested) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_requests.send(());
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;

    let nodes = local_nodes(
        &target_dir(root).join("release").join("kvnode"),
        usize::from(args.nodes),
    )
    .ports(ports)
    .current_dir(root)
    .data_root("data")
    .env("KVNODE_TRACE_BUFFER", "10000")
    .output(Output::Prefixed);
    println!(
        "demo settings: the fault hook (/admin/v1/links) and an in-memory trace of the \
         last 10000 records (/v1/trace) are on"
    );
    supervisor::serve(nodes, socket, &stop_requested, &mut |line| {
        println!("{line}")
    })
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

/// Stops every node still running: SIGTERM, then SIGKILL after [`STOP_GRACE`].
pub(crate) fn stop(cluster: &mut Cluster) {
    stop_reporting(cluster, &mut |line| println!("{line}"));
}

/// [`stop`], saying what happens through `report`.
fn stop_reporting(cluster: &mut Cluster, report: &mut dyn FnMut(&str)) {
    report("stopping the cluster");
    for id in cluster.stop_all(STOP_GRACE) {
        report(&format!(
            "{id} did not stop within {STOP_GRACE:?}, killed it"
        ));
    }
}
