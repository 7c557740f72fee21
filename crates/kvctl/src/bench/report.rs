//! What a benchmark run reports: [`BenchReport`], its JSON form (`--output json`)
//! and its text form for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in microseconds (one hour); longer ones
/// are recorded as this.
pub(crate) const MAX_MICROS: u64 = 3_600_000_000;

/// A histogram of latencies in microseconds, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("the bounds are valid")
}

/// Records one latency, clamped to the histogram's range.
pub(crate) fn record(histogram: &mut Histogram<u64>, elapsed: std::time::Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(MAX_MICROS);
    histogram.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// The whole result of one `kvctl bench` run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// What was run.
    pub settings: Settings,
    /// The throughput and latency of the load phase; `None` for a lag-only run.
    pub load: Option<LoadReport>,
    /// The visibility lag (`--lag`); `None` without it.
    pub lag: Option<LagReport>,
}

/// The settings of a run, as the report records them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The workload: `write`, `read`, `mixed`, `health`, or `lag` for a lag-only run.
    pub workload: String,
    /// The API of reads and writes: `compat` (`/write`, `/read`) or `native` (`/v1/kv`).
    pub api: String,
    /// The nodes' base URLs.
    pub nodes: Vec<String>,
    /// The nodes' ids, in the order of `nodes` (from their `/health`).
    pub node_ids: Vec<String>,
    /// Concurrent connections, each with one request in flight.
    pub connections: usize,
    /// Client threads, each with its own runtime.
    pub threads: usize,
    /// The load phase's length in seconds, when it was given as a duration.
    pub duration_s: Option<f64>,
    /// The load phase's request count, when it was given as a count.
    pub requests: Option<u64>,
    /// Size of the key space.
    pub keys: u64,
    /// Length of each written value (a JSON string of this many characters).
    pub value_size: usize,
    /// Share of reads in the mixed workload.
    pub read_ratio: Option<f64>,
    /// Whether each connection was a causal session.
    pub sessions: bool,
    /// Keys per operation: above 1, atomic writes and snapshot reads.
    #[serde(default = "one")]
    pub txn_keys: usize,
}

fn one() -> usize {
    1
}

/// Throughput, latency and errors of the load phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Keys written before the load phase so that reads find values.
    pub populated: u64,
    /// Requests that got an answer or failed: `ok + errors`.
    pub requests: u64,
    /// Requests answered with a 2xx.
    pub ok: u64,
    /// Requests that failed, all kinds together.
    pub errors: u64,
    /// Failed requests by kind: `http_<status>`, `timeout`, `connect`, `io`, `bad_answer`.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first few error messages, to tell what went wrong.
    pub error_samples: Vec<String>,
    /// Seconds from the start of the load phase to its last answer.
    pub elapsed_s: f64,
    /// Successful requests per second: `ok / elapsed_s`.
    pub rate: f64,
    /// Latency of every successful request.
    pub latency_ms: Option<Percentiles>,
    /// Latency of successful reads (mixed workload only).
    pub read_latency_ms: Option<Percentiles>,
    /// Latency of successful writes (mixed workload only).
    pub write_latency_ms: Option<Percentiles>,
    /// CPU time this client (every thread of kvctl) used during the load
    /// phase, in seconds; absent where `/proc` cannot tell.
    #[serde(default)]
    pub client_cpu_s: Option<f64>,
    /// That CPU time over the requests: what one request cost the client.
    #[serde(default)]
    pub client_cpu_us_per_request: Option<f64>,
}

/// The visibility lag: from a write's acknowledgement to the value being
/// readable at another node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LagReport {
    /// Writes made (each one read back at every other node).
    pub samples: u64,
    /// The lag at every other node, all samples together.
    pub all_ms: Option<Percentiles>,
    /// The lag per receiving node, by node id.
    pub per_node_ms: BTreeMap<String, Percentiles>,
    /// (sample, node) pairs whose value did not become visible within the timeout.
    pub not_visible: u64,
    /// Writes or polls that failed, by kind (as in [`LoadReport::errors_by_kind`]).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Mean number of reads per (sample, node) until the value was visible.
    pub mean_polls: f64,
}

/// A latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    /// The distribution of a histogram of microseconds; `None` when it is empty.
    pub fn from_histogram(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Some(Self {
            count: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        })
    }

    /// The percentiles in order: p50, p90, p99, p99.9, max.
    pub fn ladder(&self) -> [f64; 5] {
        [self.p50, self.p90, self.p99, self.p999, self.max]
    }

    /// True when p50 <= p90 <= p99 <= p99.9 <= max.
    pub fn is_ordered(&self) -> bool {
        self.ladder().windows(2).all(|w| w[0] <= w[1])
    }
}

/// `rate / ceiling`, e.g. a workload's rate over the `/health` rate of the same
/// run; `None` without a positive ceiling.
pub fn ratio(rate: f64, ceiling: f64) -> Option<f64> {
    (ceiling > 0.0 && ceiling.is_finite() && rate.is_finite()).then(|| rate / ceiling)
}

/// Counts errors by kind and keeps the first few messages.
#[derive(Clone, Debug, Default)]
pub(crate) struct ErrorTally {
    pub by_kind: BTreeMap<String, u64>,
    pub samples: Vec<String>,
}

/// How many error messages a report keeps.
const ERROR_SAMPLES: usize = 5;

impl ErrorTally {
    pub fn add(&mut self, kind: &str, message: impl FnOnce() -> String) {
        match self.by_kind.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.by_kind.insert(kind.to_owned(), 1);
            }
        }
        if self.samples.len() < ERROR_SAMPLES {
            self.samples.push(message());
        }
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn merge(&mut self, other: ErrorTally) {
        for (kind, n) in other.by_kind {
            *self.by_kind.entry(kind).or_default() += n;
        }
        for sample in other.samples {
            if self.samples.len() < ERROR_SAMPLES {
                self.samples.push(sample);
            }
        }
    }
}

impl BenchReport {
    /// Requests that failed and lag samples that never became visible.
    pub fn failures(&self) -> u64 {
        let load = self.load.as_ref().map_or(0, |l| l.errors);
        let lag = self.lag.as_ref().map_or(0, |l| {
            l.not_visible + l.errors_by_kind.values().sum::<u64>()
        });
        load + lag
    }

    /// The report for people: what ran, the rate, the latency percentiles, the
    /// errors and the lag.
    pub fn to_text(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let nodes = format!("{} node(s) ({})", s.nodes.len(), s.node_ids.join(", "));
        if self.load.is_some() {
            let length = match (s.duration_s, s.requests) {
                (_, Some(n)) => format!("{n} requests"),
                (Some(d), None) => format!("{d}s"),
                (None, None) => String::new(),
            };
            let _ = writeln!(
                out,
                "{} on {nodes}, {} API, {} connection(s), {} thread(s), {length}{}",
                s.workload,
                s.api,
                s.connections,
                s.threads,
                if s.sessions { ", sessions" } else { "" },
            );
        } else {
            let _ = writeln!(out, "visibility lag on {nodes}, {} API", s.api);
        }
        if let Some(load) = &self.load {
            if load.populated > 0 {
                let _ = writeln!(out, "populated {} keys first", load.populated);
            }
            let _ = writeln!(
                out,
                "{} requests in {:.2}s: {:.0} req/s, {} ok, {} errors",
                load.requests, load.elapsed_s, load.rate, load.ok, load.errors
            );
            if let (Some(cpu), Some(per)) = (load.client_cpu_s, load.client_cpu_us_per_request) {
                let _ = writeln!(
                    out,
                    "this client used {cpu:.2}s of CPU: {per:.1} µs per request"
                );
            }
            let rows = [
                ("all", &load.latency_ms),
                ("reads", &load.read_latency_ms),
                ("writes", &load.write_latency_ms),
            ];
            let present: Vec<_> = rows
                .iter()
                .filter_map(|(n, p)| Some((*n, p.as_ref().copied()?)))
                .collect();
            if !present.is_empty() {
                out.push_str(&percentile_table("latency ms", &present));
            }
            write_errors(&mut out, &load.errors_by_kind, &load.error_samples);
        }
        if let Some(lag) = &self.lag {
            let _ = writeln!(
                out,
                "visibility lag: {} writes, {} not visible in time, {:.1} reads per node until visible",
                lag.samples, lag.not_visible, lag.mean_polls
            );
            let mut rows: Vec<(&str, Percentiles)> = lag
                .per_node_ms
                .iter()
                .map(|(node, p)| (node.as_str(), *p))
                .collect();
            if let Some(all) = lag.all_ms {
                rows.push(("all", all));
            }
            if !rows.is_empty() {
                out.push_str(&percentile_table("lag ms", &rows));
            }
            write_errors(&mut out, &lag.errors_by_kind, &lag.error_samples);
        }
        out
    }
}

fn percentile_table(title: &str, rows: &[(&str, Percentiles)]) -> String {
    let mut out = format!(
        "{title:<11} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "count", "mean", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, p) in rows {
        let _ = writeln!(
            out,
            "{name:<11} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.count, p.mean, p.p50, p.p90, p.p99, p.p999, p.max
        );
    }
    out
}

fn write_errors(out: &mut String, by_kind: &BTreeMap<String, u64>, samples: &[String]) {
    if by_kind.is_empty() {
        return;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let _ = writeln!(out, "errors: {}", kinds.join(" "));
    for sample in samples {
        let _ = writeln!(out, "  e.g. {sample}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn histogram_of(micros: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = new_histogram();
        for m in micros {
            record(&mut h, Duration::from_micros(m));
        }
        h
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=1000 µs: the p-th percentile is about p * 10 µs.
        let p = Percentiles::from_histogram(&histogram_of(1..=1000)).unwrap();
        assert_eq!(p.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.01;
        assert!(close(p.p50, 0.5), "{p:?}");
        assert!(close(p.p90, 0.9), "{p:?}");
        assert!(close(p.p99, 0.99), "{p:?}");
        assert!(close(p.p999, 0.999), "{p:?}");
        assert!(close(p.max, 1.0), "{p:?}");
        assert!(close(p.mean, 0.5005), "{p:?}");
        assert!(p.is_ordered());
    }

    #[test]
    fn empty_histograms_have_no_percentiles() {
        assert_eq!(Percentiles::from_histogram(&new_histogram()), None);
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut h = new_histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(10 * 3600));
        assert_eq!(h.len(), 2);
        let p = Percentiles::from_histogram(&h).unwrap();
        assert!(p.max >= 3_599_000.0, "{p:?}");
        assert!(p.p50 <= 0.002, "{p:?}");
    }

    #[test]
    fn a_single_outlier_shows_at_the_top_only() {
        let p = Percentiles::from_histogram(&histogram_of(
            std::iter::repeat_n(100, 9999).chain([50_000]),
        ))
        .unwrap();
        assert!((p.p999 - 0.1).abs() < 0.001, "{p:?}");
        assert!((p.max - 50.0).abs() < 0.1, "{p:?}");
        assert!(p.is_ordered());
    }

    #[test]
    fn unordered_percentiles_are_detected() {
        let mut p = Percentiles::from_histogram(&histogram_of([1, 2, 3])).unwrap();
        p.p90 = p.max + 1.0;
        assert!(!p.is_ordered());
    }

    #[test]
    fn ratios_need_a_positive_ceiling() {
        assert_eq!(ratio(500.0, 1000.0), Some(0.5));
        assert_eq!(ratio(1500.0, 1000.0), Some(1.5));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, -1.0), None);
        assert_eq!(ratio(1.0, f64::NAN), None);
    }

    #[test]
    fn the_tally_counts_kinds_and_keeps_a_few_messages() {
        let mut a = ErrorTally::default();
        for i in 0..7 {
            a.add("timeout", || format!("t{i}"));
        }
        let mut b = ErrorTally::default();
        b.add("http_503", || "busy".into());
        a.merge(b);
        assert_eq!(a.total(), 8);
        assert_eq!(a.by_kind["timeout"], 7);
        assert_eq!(a.by_kind["http_503"], 1);
        assert_eq!(a.samples.len(), ERROR_SAMPLES);
    }

    fn sample_report() -> BenchReport {
        let p = Percentiles::from_histogram(&histogram_of([100, 200, 300])).unwrap();
        BenchReport {
            settings: Settings {
                workload: "mixed".into(),
                api: "compat".into(),
                nodes: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
                node_ids: vec!["node1".into(), "node2".into()],
                connections: 4,
                threads: 1,
                duration_s: None,
                requests: Some(3),
                keys: 10,
                value_size: 8,
                read_ratio: Some(0.9),
                sessions: true,
                txn_keys: 1,
            },
            load: Some(LoadReport {
                populated: 10,
                requests: 4,
                ok: 3,
                errors: 1,
                errors_by_kind: [("http_503".to_string(), 1)].into_iter().collect(),
                error_samples: vec!["503 busy".into()],
                elapsed_s: 0.5,
                rate: 6.0,
                latency_ms: Some(p),
                read_latency_ms: Some(p),
                write_latency_ms: None,
                client_cpu_s: Some(0.03),
                client_cpu_us_per_request: Some(10_000.0),
            }),
            lag: Some(LagReport {
                samples: 2,
                all_ms: Some(p),
                per_node_ms: [("node2".to_string(), p)].into_iter().collect(),
                not_visible: 1,
                errors_by_kind: BTreeMap::new(),
                error_samples: vec![],
                mean_polls: 1.5,
            }),
        }
    }

    #[test]
    fn reports_survive_a_json_round_trip() {
        let report = sample_report();
        let json = serde_json::to_string(&report).unwrap();
        let back: BenchReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(report.failures(), 2);
    }

    #[test]
    fn the_text_report_names_the_figures() {
        let text = sample_report().to_text();
        for needle in [
            "mixed on 2 node(s) (node1, node2)",
            "3 requests",
            "sessions",
            "populated 10 keys",
            "6 req/s",
            "0.03s of CPU: 10000.0 µs per request",
            "p99.9",
            "reads",
            "errors: http_503=1",
            "e.g. 503 busy",
            "1 not visible",
            "node2",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert!(!text.contains("writes "), "{text}");
    }
}
