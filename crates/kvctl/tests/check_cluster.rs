//! `kvctl check` against real nodes: a correct build passes, and a build that
//! delivers events without checking their dependencies is caught.
//!
//! The test builds kvnode twice into its own target directory (once as shipped,
//! once with the test-only `broken-causality` feature), starts three nodes of
//! each, cuts the link node1 -> node3 with the fault hook so that node3 receives
//! node2's writes before the node1 writes they depend on, and runs the checker's
//! sessions through the prototype API. Then it resumes the link and lets the
//! nodes converge.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvctl::check::{self, Api, Workload};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds kvnode (with `features`) and returns a copy of the binary.
fn build_kvnode(features: &[&str], name: &str) -> PathBuf {
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

struct Cluster {
    children: Vec<Child>,
    urls: Vec<String>,
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
fn free_ports() -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

fn start(binary: &Path, extra_env: &[(&str, &str)]) -> Cluster {
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
                std::fs::File::create(logs.path().join(format!("node{}.log", i + 1)))
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
                let log = std::fs::read_to_string(logs.path().join(format!("node{}.log", i + 1)));
                panic!("node{} on {port} did not start: {log:?}", i + 1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cluster
}

fn kvnode_health(port: u16) -> std::io::Result<()> {
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

fn set_link(cluster: &Cluster, from: usize, to: usize, action: &str) {
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

/// Runs the checker's sessions with node1 -> node3 cut, then resumes the link
/// and checks the whole history.
fn check_with_cut_link(cluster: &Cluster) -> check::Report {
    let workload = Workload {
        nodes: cluster.urls.clone(),
        api: Api::Compat,
        sessions: 6,
        ops_per_session: 80,
        keys: 3,
        write_ratio: 0.5,
        timeout: Duration::from_secs(5),
        quiesce_timeout: Duration::from_secs(20),
        seed: 7,
        token: None,
    };
    set_link(cluster, 1, 3, "pause");
    let system = actix_rt::System::new();
    let mut history = system.block_on(check::run_sessions(&workload));
    set_link(cluster, 1, 3, "resume");
    system.block_on(check::finish(&workload, &mut history));
    assert!(history.quiescent, "the nodes did not reach the same clock");
    check::check(&history)
}

#[test]
fn the_checker_passes_a_correct_build_and_catches_a_broken_one() {
    let correct = build_kvnode(&[], "correct");
    let broken = build_kvnode(&["broken-causality"], "broken");

    let report = check_with_cut_link(&start(&correct, &[]));
    assert!(
        report.violations.is_empty(),
        "a correct build must pass: {:#?}",
        &report.violations[..report.violations.len().min(5)]
    );
    assert_eq!(report.converged, Some(true));

    let report = check_with_cut_link(&start(&broken, &[("BROKEN_CAUSALITY", "skip-deps")]));
    let kinds: std::collections::BTreeSet<&str> =
        report.violations.iter().map(|v| v.kind.as_str()).collect();
    assert!(
        !report.violations.is_empty(),
        "delivering without the dependency check must be caught"
    );
    println!("violations found in the broken build: {kinds:?}");
}
