//! `cargo xtask`: the developer tasks that plain `cargo` does not cover.
//!
//! One module per task. Only what the README and CI need lives here:
//! `cluster` runs a local demo cluster, `ci` runs the checks CI runs, `image`
//! builds the container image and `e2e` runs the end-to-end scenarios against it;
//! `bench` runs the benchmark suite against a fresh local cluster.

mod bench;
mod ci;
mod cluster;
mod e2e;
mod fuzz;
mod image;
mod python;
mod schemathesis;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Developer tasks for the causal key-value store")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build kvnode (release) and run a local cluster until Ctrl-C; from another
    /// terminal, kill, stop, pause, resume or restart its nodes, or see their status.
    Cluster(cluster::Args),
    /// Run the CI checks: fmt, clippy, tests, and e2e when a Docker engine answers.
    Ci,
    /// Build the kvnode container image (static binaries, FROM scratch).
    Image,
    /// Build the image, start a compose cluster and run the end-to-end scenarios.
    E2e(e2e::Args),
    /// Run every cargo-fuzz target in fuzz/ for a bounded time (needs nightly and cargo-fuzz).
    Fuzz(fuzz::Args),
    /// Start a fresh 3-node cluster (fsync) and run the benchmark suite; writes
    /// target/bench/report.md, report.json and bench.svg.
    Bench(bench::Args),
    /// Check the Python client (clients/python) against live clusters: mypy
    /// --strict, pytest and its examples (needs `python3 -m pip install
    /// './clients/python[test]'`).
    Pytest,
}

fn main() -> ExitCode {
    let root = workspace_root();
    let result = match Cli::parse().task {
        Task::Cluster(args) => cluster::run(&root, &args),
        Task::Ci => ci::run(&root),
        Task::Image => image::run(&root),
        Task::E2e(args) => e2e::run(&root, &args),
        Task::Fuzz(args) => fuzz::run(&root, &args),
        Task::Bench(args) => bench::run(&root, &args),
        Task::Pytest => python::run(&root),
    };
    // Printed by hand: returning the error would add a backtrace under RUST_BACKTRACE.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The cargo that launched us (`cargo xtask` sets `CARGO`), else the one on `PATH`.
fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
