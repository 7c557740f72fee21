//! `cargo xtask cluster`: build `kvnode` in release mode and run a local cluster.
//!
//! Node `nodeI` listens on `127.0.0.1:(base_port + I - 1)` and keeps its data in
//! `./data/nodeI`. Every line a node prints is shown prefixed with its id. The cluster
//! runs until Ctrl-C or SIGTERM, which stops every node (SIGTERM, then SIGKILL after a
//! grace period), or until a node exits by itself, which stops the others and fails.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

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
const STOP_GRACE: Duration = Duration::from_secs(5);
/// ANSI colors for the output prefixes, one per node in turn.
const COLORS: [u8; 6] = [36, 33, 35, 32, 34, 31];

/// What the supervising loop reacts to, besides nodes exiting.
enum Event {
    Stop,
    Ready,
    NotReady(String),
}

/// A running node.
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) child: Child,
    output: Vec<JoinHandle<()>>,
}

/// Where a node's output goes.
pub(crate) enum NodeOutput {
    /// To xtask's standard output, each line prefixed with the node id in this ANSI color.
    Prefixed { color: u8 },
    /// To this file (standard output and standard error together).
    File(PathBuf),
}

/// How to start one node of a local cluster.
pub(crate) struct NodeSpec<'a> {
    pub(crate) id: &'a str,
    pub(crate) port: u16,
    /// Every member of the cluster, this node included: `(id, port)`.
    pub(crate) members: &'a [(String, u16)],
    /// The data directory, relative to the workspace root or absolute.
    pub(crate) data_dir: PathBuf,
    /// Turn the fault hook on.
    pub(crate) faults: bool,
    /// More `KVNODE_*` settings.
    pub(crate) env: Vec<(&'static str, String)>,
    pub(crate) output: NodeOutput,
}

pub(crate) fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    ensure!(args.nodes >= 1, "--nodes must be at least 1");
    let Some(last_port) = args.base_port.checked_add(args.nodes - 1) else {
        bail!(
            "--base-port {} leaves no room for {} nodes",
            args.base_port,
            args.nodes
        );
    };
    let members: Vec<(String, u16)> = (args.base_port..=last_port)
        .enumerate()
        .map(|(i, port)| (format!("node{}", i + 1), port))
        .collect();

    build(root, &["kvnode"], true)?;
    for (_, port) in &members {
        ensure!(
            TcpListener::bind(("127.0.0.1", *port)).is_ok(),
            "127.0.0.1:{port} is already in use (is a cluster already running?)"
        );
    }
    if args.fresh {
        for (id, _) in &members {
            remove_dir_if_exists(&root.join("data").join(id))?;
        }
    }

    let (events, rx) = mpsc::channel();
    let on_signal = events.clone();
    ctrlc::set_handler(move || {
        let _ = on_signal.send(Event::Stop);
    })
    .context("cannot install the Ctrl-C/SIGTERM handler")?;

    let binary = target_dir(root).join("release").join("kvnode");
    let mut nodes = Vec::new();
    for (index, (id, port)) in members.iter().enumerate() {
        let spec = NodeSpec {
            id,
            port: *port,
            members: &members,
            data_dir: Path::new("data").join(id),
            faults: true,
            env: vec![("KVNODE_TRACE_BUFFER", "10000".to_string())],
            output: NodeOutput::Prefixed {
                color: COLORS[index % COLORS.len()],
            },
        };
        match spawn_node(root, &binary, &spec) {
            Ok(node) => nodes.push(node),
            Err(err) => {
                stop(&mut nodes);
                return Err(err);
            }
        }
    }

    println!("started {} nodes:", nodes.len());
    for (id, port) in &members {
        println!("  {id}  {}", url(*port));
    }
    println!(
        "demo settings: the fault hook (/admin/v1/links) and an in-memory trace of the \
         last 10000 records (/v1/trace) are on"
    );
    println!(
        "try: curl {}/health   (Ctrl-C stops the cluster)",
        url(args.base_port)
    );
    thread::spawn(move || wait_ready(members, events));

    let result = supervise(&mut nodes, &rx);
    stop(&mut nodes);
    result
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

/// The base URL of the node listening on loopback `port`.
pub(crate) fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// `KVNODE_NODES`: `id=url` pairs, comma separated.
fn nodes_env(members: &[(String, u16)]) -> String {
    let pairs: Vec<String> = members
        .iter()
        .map(|(id, port)| format!("{id}={}", url(*port)))
        .collect();
    pairs.join(",")
}

/// Starts one node of a local cluster on loopback. It gets SIGTERM when xtask
/// dies and is in a process group of its own (see below): call this from the
/// main thread, and stop the node with [`stop`].
pub(crate) fn spawn_node(root: &Path, binary: &Path, spec: &NodeSpec<'_>) -> anyhow::Result<Node> {
    let id = spec.id;
    let mut command = Command::new(binary);
    command
        .current_dir(root)
        .env("KVNODE_NODE_ID", id)
        .env("KVNODE_NODES", nodes_env(spec.members))
        .env("KVNODE_LISTEN", "127.0.0.1")
        .env("KVNODE_PORT", spec.port.to_string())
        .env("KVNODE_FAULTS", spec.faults.to_string())
        .env("KVNODE_DATA_DIR", &spec.data_dir)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        // A terminal's Ctrl-C then reaches only xtask, which stops the nodes itself;
        // otherwise they would get SIGINT too and look as if they had died.
        .process_group(0);
    match &spec.output {
        NodeOutput::Prefixed { .. } => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        NodeOutput::File(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let copy = file
                .try_clone()
                .with_context(|| format!("cannot open {} twice", path.display()))?;
            command.stdout(file).stderr(copy);
        }
    }
    die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {} for {id}", binary.display()))?;

    let mut output = Vec::new();
    if let NodeOutput::Prefixed { color } = spec.output {
        let width = format!("node{}", spec.members.len()).len();
        let prefix = if io::stdout().is_terminal() {
            format!("\x1b[{color}m{id:<width$} |\x1b[0m ")
        } else {
            format!("{id:<width$} | ")
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        output = vec![forward(stdout, prefix.clone()), forward(stderr, prefix)];
    }
    Ok(Node {
        id: id.to_string(),
        child,
        output,
    })
}

/// Asks the kernel to send SIGTERM to the node when xtask dies, even by SIGKILL, so no
/// node outlives the cluster. The kernel ties this to the thread that spawned the child:
/// nodes are spawned by the main thread, which lives as long as xtask.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls prctl and getppid and allocates
    // nothing (raw OS errors are not boxed).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // xtask may have died before prctl; then no signal would ever come.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn die_with_parent(_command: &mut Command) {}

/// Prints every line read from `from` with the node's prefix, until end of file.
fn forward(from: impl Read + Send + 'static, prefix: String) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\n', '\r']);
            if writeln!(io::stdout().lock(), "{prefix}{text}").is_err() {
                return;
            }
        }
    })
}

/// Polls every node's `GET /health` until all answer 200, then reports `Ready`.
fn wait_ready(members: Vec<(String, u16)>, events: Sender<Event>) {
    let deadline = Instant::now() + READY_DEADLINE;
    for (id, port) in members {
        while !healthy(port) {
            if Instant::now() >= deadline {
                let message = format!("{id} did not answer GET /health within {READY_DEADLINE:?}");
                let _ = events.send(Event::NotReady(message));
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = events.send(Event::Ready);
}

/// Whether the node on loopback `port` answers `GET /health` with 200.
pub(crate) fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let mut status_line = String::new();
    stream.set_read_timeout(timeout).is_ok()
        && stream.set_write_timeout(timeout).is_ok()
        && stream.write_all(request.as_bytes()).is_ok()
        && BufReader::new(stream).read_line(&mut status_line).is_ok()
        && is_ok_status_line(&status_line)
}

fn is_ok_status_line(line: &str) -> bool {
    let mut parts = line.split_whitespace();
    parts
        .next()
        .is_some_and(|version| version.starts_with("HTTP/1."))
        && parts.next() == Some("200")
}

/// Runs until a stop signal (`Ok`), a node exits, or the cluster never gets ready.
fn supervise(nodes: &mut [Node], events: &mpsc::Receiver<Event>) -> anyhow::Result<()> {
    loop {
        match events.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Stop) => return Ok(()),
            Ok(Event::Ready) => println!("cluster ready"),
            Ok(Event::NotReady(message)) => bail!(message),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("the signal handler went away"),
        }
        for node in nodes.iter_mut() {
            if let Some(status) = node.child.try_wait()? {
                let how = match status.code() {
                    Some(code) => format!("status {code}"),
                    None => status.to_string(),
                };
                bail!("{} exited with {how}", node.id);
            }
        }
    }
}

/// Stops every node still running: SIGTERM, then SIGKILL after `STOP_GRACE`.
pub(crate) fn stop(nodes: &mut [Node]) {
    println!("stopping the cluster");
    for node in nodes.iter_mut() {
        if let Ok(None) = node.child.try_wait() {
            terminate(&node.child);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for node in nodes.iter_mut() {
        while let Ok(None) = node.child.try_wait() {
            if Instant::now() >= deadline {
                println!("{} did not stop within {STOP_GRACE:?}, killing it", node.id);
                let _ = node.child.kill();
                let _ = node.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // The node has exited, so its pipes are closed: print its last lines.
        for output in node.output.drain(..) {
            let _ = output.join();
        }
    }
}

/// Sends SIGTERM to a child that has not been reaped yet.
#[allow(unsafe_code)]
fn terminate(child: &Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill takes no pointers. The child is not reaped yet (callers check with
    // try_wait first), so its pid still names it and no other process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_env_lists_id_url_pairs() {
        let members = vec![("node1".to_string(), 5001), ("node2".to_string(), 5002)];
        assert_eq!(
            nodes_env(&members),
            "node1=http://127.0.0.1:5001,node2=http://127.0.0.1:5002"
        );
    }

    #[test]
    fn only_200_is_healthy() {
        assert!(is_ok_status_line("HTTP/1.1 200 OK\r\n"));
        assert!(is_ok_status_line("HTTP/1.0 200\r\n"));
        assert!(!is_ok_status_line("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!is_ok_status_line(""));
    }
}
