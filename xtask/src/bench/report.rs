//! The suite's report: every step's `kvctl bench` report, its ratio to the
//! `/health` ceiling and the nodes' memory, as JSON and as markdown.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use kvctl::bench::{ratio, BenchReport, Percentiles};
use serde::Serialize;

use super::peers::PeerResult;
use super::RssSample;

/// The whole run.
#[derive(Debug, Serialize)]
pub(crate) struct SuiteReport {
    /// When the report was written (RFC 3339, UTC).
    pub generated: String,
    /// The commit the workspace was at (`git rev-parse --short HEAD`), with
    /// `-dirty` when the work tree had changes.
    pub git_commit: Option<String>,
    /// A `--smoke` run: its figures mean nothing.
    pub smoke: bool,
    /// Length of each load step, when it ran for a duration.
    pub step_duration_s: Option<f64>,
    /// Requests of each load step, when it ran for a count (`--smoke`).
    pub step_requests: Option<u64>,
    /// CPUs of the machine, shared by the nodes and the client.
    pub cores: usize,
    /// The nodes' storage: `fsync` (durable), `none` (no fsync) or `memory`.
    pub storage: String,
    /// The nodes: id and URL.
    pub nodes: Vec<NodeInfo>,
    /// The steps whose mean rate every ratio refers to.
    pub ceiling_steps: Vec<String>,
    /// That mean rate, requests per second.
    pub ceiling_rate: Option<f64>,
    /// Every step, in the order they ran.
    pub steps: Vec<StepResult>,
    /// Other stores run beside it (`--peers`).
    pub peers: Vec<PeerResult>,
    /// HTTP worker threads of each node (`workers`), when known.
    pub node_workers: Option<usize>,
}

/// One node of the cluster.
#[derive(Debug, Serialize)]
pub(crate) struct NodeInfo {
    pub id: String,
    pub url: String,
}

/// One step of the suite.
#[derive(Debug, Serialize)]
pub(crate) struct StepResult {
    /// The step's name, e.g. `write-64`.
    pub name: String,
    /// Concurrent connections.
    pub connections: usize,
    /// The step's rate over the ceiling rate.
    pub ratio_to_health: Option<f64>,
    /// CPU time the nodes used while the step ran, all nodes together, in seconds.
    pub node_cpu_s: Option<f64>,
    /// `node_cpu_s` over the step's requests (those that filled the key space
    /// first included), in µs.
    pub node_cpu_us_per_request: Option<f64>,
    /// Each node's RSS while the step ran.
    pub rss: Vec<RssStats>,
    /// What `kvctl bench -o json` reported.
    pub report: BenchReport,
}

impl StepResult {
    pub fn new(name: &str, connections: usize, report: BenchReport, rss: Vec<RssStats>) -> Self {
        Self {
            name: name.to_owned(),
            connections,
            ratio_to_health: None,
            node_cpu_s: None,
            node_cpu_us_per_request: None,
            rss,
            report,
        }
    }

    /// Records the nodes' CPU time over the step, in seconds.
    pub fn with_node_cpu(mut self, seconds: Option<f64>) -> Self {
        self.node_cpu_s = seconds;
        self.node_cpu_us_per_request = seconds.zip(self.report.load.as_ref()).and_then(|(s, l)| {
            let requests = l.requests + l.populated;
            (requests > 0).then(|| s * 1e6 / requests as f64)
        });
        self
    }

    /// Successful requests per second, for load steps.
    pub fn rate(&self) -> Option<f64> {
        self.report.load.as_ref().map(|l| l.rate)
    }

    /// The latency percentiles of a load step, or the lag of the lag step.
    pub fn percentiles(&self) -> Option<Percentiles> {
        match (&self.report.load, &self.report.lag) {
            (Some(load), _) => load.latency_ms,
            (None, Some(lag)) => lag.all_ms,
            (None, None) => None,
        }
    }
}

/// One table cell per node: `show` of its RSS, or a dash when nothing was sampled.
fn rss_cells(rss: &[RssStats], show: impl Fn(&RssStats) -> String) -> Vec<String> {
    rss.iter()
        .map(|r| {
            if r.samples == 0 {
                "—".into()
            } else {
                show(r)
            }
        })
        .collect()
}

/// A node's resident memory over one step, in MiB.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct RssStats {
    pub node: String,
    /// Samples taken while the step ran (0: none, and the figures are 0).
    pub samples: usize,
    pub min_mib: f64,
    pub max_mib: f64,
    pub last_mib: f64,
}

/// Each node's RSS from the samples taken between `from` and `to`.
pub(crate) fn rss_stats(
    samples: &[RssSample],
    from: Instant,
    to: Instant,
    members: &[(String, u16)],
) -> Vec<RssStats> {
    members
        .iter()
        .enumerate()
        .map(|(i, (id, _))| {
            let values: Vec<f64> = samples
                .iter()
                .filter(|(at, _)| *at >= from && *at <= to)
                .filter_map(|(_, rss)| rss.get(i).copied().flatten())
                .map(|kib| kib as f64 / 1024.0)
                .collect();
            RssStats {
                node: id.clone(),
                samples: values.len(),
                min_mib: values.iter().copied().reduce(f64::min).unwrap_or(0.0),
                max_mib: values.iter().copied().reduce(f64::max).unwrap_or(0.0),
                last_mib: values.last().copied().unwrap_or(0.0),
            }
        })
        .collect()
}

/// One line about a finished step, for the console.
pub(crate) fn summary_line(report: &BenchReport) -> String {
    let mut line = String::new();
    if let Some(load) = &report.load {
        let _ = write!(line, "{:.0} req/s", load.rate);
        if let Some(p) = load.latency_ms {
            let _ = write!(line, ", p50 {:.2} ms, p99 {:.2} ms", p.p50, p.p99);
        }
        let _ = write!(line, ", {} errors", load.errors);
    }
    if let Some(lag) = &report.lag {
        if !line.is_empty() {
            line.push_str("; ");
        }
        match lag.all_ms {
            Some(p) => {
                let _ = write!(line, "lag p50 {:.2} ms, p99 {:.2} ms", p.p50, p.p99);
            }
            None => line.push_str("lag: nothing became visible"),
        }
        let _ = write!(line, ", {} not visible", lag.not_visible);
    }
    line
}

impl SuiteReport {
    /// The report of `steps`, with each step's ratio to the mean rate of the
    /// `ceiling_steps` that ran.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        root: &Path,
        smoke: bool,
        storage: &str,
        duration: Duration,
        smoke_requests: u64,
        members: &[(String, u16)],
        urls: &[String],
        ceiling_steps: &[&str],
        mut steps: Vec<StepResult>,
    ) -> Self {
        let ceilings: Vec<f64> = steps
            .iter()
            .filter(|s| ceiling_steps.contains(&s.name.as_str()))
            .filter_map(StepResult::rate)
            .collect();
        let ceiling_rate =
            (!ceilings.is_empty()).then(|| ceilings.iter().sum::<f64>() / ceilings.len() as f64);
        for step in &mut steps {
            step.ratio_to_health = step
                .rate()
                .zip(ceiling_rate)
                .and_then(|(rate, ceiling)| ratio(rate, ceiling));
        }
        Self {
            generated: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            git_commit: git_commit(root),
            smoke,
            step_duration_s: (!smoke).then_some(duration.as_secs_f64()),
            step_requests: smoke.then_some(smoke_requests),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            storage: storage.into(),
            nodes: members
                .iter()
                .zip(urls)
                .map(|((id, _), url)| NodeInfo {
                    id: id.clone(),
                    url: url.clone(),
                })
                .collect(),
            ceiling_steps: ceiling_steps.iter().map(|s| s.to_string()).collect(),
            ceiling_rate,
            steps,
            peers: Vec::new(),
            node_workers: None,
        }
    }

    /// Failed requests and lag samples that never became visible, over all steps.
    pub fn failures(&self) -> u64 {
        self.steps.iter().map(|s| s.report.failures()).sum()
    }

    /// The report as markdown: the table of steps, the lag per node and the
    /// memory per node.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Benchmark: {} nodes, storage {}\n",
            self.nodes.len(),
            self.storage
        );
        if self.smoke {
            out.push_str("**Smoke run** (debug builds, a few requests per step): the figures mean nothing.\n\n");
        }
        let length = match (self.step_duration_s, self.step_requests) {
            (Some(d), _) => format!("{d}s"),
            (None, Some(n)) => format!("{n} requests"),
            (None, None) => "?".into(),
        };
        let first = self.steps.iter().find(|s| s.report.load.is_some());
        let (keys, value_size, threads) = first.map_or((0, 0, 0), |s| {
            let st = &s.report.settings;
            (st.keys, st.value_size, st.threads)
        });
        let _ = writeln!(
            out,
            "{} on commit {}, {} cores shared by the nodes{} and the client. Each load step ran \
             {length} through the prototype API (the `native-*` and `txn-*` steps through the native \
             one), closed loop (one request in flight per \
             connection, connections spread round-robin over the nodes), {keys} keys, values of \
             {value_size} characters, kvctl bench with {threads} thread(s). Rates are successful \
             requests per second; \"vs /health\" is the ratio to the mean rate of the \
             `/health` steps of this run ({}), before and after the load. \
             \"CPU µs/req\" is the CPU time all nodes used during the step over its \
             requests: what one request costs the nodes, client excluded; \"client µs/req\" \
             is the same for the load generator (kvctl bench, every thread), which shares \
             the cores. Latencies in ms; for the lag step they are the visibility lag (a write's \
             acknowledgement to its value being readable at another node). RSS: the largest \
             sample of each node during the step, MiB.\n",
            self.generated,
            self.git_commit.as_deref().unwrap_or("unknown"),
            self.cores,
            self.node_workers
                .map_or(String::new(), |n| format!(" ({n} HTTP worker(s) each)")),
            self.ceiling_steps
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" and "),
        );
        let ids: Vec<&str> = self.nodes.iter().map(|n| n.id.as_str()).collect();
        let _ = writeln!(
            out,
            "| step | conns | rate (req/s) | vs /health | CPU µs/req | client µs/req | p50 | p90 | p99 | p99.9 | max | errors | RSS max ({}) |",
            ids.join(" / ")
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for step in &self.steps {
            let rate = step.rate().map_or("—".into(), |r| format!("{r:.0}"));
            let vs = step
                .ratio_to_health
                .map_or("—".into(), |r| format!("{:.0}%", r * 100.0));
            let cpu = step
                .node_cpu_us_per_request
                .map_or("—".into(), |us| format!("{us:.1}"));
            let client = step
                .report
                .load
                .as_ref()
                .and_then(|l| l.client_cpu_us_per_request)
                .map_or("—".into(), |us| format!("{us:.1}"));
            let ladder = match step.percentiles() {
                Some(p) => p.ladder().map(ms).join(" | "),
                None => ["—"; 5].join(" | "),
            };
            let rss = rss_cells(&step.rss, |r| format!("{:.0}", r.max_mib));
            let _ = writeln!(
                out,
                "| {} | {} | {rate} | {vs} | {cpu} | {client} | {ladder} | {} | {} |",
                step.name,
                step.connections,
                step.report.failures(),
                rss.join(" / ")
            );
        }
        for step in &self.steps {
            let Some(load) = &step.report.load else {
                continue;
            };
            if load.errors > 0 {
                let kinds: Vec<String> = load
                    .errors_by_kind
                    .iter()
                    .map(|(k, n)| format!("{k}={n}"))
                    .collect();
                let _ = writeln!(out, "\nErrors in {}: {}", step.name, kinds.join(", "));
                for sample in &load.error_samples {
                    let _ = writeln!(out, "- `{sample}`");
                }
            }
        }

        if !self.peers.is_empty() {
            out.push_str(&self.peers_markdown());
        }

        let txn_lines = self.txn_comparisons();
        if !txn_lines.is_empty() {
            out.push_str("\n## Transactions\n\nEach atomic write or snapshot read of several keys against the single-key step of the same workload, API and connections: operations per second, and keys per second.\n\n");
            for line in txn_lines {
                let _ = writeln!(out, "- {line}");
            }
        }

        for step in &self.steps {
            let Some(lag) = &step.report.lag else {
                continue;
            };
            let _ = writeln!(
                out,
                "\n## Visibility lag ({})\n\n{} writes, one at a time, each read back at every \
                 other node with back-to-back reads ({:.1} reads on average until visible); {} \
                 (write, node) pairs not visible within the timeout.\n",
                step.name, lag.samples, lag.mean_polls, lag.not_visible
            );
            out.push_str("| at node | count | p50 | p90 | p99 | p99.9 | max |\n");
            out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            let rows = lag
                .per_node_ms
                .iter()
                .map(|(n, p)| (n.as_str(), *p))
                .chain(lag.all_ms.map(|p| ("all", p)));
            for (node, p) in rows {
                let _ = writeln!(
                    out,
                    "| {node} | {} | {} |",
                    p.count,
                    p.ladder().map(ms).join(" | ")
                );
            }
        }

        let _ = writeln!(
            out,
            "\n## Memory\n\nRSS of each node while each step ran, MiB: min / max / last.\n"
        );
        let _ = writeln!(out, "| step | {} |", ids.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(ids.len()));
        for step in &self.steps {
            let cells = rss_cells(&step.rss, |r| {
                format!("{:.1} / {:.1} / {:.1}", r.min_mib, r.max_mib, r.last_mib)
            });
            let _ = writeln!(out, "| {} | {} |", step.name, cells.join(" | "));
        }
        out
    }
}

impl SuiteReport {
    /// The peers' figures, and the store's rates as ratios to them: writes
    /// (`write-64`) to SET, reads (`read-64`) to GET.
    fn peers_markdown(&self) -> String {
        let mut out = String::from(
            "\n## Beside other stores\n\nRun on the same machine after the store's steps, with the \
             same connections (Redis: all to the primary; etcd: spread over its members); rates as \
             the peer's benchmark reports them, CPU from /proc.\n\n| peer | test | conns | rate (req/s) | p50 | p99 | server CPU µs/req | \
             client CPU µs/req | this store | ratio |\n|---|---|---:|---:|---:|---:|---:|---:|---|---:|\n",
        );
        let cpu = |v: Option<f64>| v.map_or("—".into(), |us| format!("{us:.1}"));
        for p in &self.peers {
            let ours = match p.test.as_str() {
                "SET" | "PUT" => "write-64",
                _ => "read-64",
            };
            let mine = self
                .steps
                .iter()
                .find(|s| s.name == ours)
                .and_then(StepResult::rate);
            let ratio = mine
                .and_then(|m| ratio(m, p.rate))
                .map_or("—".into(), |r| format!("{r:.2}x"));
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | `{ours}` {} | {ratio} |",
                p.peer,
                p.test,
                p.connections,
                p.rate,
                ms(p.p50_ms),
                ms(p.p99_ms),
                cpu(p.server_cpu_us_per_request),
                cpu(p.client_cpu_us_per_request),
                mine.map_or("—".into(), |m| format!("{m:.0}/s")),
            );
        }
        out
    }

    /// For each step of several keys per operation, a line comparing it with
    /// the single-key step of the same workload, API and connections.
    fn txn_comparisons(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for step in &self.steps {
            let st = &step.report.settings;
            if st.txn_keys <= 1 {
                continue;
            }
            let single = self.steps.iter().find(|b| {
                let b = &b.report.settings;
                b.txn_keys == 1
                    && b.workload == st.workload
                    && b.api == st.api
                    && b.connections == st.connections
            });
            let (Some(rate), Some(single)) = (step.rate(), single) else {
                continue;
            };
            let Some(single_rate) = single.rate() else {
                continue;
            };
            let what = if st.workload == "write" {
                "atomic writes"
            } else {
                "snapshot reads"
            };
            let ops = ratio(rate, single_rate).map_or("—".into(), |r| format!("{r:.2}x"));
            let keys = ratio(rate * st.txn_keys as f64, single_rate)
                .map_or("—".into(), |r| format!("{r:.2}x"));
            lines.push(format!(
                "`{}`: {rate:.0} {what} of {} keys per second, {ops} the rate of `{}` \
                 ({single_rate:.0}/s); {:.0} keys per second, {keys}",
                step.name,
                st.txn_keys,
                single.name,
                rate * st.txn_keys as f64
            ));
        }
        lines
    }
}

/// A latency in ms, with the digits that matter.
fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn git_commit(root: &Path) -> Option<String> {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = run(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use kvctl::bench::{LagReport, LoadReport, Settings};

    use super::*;

    fn percentiles(p50: f64) -> Percentiles {
        Percentiles {
            count: 100,
            mean: p50,
            p50,
            p90: p50 * 2.0,
            p99: p50 * 4.0,
            p999: p50 * 8.0,
            max: p50 * 16.0,
        }
    }

    pub(crate) fn load_report(workload: &str, rate: f64, errors: u64) -> BenchReport {
        BenchReport {
            settings: Settings {
                workload: workload.into(),
                api: "compat".into(),
                nodes: vec!["http://127.0.0.1:1".into()],
                node_ids: vec!["node1".into()],
                connections: 64,
                threads: 2,
                duration_s: Some(10.0),
                requests: None,
                keys: 1000,
                value_size: 100,
                read_ratio: None,
                sessions: false,
                txn_keys: 1,
            },
            load: Some(LoadReport {
                populated: 0,
                requests: 1000 + errors,
                ok: 1000,
                errors,
                errors_by_kind: if errors > 0 {
                    [("timeout".to_string(), errors)].into_iter().collect()
                } else {
                    BTreeMap::new()
                },
                error_samples: if errors > 0 {
                    vec!["http://x: Timeout".into()]
                } else {
                    vec![]
                },
                elapsed_s: 1000.0 / rate,
                rate,
                latency_ms: Some(percentiles(1.0)),
                read_latency_ms: None,
                write_latency_ms: None,
                client_cpu_s: None,
                client_cpu_us_per_request: None,
            }),
            lag: None,
        }
    }

    pub(crate) fn lag_report() -> BenchReport {
        let mut report = load_report("none", 1.0, 0);
        report.load = None;
        report.lag = Some(LagReport {
            samples: 50,
            all_ms: Some(percentiles(0.3)),
            per_node_ms: [
                ("node2".to_string(), percentiles(0.3)),
                ("node3".to_string(), percentiles(0.4)),
            ]
            .into_iter()
            .collect(),
            not_visible: 0,
            errors_by_kind: BTreeMap::new(),
            error_samples: vec![],
            mean_polls: 2.5,
        });
        report
    }

    fn rss(node: &str, max: f64) -> RssStats {
        RssStats {
            node: node.into(),
            samples: 3,
            min_mib: max - 1.0,
            max_mib: max,
            last_mib: max - 0.5,
        }
    }

    pub(crate) fn suite() -> SuiteReport {
        let members = vec![("node1".to_string(), 1), ("node2".to_string(), 2)];
        let urls = vec![
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".into(),
        ];
        let steps = vec![
            StepResult::new(
                "health-64",
                64,
                load_report("health", 40_000.0, 0),
                vec![rss("node1", 20.0), rss("node2", 21.0)],
            ),
            StepResult::new(
                "write-64",
                64,
                {
                    let mut report = load_report("write", 10_000.0, 2);
                    let load = report.load.as_mut().expect("a load report");
                    load.client_cpu_us_per_request = Some(12.5);
                    report
                },
                vec![rss("node1", 30.0), rss("node2", 31.0)],
            )
            .with_node_cpu(Some(0.08016)),
            StepResult::new(
                "lag",
                1,
                lag_report(),
                vec![
                    rss("node1", 32.0),
                    RssStats {
                        samples: 0,
                        ..rss("node2", 0.0)
                    },
                ],
            ),
        ];
        SuiteReport::new(
            Path::new("/nonexistent"),
            false,
            "fsync",
            Duration::from_secs(10),
            300,
            &members,
            &urls,
            &["health-64", "health-64-end"],
            steps,
        )
    }

    /// A step of several keys per operation is compared with the single-key
    /// step of the same workload, API and connections, per operation and per
    /// key; steps of other connections or APIs are not its match.
    #[test]
    fn transactions_are_compared_with_single_key_steps() {
        let step = |name: &str, workload: &str, api: &str, keys: usize, rate: f64| {
            let mut report = load_report(workload, rate, 0);
            report.settings.api = api.into();
            report.settings.txn_keys = keys;
            StepResult::new(name, 64, report, vec![])
        };
        let mut s = suite();
        s.steps = vec![
            step("write-64", "write", "compat", 1, 9_000.0),
            step("native-write-64", "write", "native", 1, 8_000.0),
            step("txn-write-64", "write", "native", 4, 4_000.0),
            step("txn-read-64", "read", "native", 4, 6_000.0),
        ];
        let lines = s.txn_comparisons();
        assert_eq!(lines.len(), 1, "no single-key native read step: {lines:?}");
        assert!(
            lines[0].starts_with(
                "`txn-write-64`: 4000 atomic writes of 4 keys per second, 0.50x the rate of \
                 `native-write-64` (8000/s); 16000 keys per second, 2.00x"
            ),
            "{}",
            lines[0]
        );
        assert!(s.markdown().contains("## Transactions"));
    }

    #[test]
    fn peers_are_shown_with_the_stores_ratio_to_them() {
        let mut s = suite();
        s.peers = vec![PeerResult {
            peer: "redis 7.0.15, primary + 2 replicas, appendfsync always".into(),
            test: "SET".into(),
            connections: 64,
            rate: 40_000.0,
            p50_ms: 1.135,
            p99_ms: 2.319,
            server_cpu_us_per_request: Some(30.0),
            client_cpu_us_per_request: None,
        }];
        let md = s.markdown();
        assert!(md.contains("## Beside other stores"), "{md}");
        assert!(
            md.contains(
                "| redis 7.0.15, primary + 2 replicas, appendfsync always | SET | 64 | 40000 | 1.14 | 2.32 | 30.0 | — | `write-64` 10000/s | 0.25x |"
            ),
            "{md}"
        );
    }

    #[test]
    fn ratios_refer_to_the_ceiling_step() {
        let s = suite();
        assert_eq!(s.ceiling_rate, Some(40_000.0));
        assert_eq!(s.steps[0].ratio_to_health, Some(1.0));
        assert_eq!(s.steps[1].ratio_to_health, Some(0.25));
        assert_eq!(s.steps[2].ratio_to_health, None);
        assert_eq!(s.failures(), 2);
    }

    #[test]
    fn the_ceiling_is_the_mean_of_the_health_steps_before_and_after() {
        let step = |name: &str, workload: &str, rate: f64| {
            StepResult::new(name, 64, load_report(workload, rate, 0), vec![])
        };
        let steps = vec![
            step("health-64", "health", 40_000.0),
            step("write-64", "write", 10_500.0),
            step("health-64-end", "health", 30_000.0),
        ];
        let s = SuiteReport::new(
            Path::new("/"),
            false,
            "fsync",
            Duration::from_secs(10),
            300,
            &[],
            &[],
            &["health-64", "health-64-end"],
            steps,
        );
        assert_eq!(s.ceiling_rate, Some(35_000.0));
        let ratios: Vec<Option<f64>> = s.steps.iter().map(|s| s.ratio_to_health).collect();
        assert_eq!(ratios, [Some(40.0 / 35.0), Some(0.3), Some(30.0 / 35.0)]);
        assert!(
            s.markdown().contains("(`health-64` and `health-64-end`)"),
            "{}",
            s.markdown()
        );
    }

    #[test]
    fn without_a_ceiling_there_are_no_ratios() {
        let steps = vec![StepResult::new(
            "write-64",
            64,
            load_report("write", 1.0, 0),
            vec![],
        )];
        let s = SuiteReport::new(
            Path::new("/"),
            true,
            "memory",
            Duration::ZERO,
            300,
            &[],
            &[],
            &["health-64", "health-64-end"],
            steps,
        );
        assert_eq!(s.steps[0].ratio_to_health, None);
        assert_eq!(s.step_requests, Some(300));
        assert!(s.markdown().contains("| write-64 | 64 | 1 | — | — |"));
        assert!(s
            .markdown()
            .starts_with("# Benchmark: 0 nodes, storage memory"));
    }

    #[test]
    fn the_markdown_has_the_table_the_lag_and_the_memory() {
        let md = suite().markdown();
        for needle in [
            "| step | conns | rate (req/s) | vs /health | CPU µs/req | client µs/req | p50 | p90 | p99 | p99.9 | max | errors | RSS max (node1 / node2) |",
            "| health-64 | 64 | 40000 | 100% | — | — | 1.00 | 2.00 | 4.00 | 8.00 | 16.0 | 0 | 20 / 21 |",
            "| write-64 | 64 | 10000 | 25% | 80.0 | 12.5 | 1.00 | 2.00 | 4.00 | 8.00 | 16.0 | 2 | 30 / 31 |",
            "| lag | 1 | — | — | — | — | 0.30 | 0.60 | 1.20 | 2.40 | 4.80 | 0 | 32 / — |",
            "# Benchmark: 2 nodes, storage fsync",
            "Errors in write-64: timeout=2",
            "## Visibility lag (lag)",
            "| node3 | 100 | 0.40 | 0.80 | 1.60 | 3.20 | 6.40 |",
            "2.5 reads on average",
            "| write-64 | 29.0 / 30.0 / 29.5 | 30.0 / 31.0 / 30.5 |",
            "2 thread(s)",
        ] {
            assert!(md.contains(needle), "{needle:?} missing from:\n{md}");
        }
    }

    #[test]
    fn rss_is_summarised_per_node_within_the_step() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let samples: Vec<RssSample> = vec![
            (at(0), vec![Some(1024), Some(4096)]),
            (at(100), vec![Some(3072), None]),
            (at(200), vec![Some(2048), Some(5120)]),
            (at(900), vec![Some(99_999), Some(99_999)]),
        ];
        let members = vec![("node1".to_string(), 1), ("node2".to_string(), 2)];
        let stats = rss_stats(&samples, at(0), at(200), &members);
        assert_eq!(
            stats[0],
            RssStats {
                node: "node1".into(),
                samples: 3,
                min_mib: 1.0,
                max_mib: 3.0,
                last_mib: 2.0
            }
        );
        assert_eq!(
            (stats[1].samples, stats[1].min_mib, stats[1].max_mib),
            (2, 4.0, 5.0)
        );
        let none = rss_stats(&samples, at(300), at(400), &members);
        assert_eq!(none[0].samples, 0);
    }

    #[test]
    fn summary_lines_name_rate_latency_and_lag() {
        assert_eq!(
            summary_line(&load_report("write", 1234.4, 1)),
            "1234 req/s, p50 1.00 ms, p99 4.00 ms, 1 errors"
        );
        assert_eq!(
            summary_line(&lag_report()),
            "lag p50 0.30 ms, p99 1.20 ms, 0 not visible"
        );
    }

    #[test]
    fn latencies_keep_three_significant_digits_or_so() {
        assert_eq!(ms(0.123456), "0.12");
        assert_eq!(ms(12.345), "12.3");
        assert_eq!(ms(1234.4), "1234");
    }
}
