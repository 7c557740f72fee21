//! The arguments of `kvctl bench`, and how they become a [`BenchConfig`].

use std::time::Duration;

use clap::ValueEnum;

use super::{BenchConfig, BenchError, Stop, Workload};
use crate::check::Api;
use crate::Transport;

/// Client threads by default. One: on a 2-core machine shared with three local
/// nodes, a second thread measured no higher rate (its CPU is taken from the
/// nodes) and a longer p99; most of the client's time is the kernel's TCP work.
pub const DEFAULT_THREADS: usize = 1;

/// The load phase's length when neither --duration nor --requests is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// The workload names of the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// POST /write (or PUT /v1/kv/KEY) of random keys.
    Write,
    /// GET /read?key= (or GET /v1/kv/KEY) of random keys, written first.
    Read,
    /// Reads and writes, --read-ratio of them reads.
    Mixed,
    /// GET /health: the HTTP ceiling of this machine, nodes and client together.
    Health,
}

/// The API names of the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ApiArg {
    /// The prototype's: POST /write, GET /read?key= (reads take no context).
    Compat,
    /// PUT and GET /v1/kv/KEY, contexts on both.
    Native,
}

/// `kvctl bench`: measure throughput, latency percentiles and visibility lag.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// What to send: write, read, mixed or health. Default: write; with --lag
    /// and no workload, only the lag is measured.
    #[arg(value_enum)]
    pub workload: Option<WorkloadArg>,

    /// Concurrent connections, each a keep-alive connection with one request in
    /// flight; spread round-robin over the nodes.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub connections: usize,

    /// How long the load runs, e.g. 10s or 1m [default: 10s].
    #[arg(long, short = 'd', value_parser = humantime::parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,

    /// Stop after this many requests (all connections together) instead of a duration.
    #[arg(long, short = 'r')]
    pub requests: Option<u64>,

    /// Size of the key space: keys bench-0 .. bench-(N-1), chosen at random.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,

    /// Length of each written value, a JSON string of this many characters.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    pub value_size: usize,

    /// Share of reads in the mixed workload, 0 to 1 [default: 0.9].
    #[arg(long)]
    pub read_ratio: Option<f64>,

    /// Make each connection a causal session: it sends the merge of the clocks it
    /// received as the context of its next request, as real clients do.
    #[arg(long)]
    pub sessions: bool,

    /// The API of reads and writes.
    #[arg(long, value_enum, default_value_t = ApiArg::Compat)]
    pub api: ApiArg,

    /// Keys per operation. Above 1, each write is an atomic write of that many
    /// distinct random keys (POST /v1/txn/write) and each read a snapshot read
    /// of that many (POST /v1/txn/read); needs --api native.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub txn_keys: usize,

    /// Client threads, each with its own runtime and a share of the connections
    /// (more help only when the client has cores the nodes do not use).
    #[arg(long, default_value_t = DEFAULT_THREADS)]
    pub threads: usize,

    /// Do not write the keys before a read or mixed workload (they exist already).
    #[arg(long)]
    pub no_populate: bool,

    /// Measure visibility lag after the workload, at light load: write a fresh
    /// key at one node, then read it at every other node back to back (no
    /// sleep) until it shows; the time from the write's answer to the value.
    #[arg(long)]
    pub lag: bool,

    /// Writes to time with --lag, one at a time, at each node in turn.
    #[arg(long, default_value_t = 200)]
    pub lag_samples: u64,

    /// How long a value may take to show at a node before it counts as not visible.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub lag_timeout: Duration,

    /// No progress bar (it is shown only when standard error is a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Seed of the random key choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl BenchArgs {
    /// The run these arguments ask for, against `nodes`, with the timeout and
    /// token of `transport`.
    pub fn to_config(
        &self,
        nodes: Vec<String>,
        transport: &Transport,
    ) -> Result<BenchConfig, BenchError> {
        let workload = match (self.workload, self.lag) {
            (None, true) => None,
            (None, false) | (Some(WorkloadArg::Write), _) => Some(Workload::Write),
            (Some(WorkloadArg::Read), _) => Some(Workload::Read),
            (Some(WorkloadArg::Health), _) => Some(Workload::Health),
            (Some(WorkloadArg::Mixed), _) => Some(Workload::Mixed {
                read_ratio: self.read_ratio.unwrap_or(0.9),
            }),
        };
        if self.read_ratio.is_some() && !matches!(workload, Some(Workload::Mixed { .. })) {
            return Err(BenchError::Invalid(
                "--read-ratio applies to the mixed workload only".into(),
            ));
        }
        let stop = match (self.duration, self.requests) {
            (_, Some(n)) => Stop::Requests(n),
            (Some(d), None) => Stop::Duration(d),
            (None, None) => Stop::Duration(DEFAULT_DURATION),
        };
        let config = BenchConfig {
            nodes: nodes
                .iter()
                .map(|n| n.trim().trim_end_matches('/').to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            workload,
            api: match self.api {
                ApiArg::Compat => Api::Compat,
                ApiArg::Native => Api::Native,
            },
            connections: self.connections,
            threads: self.threads,
            stop,
            keys: self.keys,
            value_size: self.value_size,
            sessions: self.sessions,
            txn_keys: self.txn_keys,
            populate: !self.no_populate,
            lag_samples: if self.lag { self.lag_samples } else { 0 },
            lag_timeout: self.lag_timeout,
            timeout: transport.timeout(),
            token: transport.token().map(str::to_owned),
            seed: self.seed,
            progress: !self.quiet,
        };
        if self.lag && self.lag_samples == 0 {
            return Err(BenchError::Invalid(
                "--lag-samples must be at least 1".into(),
            ));
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.args
            .to_config(
                vec!["http://a:1/".into(), " http://b:2".into(), "".into()],
                &Transport::new()
                    .with_timeout(Duration::from_secs(3))
                    .with_token("t0123456789abcdef"),
            )
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_write_for_ten_seconds() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.workload, Some(Workload::Write));
        assert_eq!(c.stop, Stop::Duration(Duration::from_secs(10)));
        assert_eq!(c.connections, 32);
        assert_eq!(c.threads, DEFAULT_THREADS);
        assert_eq!(c.api, Api::Compat);
        assert_eq!(c.nodes, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.token.as_deref(), Some("t0123456789abcdef"));
        assert_eq!(c.lag_samples, 0);
        assert!(c.populate && c.progress && !c.sessions);
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = parse(&[
            "mixed",
            "-c",
            "64",
            "--requests",
            "500",
            "--keys",
            "7",
            "--value-size",
            "3",
            "--read-ratio",
            "0.5",
            "--sessions",
            "--api",
            "native",
            "--threads",
            "2",
            "--no-populate",
            "--lag",
            "--lag-samples",
            "9",
            "--lag-timeout",
            "2s",
            "--quiet",
            "--seed",
            "4",
        ])
        .unwrap();
        assert_eq!(c.workload, Some(Workload::Mixed { read_ratio: 0.5 }));
        assert_eq!(c.stop, Stop::Requests(500));
        assert_eq!(
            (c.connections, c.threads, c.keys, c.value_size),
            (64, 2, 7, 3)
        );
        assert!(c.sessions && !c.populate && !c.progress);
        assert_eq!(c.api, Api::Native);
        assert_eq!(c.lag_samples, 9);
        assert_eq!(c.lag_timeout, Duration::from_secs(2));
        assert_eq!(c.seed, 4);
    }

    #[test]
    fn lag_alone_runs_no_workload() {
        let c = parse(&["--lag"]).unwrap();
        assert_eq!(c.workload, None);
        assert_eq!(c.lag_samples, 200);
        let c = parse(&["health", "--lag", "-d", "1m"]).unwrap();
        assert_eq!(c.workload, Some(Workload::Health));
        assert_eq!(c.stop, Stop::Duration(Duration::from_secs(60)));
    }

    #[test]
    fn mixed_reads_ninety_percent_by_default() {
        let c = parse(&["mixed"]).unwrap();
        assert_eq!(c.workload, Some(Workload::Mixed { read_ratio: 0.9 }));
    }

    #[test]
    fn bad_arguments_are_refused() {
        for (args, needle) in [
            (
                &["--duration", "5s", "--requests", "5"][..],
                "cannot be used with",
            ),
            (&["--duration", "soon"][..], "invalid value"),
            (&["fast"][..], "invalid value"),
            (&["write", "--read-ratio", "0.5"][..], "mixed workload only"),
            (&["mixed", "--read-ratio", "2"][..], "between 0 and 1"),
            (&["-c", "0"][..], "--connections"),
            (&["--keys", "0"][..], "--keys"),
            (&["--lag", "--lag-samples", "0"][..], "--lag-samples"),
            (&["--requests", "-3"][..], "unexpected argument"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
        }
    }
}
