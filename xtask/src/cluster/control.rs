//! The control channel of a running `cargo xtask cluster`: a Unix domain socket
//! in the data directory, one request a connection.
//!
//! The client writes one line, `status` or `<action> <node>` (`kill node2`,
//! `restart 2`). The supervisor answers `ok` or `error` on the first line, then
//! the answer's lines, and closes the connection. The lines of `status` are
//! `<node>\t<url>\t<pid or ->\t<state>`; the client adds whether each node
//! answers `GET /health`.

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{Control, READY_DEADLINE, STOP_GRACE};

/// What a client says when no supervisor listens.
pub(crate) const NOT_RUNNING: &str = "no cluster is running (start one with `cargo xtask cluster`)";
/// How long a client waits for an answer: a restart stops the node, starts it
/// and waits until it answers.
const ANSWER_TIMEOUT: Duration = READY_DEADLINE.saturating_add(STOP_GRACE.saturating_mul(2));
/// How long `status` waits for each node's `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// One request, as it goes on the wire.
pub(crate) fn request_line(command: &Control) -> String {
    match command {
        Control::Status => "status".to_owned(),
        Control::Kill { node } => format!("kill {node}"),
        Control::Stop { node } => format!("stop {node}"),
        Control::Pause { node } => format!("pause {node}"),
        Control::Resume { node } => format!("resume {node}"),
        Control::Restart { node } => format!("restart {node}"),
    }
}

/// Reads a request line back.
pub(crate) fn parse_request(line: &str) -> Result<Control, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let node = |words: &[&str]| match words {
        [_, node] => Ok((*node).to_owned()),
        _ => Err(format!("`{line}`: expected `{} <node>`", words[0])),
    };
    match words.first().copied() {
        Some("status") if words.len() == 1 => Ok(Control::Status),
        Some("kill") => Ok(Control::Kill {
            node: node(&words)?,
        }),
        Some("stop") => Ok(Control::Stop {
            node: node(&words)?,
        }),
        Some("pause") => Ok(Control::Pause {
            node: node(&words)?,
        }),
        Some("resume") => Ok(Control::Resume {
            node: node(&words)?,
        }),
        Some("restart") => Ok(Control::Restart {
            node: node(&words)?,
        }),
        _ => Err(format!(
            "unknown request `{line}`: expected status, kill, stop, pause, resume or restart"
        )),
    }
}

/// Writes the supervisor's answer to a client; a client that went away misses it.
pub(crate) fn answer(client: &mut UnixStream, result: Result<Vec<String>, String>) {
    let text = match result {
        Ok(lines) => lines
            .iter()
            .fold("ok\n".to_owned(), |text, line| text + line + "\n"),
        Err(message) => format!("error\n{message}\n"),
    };
    let _ = client.write_all(text.as_bytes());
}

/// Sends `command` to the supervisor listening at `socket`; the lines of its
/// answer, or its error as an `Err`.
pub(crate) fn send(socket: &Path, command: &Control) -> anyhow::Result<Vec<String>> {
    send_within(socket, command, ANSWER_TIMEOUT)
}

/// Whether a supervisor answers at `socket` (within `timeout`). A socket file
/// can outlive its supervisor, or be held for a moment by a child forked
/// before it execs: only an answer counts.
pub(crate) fn answers(socket: &Path, timeout: Duration) -> bool {
    send_within(socket, &Control::Status, timeout).is_ok()
}

fn send_within(socket: &Path, command: &Control, timeout: Duration) -> anyhow::Result<Vec<String>> {
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            bail!(NOT_RUNNING)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to {}", socket.display())),
    };
    stream.set_read_timeout(Some(timeout))?;
    writeln!(stream, "{}", request_line(command))?;
    let mut lines = BufReader::new(stream).lines();
    let first = lines
        .next()
        .transpose()
        .context("no answer from the cluster")?
        .context("the cluster closed the connection without answering (did it stop?)")?;
    let rest = lines
        .collect::<io::Result<Vec<String>>>()
        .context("reading the cluster's answer")?;
    match first.as_str() {
        "ok" => Ok(rest),
        "error" => bail!("{}", rest.join("\n")),
        other => bail!("unexpected answer from the cluster: {other:?}"),
    }
}

/// `cargo xtask cluster <command>`: sends it and prints the answer.
pub(crate) fn run(socket: &Path, command: &Control) -> anyhow::Result<()> {
    if *command == Control::Status {
        print!("{}", status(socket)?);
    } else {
        for line in send(socket, command)? {
            println!("{line}");
        }
    }
    Ok(())
}

/// The status table: the supervisor's view of each node, and whether it
/// answers `GET /health` (asked of every node at once, at most
/// [`HEALTH_TIMEOUT`] each).
pub(crate) fn status(socket: &Path) -> anyhow::Result<String> {
    let rows: Vec<Vec<String>> = send(socket, &Control::Status)?
        .iter()
        .map(|line| line.split('\t').map(str::to_owned).collect())
        .collect();
    let health: Vec<String> = std::thread::scope(|scope| {
        let probes: Vec<_> = rows
            .iter()
            .map(|row| scope.spawn(move || health(row.get(1).map_or("", String::as_str))))
            .collect();
        probes
            .into_iter()
            .map(|probe| probe.join().unwrap_or_else(|_| "?".to_owned()))
            .collect()
    });
    let mut table = vec![["NODE", "URL", "PID", "STATE", "HEALTH"]
        .map(str::to_owned)
        .to_vec()];
    for (mut row, health) in rows.into_iter().zip(health) {
        row.resize(4, String::new());
        row.push(health);
        table.push(row);
    }
    Ok(columns(&table))
}

/// Whether the node at `url` answers `GET /health`, in a few words.
fn health(url: &str) -> String {
    let address = url.split_once("://").map_or(url, |(_, rest)| rest);
    match kv_testkit::probe_health(address, HEALTH_TIMEOUT) {
        Ok(_) => "ok".to_owned(),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            format!("no answer within {HEALTH_TIMEOUT:?}")
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused".to_owned(),
        Err(e) => format!("no: {e}"),
    }
}

/// `rows` as left-aligned columns, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let cells = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cells)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}
