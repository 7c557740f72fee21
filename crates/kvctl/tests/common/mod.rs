//! Real kvnode clusters for kvctl's integration tests: builds kvnode into its
//! own target directory, starts three nodes on free ports with the fault hook,
//! and pauses or resumes links between them.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds kvnode (with `features`) and returns a copy of the binary.
pub fn build_kvnode(features: &[&str], name: &str) -> PathBuf {
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
    copy
}

pub struct Cluster {
    children: Vec<Child>,
    /// The nodes' base URLs; `urls[0]` is node1.
    pub urls: Vec<String>,
    logs: tempfile::TempDir,
}

impl Cluster {
    /// The base URL of node `n` (1-based).
    pub fn url(&self, n: usize) -> &str {
        &self.urls[n - 1]
    }

    /// What node `n` (1-based) has logged so far.
    pub fn log(&self, n: usize) -> String {
        std::fs::read_to_string(self.logs.path().join(format!("node{n}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three distinct free ports (the listeners are held until all are chosen).
pub fn free_ports() -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

/// Starts three nodes of `binary` in memory with the fault hook; `extra_env`
/// overrides the defaults (repair after 1 h, causal wait 100 ms).
pub fn start(binary: &Path, extra_env: &[(&str, &str)]) -> Cluster {
    let ports = free_ports();
    let logs = tempfile::tempdir().expect("a temporary directory");
    let nodes: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("node{}=http://127.0.0.1:{p}", i + 1))
        .collect();
    let mut cluster = Cluster {
        children: Vec::new(),
        urls: ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
        logs,
    };
    for (i, port) in ports.iter().enumerate() {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("KVNODE_NODE_ID", format!("node{}", i + 1))
            .env("KVNODE_NODES", nodes.join(","))
            .env("KVNODE_PORT", port.to_string())
            .env("KVNODE_LISTEN", "127.0.0.1")
            .env("KVNODE_MEMORY", "true")
            .env("KVNODE_FAULTS", "true")
            .env("KVNODE_REPAIR_AFTER", "1h")
            .env("KVNODE_CAUSAL_WAIT", "100ms")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(cluster.logs.path().join(format!("node{}.log", i + 1)))
                    .expect("log file"),
            );
        for (k, v) in extra_env {
            command.env(k, v);
        }
        cluster
            .children
            .push(command.spawn().expect("kvnode starts"));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, port) in ports.iter().enumerate() {
        while kvnode_health(*port).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "node{} on {port} did not start: {}",
                    i + 1,
                    cluster.log(i + 1)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cluster
}

pub fn kvnode_health(port: u16) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    if head.ends_with(b"200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not healthy"))
    }
}

/// Pauses or resumes (`action`) the link node`from` -> node`to` with the fault hook.
pub fn set_link(cluster: &Cluster, from: usize, to: usize, action: &str) {
    use std::io::{Read, Write};
    let port: u16 = cluster.urls[from - 1]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let path = format!("/admin/v1/links/node{to}/{action}");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{action} failed: {answer}"
    );
}

/// Calls `f` until it returns `Ok`, for at most 20 s.
pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: still not so: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
