//! `kvctl bench`: throughput, latency and visibility lag of a running cluster.
//!
//! A run has up to four phases:
//!
//! 1. **Check**: `GET /health` at every node, which also names them.
//! 2. **Populate** (read and mixed workloads): every key of the key space
//!    (`bench-0` ... `bench-<keys-1>`) is written once, so that reads find values.
//! 3. **Load**: `connections` workers, each with its own keep-alive connection to
//!    one node (worker `w` talks to node `w mod nodes`, so connections are spread
//!    round-robin), send requests back to back until the duration is up or the
//!    request count is reached. Workers are spread over `threads` OS threads,
//!    each with its own actix runtime; connections are opened before the clock
//!    starts. A request's latency runs from just before it is sent to when its
//!    whole answer has been read, and goes into an HDR histogram (microsecond
//!    resolution, 3 significant digits); failed requests are counted by kind
//!    instead. With `sessions`, each connection is a causal session, as
//!    [`crate::Session`] is: it sends the merge of the clocks of its answers as the
//!    `context` of its next request (the prototype's `GET /read` takes no context,
//!    so there only writes carry it).
//! 4. **Lag** (`--lag`): at light load, one write at a time, the time from a
//!    write's acknowledgement to its value being readable at each other node
//!    (see the `lag` module for how it polls).
//!
//! The result is a [`BenchReport`], printed as text or as one JSON object.
//!
//! # What is left out
//!
//! - The load is closed-loop: a slow answer delays its connection's next request,
//!   so the percentiles describe the answers the nodes gave, not a fixed offered
//!   rate (no coordinated-omission correction).
//! - Plain HTTP/1.1 only, one request in flight per connection, no pipelining.
//! - The client shares the machine with the nodes when they run locally, so its
//!   own CPU use is part of every figure; the `/health` workload measures that
//!   ceiling.

mod cli;
mod conn;
mod cpu;
mod lag;
mod load;
mod report;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub use cli::{ApiArg, BenchArgs, WorkloadArg, DEFAULT_THREADS};
pub use cpu::{cpu_seconds, own_cpu_seconds, parse_cpu_ticks};
pub use report::{ratio, BenchReport, LagReport, LoadReport, Percentiles, Settings};

use crate::check::Api;

/// What the load phase sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Workload {
    /// Writes of random keys.
    Write,
    /// Reads of random keys (after populating them).
    Read,
    /// Reads with probability `read_ratio`, writes otherwise.
    Mixed {
        /// Share of reads, 0 to 1.
        read_ratio: f64,
    },
    /// `GET /health`: the HTTP ceiling of the nodes and the client.
    Health,
}

impl Workload {
    /// The workload's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::Mixed { .. } => "mixed",
            Workload::Health => "health",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Workload::Read | Workload::Mixed { .. })
    }
}

/// When the load phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long (requests in flight then still finish and count).
    Duration(Duration),
    /// After this many requests, all connections together.
    Requests(u64),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The nodes' base URLs.
    pub nodes: Vec<String>,
    /// The load phase's workload; `None` runs the lag phase only.
    pub workload: Option<Workload>,
    /// The API reads and writes use.
    pub api: Api,
    /// Concurrent connections, each with one request in flight.
    pub connections: usize,
    /// Client threads (at most `connections`).
    pub threads: usize,
    /// When the load phase ends.
    pub stop: Stop,
    /// Size of the key space.
    pub keys: u64,
    /// Length of each written value: a JSON string of this many characters.
    pub value_size: usize,
    /// Each connection is a causal session.
    pub sessions: bool,
    /// Keys per operation: above 1, writes are atomic writes and reads
    /// snapshot reads of that many keys (native API).
    pub txn_keys: usize,
    /// Write every key before a read or mixed workload.
    pub populate: bool,
    /// Lag samples to take after the load phase; 0 for none.
    pub lag_samples: u64,
    /// How long a value may take to become visible at a node.
    pub lag_timeout: Duration,
    /// Timeout of each request.
    pub timeout: Duration,
    /// Bearer token of the client API.
    pub token: Option<String>,
    /// Seed of the random key choices.
    pub seed: u64,
    /// Show a progress bar on standard error (only when it is a terminal).
    pub progress: bool,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The settings are not usable.
    #[error("{0}")]
    Invalid(String),
    /// A node could not be reached or refused a request it must accept
    /// (the check, or populating the keys).
    #[error(transparent)]
    Client(#[from] crate::Error),
    /// The benchmark itself failed (a thread could not run).
    #[error("{0}")]
    Failed(String),
}

impl BenchConfig {
    /// How the run's requests are sent: its timeout and token.
    pub fn transport(&self) -> crate::Transport {
        crate::Transport::new()
            .with_timeout(self.timeout)
            .with_optional_token(self.token.clone())
    }

    /// Checks the settings; the message says what to change.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |m: &str| Err(BenchError::Invalid(m.to_owned()));
        if self.nodes.is_empty() {
            return invalid("no node given (--node URL or KVCTL_NODES)");
        }
        if self.connections == 0 {
            return invalid("--connections must be at least 1");
        }
        if self.threads == 0 {
            return invalid("--threads must be at least 1");
        }
        if self.keys == 0 {
            return invalid("--keys must be at least 1");
        }
        if self.txn_keys == 0 {
            return invalid("--txn-keys must be at least 1");
        }
        if self.txn_keys > 1 && self.api != Api::Native {
            return invalid(
                "--txn-keys above 1 needs --api native (transactions are native routes)",
            );
        }
        if self.txn_keys as u64 > self.keys {
            return invalid("--txn-keys cannot be more than --keys (each key once per operation)");
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => return invalid("--duration must be positive"),
            Stop::Requests(0) => return invalid("--requests must be at least 1"),
            _ => {}
        }
        if let Some(Workload::Mixed { read_ratio }) = self.workload {
            if !(0.0..=1.0).contains(&read_ratio) {
                return invalid("--read-ratio must be between 0 and 1");
            }
        }
        if self.workload.is_none() && self.lag_samples == 0 {
            return invalid("nothing to measure: give a workload or --lag");
        }
        if self.lag_samples > 0 && self.nodes.len() < 2 {
            return invalid("--lag needs at least two nodes (--node URL, repeated)");
        }
        if self.lag_samples > 0 && self.lag_timeout.is_zero() {
            return invalid("--lag-timeout must be positive");
        }
        Ok(())
    }
}

/// Runs the benchmark and returns its report. Blocks the calling thread: every
/// phase runs on threads of its own, each with its own actix runtime, so this
/// may be called from anywhere, but not from an async task that shares its
/// thread with others.
pub fn run(config: &BenchConfig) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let threads = config.threads.min(config.connections);
    let node_ids = check_nodes(config)?;
    let plan = Arc::new(load::Plan {
        nodes: config.nodes.clone(),
        api: config.api,
        workload: config.workload.unwrap_or(Workload::Health),
        stop: config.stop,
        keys: config.keys,
        value: serde_json::to_string(&"x".repeat(config.value_size)).expect("strings serialise"),
        sessions: config.sessions,
        txn_keys: config.txn_keys,
        transport: config.transport(),
        seed: config.seed,
    });

    let load = match config.workload {
        None => None,
        Some(workload) => {
            let populated = if workload.reads() && config.populate {
                populate(config, &plan)?
            } else {
                0
            };
            Some(load_phase(config, &plan, threads, populated)?)
        }
    };
    let lag = if config.lag_samples > 0 {
        Some(lag_phase(config, node_ids.clone())?)
    } else {
        None
    };
    let (duration_s, requests) = match config.stop {
        _ if config.workload.is_none() => (None, None),
        Stop::Duration(d) => (Some(d.as_secs_f64()), None),
        Stop::Requests(n) => (None, Some(n)),
    };
    Ok(BenchReport {
        settings: Settings {
            workload: config.workload.map_or("lag", Workload::name).to_owned(),
            api: match config.api {
                Api::Compat => "compat",
                Api::Native => "native",
            }
            .to_owned(),
            nodes: config.nodes.clone(),
            node_ids,
            connections: config.connections,
            threads,
            duration_s,
            requests,
            keys: config.keys,
            value_size: config.value_size,
            read_ratio: match config.workload {
                Some(Workload::Mixed { read_ratio }) => Some(read_ratio),
                _ => None,
            },
            sessions: config.sessions,
            txn_keys: config.txn_keys,
        },
        load,
        lag,
    })
}

/// Runs `make()`'s future on a new thread with its own actix runtime.
fn on_runtime<F, Fut, T>(name: &str, make: F) -> Result<JoinHandle<T>, BenchError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || actix_rt::System::new().block_on(make()))
        .map_err(|e| BenchError::Failed(format!("cannot start a thread: {e}")))
}

fn join<T>(handle: JoinHandle<T>) -> Result<T, BenchError> {
    handle
        .join()
        .map_err(|_| BenchError::Failed("a benchmark thread panicked".into()))
}

/// `GET /health` at every node; returns their ids.
fn check_nodes(config: &BenchConfig) -> Result<Vec<String>, BenchError> {
    let (nodes, transport) = (config.nodes.clone(), config.transport());
    let handle = on_runtime("bench-check", move || async move {
        let agent = transport.agent();
        let mut ids = Vec::new();
        let mut failed = Vec::new();
        for node in &nodes {
            match agent.health(node).await {
                Ok(health) => ids.push(health.node),
                Err(e) => failed.push((node.clone(), e.to_string())),
            }
        }
        if failed.is_empty() {
            Ok(ids)
        } else {
            Err(crate::Error::Unreachable(failed))
        }
    })?;
    Ok(join(handle)??)
}

fn populate(config: &BenchConfig, plan: &Arc<load::Plan>) -> Result<u64, BenchError> {
    let counters = Arc::new(load::Counters::default());
    let bar = progress_bar(config, config.keys, "populate");
    let (plan, shared) = (plan.clone(), counters.clone());
    let connections = config.connections.min(64);
    let handle = on_runtime("bench-populate", move || async move {
        load::populate(&plan, connections, &shared).await
    })?;
    while !handle.is_finished() {
        bar.set_position(counters.done.load(Relaxed));
        thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    Ok(join(handle)??)
}

fn load_phase(
    config: &BenchConfig,
    plan: &Arc<load::Plan>,
    threads: usize,
    populated: u64,
) -> Result<LoadReport, BenchError> {
    let counters = Arc::new(load::Counters::default());
    let gate = Arc::new(load::Gate::default());
    let mut handles = Vec::new();
    for t in 0..threads {
        let workers: Vec<usize> = (t..config.connections).step_by(threads).collect();
        let (plan, counters, shared) = (plan.clone(), counters.clone(), gate.clone());
        let spawned = thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || load::run_thread(plan, counters, workers, shared));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                gate.open(false);
                return Err(BenchError::Failed(format!("cannot start a thread: {e}")));
            }
        }
    }
    while !gate.wait_for(threads, Duration::from_millis(100)) {
        if handles.iter().any(|h| h.is_finished()) {
            gate.open(false);
            return Err(BenchError::Failed(
                "a benchmark thread ended before the run started".into(),
            ));
        }
    }
    gate.open(true);
    let started = Instant::now();
    let cpu_before = cpu::own_cpu_seconds();
    let (length, unit) = match config.stop {
        Stop::Duration(d) => (d.as_millis() as u64, Unit::Millis),
        Stop::Requests(n) => (n, Unit::Requests),
    };
    let bar = progress_bar(config, length, config.workload.map_or("", Workload::name));
    let mut rate = RateMeter::new(started);
    while !handles.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(100));
        let done = counters.done.load(Relaxed);
        let position = match unit {
            Unit::Millis => started.elapsed().as_millis() as u64,
            Unit::Requests => done,
        };
        bar.set_position(position.min(length));
        bar.set_message(format!(
            "{done} req  {:.0} req/s  {} errors",
            rate.update(done),
            counters.errors.load(Relaxed)
        ));
    }
    bar.finish_and_clear();
    let mut stats = load::Stats::new();
    for handle in handles {
        stats.merge(join(handle)?);
    }
    let client_cpu_s = cpu_before
        .zip(cpu::own_cpu_seconds())
        .map(|(before, after)| (after - before).max(0.0));
    let elapsed = stats
        .finished
        .map_or(Duration::ZERO, |f| f.saturating_duration_since(started))
        .as_secs_f64();
    let errors = stats.errors.total();
    let mixed = matches!(config.workload, Some(Workload::Mixed { .. }));
    Ok(LoadReport {
        populated,
        requests: stats.ok + errors,
        ok: stats.ok,
        errors,
        errors_by_kind: stats.errors.by_kind,
        error_samples: stats.errors.samples,
        elapsed_s: elapsed,
        rate: if elapsed > 0.0 {
            stats.ok as f64 / elapsed
        } else {
            0.0
        },
        latency_ms: Percentiles::from_histogram(&stats.all),
        read_latency_ms: mixed
            .then(|| Percentiles::from_histogram(&stats.reads))
            .flatten(),
        write_latency_ms: mixed
            .then(|| Percentiles::from_histogram(&stats.writes))
            .flatten(),
        client_cpu_s,
        client_cpu_us_per_request: client_cpu_s
            .filter(|_| stats.ok + errors > 0)
            .map(|s| s * 1e6 / (stats.ok + errors) as f64),
    })
}

fn lag_phase(config: &BenchConfig, node_ids: Vec<String>) -> Result<LagReport, BenchError> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
        ^ config.seed;
    let plan = lag::LagPlan {
        nodes: config.nodes.clone(),
        node_ids,
        api: config.api,
        samples: config.lag_samples,
        visible_within: config.lag_timeout,
        transport: config.transport(),
        run_id: format!("{run_id:x}"),
    };
    let done = Arc::new(AtomicU64::new(0));
    let shared = done.clone();
    let bar = progress_bar(config, config.lag_samples, "lag");
    let handle = on_runtime("bench-lag", move || async move {
        lag::measure(&plan, &shared).await
    })?;
    while !handle.is_finished() {
        bar.set_position(done.load(Relaxed));
        thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
    join(handle)?.map_err(|f| BenchError::Failed(f.message))
}

#[derive(Clone, Copy)]
enum Unit {
    Millis,
    Requests,
}

/// A progress bar on standard error, hidden unless it is a terminal and progress is on.
fn progress_bar(config: &BenchConfig, length: u64, prefix: &str) -> ProgressBar {
    if !config.progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(length);
    let style = ProgressStyle::with_template("{prefix:>8} {elapsed:>4} [{bar:30}] {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}

/// The recent request rate, smoothed over about a second.
struct RateMeter {
    last: Instant,
    last_done: u64,
    rate: f64,
}

impl RateMeter {
    fn new(now: Instant) -> Self {
        Self {
            last: now,
            last_done: 0,
            rate: 0.0,
        }
    }

    fn update(&mut self, done: u64) -> f64 {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        if dt >= 0.05 {
            let current = done.saturating_sub(self.last_done) as f64 / dt;
            self.rate = if self.rate == 0.0 {
                current
            } else {
                0.7 * self.rate + 0.3 * current
            };
            self.last = now;
            self.last_done = done;
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn config() -> BenchConfig {
        BenchConfig {
            nodes: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            workload: Some(Workload::Write),
            api: Api::Compat,
            connections: 4,
            threads: 1,
            stop: Stop::Requests(10),
            keys: 10,
            value_size: 10,
            sessions: false,
            txn_keys: 1,
            populate: true,
            lag_samples: 0,
            lag_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            token: None,
            seed: 1,
            progress: false,
        }
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_to_change() {
        type Change = fn(&mut BenchConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.nodes.clear(), "no node"),
            (|c| c.connections = 0, "--connections"),
            (|c| c.threads = 0, "--threads"),
            (|c| c.keys = 0, "--keys"),
            (|c| c.stop = Stop::Requests(0), "--requests"),
            (|c| c.stop = Stop::Duration(Duration::ZERO), "--duration"),
            (
                |c| c.workload = Some(Workload::Mixed { read_ratio: 1.5 }),
                "--read-ratio",
            ),
            (|c| c.workload = None, "nothing to measure"),
            (
                |c| {
                    c.lag_samples = 5;
                    c.nodes.truncate(1);
                },
                "two nodes",
            ),
        ];
        for (change, needle) in cases {
            let mut c = config();
            change(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
        config().validate().unwrap();
    }

    #[test]
    fn an_unreachable_node_is_named() {
        let mut c = config();
        // Port 1 on loopback refuses connections.
        c.nodes = vec!["http://127.0.0.1:1".into()];
        match run(&c) {
            Err(BenchError::Client(crate::Error::Unreachable(tried))) => {
                assert_eq!(tried[0].0, "http://127.0.0.1:1");
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }

    #[test]
    fn the_rate_meter_smooths() {
        let start = Instant::now() - Duration::from_secs(1);
        let mut meter = RateMeter::new(start);
        let first = meter.update(1000);
        assert!(first > 900.0 && first < 1100.0, "{first}");
    }
}
