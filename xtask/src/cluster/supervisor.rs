//! The process behind `cargo xtask cluster`: it owns the node processes (so that
//! a restarted node's output goes on in its terminal), reports each node that
//! stops and how, and carries out the requests of its control socket.
//!
//! One thread does everything: every [`TICK`] it looks for a stop request
//! (Ctrl-C), serves the control connections waiting, and reaps and probes the
//! nodes. A restart's answer waits until the node answers `GET /health`,
//! without holding up the rest.

use std::io::{BufRead, BufReader, ErrorKind};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kv_testkit::{describe_exit, Builder, Cluster};

use super::control;
use super::{Control, READY_DEADLINE, STOP_GRACE};

/// How often the supervisor looks at its nodes and its socket.
const TICK: Duration = Duration::from_millis(50);
/// How long a client that connected has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a supervisor that already listens has to answer a new one.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `pause` and `resume` wait for the kernel to stop or continue a node.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts the nodes of `nodes` and supervises them until `stop` says so (or is
/// dropped), serving control requests at `socket` meanwhile; then stops them.
/// `report` gets each line meant for the person watching. Fails when the
/// socket is taken, or when a node exits by itself or does not answer before
/// the cluster was first ready (a start-up problem, such as a taken port).
pub(crate) fn serve(
    nodes: Builder,
    socket: &Path,
    stop: &Receiver<()>,
    report: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let control = ControlSocket::bind(socket)?;
    let cluster = nodes.no_wait().stop_timeout(STOP_GRACE).start()?;
    report(&format!("started {} nodes:", cluster.len()));
    for n in cluster.numbers() {
        report(&format!("  {}  {}", cluster.id(n), cluster.url(n)));
    }
    let mut supervisor = Supervisor {
        watch: cluster.numbers().map(|_| Watch::started()).collect(),
        cluster,
        control,
        restarts: Vec::new(),
        ready: false,
        report,
    };
    let result = supervisor.run(stop);
    super::stop_reporting(&mut supervisor.cluster, supervisor.report);
    result
}

/// What the supervisor knows of a node beyond what the cluster tells.
#[derive(Debug)]
struct Watch {
    /// It was running when last looked at.
    running: bool,
    /// It has answered `GET /health` since it was last started.
    answered: bool,
    /// How it stopped last (`was killed by SIGKILL`).
    ended: Option<String>,
}

impl Watch {
    fn started() -> Self {
        Watch {
            running: true,
            answered: false,
            ended: None,
        }
    }
}

/// A restart whose client waits to hear that the node answers.
#[derive(Debug)]
struct Restart {
    n: usize,
    client: UnixStream,
    deadline: Instant,
}

struct Supervisor<'a> {
    cluster: Cluster,
    control: ControlSocket,
    watch: Vec<Watch>,
    restarts: Vec<Restart>,
    /// Every node answered once: from then on, a node that stops is reported
    /// and the others go on.
    ready: bool,
    report: &'a mut dyn FnMut(&str),
}

impl Supervisor<'_> {
    fn run(&mut self, stop: &Receiver<()>) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            match stop.recv_timeout(TICK) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(RecvTimeoutError::Timeout) => {}
            }
            while let Some(client) = self.control.accept()? {
                self.serve(client);
            }
            self.look()?;
            if !self.ready {
                let pending = self.pending();
                if pending.is_empty() {
                    self.ready = true;
                    self.say("cluster ready");
                    self.say(&format!(
                        "try: curl {}/health   (Ctrl-C stops the cluster)",
                        self.cluster.url(1)
                    ));
                    self.say(
                        "break it from another terminal: cargo xtask cluster \
                         kill|stop|pause|resume|restart nodeN, cargo xtask cluster status",
                    );
                } else if Instant::now() >= deadline {
                    bail!(
                        "{} did not answer GET /health within {READY_DEADLINE:?}",
                        pending.join(", ")
                    );
                }
            }
        }
    }

    fn say(&mut self, line: &str) {
        (self.report)(line);
    }

    /// The running nodes that have not answered since they were started.
    fn pending(&self) -> Vec<String> {
        self.cluster
            .numbers()
            .filter(|&n| self.watch[n - 1].running && !self.watch[n - 1].answered)
            .map(|n| self.cluster.id(n).to_owned())
            .collect()
    }

    /// Notes (and reports) the nodes that stopped by themselves or were killed
    /// from outside, the nodes that answer since they were started, and answers
    /// the restarts that are done.
    fn look(&mut self) -> anyhow::Result<()> {
        for n in self.cluster.numbers() {
            if !self.watch[n - 1].running || self.cluster.is_running(n) {
                continue;
            }
            let how = self.ended(n);
            let id = self.cluster.id(n).to_owned();
            if !self.ready {
                bail!("{id} {how} while the cluster was starting");
            }
            self.say(&format!(
                "{id} {how}; bring it back with `cargo xtask cluster restart {id}`"
            ));
        }
        // An error here is a node that just exited: the next look reports it.
        if let Ok(pending) = self.cluster.not_ready() {
            for n in self.cluster.numbers() {
                let watch = &mut self.watch[n - 1];
                if watch.running
                    && !watch.answered
                    && !pending.iter().any(|id| id == self.cluster.id(n))
                {
                    watch.answered = true;
                    if self.ready {
                        let line = format!(
                            "{} is back: it answers GET /health (pid {})",
                            self.cluster.id(n),
                            self.pid(n)
                        );
                        self.say(&line);
                    }
                }
            }
        }
        for restart in std::mem::take(&mut self.restarts) {
            let Restart {
                n,
                mut client,
                deadline,
            } = restart;
            let id = self.cluster.id(n).to_owned();
            let watch = &self.watch[n - 1];
            let result = if !watch.running {
                let how = watch.ended.clone().unwrap_or_default();
                Err(format!("{id} {how} while it was starting"))
            } else if watch.answered {
                Ok(vec![format!(
                    "{id} is back (pid {}): it answers GET /health at {}",
                    self.pid(n),
                    self.cluster.url(n)
                )])
            } else if Instant::now() >= deadline {
                Err(format!(
                    "{id} did not answer GET /health within {READY_DEADLINE:?} (it is still running)"
                ))
            } else {
                self.restarts.push(Restart {
                    n,
                    client,
                    deadline,
                });
                continue;
            };
            control::answer(&mut client, result);
        }
        Ok(())
    }

    /// Records that node `n` has stopped; how it did, in words.
    fn ended(&mut self, n: usize) -> String {
        let how = match self.cluster.exit_status(n) {
            Ok(Some(status)) => describe_exit(status),
            Ok(None) => "stopped".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        let watch = &mut self.watch[n - 1];
        watch.running = false;
        watch.answered = false;
        watch.ended = Some(how.clone());
        how
    }

    fn pid(&self, n: usize) -> String {
        self.cluster
            .pid(n)
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string())
    }

    /// Reads a client's request and answers it (a restart: once it is done).
    fn serve(&mut self, mut client: UnixStream) {
        let mut line = String::new();
        let read = client
            .set_nonblocking(false)
            .and_then(|()| client.set_read_timeout(Some(REQUEST_TIMEOUT)))
            .and_then(|()| BufReader::new(&client).read_line(&mut line));
        if read.is_err() {
            return;
        }
        let result = control::parse_request(line.trim()).and_then(|request| self.execute(&request));
        match result {
            Ok(Answer::Now(lines)) => control::answer(&mut client, Ok(lines)),
            Ok(Answer::WhenAnswering(n)) => self.restarts.push(Restart {
                n,
                client,
                deadline: Instant::now() + READY_DEADLINE,
            }),
            Err(message) => control::answer(&mut client, Err(message)),
        }
    }

    fn execute(&mut self, request: &Control) -> Result<Answer, String> {
        let node = match request {
            Control::Status => return Ok(Answer::Now(self.status())),
            Control::Kill { node }
            | Control::Stop { node }
            | Control::Pause { node }
            | Control::Resume { node }
            | Control::Restart { node } => node,
        };
        let n = self.number(node)?;
        let id = self.cluster.id(n).to_owned();
        let running = self.watch[n - 1].running && self.cluster.is_running(n);
        if !running && !matches!(request, Control::Restart { .. }) {
            let how = self.watch[n - 1]
                .ended
                .clone()
                .unwrap_or_else(|| "stopped".into());
            return Err(format!(
                "{id} is not running (it {how}); `cargo xtask cluster restart {id}` starts it"
            ));
        }
        let line = match request {
            Control::Kill { .. } => {
                let pid = self.pid(n);
                self.cluster.kill9(n).map_err(|e| e.to_string())?;
                format!("{id} (pid {pid}) {}", self.ended(n))
            }
            Control::Stop { .. } => self.stop(n)?,
            Control::Pause { .. } => {
                if self.cluster.is_frozen(n) {
                    return Err(format!("{id} is already paused"));
                }
                self.cluster.freeze(n).map_err(|e| e.to_string())?;
                self.settle(n, true);
                format!(
                    "{id} is paused (SIGSTOP): it holds its connections and answers nothing \
                     until `cargo xtask cluster resume {id}`"
                )
            }
            Control::Resume { .. } => {
                if !self.cluster.is_frozen(n) {
                    return Err(format!("{id} is not paused"));
                }
                self.cluster.thaw(n).map_err(|e| e.to_string())?;
                self.settle(n, false);
                format!("{id} resumed (SIGCONT)")
            }
            Control::Restart { .. } => {
                if running {
                    let stopped = self.stop(n)?;
                    self.say(&stopped);
                }
                self.cluster.restart(n).map_err(|e| e.to_string())?;
                self.watch[n - 1] = Watch::started();
                let line = format!(
                    "{id} is starting again (pid {}), with the same data directory, port and settings",
                    self.pid(n)
                );
                self.say(&line);
                return Ok(Answer::WhenAnswering(n));
            }
            Control::Status => unreachable!("answered above"),
        };
        let follow_up = match request {
            Control::Kill { .. } | Control::Stop { .. } => {
                format!("; bring it back with `cargo xtask cluster restart {id}`")
            }
            _ => String::new(),
        };
        self.say(&format!("{line}{follow_up}"));
        Ok(Answer::Now(vec![line]))
    }

    /// Stops node `n`: SIGTERM, then SIGKILL after [`STOP_GRACE`]. How it went.
    fn stop(&mut self, n: usize) -> Result<String, String> {
        let id = self.cluster.id(n).to_owned();
        let late = self.cluster.stop(n).is_err();
        if self.cluster.is_running(n) {
            return Err(format!("{id} could not be stopped"));
        }
        let how = self.ended(n);
        Ok(if late {
            format!("{id} did not stop within {STOP_GRACE:?} of SIGTERM and {how}")
        } else {
            format!("{id} stopped (SIGTERM): it {how}")
        })
    }

    /// Waits (briefly) until the kernel shows node `n`'s process stopped by
    /// SIGSTOP, or no longer stopped: a signal is delivered asynchronously, and
    /// the answer to `pause` should mean that the node answers nothing. Where
    /// there is no `/proc`, returns at once.
    fn settle(&self, n: usize, stopped: bool) {
        let Some(pid) = self.cluster.pid(n) else {
            return;
        };
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < deadline {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return;
            };
            // "pid (command) state ...": the command may hold spaces and parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if (state == Some("T")) == stopped {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The number of the node called `node` (`node2` or `2`).
    fn number(&self, node: &str) -> Result<usize, String> {
        let len = self.cluster.len();
        node.strip_prefix("node")
            .unwrap_or(node)
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=len).contains(n))
            .ok_or_else(|| {
                format!("no node `{node}` in this cluster: its nodes are node1..node{len}")
            })
    }

    /// One line a node: id, URL, pid, state.
    fn status(&mut self) -> Vec<String> {
        self.cluster
            .numbers()
            .map(|n| {
                let watch = &self.watch[n - 1];
                let state = if !watch.running {
                    let how = watch.ended.as_deref().unwrap_or("stopped");
                    format!("stopped ({})", how.strip_prefix("was ").unwrap_or(how))
                } else if self.cluster.is_frozen(n) {
                    "paused".to_owned()
                } else if watch.answered {
                    "running".to_owned()
                } else {
                    "starting".to_owned()
                };
                format!(
                    "{}\t{}\t{}\t{state}",
                    self.cluster.id(n),
                    self.cluster.url(n),
                    self.pid(n)
                )
            })
            .collect()
    }
}

/// How a request is answered.
#[derive(Debug)]
enum Answer {
    /// With these lines, at once.
    Now(Vec<String>),
    /// Once node `n` answers `GET /health` (or fails to).
    WhenAnswering(usize),
}

/// The listening control socket; its file is removed when it is dropped.
#[derive(Debug)]
struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    /// Listens at `path`, replacing a socket file that nobody listens at (left
    /// behind by a supervisor that was killed).
    fn bind(path: &Path) -> anyhow::Result<Self> {
        if control::answers(path, LIVENESS_TIMEOUT) {
            bail!(
                "a cluster is already running: it listens at {} (Ctrl-C in its terminal stops it)",
                path.display()
            );
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => {}
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("cannot listen at {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            path: path.to_owned(),
            listener,
        })
    }

    /// The next client waiting, if any.
    fn accept(&self) -> anyhow::Result<Option<UnixStream>> {
        match self.listener.accept() {
            Ok((client, _)) => Ok(Some(client)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{} stopped working", self.path.display())),
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
