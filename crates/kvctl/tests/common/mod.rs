//! Real kvnode clusters for kvctl's integration tests: builds kvnode into its
//! own target directory, starts three nodes on free ports with the fault hook
//! through the workspace's test kit (`kv_testkit`), and pauses or resumes links
//! between them.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds kvnode (with `features`) and returns a copy of the binary, named
/// `kvnode-{name}`. One build at a time (each build replaces the binary the
/// copy is made from), and one per name in a test process: a copy that a
/// running node executes cannot be written again.
pub fn build_kvnode(features: &[&str], name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, copy)) = built.iter().find(|(n, _)| n == name) {
        return copy.clone();
    }
    let target = workspace().join("target/check-nodes");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace())
        .args([
            "build",
            "--quiet",
            "-p",
            "kvnode",
            "--bin",
            "kvnode",
            "--target-dir",
        ])
        .arg(&target);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building kvnode {features:?} failed");
    let copy = target.join(format!("kvnode-{name}"));
    std::fs::copy(target.join("debug/kvnode"), &copy).expect("copy the binary");
    built.push((name.to_owned(), copy.clone()));
    copy
}

/// Three running nodes; killed when dropped.
#[derive(Debug)]
pub struct Cluster {
    kit: kv_testkit::Cluster,
    /// The nodes' base URLs; `urls[0]` is node1.
    pub urls: Vec<String>,
}

impl Cluster {
    /// The base URL of node `n` (1-based).
    pub fn url(&self, n: usize) -> &str {
        self.kit.url(n)
    }

    /// What node `n` (1-based) has logged so far.
    pub fn log(&self, n: usize) -> String {
        self.kit.log(n)
    }
}

/// Starts three nodes of `binary` in memory with the fault hook; `extra_env`
/// overrides the defaults (repair after 1 h, causal wait 100 ms).
pub fn start(binary: &Path, extra_env: &[(&str, &str)]) -> Cluster {
    let kit = kv_testkit::Cluster::processes(binary, 3)
        .env("KVNODE_MEMORY", "true")
        .env("KVNODE_REPAIR_AFTER", "1h")
        .env("KVNODE_CAUSAL_WAIT", "100ms")
        .env("RUST_LOG", "warn")
        .envs(extra_env.iter().copied())
        .ready_timeout(Duration::from_secs(60))
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    Cluster {
        urls: kit.urls(),
        kit,
    }
}

/// Pauses or resumes (`action`) the link node`from` -> node`to` with the fault hook.
pub fn set_link(cluster: &Cluster, from: usize, to: usize, action: &str) {
    assert!(matches!(action, "pause" | "resume"), "no action {action}");
    cluster
        .kit
        .set_link(from, to, action == "pause")
        .unwrap_or_else(|e| panic!("{action} failed: {e}"));
}

/// Calls `f` until it returns `Ok`, for at most 20 s.
pub fn wait_until<T>(what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    kv_testkit::wait_for(Duration::from_secs(20), what, f)
}
