//! A local cluster: how to start it ([`Builder`]) and what can be done to its
//! nodes ([`Cluster`]).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
#[cfg(feature = "in-process")]
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[cfg(feature = "in-process")]
use crate::in_process::InProcess;
use crate::process::{self, Process, Sink, Spawn};
use crate::{free_ports, probe_health, Error, Result, POLL};

/// How long one `/health` probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of a node's log quoted when it fails.
const LOG_TAIL: usize = 40;
/// ANSI colors of [`Output::Prefixed`], one per node in turn.
const COLORS: [u8; 6] = [36, 33, 35, 32, 34, 31];

/// Where the nodes' output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Standard output and error of node `nodeN` to `nodeN.log` in the
    /// cluster's directory, appended across restarts.
    Files,
    /// To this process's standard output, each line prefixed with the node's
    /// id (colored on a terminal); no log files.
    Prefixed,
}

#[derive(Clone, Debug)]
enum Launch {
    Binary(PathBuf),
    #[cfg(feature = "in-process")]
    InProcess,
}

/// How to start a [`Cluster`]: [`Cluster::processes`] or [`Cluster::in_process`],
/// settings, then [`Builder::start`].
#[derive(Debug)]
#[must_use = "a builder starts nothing until `start`"]
pub struct Builder {
    nodes: usize,
    launch: Launch,
    dir: Option<PathBuf>,
    data_root: Option<PathBuf>,
    current_dir: Option<PathBuf>,
    ports: Option<Vec<u16>>,
    https: bool,
    env: Vec<(String, String)>,
    node_env: Vec<(usize, String, String)>,
    inherit_settings: bool,
    output: Output,
    detach: bool,
    attempts: Option<usize>,
    ready_timeout: Duration,
    stop_timeout: Duration,
    wait_ready: bool,
}

impl Builder {
    fn new(nodes: usize, launch: Launch) -> Self {
        Self {
            nodes,
            launch,
            dir: None,
            data_root: None,
            current_dir: None,
            ports: None,
            https: false,
            env: Vec::new(),
            node_env: Vec::new(),
            inherit_settings: false,
            output: Output::Files,
            detach: false,
            attempts: None,
            ready_timeout: Duration::from_secs(20),
            stop_timeout: Duration::from_secs(10),
            wait_ready: true,
        }
    }

    /// The cluster's directory: node logs (`nodeN.log`) and, unless
    /// [`Self::data_root`] says otherwise, data (`data/nodeN`). Default: a
    /// fresh temporary directory, deleted with the cluster, but kept (and its
    /// path and the logs' last lines printed) when the thread is panicking.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Node `nodeN` keeps its data in `root/nodeN` (`KVNODE_DATA_DIR`). With
    /// a relative `root`, relative to [`Self::current_dir`].
    pub fn data_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.data_root = Some(root.into());
        self
    }

    /// The working directory of the node processes.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The nodes' ports, node1's first. Default: free ports, chosen anew when
    /// a start fails because one was taken meanwhile.
    pub fn ports(mut self, ports: impl IntoIterator<Item = u16>) -> Self {
        self.ports = Some(ports.into_iter().collect());
        self
    }

    /// The nodes serve HTTPS (set `KVNODE_TLS_CERT` and `KVNODE_TLS_KEY` with
    /// [`Self::env`]): their URLs are `https://`, and a node counts as ready
    /// once it accepts connections, since the probe speaks plain HTTP.
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// A variable of every node: a `KVNODE_*` setting (`KVNODE_CLIENT_TOKEN`,
    /// `KVNODE_DURABILITY`, `KVNODE_TLS_CERT`...), `RUST_LOG`, or any other.
    /// It overrides the kit's own (`KVNODE_FAULTS=true`, `RUST_LOG=info`,
    /// `KVNODE_LISTEN=127.0.0.1`...); later calls win.
    pub fn env(mut self, var: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((var.into(), value.into()));
        self
    }

    /// [`Self::env`] for each pair.
    pub fn envs<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        for (var, value) in vars {
            self = self.env(var, value);
        }
        self
    }

    /// A variable of node `n` only (1-based); it overrides [`Self::env`].
    pub fn node_env(mut self, n: usize, var: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_env.push((n, var.into(), value.into()));
        self
    }

    /// Keep the `KVNODE_*`, `NODE_ID`, `NODES` and `PORT` variables of this
    /// process's environment in the nodes' (the kit's and [`Self::env`]'s
    /// still win). Default: they are left out, so only the builder configures
    /// the nodes. In-process nodes never read this process's environment.
    pub fn inherit_settings(mut self) -> Self {
        self.inherit_settings = true;
        self
    }

    /// Where the nodes' output goes; default [`Output::Files`].
    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// Each node process gets a process group of its own, so that a
    /// terminal's Ctrl-C reaches only this process (which then stops the
    /// nodes), and SIGTERM when this process dies ([`crate::die_with_parent`]:
    /// start the cluster from the main thread).
    pub fn detach_from_terminal(mut self) -> Self {
        self.detach = true;
        self
    }

    /// How many times to try a start. Default: 5 on free ports with the data
    /// in the cluster's directory, else 1.
    pub fn attempts(mut self, attempts: usize) -> Self {
        self.attempts = Some(attempts.max(1));
        self
    }

    /// How long the nodes may take to answer `/health`; default 20 s.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a node may take to stop gracefully; default 10 s.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// Return from `start` and `restart` as soon as the nodes are started,
    /// without waiting for them to answer (see [`Cluster::wait_ready`] and
    /// [`Cluster::not_ready`]).
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Starts the nodes and, unless [`Self::no_wait`], waits until each answers
    /// `GET /health` as itself. A start in which a node exits or does not
    /// answer in time is tried again (see [`Self::attempts`]) with new ports
    /// and data directories.
    pub fn start(self) -> Result<Cluster> {
        if self.nodes == 0 {
            return Err(Error::new("a cluster has at least one node"));
        }
        if let Some(ports) = &self.ports {
            if ports.len() != self.nodes {
                return Err(Error::new(format!(
                    "{} ports for {} nodes",
                    ports.len(),
                    self.nodes
                )));
            }
        }
        let (temp, dir) = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::new(format!("cannot create {}: {e}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("kvnode-cluster-")
                    .tempdir()?;
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        let retry = self.ports.is_none() && self.data_root.is_none();
        let attempts = self.attempts.unwrap_or(if retry { 5 } else { 1 });
        let mut failures = Vec::new();
        for attempt in 1..=attempts {
            let data_root = match &self.data_root {
                Some(root) => root.clone(),
                // A node that failed to start may have created its data already.
                None if attempt == 1 => dir.join("data"),
                None => dir.join(format!("data-{attempt}")),
            };
            match self.attempt(&dir, &data_root) {
                Ok(mut cluster) => {
                    cluster.temp = temp;
                    return Ok(cluster);
                }
                Err(e) => {
                    if attempts > 1 {
                        eprintln!("cluster start, attempt {attempt}: {e}");
                    }
                    failures.push(e.to_string());
                }
            }
        }
        let kept = match temp {
            Some(temp) => format!(" (logs kept in {})", temp.keep().display()),
            None => String::new(),
        };
        Err(Error::new(format!(
            "cannot start a cluster of {} nodes after {attempts} attempt(s){kept}:\n{}",
            self.nodes,
            failures.join("\n")
        )))
    }

    fn attempt(&self, dir: &Path, data_root: &Path) -> Result<Cluster> {
        let (ports, mut listeners) = self.allocate()?;
        let scheme = if self.https { "https" } else { "http" };
        let ids: Vec<String> = (1..=self.nodes).map(|n| format!("node{n}")).collect();
        let urls: Vec<String> = ports
            .iter()
            .map(|port| format!("{scheme}://127.0.0.1:{port}"))
            .collect();
        let members = ids
            .iter()
            .zip(&urls)
            .map(|(id, url)| format!("{id}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        let width = ids.last().map_or(0, String::len);
        let mut nodes = Vec::new();
        for (i, ((id, url), port)) in ids.into_iter().zip(urls).zip(&ports).enumerate() {
            let data = data_root.join(&id);
            let mut env: Vec<(String, String)> = [
                ("KVNODE_NODE_ID", id.clone()),
                ("KVNODE_NODES", members.clone()),
                ("KVNODE_LISTEN", "127.0.0.1".to_owned()),
                ("KVNODE_PORT", port.to_string()),
                ("KVNODE_FAULTS", "true".to_owned()),
                ("KVNODE_DATA_DIR", data.display().to_string()),
                ("RUST_LOG", "info".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            env.extend(self.env.iter().cloned());
            env.extend(
                self.node_env
                    .iter()
                    .filter(|(n, _, _)| *n == i + 1)
                    .map(|(_, k, v)| (k.clone(), v.clone())),
            );
            let log = (self.output == Output::Files).then(|| dir.join(format!("{id}.log")));
            let sink = match &log {
                Some(path) => {
                    // A fresh log per attempt.
                    std::fs::File::create(path).map_err(|e| {
                        Error::new(format!("cannot create {}: {e}", path.display()))
                    })?;
                    Sink::File(path.clone())
                }
                None => Sink::Prefixed(process::prefix(&id, width, COLORS[i % COLORS.len()])),
            };
            nodes.push(Node {
                id,
                port: *port,
                url,
                log,
                sink,
                data,
                env,
                listener: listeners.get_mut(i).and_then(Option::take),
                running: None,
                exited: None,
                frozen: false,
                ready: false,
            });
        }
        let mut cluster = Cluster {
            nodes,
            launch: self.launch.clone(),
            https: self.https,
            inherit_settings: self.inherit_settings,
            current_dir: self.current_dir.clone(),
            detach: self.detach,
            ready_timeout: self.ready_timeout,
            stop_timeout: self.stop_timeout,
            wait_ready: self.wait_ready,
            dir: dir.to_owned(),
            temp: None,
        };
        for n in cluster.numbers() {
            cluster.spawn(n)?;
        }
        if self.wait_ready {
            cluster.wait_ready(self.ready_timeout)?;
        }
        Ok(cluster)
    }

    /// The nodes' ports; in process, also their listeners, bound here so that
    /// no other process can take a port before the node has it.
    fn allocate(&self) -> Result<(Vec<u16>, Vec<Option<TcpListener>>)> {
        match (&self.launch, &self.ports) {
            (Launch::Binary(_), Some(ports)) => Ok((ports.clone(), Vec::new())),
            (Launch::Binary(_), None) => Ok((free_ports(self.nodes)?, Vec::new())),
            #[cfg(feature = "in-process")]
            (Launch::InProcess, ports) => {
                let listeners = (0..self.nodes)
                    .map(|i| {
                        let port = ports.as_ref().map_or(0, |p| p[i]);
                        TcpListener::bind(("127.0.0.1", port))
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                let ports = listeners
                    .iter()
                    .map(|l| Ok(l.local_addr()?.port()))
                    .collect::<std::io::Result<Vec<_>>>()?;
                Ok((ports, listeners.into_iter().map(Some).collect()))
            }
        }
    }
}

/// A running node: a process or, in process, a thread.
#[derive(Debug)]
enum Running {
    Process(Process),
    #[cfg(feature = "in-process")]
    InProcess(InProcess),
}

#[derive(Debug)]
struct Node {
    id: String,
    port: u16,
    url: String,
    log: Option<PathBuf>,
    sink: Sink,
    data: PathBuf,
    /// Its variables, in order (later ones win).
    env: Vec<(String, String)>,
    /// In process: the listener bound at the cluster's start, until the node
    /// first starts.
    #[cfg_attr(not(feature = "in-process"), allow(dead_code))]
    listener: Option<TcpListener>,
    running: Option<Running>,
    /// How it ended last.
    exited: Option<ExitStatus>,
    /// Paused with SIGSTOP.
    frozen: bool,
    /// Answered `/health` since it was last started.
    ready: bool,
}

impl Node {
    /// Notes the node's exit if it has exited: `Some(status)` then.
    fn reap(&mut self) -> Result<Option<ExitStatus>> {
        let exit = match &mut self.running {
            None => return Ok(self.exited),
            Some(Running::Process(process)) => process.try_exit()?,
            #[cfg(feature = "in-process")]
            Some(Running::InProcess(node)) => match node.try_exit() {
                None => None,
                Some(Ok(())) => Some(ExitStatus::from_raw(0)),
                Some(Err(e)) => {
                    self.running = None;
                    self.exited = Some(ExitStatus::from_raw(1 << 8));
                    return Err(Error::new(format!("{} failed: {e}", self.id)));
                }
            },
        };
        if exit.is_some() {
            self.running = None;
            self.exited = exit;
            self.frozen = false;
            self.ready = false;
        }
        Ok(exit)
    }

    fn process(&mut self) -> Result<&mut Process> {
        match &mut self.running {
            Some(Running::Process(process)) => Ok(process),
            None => Err(Error::new(format!("{} is not running", self.id))),
            #[cfg(feature = "in-process")]
            Some(Running::InProcess(_)) => Err(Error::new(format!(
                "{} runs in process: signals need a cluster of processes",
                self.id
            ))),
        }
    }

    /// Where to look for what went wrong.
    fn log_tail(&self) -> String {
        match &self.log {
            Some(log) => format!(
                "; the end of {}:\n{}",
                log.display(),
                process::tail(log, LOG_TAIL)
            ),
            None => String::new(),
        }
    }

    /// Whether the node answers `/health` as itself (over HTTPS: accepts a
    /// connection).
    fn answers(&self, https: bool) -> bool {
        let address = format!("127.0.0.1:{}", self.port);
        if https {
            let address = SocketAddr::from(([127, 0, 0, 1], self.port));
            return TcpStream::connect_timeout(&address, PROBE_TIMEOUT).is_ok();
        }
        probe_health(&address, PROBE_TIMEOUT)
            .ok()
            .and_then(|body| serde_json::from_str::<Value>(&body).ok())
            .is_some_and(|health| health["node"] == json!(self.id))
    }
}

/// A local cluster of kvnode nodes, `node1`..`nodeN` (numbered from 1).
///
/// Dropping it kills every node process (SIGKILL) and stops every in-process
/// node; when the thread is panicking, a temporary directory is kept and each
/// node's last log lines are printed.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<Node>,
    launch: Launch,
    https: bool,
    inherit_settings: bool,
    current_dir: Option<PathBuf>,
    detach: bool,
    ready_timeout: Duration,
    stop_timeout: Duration,
    wait_ready: bool,
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A cluster of `nodes` processes of the `kvnode` binary at `binary`.
    pub fn processes(binary: impl Into<PathBuf>, nodes: usize) -> Builder {
        Builder::new(nodes, Launch::Binary(binary.into()))
    }

    /// A cluster of `nodes` nodes on threads of this process, each served by
    /// `kvnode::server::run` and stopped by its shutdown future. They log
    /// through this process's logger, if any: they have no log files.
    #[cfg(feature = "in-process")]
    pub fn in_process(nodes: usize) -> Builder {
        Builder::new(nodes, Launch::InProcess)
    }

    fn node(&self, n: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&n),
            "no node{n} in a cluster of {}",
            self.nodes.len()
        );
        &self.nodes[n - 1]
    }

    fn node_mut(&mut self, n: usize) -> &mut Node {
        self.node(n);
        &mut self.nodes[n - 1]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a cluster has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node numbers, `1..=len`.
    pub fn numbers(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.nodes.len()
    }

    /// The id of node `n` (`node{n}`).
    pub fn id(&self, n: usize) -> &str {
        &self.node(n).id
    }

    /// The ids of every node.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// The base URL of node `n`, without a trailing slash.
    pub fn url(&self, n: usize) -> &str {
        &self.node(n).url
    }

    /// The base URLs of every node, in order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// Node `n`'s port on 127.0.0.1.
    pub fn port(&self, n: usize) -> u16 {
        self.node(n).port
    }

    /// `127.0.0.1:port` of node `n`.
    pub fn address(&self, n: usize) -> String {
        format!("127.0.0.1:{}", self.node(n).port)
    }

    /// The cluster's directory (see [`Builder::dir`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory of node `n`.
    pub fn data_dir(&self, n: usize) -> &Path {
        &self.node(n).data
    }

    /// The log file of node `n`; `None` with [`Output::Prefixed`] and in process.
    pub fn log_path(&self, n: usize) -> Option<&Path> {
        self.node(n).log.as_deref()
    }

    /// What node `n` has logged so far (empty without a log file).
    pub fn log(&self, n: usize) -> String {
        self.log_path(n)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// The process id of node `n` while its process runs.
    pub fn pid(&self, n: usize) -> Option<u32> {
        match &self.node(n).running {
            Some(Running::Process(process)) => Some(process.child.id()),
            _ => None,
        }
    }

    /// True while node `n` runs: it was not killed or stopped, and did not
    /// exit by itself.
    pub fn is_running(&mut self, n: usize) -> bool {
        let node = self.node_mut(n);
        let _ = node.reap();
        node.running.is_some()
    }

    /// How node `n` ended, once it has (by itself, [`Self::stop`] or
    /// [`Self::kill9`]); `None` while it runs. In process, a node whose
    /// `kvnode::server::run` failed is an `Err`.
    pub fn exit_status(&mut self, n: usize) -> Result<Option<ExitStatus>> {
        let node = self.node_mut(n);
        match node.reap()? {
            Some(status) => Ok(Some(status)),
            None if node.running.is_some() => Ok(None),
            None => Ok(node.exited),
        }
    }

    /// `Err` naming the first node that has exited since it was started
    /// (with the end of its log), unless it was stopped on purpose.
    pub fn check_alive(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if node.running.is_none() {
                continue;
            }
            if let Some(status) = node.reap()? {
                let how = match status.code() {
                    Some(code) => format!("status {code}"),
                    None => status.to_string(),
                };
                return Err(Error::new(format!(
                    "{} exited with {how}{}",
                    node.id,
                    node.log_tail()
                )));
            }
        }
        Ok(())
    }

    fn spawn(&mut self, n: usize) -> Result<()> {
        let launch = self.launch.clone();
        let spawn_settings = (self.inherit_settings, self.current_dir.clone(), self.detach);
        let node = self.node_mut(n);
        if node.running.is_some() {
            return Err(Error::new(format!("{} is already running", node.id)));
        }
        let running = match launch {
            Launch::Binary(binary) => {
                let (inherit_settings, current_dir, detach) = spawn_settings;
                let process = Process::spawn(&Spawn {
                    binary: &binary,
                    env: &node.env,
                    inherit_settings,
                    current_dir: current_dir.as_deref(),
                    sink: &node.sink,
                    detach,
                })?;
                Running::Process(process)
            }
            #[cfg(feature = "in-process")]
            Launch::InProcess => {
                let listener = match node.listener.take() {
                    Some(listener) => listener,
                    None => TcpListener::bind(("127.0.0.1", node.port))?,
                };
                Running::InProcess(InProcess::start(&node.id, &node.env, listener)?)
            }
        };
        node.running = Some(running);
        node.exited = None;
        node.ready = false;
        Ok(())
    }

    /// Probes once each running node not yet known to answer `/health`, and
    /// returns the ids of those that still do not. `Err` when one has exited
    /// (typically: its port was taken).
    pub fn not_ready(&mut self) -> Result<Vec<String>> {
        let https = self.https;
        let mut pending = Vec::new();
        for node in &mut self.nodes {
            if node.ready || node.running.is_none() {
                continue;
            }
            if let Some(status) = node.reap()? {
                return Err(Error::new(format!(
                    "{} exited at start-up with {status}{}",
                    node.id,
                    node.log_tail()
                )));
            }
            node.ready = node.answers(https);
            if !node.ready {
                pending.push(node.id.clone());
            }
        }
        Ok(pending)
    }

    /// Polls [`Self::not_ready`] until every running node answers `/health`,
    /// at most `timeout`.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        self.wait_ready_while(timeout, || true)
    }

    /// [`Self::wait_ready`], giving up as soon as `keep_waiting` says no (a
    /// Ctrl-C, say).
    pub fn wait_ready_while(
        &mut self,
        timeout: Duration,
        mut keep_waiting: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let pending = self.not_ready()?;
            if pending.is_empty() {
                return Ok(());
            }
            let pending = pending.join(", ");
            if !keep_waiting() {
                return Err(Error::new(format!("gave up waiting for {pending}")));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(format!(
                    "{pending} did not answer GET /health within {timeout:?}"
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `kill -9` node `n`: no chance to flush or clean up; waits until the
    /// process is gone. Its data directory stays for [`Self::restart`].
    pub fn kill9(&mut self, n: usize) -> Result<ExitStatus> {
        let node = self.node_mut(n);
        let status = node.process()?.kill()?;
        node.running = None;
        node.exited = Some(status);
        node.frozen = false;
        node.ready = false;
        Ok(status)
    }

    /// Pauses node `n` with SIGSTOP: it keeps its connections but answers
    /// nothing until [`Self::thaw`].
    pub fn freeze(&mut self, n: usize) -> Result<()> {
        let node = self.node_mut(n);
        node.process()?.signal(libc::SIGSTOP)?;
        node.frozen = true;
        Ok(())
    }

    /// True while node `n` is paused by [`Self::freeze`].
    pub fn is_frozen(&self, n: usize) -> bool {
        self.node(n).frozen
    }

    /// Resumes node `n` after [`Self::freeze`] (SIGCONT).
    pub fn thaw(&mut self, n: usize) -> Result<()> {
        let node = self.node_mut(n);
        node.process()?.signal(libc::SIGCONT)?;
        node.frozen = false;
        Ok(())
    }

    /// Asks node `n` to stop gracefully: SIGTERM to a process, the shutdown
    /// future of an in-process node.
    fn ask_to_stop(node: &mut Node) -> Result<()> {
        match &mut node.running {
            None => return Err(Error::new(format!("{} is not running", node.id))),
            Some(Running::Process(process)) => {
                process.signal(libc::SIGTERM)?;
                if node.frozen {
                    process.signal(libc::SIGCONT)?;
                    node.frozen = false;
                }
            }
            #[cfg(feature = "in-process")]
            Some(Running::InProcess(inner)) => inner.signal_shutdown(),
        }
        Ok(())
    }

    /// Stops node `n` gracefully (SIGTERM, or in process its shutdown future)
    /// and waits until it has stopped; returns its exit status. After the
    /// stop timeout a process is killed, and this is an `Err`.
    pub fn stop(&mut self, n: usize) -> Result<ExitStatus> {
        let timeout = self.stop_timeout;
        let node = self.node_mut(n);
        Self::ask_to_stop(node)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = node.reap()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                if let Ok(process) = node.process() {
                    let status = process.kill()?;
                    node.running = None;
                    node.exited = Some(status);
                }
                return Err(Error::new(format!(
                    "{} did not stop within {timeout:?} of the signal{}",
                    node.id,
                    node.log_tail()
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops every running node gracefully, all at once; kills the processes
    /// still running after `grace`. Returns the ids of the nodes that did not
    /// stop by themselves.
    pub fn stop_all(&mut self, grace: Duration) -> Vec<String> {
        for node in &mut self.nodes {
            if node.reap().is_ok() && node.running.is_some() {
                let _ = Self::ask_to_stop(node);
            }
        }
        let deadline = Instant::now() + grace;
        let mut late = Vec::new();
        for node in &mut self.nodes {
            while node.running.is_some() {
                if node.reap().is_err() || node.running.is_none() {
                    break;
                }
                if Instant::now() >= deadline {
                    late.push(node.id.clone());
                    if let Ok(process) = node.process() {
                        if let Ok(status) = process.kill() {
                            node.running = None;
                            node.exited = Some(status);
                        }
                    }
                    break;
                }
                std::thread::sleep(POLL);
            }
        }
        late
    }

    /// Starts node `n` again like [`Self::restart`], without waiting for it
    /// to answer `/health` (a node answers 503 there until it is live).
    pub fn start_again(&mut self, n: usize) -> Result<()> {
        let node = self.node(n);
        if let Some(log) = &node.log {
            let mut out = OpenOptions::new().append(true).create(true).open(log)?;
            writeln!(out, "==== kv-testkit: starting {} again ====", node.id)?;
        }
        self.spawn(n)
    }

    /// Starts node `n` again, after [`Self::kill9`] or [`Self::stop`]: same id,
    /// port, data directory and variables, its log appended to the same file.
    /// Waits until it answers `/health` (unless [`Builder::no_wait`]).
    pub fn restart(&mut self, n: usize) -> Result<()> {
        self.restart_many(&[n])
    }

    /// Starts nodes `which` again, all at once, and waits until every one of
    /// them answers `/health`. A node that exits at start-up is started again
    /// until the ready timeout: its port may be held for a moment by another
    /// socket, and the other nodes know it by that port.
    pub fn restart_many(&mut self, which: &[usize]) -> Result<()> {
        for &n in which {
            self.start_again(n)?;
        }
        if !self.wait_ready {
            return Ok(());
        }
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            match self.wait_ready(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => return Ok(()),
                Err(reason) if Instant::now() < deadline => {
                    eprintln!("restart of {which:?}: {reason}; trying again");
                    for &n in which {
                        if !self.is_running(n) {
                            std::thread::sleep(POLL);
                            self.spawn(n)?;
                        }
                    }
                }
                Err(reason) => {
                    return Err(Error::new(format!(
                        "cannot restart nodes {which:?}: {reason}"
                    )))
                }
            }
        }
    }

    /// Pauses (`pause`) or resumes replication from node `from` to node `to`
    /// with the fault hook, and checks that the node says so.
    pub fn set_link(&self, from: usize, to: usize, pause: bool) -> Result<()> {
        let action = if pause { "pause" } else { "resume" };
        let path = format!("/admin/v1/links/{}/{action}", self.id(to));
        let (status, body) = crate::http::try_request(
            "POST",
            &format!("{}{path}", self.url(from)),
            Some((Some("application/json"), b"{}")),
        )
        .map_err(Error::new)?;
        let paused = body["paused"].as_array();
        if status != 200 || paused.is_none_or(|p| p.contains(&json!(self.id(to))) != pause) {
            return Err(Error::new(format!(
                "POST {path} on node{from}: {status} {body}"
            )));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            match &mut node.running {
                Some(Running::Process(process)) => {
                    let _ = process.kill();
                }
                #[cfg(feature = "in-process")]
                Some(Running::InProcess(inner)) => inner.signal_shutdown(),
                None => {}
            }
        }
        #[cfg(feature = "in-process")]
        {
            let deadline = Instant::now() + self.stop_timeout;
            for node in &mut self.nodes {
                while matches!(node.running, Some(Running::InProcess(_)))
                    && Instant::now() < deadline
                {
                    let _ = node.reap();
                    std::thread::sleep(POLL);
                }
            }
        }
        if std::thread::panicking() {
            if let Some(temp) = self.temp.take() {
                eprintln!("---- node logs kept in {}", temp.keep().display());
            }
            for node in &self.nodes {
                if let Some(log) = &node.log {
                    eprintln!(
                        "---- {} ({}), last {LOG_TAIL} lines of {}:\n{}",
                        node.id,
                        node.url,
                        log.display(),
                        process::tail(log, LOG_TAIL)
                    );
                }
            }
        }
    }
}
