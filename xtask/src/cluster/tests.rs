//! The supervisor and its control commands against real local clusters of the
//! debug `kvnode` binary, each in a temporary directory on free ports: what
//! `cargo xtask cluster` does, without its release build.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use kv_testkit::{http, wait_for, wait_until};
use serde_json::{json, Value};

use super::control::{self, NOT_RUNNING};
use super::{build, local_nodes, socket_path, supervisor, target_dir, Control};

/// How long anything a test waits for may take (the machine may be busy).
const DEADLINE: Duration = Duration::from_secs(60);

/// The debug kvnode binary. A workspace test run has built it (for kvnode's
/// integration tests); a run of xtask's tests alone builds it when it is missing.
fn kvnode() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let root = crate::workspace_root();
        let binary = target_dir(&root).join("debug").join("kvnode");
        if !binary.exists() {
            build(&root, &["kvnode"], false).expect("cargo build -p kvnode");
        }
        binary
    })
}

/// A supervised cluster on a thread of the test, as `cargo xtask cluster` runs
/// one; its nodes log to files in its directory.
struct Playground {
    dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<Sender<()>>,
    supervisor: Option<JoinHandle<anyhow::Result<()>>>,
    reports: Receiver<String>,
    /// What the supervisor has reported so far.
    seen: Vec<String>,
    urls: Vec<String>,
}

impl Playground {
    fn start(nodes: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let socket = socket_path(&data);
        // What a supervisor that was killed leaves behind: the next one takes over.
        drop(UnixListener::bind(&socket).expect("a stale socket"));
        let builder = local_nodes(kvnode(), nodes)
            .dir(dir.path())
            .data_root(&data)
            .env("KVNODE_TRACE_BUFFER", "1000");
        let (stop, stop_requested) = mpsc::channel();
        let (reporter, reports) = mpsc::channel();
        let at = socket.clone();
        // The nodes are started, and get SIGTERM when it ends, from this thread.
        let supervisor = std::thread::spawn(move || {
            supervisor::serve(builder, &at, &stop_requested, &mut |line| {
                let _ = reporter.send(line.to_owned());
            })
        });
        let mut playground = Playground {
            dir,
            socket,
            stop: Some(stop),
            supervisor: Some(supervisor),
            reports,
            seen: Vec::new(),
            urls: Vec::new(),
        };
        playground.expect_report("cluster ready");
        playground.urls = playground
            .send(&Control::Status)
            .iter()
            .map(|line| line.split('\t').nth(1).expect("a URL").to_owned())
            .collect();
        playground
    }

    /// The base URL of node `n`.
    fn url(&self, n: usize) -> &str {
        &self.urls[n - 1]
    }

    /// The base URLs of the first `N` nodes.
    fn first_urls<const N: usize>(&self) -> [String; N] {
        std::array::from_fn(|i| self.urls[i].clone())
    }

    /// Sends a control command; panics when the supervisor refuses it.
    fn send(&self, command: &Control) -> Vec<String> {
        control::send(&self.socket, command).unwrap_or_else(|e| panic!("{command:?}: {e:#}"))
    }

    /// The supervisor's refusal of a control command.
    fn refusal(&self, command: &Control) -> String {
        match control::send(&self.socket, command) {
            Ok(lines) => panic!("{command:?} was carried out: {lines:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// The `cargo xtask cluster status` table.
    fn status(&self) -> String {
        control::status(&self.socket).expect("status")
    }

    /// The state column of node `n` in the status table.
    fn state(&self, n: usize) -> String {
        let status = self.status();
        let row = status
            .lines()
            .find(|row| row.starts_with(&format!("node{n} ")))
            .unwrap_or_else(|| panic!("no node{n} in\n{status}"));
        row.to_owned()
    }

    /// Waits until the supervisor reports a line containing `needle`.
    fn expect_report(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            match self
                .reports
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no report of {needle:?} within {DEADLINE:?}; seen: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let result = self.supervisor.take().map(JoinHandle::join);
                    panic!(
                        "the supervisor ended ({result:?}) before reporting {needle:?}; seen: {:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Stops the supervisor as Ctrl-C does; what it returned.
    fn shut_down(&mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        match self.supervisor.take() {
            Some(thread) => thread.join().expect("the supervisor does not panic"),
            None => Ok(()),
        }
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        let result = self.shut_down();
        if std::thread::panicking() {
            eprintln!("supervisor: {result:?}; it reported: {:#?}", self.seen);
            for n in 1..=self.urls.len() {
                let log = self.dir.path().join(format!("node{n}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("---- node{n}.log, last lines:");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

fn node(n: usize) -> String {
    format!("node{n}")
}

/// Writes `key` = `value` at `url` through the prototype's API.
fn write(url: &str, key: &str, value: &str) {
    let (status, body) = http::post(
        &format!("{url}/write"),
        &json!({"key": key, "value": value}),
    );
    assert_eq!(status, 200, "write {key} at {url}: {body}");
}

/// The value of `key` at `url`, or what went wrong.
fn read(url: &str, key: &str) -> Result<Value, String> {
    match http::try_request("GET", &format!("{url}/read?key={key}"), None)? {
        (200, body) => Ok(body["value"].clone()),
        (status, body) => Err(format!("{status} {body}")),
    }
}

/// Waits until `url` reads `key` as `value`.
fn wait_for_value(url: &str, key: &str, value: &str) {
    wait_for(
        DEADLINE,
        format!("{key}={value} at {url}"),
        || match read(url, key)? {
            v if v == json!(value) => Ok(()),
            other => Err(format!("read {other}")),
        },
    );
}

/// Whether the node at `url` answers `GET /health` within `timeout`.
fn answers(url: &str, timeout: Duration) -> bool {
    kv_testkit::probe_health(url.trim_start_matches("http://"), timeout).is_ok()
}

#[test]
fn a_killed_node_comes_back_with_its_data_and_catches_up() {
    let mut playground = Playground::start(3);
    let [url1, url2, url3] = playground.first_urls();
    write(&url2, "before", "written at node2");

    let killed = playground.send(&Control::Kill { node: node(2) });
    assert!(killed[0].starts_with("node2 (pid "), "{killed:?}");
    assert!(killed[0].ends_with("was killed by SIGKILL"), "{killed:?}");
    playground.expect_report("`cargo xtask cluster restart node2`");
    let row = playground.state(2);
    assert!(row.contains("stopped (killed by SIGKILL)"), "{row}");
    assert!(row.contains("refused"), "{row}");
    assert!(!answers(&url2, Duration::from_secs(1)));

    // The survivors serve reads and writes, and replicate to each other.
    write(&url1, "during1", "written at node1");
    write(&url3, "during3", "written at node3");
    wait_for_value(&url3, "during1", "written at node1");
    wait_for_value(&url1, "during3", "written at node3");
    wait_for_value(&url1, "before", "written at node2");

    let back = playground.send(&Control::Restart { node: node(2) });
    assert!(back[0].contains("node2 is back"), "{back:?}");
    assert!(answers(&url2, Duration::from_secs(5)));
    // Its own write survived the kill: it is on disk, read at once.
    assert_eq!(read(&url2, "before").unwrap(), json!("written at node2"));
    // What it missed comes from its peers.
    wait_for_value(&url2, "during1", "written at node1");
    wait_for_value(&url2, "during3", "written at node3");
    let row = playground.state(2);
    assert!(row.contains("running") && row.ends_with("ok"), "{row}");
    playground.shut_down().expect("a clean stop");
}

#[test]
fn each_control_command_does_what_it_says() {
    let mut playground = Playground::start(3);
    let [url1, url2, url3] = playground.first_urls();
    let status = playground.status();
    assert_eq!(status.lines().count(), 4, "{status}");
    assert!(status.starts_with("NODE"), "{status}");
    for n in 1..=3 {
        let row = playground.state(n);
        assert!(
            row.contains(playground.url(n)) && row.contains("  running  "),
            "{row}"
        );
    }

    // kill -9 from outside: reported, and the others go on.
    let row = playground.state(1);
    let pid = row.split_whitespace().nth(2).expect("a pid");
    let killed = Command::new("kill").args(["-9", pid]).status().unwrap();
    assert!(killed.success());
    let report = playground.expect_report("node1 was killed by SIGKILL");
    assert!(
        report.contains("`cargo xtask cluster restart node1`"),
        "{report}"
    );
    write(&url2, "k", "v");
    wait_for_value(&url3, "k", "v");

    // pause: frozen, it answers nothing; resume: it answers again.
    let paused = playground.send(&Control::Pause { node: node(3) });
    assert!(paused[0].contains("node3 is paused"), "{paused:?}");
    assert!(!answers(&url3, Duration::from_millis(500)));
    let row = playground.state(3);
    assert!(
        row.contains("paused") && row.contains("no answer within"),
        "{row}"
    );
    let twice = playground.refusal(&Control::Pause { node: node(3) });
    assert!(twice.contains("already paused"), "{twice}");
    playground.send(&Control::Resume {
        node: "3".to_owned(),
    });
    wait_until(DEADLINE, "node3 to answer after resume", || {
        answers(&url3, Duration::from_secs(1))
    });
    wait_for_value(&url3, "k", "v");
    assert!(playground.state(3).contains("running"));

    // stop: SIGTERM, a clean exit.
    let stopped = playground.send(&Control::Stop { node: node(3) });
    assert_eq!(
        stopped,
        ["node3 stopped (SIGTERM): it exited with status 0"]
    );
    assert!(playground
        .state(3)
        .contains("stopped (exited with status 0)"));
    assert!(!answers(&url3, Duration::from_secs(1)));
    let again = playground.refusal(&Control::Kill { node: node(3) });
    assert!(again.contains("node3 is not running"), "{again}");

    // restart: a stopped node starts; a running one is stopped first.
    playground.send(&Control::Restart { node: node(1) });
    playground.send(&Control::Restart { node: node(3) });
    let old_pid = playground.state(2);
    let back = playground.send(&Control::Restart { node: node(2) });
    assert!(back[0].contains("node2 is back"), "{back:?}");
    playground.expect_report("node2 stopped (SIGTERM)");
    assert_ne!(playground.state(2), old_pid, "the same process");
    for url in [&url1, &url2, &url3] {
        wait_for_value(url, "k", "v");
    }

    let unknown = playground.refusal(&Control::Kill { node: node(9) });
    assert!(unknown.contains("no node `node9`"), "{unknown}");
    let second = supervisor::serve(
        local_nodes(kvnode(), 1),
        &playground.socket,
        &mpsc::channel().1,
        &mut |_| {},
    )
    .expect_err("a second supervisor on the same socket");
    assert!(second.to_string().contains("already running"), "{second}");

    let socket = playground.socket.clone();
    playground.shut_down().expect("a clean stop");
    assert!(!socket.exists(), "the socket is removed");
    for url in [&url1, &url2, &url3] {
        assert!(!answers(url, Duration::from_secs(1)), "{url} still answers");
    }
    let gone = control::send(&socket, &Control::Status).unwrap_err();
    assert_eq!(gone.to_string(), NOT_RUNNING);
}

#[test]
fn a_socket_nobody_listens_at_means_no_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_path(dir.path());
    let missing = control::send(&socket, &Control::Status).unwrap_err();
    assert_eq!(missing.to_string(), NOT_RUNNING);
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "a stale socket file");
    let stale = control::send(&socket, &Control::Kill { node: node(1) }).unwrap_err();
    assert_eq!(stale.to_string(), NOT_RUNNING);
}

#[test]
fn requests_go_on_the_wire_and_back() {
    for command in [
        Control::Status,
        Control::Kill { node: node(2) },
        Control::Stop {
            node: "3".to_owned(),
        },
        Control::Pause { node: node(1) },
        Control::Resume { node: node(1) },
        Control::Restart { node: node(2) },
    ] {
        let line = control::request_line(&command);
        assert_eq!(control::parse_request(&line), Ok(command), "{line}");
    }
    assert!(control::parse_request("kill").is_err());
    assert!(control::parse_request("kill node1 node2").is_err());
    assert!(control::parse_request("status node1").is_err());
    assert!(control::parse_request("reboot node1").is_err());
}

#[test]
fn the_command_line_starts_or_controls() {
    let parse = |args: &[&str]| {
        crate::Cli::try_parse_from([&["xtask", "cluster"], args].concat()).map(|cli| {
            match cli.task {
                crate::Task::Cluster(args) => args,
                other => panic!("{other:?}"),
            }
        })
    };
    let start = parse(&["--nodes", "5", "--base-port", "6001", "--fresh"]).unwrap();
    assert_eq!(
        (start.command, start.nodes, start.base_port, start.fresh),
        (None, 5, 6001, true)
    );
    let kill = parse(&["kill", "node2"]).unwrap();
    assert_eq!(kill.command, Some(Control::Kill { node: node(2) }));
    assert_eq!(parse(&["status"]).unwrap().command, Some(Control::Status));
    assert!(parse(&["--nodes", "5", "kill", "node2"]).is_err());
    assert!(parse(&["kill"]).is_err());
}
