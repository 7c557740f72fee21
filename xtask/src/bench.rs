//! `cargo xtask bench`: the benchmark suite against a fresh local cluster.
//!
//! It builds `kvnode` and `kvctl` in release mode, starts three nodes on free
//! loopback ports with `durability = "fsync"` (or the `--storage` chosen) and their data in
//! `target/bench/data` (wiped first; each node logs to `target/bench/nodeI.log`),
//! waits until every node answers `/health`, and runs the suite through the
//! `kvctl bench` binary (`-o json`), one step after the other:
//!
//! | step | what |
//! |---|---|
//! | `health-64` | `GET /health`, 64 connections: the HTTP ceiling of this run |
//! | `write-32`, `write-64` | `POST /write` of random keys |
//! | `read-32`, `read-64` | `GET /read` of random keys (written once first) |
//! | `mixed-64` | 90% reads, 10% writes |
//! | `native-write-64`, `txn-write-64` | `PUT /v1/kv/{key}`; atomic writes of 4 keys (`POST /v1/txn/write`) |
//! | `native-read-64`, `txn-read-64` | `GET /v1/kv/{key}`; snapshot reads of 4 keys (`POST /v1/txn/read`) |
//! | `health-64-end` | `GET /health` again, once the load steps are done |
//! | `lag` | visibility lag at light load: one write at a time, read back at the other nodes |
//! | `lag-loaded` | the same while 32 connections write (`kvctl bench write`) |
//!
//! Connections are spread round-robin over the three nodes. Every rate is also
//! given as a ratio to the ceiling of the same run: the mean rate of the two
//! `/health` steps, measured before and after the load, so that a change in
//! what else the machine runs shows as a gap between them rather than as a
//! shifted ratio. While each step
//! runs, every node's RSS is sampled from `/proc/<pid>/status` every 200 ms,
//! and the CPU time the nodes used during the step is read from
//! `/proc/<pid>/stat`: divided by the step's requests, it is the nodes' cost of
//! one request, a figure that varies less from run to run than rates do.
//!
//! `--storage none` (no fsync) and `--storage memory` (no disk at all) run the
//! same suite on nodes that keep less on disk, to show what durability costs.
//!
//! `--client wrk` sends the prototype API's health, write and read steps with
//! `wrk` instead of kvctl (see [`wrk`]): a load generator that costs less CPU
//! per request, whose cost the report shows beside the nodes' all the same.
//!
//! The results go to `target/bench/report.md` (printed at the end),
//! `target/bench/report.json` and `target/bench/bench.svg` (throughput and
//! latency percentiles). The nodes are stopped at the end, on an error and on
//! Ctrl-C, and get SIGTERM if xtask itself dies. The command fails when any
//! request failed (after writing the report).
//!
//! `--smoke` runs every step with a few hundred requests on debug builds (the
//! ones `cargo test` made), so that CI keeps the command working in seconds; its
//! figures mean nothing.

mod chart;
mod peers;
mod report;
mod wrk;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use kv_testkit::Cluster;
use kvctl::bench::BenchReport;

use self::report::{StepResult, SuiteReport};
use crate::cluster;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Length of each load step, e.g. 10s or 1m.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// A few hundred requests per step on debug builds: checks that the suite
    /// works (CI runs it), measures nothing.
    #[arg(long)]
    smoke: bool,
    /// Client threads of kvctl bench (default: kvctl's).
    #[arg(long)]
    threads: Option<usize>,
    /// Size of the key space of every step.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Length of each written value, in characters.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    value_size: usize,
    /// Writes timed by the lag step.
    #[arg(long, default_value_t = 200)]
    lag_samples: u64,
    /// Run only the steps whose name contains this (repeatable); the health
    /// step always runs, since every ratio refers to it.
    #[arg(long = "step", value_name = "NAME")]
    steps: Vec<String>,
    /// Run the nodes with an in-memory trace of this many records
    /// (`trace_buffer`), to measure what tracing costs.
    #[arg(long, value_name = "RECORDS")]
    trace: Option<usize>,
    /// The nodes' storage: `fsync` (durable, the default), `none` (on disk
    /// without fsync) or `memory` (no disk), to measure what durability costs.
    #[arg(long, value_enum, default_value_t = Storage::Fsync)]
    storage: Storage,
    /// Then run Redis (a primary and two replicas, appendfsync always) and
    /// etcd (3 members, puts through its JSON gateway sent by wrk) on this
    /// machine with the same connections, and give the store's rates as
    /// ratios to their SET, GET and PUT (needs apt-get install redis-server
    /// redis-tools etcd-server wrk; a peer not installed is skipped).
    #[arg(long)]
    peers: bool,
    /// Requests of each peer workload with --peers.
    #[arg(long, value_name = "N", default_value_t = 300_000)]
    peer_requests: u64,
    /// HTTP worker threads of each node (`workers`). By default the
    /// machine's cores over the nodes, at least one: the nodes share the
    /// machine, and more workers than cores only add context switches.
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// The load generator of the prototype API's health, write and read
    /// steps; the other steps always use kvctl bench.
    #[arg(long, value_enum, default_value_t = Client::Kvctl)]
    client: Client,
}

/// What sends the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Client {
    /// `kvctl bench`, this project's client (Rust, awc).
    Kvctl,
    /// `wrk` with a Lua script, one thread per node: several times less CPU
    /// per request than kvctl (apt-get install wrk).
    Wrk,
}

/// What the nodes keep on disk, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Storage {
    /// `durability = "fsync"`: every commit is synced before it is answered.
    Fsync,
    /// `durability = "none"`: commits go to disk without fsync.
    None,
    /// `memory = true`: nothing on disk.
    Memory,
}

impl Storage {
    fn name(self) -> &'static str {
        match self {
            Storage::Fsync => "fsync",
            Storage::None => "none",
            Storage::Memory => "memory",
        }
    }

    /// The node setting that selects it.
    fn env(self) -> (&'static str, String) {
        match self {
            Storage::Fsync | Storage::None => ("KVNODE_DURABILITY", self.name().to_string()),
            Storage::Memory => ("KVNODE_MEMORY", "true".to_string()),
        }
    }
}

/// One step of the suite.
#[derive(Clone, Copy, Debug)]
struct Step {
    name: &'static str,
    /// `kvctl bench`'s workload; `None` for the lag step.
    workload: Option<&'static str>,
    connections: usize,
    /// Through the native API rather than the prototype's.
    native: bool,
    /// Keys per operation: above 1, atomic writes and snapshot reads.
    txn_keys: usize,
    /// Connections of a write load kept running while the step runs (the
    /// lag under load); 0 for none.
    load: usize,
}

impl Step {
    /// A step of `workload` through the prototype's API, one key per request.
    const fn compat(name: &'static str, workload: &'static str, connections: usize) -> Self {
        Self {
            name,
            workload: Some(workload),
            connections,
            native: false,
            txn_keys: 1,
            load: 0,
        }
    }

    /// The visibility lag while `load` connections write (0: none).
    const fn lag(name: &'static str, load: usize) -> Self {
        Self {
            name,
            workload: None,
            connections: 1,
            native: false,
            txn_keys: 1,
            load,
        }
    }

    /// A step of `workload` through the native API, `txn_keys` keys per request.
    const fn native(
        name: &'static str,
        workload: &'static str,
        connections: usize,
        txn_keys: usize,
    ) -> Self {
        Self {
            name,
            workload: Some(workload),
            connections,
            native: true,
            txn_keys,
            load: 0,
        }
    }
}

const SUITE: &[Step] = &[
    Step::compat("health-64", "health", 64),
    Step::compat("write-32", "write", 32),
    Step::compat("write-64", "write", 64),
    Step::compat("read-32", "read", 32),
    Step::compat("read-64", "read", 64),
    Step::compat("mixed-64", "mixed", 64),
    Step::native("native-write-64", "write", 64, 1),
    Step::native("txn-write-64", "write", 64, TXN_KEYS),
    Step::native("native-read-64", "read", 64, 1),
    Step::native("txn-read-64", "read", 64, TXN_KEYS),
    Step::compat("health-64-end", "health", 64),
    Step::lag("lag", 0),
    Step::lag("lag-loaded", LOADED_LAG_CONNECTIONS),
];

/// Connections of the write load under which `lag-loaded` measures the lag:
/// half the `write-64` step's, a load the nodes take without queueing for
/// long.
const LOADED_LAG_CONNECTIONS: usize = 32;

/// Connections of the peers' workloads, as the store's `*-64` steps.
const PEER_CONNECTIONS: usize = 64;

/// Keys of each atomic write and snapshot read of the transaction steps.
const TXN_KEYS: usize = 4;
/// The steps whose mean rate every ratio refers to.
const CEILING_STEPS: &[&str] = &["health-64", "health-64-end"];
/// Nodes of the cluster.
const NODES: usize = 3;
/// How long a background write load runs before the step it loads starts.
const LOAD_RAMP: Duration = Duration::from_millis(500);
/// How often each node's RSS is sampled.
const RSS_EVERY: Duration = Duration::from_millis(200);
/// How long the nodes get to answer `/health` after they start.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Requests per step, keys and lag samples of `--smoke`.
const SMOKE_REQUESTS: u64 = 300;
const SMOKE_KEYS: u64 = 100;
const SMOKE_LAG_SAMPLES: u64 = 10;

pub(crate) fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    ensure!(!args.duration.is_zero(), "--duration must be positive");
    let steps = select_steps(&args.steps)?;
    if args.client == Client::Wrk {
        wrk::available().map_err(anyhow::Error::msg)?;
    }
    let release = !args.smoke;
    // One at a time: built together, their dependencies' features would be unified
    // and kvnode would be rebuilt differently from `cargo xtask cluster`'s.
    cluster::build(root, &["kvnode"], release)?;
    cluster::build(root, &["kvctl"], release)?;
    let bin = cluster::target_dir(root).join(if release { "release" } else { "debug" });
    let out = cluster::target_dir(root).join("bench");
    let data = out.join("data");
    cluster::remove_dir_if_exists(&data)?;
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    if let Err(err) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
        eprintln!("warning: cannot install the Ctrl-C handler ({err}); the nodes still stop when xtask exits");
    }

    let (storage_var, storage_value) = args.storage.env();
    let workers = node_workers(args.workers)?;
    let mut running = Running {
        cluster: None,
        sampler: None,
    };
    let cluster = running.cluster.insert(
        cluster::local_nodes(&bin.join("kvnode"), NODES)
            .dir(&out)
            .data_root(&data)
            .env("KVNODE_FAULTS", "false")
            .env("KVNODE_WORKERS", workers.to_string())
            .env(storage_var, storage_value)
            .envs(args.trace.map(|n| ("KVNODE_TRACE_BUFFER", n.to_string())))
            .no_wait()
            .start()?,
    );
    cluster
        .wait_ready_while(READY_DEADLINE, || !interrupted.load(Ordering::SeqCst))
        .map_err(|e| {
            if interrupted.load(Ordering::SeqCst) {
                anyhow::anyhow!("interrupted")
            } else {
                e.into()
            }
        })?;
    let urls = cluster.urls();
    let members: Vec<(String, u16)> = cluster
        .numbers()
        .map(|n| (cluster.id(n).to_owned(), cluster.port(n)))
        .collect();
    println!(
        "==> bench: {NODES} nodes ({}, {workers} HTTP worker(s) each) at {}, logs in {}",
        args.storage.name(),
        urls.join(" "),
        out.display()
    );

    let pids: Vec<u32> = cluster.numbers().filter_map(|n| cluster.pid(n)).collect();
    let samples = Arc::new(Mutex::new(Vec::new()));
    running.sampler = Some(Sampler::start(pids.clone(), samples.clone()));

    let suite = Suite {
        kvctl: bin.join("kvctl"),
        urls: urls.clone(),
        node_ids: members.iter().map(|(id, _)| id.clone()).collect(),
        args,
    };
    let mut results = Vec::new();
    let mut populated = false;
    for step in &steps {
        println!("==> {}", step.name);
        let reads = matches!(step.workload, Some("read" | "mixed"));
        let started = Instant::now();
        sample_now(&pids, &samples);
        let cpu_before = cpu_seconds(&pids);
        let background = (step.load > 0)
            .then(|| suite.start_load(step.load))
            .transpose()?;
        let report = match suite.wrk_load(step) {
            Some(load) => {
                if reads && !populated {
                    suite.populate(cluster, &interrupted)?;
                }
                wrk::run(&load, &out, || alive(cluster, &interrupted))
            }
            None => suite.run_step(step, reads && populated, cluster, &interrupted),
        };
        if let Some(mut load) = background {
            kill(&mut load);
        }
        let report = report?;
        let cpu_after = cpu_seconds(&pids);
        sample_now(&pids, &samples);
        let ended = Instant::now();
        populated |= reads;
        let rss = {
            let samples = samples.lock().unwrap_or_else(|e| e.into_inner());
            report::rss_stats(&samples, started, ended, &members)
        };
        println!("    {}", report::summary_line(&report));
        let node_cpu_s = cpu_before
            .zip(cpu_after)
            .map(|(before, after)| (after - before).max(0.0));
        results.push(
            StepResult::new(step.name, step.connections, report, rss).with_node_cpu(node_cpu_s),
        );
    }
    running.stop();

    let mut peers = Vec::new();
    if args.peers {
        let (requests, keys, duration) = match args.smoke {
            true => (SMOKE_REQUESTS, SMOKE_KEYS, Duration::from_secs(1)),
            false => (args.peer_requests, args.keys, args.duration),
        };
        let runs: [(&str, PeerRun<'_>); 2] = [
            ("redis", &|| {
                peers::redis(&out, PEER_CONNECTIONS, requests, keys, args.value_size)
            }),
            ("etcd", &|| {
                peers::etcd(&out, PEER_CONNECTIONS, duration, keys, args.value_size)
            }),
        ];
        for (name, run) in runs {
            println!("==> peers: {name}");
            match run()? {
                Ok(results) => {
                    for r in &results {
                        println!(
                            "    {} {}: {:.0} req/s, p50 {} ms, p99 {} ms",
                            r.peer, r.test, r.rate, r.p50_ms, r.p99_ms
                        );
                    }
                    peers.extend(results);
                }
                Err(why) => println!("    skipped: {why}"),
            }
        }
    }

    let mut suite_report = SuiteReport::new(
        root,
        args.smoke,
        args.storage.name(),
        args.duration,
        SMOKE_REQUESTS,
        &members,
        &urls,
        CEILING_STEPS,
        results,
    );
    suite_report.peers = peers;
    suite_report.node_workers = Some(workers);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let markdown = suite_report.markdown();
    write(&out.join("report.md"), &markdown)?;
    let json = serde_json::to_string_pretty(&suite_report).context("encoding the report")?;
    write(&out.join("report.json"), &json)?;
    chart::draw(&suite_report, &out.join("bench.svg"))?;
    println!("\n{markdown}");
    println!(
        "wrote {}, report.json and bench.svg",
        out.join("report.md").display()
    );
    let failures = suite_report.failures();
    ensure!(
        failures == 0,
        "{failures} requests failed or values never became visible (see the report)"
    );
    Ok(())
}

/// One peer's run: its results, or why it was skipped.
type PeerRun<'a> = &'a dyn Fn() -> anyhow::Result<Result<Vec<peers::PeerResult>, String>>;

/// HTTP workers of each node: `chosen`, or the machine's cores shared by the
/// nodes (at least one each).
fn node_workers(chosen: Option<usize>) -> anyhow::Result<usize> {
    match chosen {
        Some(0) => bail!("--workers must be at least 1"),
        Some(n) => Ok(n),
        None => {
            let cores = thread::available_parallelism().map_or(1, |n| n.get());
            Ok((cores / NODES).max(1))
        }
    }
}

/// The suite's steps, narrowed by `--step` (the ceiling steps always stay).
fn select_steps(filters: &[String]) -> anyhow::Result<Vec<Step>> {
    let steps: Vec<Step> = SUITE
        .iter()
        .copied()
        .filter(|s| {
            CEILING_STEPS.contains(&s.name)
                || filters.is_empty()
                || filters.iter().any(|f| s.name.contains(f.as_str()))
        })
        .collect();
    if let Some(unknown) = filters
        .iter()
        .find(|f| !SUITE.iter().any(|s| s.name.contains(f.as_str())))
    {
        let names: Vec<&str> = SUITE.iter().map(|s| s.name).collect();
        bail!(
            "no step matches --step {unknown}; the steps are {}",
            names.join(", ")
        );
    }
    Ok(steps)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The nodes and the sampler: stopped when dropped, whatever the way out.
struct Running {
    cluster: Option<Cluster>,
    sampler: Option<Sampler>,
}

impl Running {
    fn stop(&mut self) {
        if let Some(sampler) = self.sampler.take() {
            sampler.stop();
        }
        if let Some(mut cluster) = self.cluster.take() {
            cluster::stop(&mut cluster);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What every step needs to run kvctl.
struct Suite<'a> {
    kvctl: PathBuf,
    urls: Vec<String>,
    node_ids: Vec<String>,
    args: &'a Args,
}

impl Suite<'_> {
    /// What wrk sends for `step`, when wrk sends it: `--client wrk`, the
    /// prototype's API, one key per request, a health, write or read load.
    fn wrk_load(&self, step: &Step) -> Option<wrk::WrkLoad<'_>> {
        let a = self.args;
        let workload = step
            .workload
            .filter(|w| matches!(*w, "health" | "write" | "read"))?;
        (a.client == Client::Wrk && !step.native && step.txn_keys == 1).then(|| wrk::WrkLoad {
            workload,
            connections: step.connections,
            duration: if a.smoke {
                Duration::from_secs(1)
            } else {
                a.duration
            },
            keys: self.keys(),
            value_size: a.value_size,
            urls: &self.urls,
            node_ids: &self.node_ids,
        })
    }

    /// Keys of every step: `--keys`, or a few with `--smoke`.
    fn keys(&self) -> u64 {
        if self.args.smoke {
            SMOKE_KEYS
        } else {
            self.args.keys
        }
    }

    /// `kvctl`'s arguments naming every node.
    fn node_args(&self) -> Vec<String> {
        self.urls
            .iter()
            .flat_map(|url| ["--node".to_string(), url.clone()])
            .collect()
    }

    /// `kvctl` with `args`, whatever `KVCTL_*` settings xtask's environment
    /// holds.
    fn kvctl_command(&self, args: &[String]) -> Command {
        let mut command = Command::new(&self.kvctl);
        command
            .args(args)
            .env_remove("KVCTL_NODES")
            .env_remove("KVCTL_TOKEN")
            .env_remove("KVCTL_SESSION");
        command
    }

    /// The arguments of `kvctl` for `step`.
    fn kvctl_args(&self, step: &Step, populated: bool) -> Vec<String> {
        let a = self.args;
        let mut args = self.node_args();
        args.extend(["-o".into(), "json".into(), "bench".into()]);
        match step.workload {
            Some(workload) => {
                args.push(workload.into());
                args.extend(["-c".into(), step.connections.to_string()]);
                if a.smoke {
                    args.extend(["--requests".into(), SMOKE_REQUESTS.to_string()]);
                } else {
                    args.extend([
                        "--duration".into(),
                        humantime::format_duration(a.duration).to_string(),
                    ]);
                }
                args.extend(["--keys".into(), self.keys().to_string()]);
                args.extend(["--value-size".into(), a.value_size.to_string()]);
                if workload == "mixed" {
                    args.extend(["--read-ratio".into(), "0.9".into()]);
                }
                if step.native {
                    args.extend(["--api".into(), "native".into()]);
                }
                if step.txn_keys > 1 {
                    args.extend(["--txn-keys".into(), step.txn_keys.to_string()]);
                }
                if populated {
                    args.push("--no-populate".into());
                }
                if let Some(threads) = a.threads {
                    args.extend(["--threads".into(), threads.to_string()]);
                }
            }
            None => {
                let samples = if a.smoke {
                    SMOKE_LAG_SAMPLES
                } else {
                    a.lag_samples
                };
                args.extend(["--lag".into(), "--lag-samples".into(), samples.to_string()]);
            }
        }
        args
    }

    /// Runs kvctl for `step` and reads its report; stops it when interrupted or
    /// when a node exits.
    fn run_step(
        &self,
        step: &Step,
        populated: bool,
        cluster: &mut Cluster,
        interrupted: &AtomicBool,
    ) -> anyhow::Result<BenchReport> {
        self.run_kvctl(self.kvctl_args(step, populated), cluster, interrupted)
    }

    /// Starts a write load of `connections` through kvctl bench, to run
    /// until killed (it stops by itself after an hour).
    fn start_load(&self, connections: usize) -> anyhow::Result<Child> {
        let mut args = self.node_args();
        args.extend(["bench", "write", "--quiet", "--duration", "1h"].map(String::from));
        args.extend(["-c".into(), connections.to_string()]);
        args.extend(["--keys".into(), self.keys().to_string()]);
        args.extend(["--value-size".into(), self.args.value_size.to_string()]);
        let mut command = self.kvctl_command(&args);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        kv_testkit::die_with_parent(&mut command);
        let child = command
            .spawn()
            .context("cannot start the write load of kvctl bench")?;
        // Under way before the step measures: its connections open first.
        thread::sleep(LOAD_RAMP);
        Ok(child)
    }

    /// Writes the keys a read step reads (`kvctl bench read` populates them
    /// before its one request), for a client that does not.
    fn populate(&self, cluster: &mut Cluster, interrupted: &AtomicBool) -> anyhow::Result<()> {
        let mut args = self.node_args();
        args.extend(["-o", "json", "bench", "read", "--requests", "1"].map(String::from));
        args.extend(["--keys".into(), self.keys().to_string()]);
        args.extend(["--value-size".into(), self.args.value_size.to_string()]);
        self.run_kvctl(args, cluster, interrupted).map(|_| ())
    }

    fn run_kvctl(
        &self,
        args: Vec<String>,
        cluster: &mut Cluster,
        interrupted: &AtomicBool,
    ) -> anyhow::Result<BenchReport> {
        let command = self.kvctl_command(&args);
        let what = format!("kvctl {}", args.join(" "));
        let (status, text) = supervise(command, &what, |_| {}, || alive(cluster, interrupted))?;
        // kvctl exits 1 when requests failed: the report is printed all the same.
        ensure!(
            matches!(status.code(), Some(0 | 1)),
            "`{what}` exited with {status}"
        );
        serde_json::from_str(text.trim())
            .with_context(|| format!("`{what}` printed no report: {text:?}"))
    }
}

/// Ok while the nodes run and nobody pressed Ctrl-C.
fn alive(cluster: &mut Cluster, interrupted: &AtomicBool) -> anyhow::Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    cluster.check_alive().map_err(anyhow::Error::from)
}

/// Runs `command` (`what`, for errors) to its end with its output read
/// meanwhile: `tick` gets its pid every 50 ms, and `check` stops it with its
/// error. Its exit status and output.
pub(crate) fn supervise(
    mut command: Command,
    what: &str,
    mut tick: impl FnMut(u32),
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(std::process::ExitStatus, String)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    kv_testkit::die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start `{what}`"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        tick(pid);
        if let Err(err) = check() {
            kill(&mut child);
            return Err(err);
        }
        thread::sleep(Duration::from_millis(50));
    };
    // Ctrl-C reaches the child too (same process group): it has died of it.
    check()?;
    let text = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader of `{what}`'s output panicked"))?
        .with_context(|| format!("reading `{what}`'s output"))?;
    Ok((status, text))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One RSS sample of every node: `(when, KiB per node)`.
pub(crate) type RssSample = (Instant, Vec<Option<u64>>);

/// Samples every node's RSS every [`RSS_EVERY`] on a thread of its own.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pids: Vec<u32>, samples: Arc<Mutex<Vec<RssSample>>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                sample_now(&pids, &samples);
                thread::sleep(RSS_EVERY);
            }
        });
        Sampler { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

fn sample_now(pids: &[u32], samples: &Mutex<Vec<RssSample>>) {
    let rss = pids.iter().map(|pid| rss_kib(*pid)).collect();
    samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((Instant::now(), rss));
}

/// The resident set size of a process in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

/// The CPU time (user and system, in clock ticks) the processes `pids` have
/// used, from `/proc/<pid>/stat`; `None` when one cannot be read.
/// CPU time the processes `pids` have used so far, in seconds.
fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&pid| kvctl::bench::cpu_seconds(pid)).sum()
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        Cli::try_parse_from(std::iter::once("bench").chain(extra.iter().copied()))
            .expect("valid arguments")
            .args
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tkvnode\nVmPeak:\t  999 kB\nVmRSS:\t   41236 kB\nThreads:\t7\n";
        assert_eq!(parse_vm_rss(status), Some(41236));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots\n"), None);
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn each_node_gets_its_share_of_the_cores_unless_told() {
        assert_eq!(node_workers(Some(4)).unwrap(), 4);
        assert!(node_workers(Some(0)).is_err());
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        // Never more workers over all nodes than cores, but one each at least.
        let each = node_workers(None).unwrap();
        assert!(
            each >= 1 && each * NODES <= cores.max(NODES),
            "{each} on {cores} cores"
        );
        assert_eq!(args(&["--workers", "2"]).workers, Some(2));
    }

    #[test]
    fn storage_selects_the_node_setting() {
        assert_eq!(args(&[]).storage, Storage::Fsync);
        assert_eq!(
            args(&["--storage", "memory"]).storage.env(),
            ("KVNODE_MEMORY", "true".to_string())
        );
        assert_eq!(
            args(&["--storage", "none"]).storage.env(),
            ("KVNODE_DURABILITY", "none".to_string())
        );
    }

    #[test]
    fn steps_are_selected_by_name_and_keep_the_ceiling() {
        let names = |filters: &[&str]| -> Vec<&str> {
            let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
            select_steps(&filters)
                .unwrap()
                .iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(names(&[]).len(), SUITE.len());
        assert_eq!(
            names(&["write"]),
            [
                "health-64",
                "write-32",
                "write-64",
                "native-write-64",
                "txn-write-64",
                "health-64-end"
            ]
        );
        assert_eq!(
            names(&["txn"]),
            ["health-64", "txn-write-64", "txn-read-64", "health-64-end"]
        );
        assert_eq!(
            names(&["lag", "mixed"]),
            [
                "health-64",
                "mixed-64",
                "health-64-end",
                "lag",
                "lag-loaded"
            ]
        );
        assert_eq!(
            names(&["loaded"]),
            ["health-64", "health-64-end", "lag-loaded"]
        );
        let err = select_steps(&["nope".into()]).unwrap_err().to_string();
        assert!(err.contains("health-64, write-32"), "{err}");
    }

    #[test]
    fn wrk_sends_the_prototype_api_health_write_and_read_steps() {
        let a = args(&["--client", "wrk", "--keys", "50"]);
        let suite = Suite {
            kvctl: "kvctl".into(),
            urls: vec!["http://127.0.0.1:1".into()],
            node_ids: vec!["node1".into()],
            args: &a,
        };
        let by_wrk: Vec<&str> = SUITE
            .iter()
            .filter(|s| suite.wrk_load(s).is_some())
            .map(|s| s.name)
            .collect();
        assert_eq!(
            by_wrk,
            [
                "health-64",
                "write-32",
                "write-64",
                "read-32",
                "read-64",
                "health-64-end"
            ]
        );
        let load = suite.wrk_load(&SUITE[2]).unwrap();
        assert_eq!(
            (load.workload, load.connections, load.keys),
            ("write", 64, 50)
        );
    }

    #[test]
    fn kvctl_gets_the_step_and_the_settings() {
        let a = args(&["--duration", "5s", "--threads", "2", "--keys", "50"]);
        let suite = Suite {
            kvctl: "kvctl".into(),
            urls: vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            node_ids: vec!["node1".into(), "node2".into()],
            args: &a,
        };
        assert!(
            SUITE.iter().all(|s| suite.wrk_load(s).is_none()),
            "kvctl sends every step by default"
        );
        let mixed = SUITE.iter().find(|s| s.name == "mixed-64").unwrap();
        let line = suite.kvctl_args(mixed, true).join(" ");
        assert_eq!(
            line,
            "--node http://127.0.0.1:1 --node http://127.0.0.1:2 -o json bench mixed -c 64 \
             --duration 5s --keys 50 --value-size 100 --read-ratio 0.9 --no-populate --threads 2"
        );
        let txn = SUITE.iter().find(|s| s.name == "txn-read-64").unwrap();
        let line = suite.kvctl_args(txn, false).join(" ");
        assert!(
            line.ends_with("--api native --txn-keys 4 --threads 2"),
            "{line}"
        );
        let lag = SUITE.iter().find(|s| s.name == "lag").unwrap();
        assert!(suite
            .kvctl_args(lag, false)
            .join(" ")
            .ends_with("bench --lag --lag-samples 200"));

        let smoke = args(&["--smoke"]);
        let suite = Suite {
            args: &smoke,
            ..suite
        };
        let line = suite.kvctl_args(&SUITE[1], false).join(" ");
        assert!(
            line.contains("write -c 32 --requests 300 --keys 100"),
            "{line}"
        );
        assert!(suite
            .kvctl_args(lag, false)
            .join(" ")
            .ends_with("--lag-samples 10"));
    }
}
