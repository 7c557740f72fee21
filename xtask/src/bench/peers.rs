//! `cargo xtask bench --peers`: Redis and etcd beside the store, on the same machine, in
//! the same run, so that the report can give ratios rather than figures from
//! different days.
//!
//! Redis runs as a primary and two replicas on free loopback ports, each with
//! `appendonly yes` and `appendfsync always` (every write is synced on the
//! primary before it is answered, and on each replica as it arrives, as every
//! node of the store syncs), data in a temporary directory under
//! `target/bench/redis`. `redis-benchmark` then sends `SET` and `GET` of
//! random keys over as many connections as the store's steps, all to the
//! primary. The CPU time of the servers and of `redis-benchmark` is read
//! from `/proc`, so that each request's cost shows beside the store's.
//!
//! etcd runs as a 3-member cluster on free loopback ports (data under
//! `target/bench/etcd`), and `wrk` sends puts of random keys through its JSON
//! gateway (`POST /v3/kv/put`), one wrk thread per member, as the store's
//! writes are spread over its nodes.
//!
//! Everything is stopped at the end, on an error too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Serialize;

/// How long a server may take to answer `PING`, and the replicas to sync.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// One workload of a peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct PeerResult {
    /// The peer and its set-up, e.g. `redis 7.0.15, primary + 2 replicas, appendfsync always`.
    pub peer: String,
    /// `SET` or `GET`.
    pub test: String,
    /// Connections, all to the primary.
    pub connections: usize,
    /// Requests per second.
    pub rate: f64,
    /// Latency percentiles, ms, as the peer's own benchmark reports them.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time of the servers over the requests, µs.
    pub server_cpu_us_per_request: Option<f64>,
    /// CPU time of the load generator over the requests, µs (sampled every
    /// 20 ms, so a little low).
    pub client_cpu_us_per_request: Option<f64>,
}

impl PeerResult {
    /// A workload's figures: `(rate, p50, p99)`, and the servers' and the
    /// client's CPU seconds over its `requests`.
    fn measured(
        peer: String,
        test: String,
        connections: usize,
        (rate, p50_ms, p99_ms): (f64, f64, f64),
        requests: u64,
        server_cpu_s: Option<f64>,
        client_cpu_s: Option<f64>,
    ) -> Self {
        let per_request = |s: f64| s.max(0.0) * 1e6 / requests.max(1) as f64;
        Self {
            peer,
            test,
            connections,
            rate,
            p50_ms,
            p99_ms,
            server_cpu_us_per_request: server_cpu_s.map(per_request),
            client_cpu_us_per_request: client_cpu_s.map(per_request),
        }
    }
}

/// The Redis processes; killed when dropped.
struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `program` runs (`--version`).
fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs Redis beside the store; `Ok(Err(why))` when it is not installed.
pub(crate) fn redis(
    out: &Path,
    connections: usize,
    requests: u64,
    keys: u64,
    value_size: usize,
) -> anyhow::Result<Result<Vec<PeerResult>, String>> {
    if !installed("redis-server") || !installed("redis-benchmark") {
        return Ok(Err(
            "redis-server or redis-benchmark is not installed (Debian: apt-get install redis-server redis-tools)"
                .into(),
        ));
    }
    let version = Command::new("redis-server").arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("?")
        .to_owned();
    let dir = out.join("redis");
    crate::cluster::remove_dir_if_exists(&dir)?;
    let ports = kv_testkit::free_ports(3).context("no free port for redis")?;
    let mut servers = Servers(Vec::new());
    for (i, &port) in ports.iter().enumerate() {
        let data = dir.join(format!("redis{i}"));
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &data.display().to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--logfile",
            &data.join("redis.log").display().to_string(),
        ]);
        if i > 0 {
            command.args(["--replicaof", "127.0.0.1", &ports[0].to_string()]);
        }
        command.stdout(Stdio::null()).stderr(Stdio::null());
        kv_testkit::die_with_parent(&mut command);
        servers
            .0
            .push(command.spawn().context("cannot start redis-server")?);
    }
    for &port in &ports {
        wait_until(READY_DEADLINE, || {
            Ok(ask(port, "PING")?.starts_with("+PONG"))
        })
        .with_context(|| format!("redis on port {port} does not answer PING"))?;
    }
    wait_until(READY_DEADLINE, || {
        Ok(ask(ports[0], "INFO replication")?.contains("connected_slaves:2"))
    })
    .context("the redis replicas did not connect")?;
    let pids: Vec<u32> = servers.0.iter().map(Child::id).collect();
    let peer = format!("redis {version}, primary + 2 replicas, appendfsync always");
    let mut results = Vec::new();
    for test in ["set", "get"] {
        let server_before = super::cpu_seconds(&pids);
        let (output, client_cpu) = run_sampled(Command::new("redis-benchmark").args([
            "-h",
            "127.0.0.1",
            "-p",
            &ports[0].to_string(),
            "-c",
            &connections.to_string(),
            "-n",
            &requests.to_string(),
            "-r",
            &keys.to_string(),
            "-d",
            &value_size.to_string(),
            "-t",
            test,
            "--csv",
        ]))?;
        let server_after = super::cpu_seconds(&pids);
        let (rate, p50_ms, p99_ms) = parse_csv(&output)
            .with_context(|| format!("cannot read redis-benchmark's answer: {output}"))?;
        results.push(PeerResult::measured(
            peer.clone(),
            test.to_uppercase(),
            connections,
            (rate, p50_ms, p99_ms),
            requests,
            server_before.zip(server_after).map(|(b, a)| a - b),
            client_cpu,
        ));
    }
    Ok(Ok(results))
}

/// Runs a 3-member etcd beside the store, and `wrk` sending puts through its
/// JSON gateway (`POST /v3/kv/put`) over `connections` spread over the
/// members, for `duration`; `Ok(Err(why))` when etcd or wrk is not installed.
pub(crate) fn etcd(
    out: &Path,
    connections: usize,
    duration: Duration,
    keys: u64,
    value_size: usize,
) -> anyhow::Result<Result<Vec<PeerResult>, String>> {
    use base64::Engine as _;
    use rand::Rng as _;

    if !installed("etcd") {
        return Ok(Err(
            "etcd is not installed (Debian: apt-get install etcd-server)".into(),
        ));
    }
    if let Err(why) = super::wrk::available() {
        return Ok(Err(why));
    }
    let version = Command::new("etcd").arg("--version").output()?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version: "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let dir = out.join("etcd");
    crate::cluster::remove_dir_if_exists(&dir)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ports = kv_testkit::free_ports(6).context("no free port for etcd")?;
    let (clients, peers) = ports.split_at(3);
    let url = |port: &u16| format!("http://127.0.0.1:{port}");
    let cluster = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("etcd{i}={}", url(p)))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers = Servers(Vec::new());
    for i in 0..3 {
        let log = std::fs::File::create(dir.join(format!("etcd{i}.log")))?;
        let mut command = Command::new("etcd");
        command
            .args(["--name", &format!("etcd{i}")])
            .args([
                "--data-dir",
                &dir.join(format!("etcd{i}")).display().to_string(),
            ])
            .args(["--listen-client-urls", &url(&clients[i])])
            .args(["--advertise-client-urls", &url(&clients[i])])
            .args(["--listen-peer-urls", &url(&peers[i])])
            .args(["--initial-advertise-peer-urls", &url(&peers[i])])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "kvbench"])
            .stdout(Stdio::null())
            .stderr(log);
        kv_testkit::die_with_parent(&mut command);
        servers
            .0
            .push(command.spawn().context("cannot start etcd")?);
    }
    let urls: Vec<String> = clients.iter().map(url).collect();
    for member in &urls {
        wait_until(READY_DEADLINE, || {
            let answer = ureq::get(&format!("{member}/health")).call();
            Ok(answer.is_ok_and(|r| r.into_string().is_ok_and(|t| t.contains("true"))))
        })
        .with_context(|| format!("etcd at {member} is not healthy"))?;
    }
    // Puts of random keys of the same key space and value size as the
    // store's steps; base64 as the gateway wants them.
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let value = b64(&"v".repeat(value_size));
    let mut rng = rand::rng();
    let bodies: Vec<String> = (0..1024)
        .map(|_| {
            let key = b64(&format!("bench-{}", rng.random_range(0..keys.max(1))));
            format!("'{{\"key\":\"{key}\",\"value\":\"{value}\"}}'")
        })
        .collect();
    let prelude = format!("local bodies = {{{}}}", bodies.join(",\n"));
    let request = "wrk.format(\"POST\", \"/v3/kv/put\", \
                   {[\"Content-Type\"] = \"application/json\"}, bodies[math.random(1, #bodies)])";
    let script = super::wrk::script_for(&urls, &prelude, request)?;
    let load = super::wrk::WrkLoad {
        workload: "etcd-put",
        connections,
        duration,
        keys,
        value_size,
        urls: &urls,
        node_ids: &[],
    };
    let pids: Vec<u32> = servers.0.iter().map(Child::id).collect();
    let server_before = super::cpu_seconds(&pids);
    let report = super::wrk::run_script(&load, &script, &dir, || Ok(()))?;
    let server_after = super::cpu_seconds(&pids);
    let run = report.load.context("wrk gave no load report")?;
    let latency = run.latency_ms.context("etcd answered no put")?;
    ensure!(
        run.errors == 0,
        "{} of {} puts failed: {:?}",
        run.errors,
        run.requests,
        run.errors_by_kind
    );
    Ok(Ok(vec![PeerResult::measured(
        format!("etcd {version}, 3 members, puts through the JSON gateway (wrk)"),
        "PUT".into(),
        report.settings.connections,
        (run.rate, latency.p50, latency.p99),
        run.requests,
        server_before.zip(server_after).map(|(b, a)| a - b),
        run.client_cpu_s,
    )]))
}

/// Runs `command` to its end, sampling its CPU time every 20 ms; its
/// standard output and the last sample, in seconds.
fn run_sampled(command: &mut Command) -> anyhow::Result<(String, Option<f64>)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    kv_testkit::die_with_parent(command);
    let mut child = command.spawn().context("cannot start redis-benchmark")?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let mut cpu = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        cpu = kvctl::bench::cpu_seconds(pid).or(cpu);
        thread::sleep(Duration::from_millis(20));
    };
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the output reader panicked"))??;
    if !status.success() {
        bail!("redis-benchmark exited with {status}");
    }
    Ok((text, cpu))
}

/// The rate, p50 and p99 of `redis-benchmark --csv`'s answer:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`
/// then a line per test.
fn parse_csv(text: &str) -> Option<(f64, f64, f64)> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = fields(lines.next()?);
    let row: Vec<String> = fields(lines.next()?);
    let column = |name: &str| -> Option<f64> {
        let at = header.iter().position(|h| h == name)?;
        row.get(at)?.parse().ok()
    };
    Some((
        column("rps")?,
        column("p50_latency_ms")?,
        column("p99_latency_ms")?,
    ))
}

fn fields(line: &str) -> Vec<String> {
    line.split(',')
        .map(|f| f.trim().trim_matches('"').to_owned())
        .collect()
}

/// Sends one inline command to the Redis on `port` and returns what came
/// back first.
fn ask(port: u16, command: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Polls `ready` until it says yes, or fails after `deadline`.
fn wait_until(
    deadline: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let last = ready();
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if started.elapsed() > deadline {
            return Err(last
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("not ready in {deadline:?}")));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_answer_is_read_by_column_name() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"SET\",\"52910.05\",\"1.190\",\"0.208\",\"1.135\",\"1.687\",\"2.319\",\"9.431\"\n";
        assert_eq!(parse_csv(text), Some((52910.05, 1.135, 2.319)));
        assert_eq!(parse_csv("\"test\",\"rps\"\n"), None);
    }
}
