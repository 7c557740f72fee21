//! `--client wrk`: the prototype API's `health`, `write` and `read` steps
//! driven by `wrk` (Debian's package) instead of `kvctl bench`.
//!
//! wrk is written in C, with LuaJIT request scripts whose requests are
//! formatted in advance; it costs the shared cores less CPU per request than
//! kvctl (on loopback the kernel's TCP work of both ends is counted to the
//! sender, so neither figure is small), and its figures are closer to what
//! the nodes can do on a small machine. One wrk thread per node, each
//! with its share of the connections, sends to that node (the script's
//! `setup` gives each thread its node's address). The script's `done` prints
//! the summary and every distinct latency with its count, which become a
//! `kvctl bench` report with exact percentiles; the client's CPU is read from
//! `/proc` while wrk runs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use kvctl::bench::{BenchReport, LoadReport, Percentiles, Settings};

/// What one wrk run sends.
#[derive(Clone, Copy)]
pub(crate) struct WrkLoad<'a> {
    /// `health`, `write` or `read`.
    pub workload: &'a str,
    pub connections: usize,
    pub duration: Duration,
    /// Keys `bench-0` .. `bench-(keys-1)`, as kvctl names them.
    pub keys: u64,
    pub value_size: usize,
    /// The nodes' base URLs (`http://127.0.0.1:PORT`).
    pub urls: &'a [String],
    pub node_ids: &'a [String],
}

/// Whether wrk can run here; why not otherwise.
pub(crate) fn available() -> Result<(), String> {
    match Command::new("wrk").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "wrk cannot run ({e}): install it with apt-get install wrk"
        )),
    }
}

/// The Lua script of `load`.
fn script(load: &WrkLoad<'_>) -> anyhow::Result<String> {
    let last = load.keys.saturating_sub(1);
    let request = match load.workload {
        "health" => "wrk.format(\"GET\", \"/health\")".to_string(),
        "read" => format!("wrk.format(\"GET\", \"/read?key=bench-\" .. math.random(0, {last}))"),
        "write" => format!(
            "wrk.format(\"POST\", \"/write\", {{[\"Content-Type\"] = \"application/json\"}}, \
             '{{\"key\":\"bench-' .. math.random(0, {last}) .. '\",\"value\":\"{}\"}}')",
            "v".repeat(load.value_size)
        ),
        other => bail!("wrk runs health, write and read steps, not {other}"),
    };
    script_for(load.urls, "", &request)
}

/// A script whose threads each send to one of `urls` requests made by the
/// Lua expression `request` (after `prelude`). Requests are formatted once,
/// in `init`: formatting each one as it is sent would cost wrk more CPU than
/// the nodes' cheapest route.
pub(crate) fn script_for(urls: &[String], prelude: &str, request: &str) -> anyhow::Result<String> {
    let mut nodes = Vec::new();
    for url in urls {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("wrk runs over plain HTTP only, not {url}"))?;
        let (host, port) = rest
            .rsplit_once(':')
            .with_context(|| format!("{url} has no port"))?;
        nodes.push(format!("{{host = \"{host}\", port = \"{port}\"}}"));
    }
    Ok(format!(
        r#"local nodes = {{{nodes}}}
local started = 0
function setup(thread)
  started = started + 1
  local node = nodes[((started - 1) % #nodes) + 1]
  thread.addr = wrk.lookup(node.host, node.port)[1]
  thread:set("seed", started)
end
{prelude}
local requests = {{}}
function init(args)
  math.randomseed(seed * 7919 + os.time())
  for i = 1, {FORMATTED} do
    requests[i] = {request}
  end
end
function request()
  return requests[math.random(1, {FORMATTED})]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("wrk-summary %d %d %d %d %d %d %d\n", summary.duration,
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout))
  for i = 1, #latency do
    local value, count = latency(i)
    io.write(string.format("wrk-latency %d %d\n", value, count))
  end
end
"#,
        nodes = nodes.join(", ")
    ))
}

/// Requests each wrk thread formats in advance, and picks from at random.
const FORMATTED: usize = 4096;

/// What wrk's `done` printed.
#[derive(Debug, Default, PartialEq)]
struct Output {
    duration_us: u64,
    requests: u64,
    /// connect, read, write, status, timeout.
    errors: [u64; 5],
    /// Distinct latencies in µs, with their counts.
    latencies: Vec<(u64, u64)>,
}

fn parse(text: &str) -> anyhow::Result<Output> {
    let mut out = Output::default();
    let mut summary = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let numbers = |fields: std::str::SplitWhitespace<'_>| -> anyhow::Result<Vec<u64>> {
            fields
                .map(|f| f.parse::<u64>().with_context(|| format!("in {line:?}")))
                .collect()
        };
        match fields.next() {
            Some("wrk-summary") => {
                let n = numbers(fields)?;
                ensure!(n.len() == 7, "a summary of 7 numbers, not {line:?}");
                out.duration_us = n[0];
                out.requests = n[1];
                out.errors.copy_from_slice(&n[2..7]);
                summary = true;
            }
            Some("wrk-latency") => {
                let n = numbers(fields)?;
                ensure!(n.len() == 2, "a latency and its count, not {line:?}");
                out.latencies.push((n[0], n[1]));
            }
            _ => {}
        }
    }
    ensure!(summary, "wrk printed no summary:\n{text}");
    Ok(out)
}

impl Output {
    /// The report `kvctl bench -o json` would give, with the client's CPU.
    fn report(&self, load: &WrkLoad<'_>, threads: usize, client_cpu_s: Option<f64>) -> BenchReport {
        // Microseconds, up to an hour; wrk's timeout is far below.
        let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("valid histogram bounds");
        for &(value, count) in &self.latencies {
            histogram.saturating_record_n(value.max(1), count);
        }
        let kinds = ["connect", "read", "write", "status", "timeout"];
        let errors_by_kind = kinds
            .iter()
            .zip(self.errors)
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| (format!("wrk {kind}"), n))
            .collect();
        // Status errors are answered requests; the others are not counted in
        // `requests` by wrk.
        let errors: u64 = self.errors.iter().sum();
        let elapsed_s = self.duration_us as f64 / 1e6;
        let ok = self.requests.saturating_sub(self.errors[3]);
        let requests = self.requests + errors - self.errors[3];
        BenchReport {
            settings: Settings {
                workload: load.workload.to_owned(),
                api: "compat".into(),
                nodes: load.urls.to_vec(),
                node_ids: load.node_ids.to_vec(),
                connections: load.connections,
                threads,
                duration_s: Some(load.duration.as_secs_f64()),
                requests: None,
                keys: load.keys,
                value_size: load.value_size,
                read_ratio: None,
                sessions: false,
                txn_keys: 1,
            },
            load: Some(LoadReport {
                populated: 0,
                requests,
                ok,
                errors,
                errors_by_kind,
                error_samples: Vec::new(),
                elapsed_s,
                rate: if elapsed_s > 0.0 {
                    ok as f64 / elapsed_s
                } else {
                    0.0
                },
                latency_ms: Percentiles::from_histogram(&histogram),
                read_latency_ms: None,
                write_latency_ms: None,
                client_cpu_s,
                client_cpu_us_per_request: client_cpu_s
                    .filter(|_| requests > 0)
                    .map(|s| s * 1e6 / requests as f64),
            }),
            lag: None,
        }
    }
}

/// Runs wrk with `load`, its script written into `dir`; `check` is called
/// while it runs and stops it with its error.
pub(crate) fn run(
    load: &WrkLoad<'_>,
    dir: &Path,
    check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<BenchReport> {
    run_script(load, &script(load)?, dir, check)
}

/// Runs wrk with `script` (written into `dir`) against `load.urls`, one
/// thread per URL, for `load.duration`: the report of what ran (wrk gives
/// each thread `connections / threads` connections).
pub(crate) fn run_script(
    load: &WrkLoad<'_>,
    script: &str,
    dir: &Path,
    check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<BenchReport> {
    let threads = load.urls.len().max(1);
    let load = WrkLoad {
        connections: (load.connections / threads).max(1) * threads,
        ..*load
    };
    let path = dir.join(format!("wrk-{}.lua", load.workload));
    std::fs::write(&path, script).with_context(|| format!("cannot write {}", path.display()))?;
    let mut command = Command::new("wrk");
    command
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &load.connections.to_string(),
        ])
        .args(["-d", &format!("{}s", load.duration.as_secs().max(1))])
        .args(["--timeout", "5s", "-s"])
        .arg(&path)
        .arg(&load.urls[0]);
    // The last reading before wrk exits: it misses at most one interval of
    // the client's CPU, out of the whole run.
    let mut cpu = None;
    let (status, text) = super::supervise(
        command,
        "wrk",
        |pid| cpu = kvctl::bench::cpu_seconds(pid).or(cpu),
        check,
    )?;
    ensure!(status.success(), "wrk failed ({status}):\n{text}");
    Ok(parse(&text)?.report(&load, threads, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load<'a>(workload: &'a str, urls: &'a [String], ids: &'a [String]) -> WrkLoad<'a> {
        WrkLoad {
            workload,
            connections: 64,
            duration: Duration::from_secs(10),
            keys: 1000,
            value_size: 3,
            urls,
            node_ids: ids,
        }
    }

    #[test]
    fn the_script_sends_each_thread_to_its_node() {
        let urls = vec![
            "http://127.0.0.1:5001".into(),
            "http://127.0.0.1:5002".into(),
        ];
        let ids = vec!["node1".into(), "node2".into()];
        let text = script(&load("write", &urls, &ids)).unwrap();
        assert!(
            text.contains(r#"{host = "127.0.0.1", port = "5002"}"#),
            "{text}"
        );
        assert!(text.contains("math.random(0, 999)"), "{text}");
        assert!(
            text.contains(r#"\"value\":\"vvv\""#) || text.contains(r#""value":"vvv""#),
            "{text}"
        );
        assert!(script(&load("mixed", &urls, &ids)).is_err());
        let https = vec!["https://127.0.0.1:5001".into()];
        assert!(script(&load("read", &https, &ids)).is_err());
    }

    #[test]
    fn the_output_becomes_a_report_with_exact_percentiles() {
        let text = "Running 10s test\n\
                    wrk-summary 2000000 1000 1 0 0 10 2\n\
                    wrk-latency 500 900\n\
                    wrk-latency 2000 90\n\
                    wrk-latency 9000 10\n";
        let out = parse(text).unwrap();
        assert_eq!(out.requests, 1000);
        assert_eq!(out.errors, [1, 0, 0, 10, 2]);
        let urls = vec!["http://127.0.0.1:5001".into()];
        let ids = vec!["node1".into()];
        let report = out.report(&load("write", &urls, &ids), 1, Some(0.5));
        let load = report.load.unwrap();
        assert_eq!((load.requests, load.ok, load.errors), (1003, 990, 13));
        assert_eq!(load.rate, 495.0);
        assert_eq!(load.client_cpu_us_per_request, Some(0.5e6 / 1003.0));
        let latency = load.latency_ms.unwrap();
        assert_eq!(latency.count, 1000);
        assert!((latency.p50 - 0.5).abs() < 0.01, "{latency:?}");
        assert!((latency.p99 - 2.0).abs() < 0.01, "{latency:?}");
        assert!((latency.max - 9.0).abs() < 0.01, "{latency:?}");
        assert_eq!(load.errors_by_kind.get("wrk status"), Some(&10));
        assert!(parse("no summary").is_err());
        assert!(parse("wrk-summary 1 2").is_err());
    }
}
