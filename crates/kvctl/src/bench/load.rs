//! The load phase: closed-loop workers, one connection each, spread over
//! threads; and the population of the key space before reads.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use awc::http::Method;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::de::IgnoredAny;
use vclock_proto::{PutRequest, VClock, Value, WriteRequest};

use super::conn::{clock_of, Conn, Failure};
use super::report::{new_histogram, record, ErrorTally};
use super::{Stop, Workload};
use crate::check::Api;
use crate::transport::Transport;

/// What every thread of the load phase needs to know.
#[derive(Debug)]
pub(crate) struct Plan {
    pub nodes: Vec<String>,
    pub api: Api,
    pub workload: Workload,
    pub stop: Stop,
    pub keys: u64,
    /// The JSON text of every written value.
    pub value: String,
    pub sessions: bool,
    /// Keys per operation: above 1, atomic writes and snapshot reads.
    pub txn_keys: usize,
    pub transport: Transport,
    pub seed: u64,
}

/// Counters shared by all threads, read by the progress bar.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Requests started (only counted with [`Stop::Requests`]).
    pub issued: AtomicU64,
    /// Requests finished, failed ones included.
    pub done: AtomicU64,
    /// Requests failed.
    pub errors: AtomicU64,
}

/// Where the load threads wait, connected, until every one of them is: the
/// clock starts when the gate opens.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    open: bool,
    go: bool,
}

impl Gate {
    /// Called by a thread when it is ready; returns once the gate opens, `true`
    /// when the run goes ahead.
    pub fn arrive(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.arrived += 1;
        self.changed.notify_all();
        while !state.open {
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.go
    }

    /// Waits at most `timeout` until `threads` threads have arrived; true if they have.
    pub fn wait_for(&self, threads: usize, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.arrived < threads)
            .unwrap_or_else(|e| e.into_inner());
        state.arrived >= threads
    }

    /// Opens the gate: the threads run when `go`, else they return at once.
    pub fn open(&self, go: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.open = true;
        state.go = go;
        self.changed.notify_all();
    }
}

/// What one thread measured.
#[derive(Debug)]
pub(crate) struct Stats {
    pub all: Histogram<u64>,
    pub reads: Histogram<u64>,
    pub writes: Histogram<u64>,
    pub ok: u64,
    pub errors: ErrorTally,
    /// When the thread's last request finished.
    pub finished: Option<Instant>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            all: new_histogram(),
            reads: new_histogram(),
            writes: new_histogram(),
            ok: 0,
            errors: ErrorTally::default(),
            finished: None,
        }
    }

    /// Adds another thread's figures to these.
    pub fn merge(&mut self, other: Stats) {
        // The histograms have the same bounds, so adding cannot fail.
        let _ = self.all.add(&other.all);
        let _ = self.reads.add(&other.reads);
        let _ = self.writes.add(&other.writes);
        self.ok += other.ok;
        self.errors.merge(other.errors);
        self.finished = self.finished.max(other.finished);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Health,
    Read,
    Write,
}

impl Plan {
    /// Connection `worker`'s link, to the nodes in turn (round robin).
    fn connect(&self, worker: usize) -> Result<Conn, Failure> {
        let node = &self.nodes[worker % self.nodes.len()];
        Conn::new(node, self.api, &self.transport)
    }
}

/// The body of one load thread: connects its workers (worker `w` talks to node
/// `w mod nodes`), waits at `gate` until every thread is connected, then runs
/// the workers until the plan's stop condition.
pub(crate) fn run_thread(
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    workers: Vec<usize>,
    gate: Arc<Gate>,
) -> Stats {
    let system = actix_rt::System::new();
    let stats = Rc::new(RefCell::new(Stats::new()));
    let mut conns = Vec::new();
    for &w in &workers {
        match plan.connect(w) {
            Ok(conn) => conns.push((w, conn)),
            Err(f) => stats.borrow_mut().errors.add(&f.kind, || f.message),
        }
    }
    // Open every connection before the clock starts. A failure here shows up
    // again, counted, in the run.
    system.block_on(futures_util::future::join_all(
        conns.iter_mut().map(|(_, conn)| conn.health()),
    ));
    if !gate.arrive() {
        return Stats::new();
    }
    let deadline = match plan.stop {
        Stop::Duration(d) => Some(Instant::now() + d),
        Stop::Requests(_) => None,
    };
    system.block_on(async {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|(w, conn)| {
                actix_rt::spawn(worker(
                    plan.clone(),
                    counters.clone(),
                    conn,
                    w,
                    deadline,
                    stats.clone(),
                ))
            })
            .collect();
        for handle in handles {
            let _ = handle.await;
        }
    });
    let mut stats = Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|shared| std::mem::replace(&mut *shared.borrow_mut(), Stats::new()));
    stats.finished = Some(Instant::now());
    stats
}

/// One closed-loop worker: sends a request, waits for its whole answer, records
/// it, and sends the next, until the deadline or the request count is reached.
async fn worker(
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    mut conn: Conn,
    id: usize,
    deadline: Option<Instant>,
    stats: Rc<RefCell<Stats>>,
) {
    let mut rng =
        SmallRng::seed_from_u64(plan.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut context = VClock::new();
    let mut key = String::with_capacity(32);
    let mut keys: Vec<String> = Vec::with_capacity(plan.txn_keys);
    loop {
        let go = match (deadline, plan.stop) {
            (Some(deadline), _) => Instant::now() < deadline,
            (None, Stop::Requests(n)) => counters.issued.fetch_add(1, Relaxed) < n,
            (None, Stop::Duration(_)) => false,
        };
        if !go {
            return;
        }
        let op = match plan.workload {
            Workload::Health => Op::Health,
            Workload::Read => Op::Read,
            Workload::Write => Op::Write,
            Workload::Mixed { read_ratio } => {
                if rng.random_bool(read_ratio) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        };
        if op != Op::Health && plan.txn_keys > 1 {
            keys.clear();
            while keys.len() < plan.txn_keys {
                key.clear();
                let _ = write!(key, "bench-{}", rng.random_range(0..plan.keys));
                if !keys.contains(&key) {
                    keys.push(key.clone());
                }
            }
        } else if op != Op::Health {
            key.clear();
            let _ = write!(key, "bench-{}", rng.random_range(0..plan.keys));
        }
        let sent_context = (plan.sessions && !context.is_empty()).then_some(&context);
        let started = Instant::now();
        let result = match op {
            Op::Health => conn.health().await,
            Op::Read if plan.txn_keys > 1 => conn.txn_read(&keys, sent_context).await,
            Op::Write if plan.txn_keys > 1 => {
                conn.txn_write(&keys, &plan.value, sent_context).await
            }
            Op::Read => conn.read(&key, sent_context).await,
            Op::Write => conn.write(&key, &plan.value, sent_context).await,
        };
        let elapsed = started.elapsed();
        let result = result.and_then(|body| {
            if plan.sessions && op != Op::Health {
                context.merge(&clock_of(&body)?);
            }
            Ok(())
        });
        {
            let mut stats = stats.borrow_mut();
            match result {
                Ok(()) => {
                    stats.ok += 1;
                    record(&mut stats.all, elapsed);
                    match op {
                        Op::Read => record(&mut stats.reads, elapsed),
                        Op::Write => record(&mut stats.writes, elapsed),
                        Op::Health => {}
                    }
                }
                Err(f) => {
                    counters.errors.fetch_add(1, Relaxed);
                    let base = conn.base();
                    stats
                        .errors
                        .add(&f.kind, || format!("{base}: {}", f.message));
                }
            }
        }
        counters.done.fetch_add(1, Relaxed);
    }
}

/// Writes every key of the key space once, `connections` at a time spread over
/// the nodes, so that reads find values. Fails at the first write that does not
/// succeed.
pub(crate) async fn populate(
    plan: &Plan,
    connections: usize,
    counters: &Counters,
) -> Result<u64, crate::Error> {
    let value =
        Value::from_json(&plan.value).map_err(|e| crate::Error::InvalidValue(e.to_string()))?;
    let agent = plan.transport.agent();
    let next = Rc::new(Cell::new(0u64));
    let writers = (0..connections).map(|w| {
        let (next, agent, value) = (next.clone(), &agent, &value);
        let node = &plan.nodes[w % plan.nodes.len()];
        async move {
            loop {
                let k = next.get();
                if k >= plan.keys {
                    return Ok(());
                }
                next.set(k + 1);
                let key = format!("bench-{k}");
                let written = match plan.api {
                    Api::Compat => {
                        let body = WriteRequest {
                            key: key.clone(),
                            value: value.clone(),
                            context: None,
                        };
                        let url = format!("{node}/write");
                        agent
                            .call::<_, IgnoredAny>(Method::POST, &url, Some(&body))
                            .await
                    }
                    Api::Native => {
                        let body = PutRequest {
                            value: value.clone(),
                            context: None,
                        };
                        let url = format!("{node}{}", crate::kv_path(&key, ""));
                        agent
                            .call::<_, IgnoredAny>(Method::PUT, &url, Some(&body))
                            .await
                    }
                };
                written.map_err(|e| crate::Error::at(node, e))?;
                counters.done.fetch_add(1, Relaxed);
            }
        }
    });
    let results = futures_util::future::join_all(writers).await;
    results
        .into_iter()
        .collect::<Result<Vec<()>, crate::Error>>()?;
    Ok(plan.keys)
}
