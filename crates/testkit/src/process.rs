//! `kvnode` processes: spawning one, signalling it, forwarding its output.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};

/// Variables that would configure a node if a node inherited them.
pub(crate) fn is_node_setting(var: &str) -> bool {
    var.starts_with("KVNODE_") || matches!(var, "NODE_ID" | "NODES" | "PORT")
}

/// Where a process's standard output and error go.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Appended to this file.
    File(PathBuf),
    /// To this process's standard output, each line after `prefix`.
    Prefixed(String),
}

/// How to start one node's process.
#[derive(Debug)]
pub(crate) struct Spawn<'a> {
    pub(crate) binary: &'a Path,
    /// The node's variables, in order (later ones win).
    pub(crate) env: &'a [(String, String)],
    /// Keep the `KVNODE_*`, `NODE_ID`, `NODES` and `PORT` of this process's
    /// environment (the node's own variables still win).
    pub(crate) inherit_settings: bool,
    pub(crate) current_dir: Option<&'a Path>,
    pub(crate) sink: &'a Sink,
    pub(crate) detach: bool,
}

/// A running node process and the threads that forward its output.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) child: Child,
    output: Vec<JoinHandle<()>>,
}

impl Process {
    pub(crate) fn spawn(spec: &Spawn<'_>) -> io::Result<Self> {
        let mut command = Command::new(spec.binary);
        if !spec.inherit_settings {
            for (var, _) in std::env::vars_os() {
                if var.to_str().is_some_and(is_node_setting) {
                    command.env_remove(var);
                }
            }
        }
        command
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(dir) = spec.current_dir {
            command.current_dir(dir);
        }
        match spec.sink {
            Sink::File(path) => {
                let out = OpenOptions::new().create(true).append(true).open(path)?;
                command.stdout(out.try_clone()?).stderr(out);
            }
            Sink::Prefixed(_) => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        if spec.detach {
            // A terminal's Ctrl-C then reaches only the parent, which stops
            // the nodes itself; they get SIGTERM if it dies first.
            command.process_group(0);
            die_with_parent(&mut command);
        }
        let mut child = command.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", spec.binary.display()),
            )
        })?;
        let mut output = Vec::new();
        if let Sink::Prefixed(prefix) = spec.sink {
            let stdout = child.stdout.take().expect("stdout is piped");
            let stderr = child.stderr.take().expect("stderr is piped");
            output = vec![
                forward(stdout, prefix.clone()),
                forward(stderr, prefix.clone()),
            ];
        }
        Ok(Self { child, output })
    }

    /// The exit status once the process has exited (it is then reaped, and
    /// its last lines forwarded).
    pub(crate) fn try_exit(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.join_output();
        }
        Ok(status)
    }

    /// SIGKILL, then waits for the process to exit.
    pub(crate) fn kill(&mut self) -> io::Result<ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait()?;
        self.join_output();
        Ok(status)
    }

    /// Sends `signal` to the process, unless it has exited.
    pub(crate) fn signal(&mut self, signal: libc::c_int) -> io::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Err(io::Error::other("the process has exited"));
        }
        send_signal(self.child.id(), signal)
    }

    fn join_output(&mut self) {
        for thread in self.output.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Sends `signal` to the process `pid`, which the caller has not reaped.
#[allow(unsafe_code)]
fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill takes no pointers. The caller's child is not reaped yet, so
    // its pid still names it and no other process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks the kernel to send SIGTERM to the child of `command` when this process
/// dies, even by SIGKILL, so that no node outlives the tool that started it.
/// The kernel ties this to the thread that spawns the child: spawn from a
/// thread that lives as long as the child should (the main thread).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it calls prctl and getppid and
    // allocates nothing (raw OS errors are not boxed).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl; then no signal would come.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Elsewhere a node may outlive its parent.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_command: &mut Command) {}

/// How a process ended, for people: `exited with status 1`, `was killed by
/// SIGKILL` (`..., core dumped` when it dumped core).
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    let Some(signal) = status.signal() else {
        return status.to_string();
    };
    let name = match signal {
        libc::SIGKILL => "SIGKILL".to_owned(),
        libc::SIGTERM => "SIGTERM".to_owned(),
        libc::SIGINT => "SIGINT".to_owned(),
        libc::SIGQUIT => "SIGQUIT".to_owned(),
        libc::SIGHUP => "SIGHUP".to_owned(),
        libc::SIGABRT => "SIGABRT".to_owned(),
        libc::SIGSEGV => "SIGSEGV".to_owned(),
        libc::SIGBUS => "SIGBUS".to_owned(),
        libc::SIGILL => "SIGILL".to_owned(),
        libc::SIGFPE => "SIGFPE".to_owned(),
        libc::SIGPIPE => "SIGPIPE".to_owned(),
        libc::SIGUSR1 => "SIGUSR1".to_owned(),
        libc::SIGUSR2 => "SIGUSR2".to_owned(),
        other => format!("signal {other}"),
    };
    if status.core_dumped() {
        format!("was killed by {name}, core dumped")
    } else {
        format!("was killed by {name}")
    }
}

/// The prefix of a node's lines: its id padded to `width`, colored when the
/// output is a terminal.
pub(crate) fn prefix(id: &str, width: usize, color: u8) -> String {
    if io::stdout().is_terminal() {
        format!("\x1b[{color}m{id:<width$} |\x1b[0m ")
    } else {
        format!("{id:<width$} | ")
    }
}

/// Prints every line read from `from` after `prefix`, until end of file.
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

/// The last `lines` lines of the file at `path`.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("(cannot open {})", path.display());
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_node_settings_are_left_out() {
        for var in ["KVNODE_PORT", "KVNODE_DATA_DIR", "NODE_ID", "NODES", "PORT"] {
            assert!(is_node_setting(var), "{var}");
        }
        for var in ["RUST_LOG", "PATH", "KVCTL_NODES", "BROKEN_CAUSALITY"] {
            assert!(!is_node_setting(var), "{var}");
        }
    }

    #[test]
    fn a_process_is_signalled_until_it_exits() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut process = Process {
            child,
            output: Vec::new(),
        };
        assert!(process.try_exit().unwrap().is_none());
        process.signal(libc::SIGSTOP).unwrap();
        process.signal(libc::SIGCONT).unwrap();
        process.signal(libc::SIGTERM).unwrap();
        let status = crate::wait_for(std::time::Duration::from_secs(10), "sleep to exit", || {
            process
                .try_exit()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "running".to_owned())
        });
        assert!(!status.success());
        assert!(
            process.signal(libc::SIGTERM).is_err(),
            "signalled after its exit"
        );
    }

    #[test]
    fn exits_are_described_by_status_or_signal_name() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(ExitStatus::from_raw(0)),
            "exited with status 0"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "was killed by SIGKILL"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "was killed by SIGSEGV, core dumped"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(60)),
            "was killed by signal 60"
        );
    }

    #[test]
    fn the_tail_is_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node1.log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&log, 2), "b\nc");
        assert_eq!(tail(&log, 10), "a\nb\nc");
        assert!(tail(&dir.path().join("none"), 1).starts_with("(cannot open"));
    }
}
