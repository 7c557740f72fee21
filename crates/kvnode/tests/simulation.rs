//! Deterministic simulation of the causal core.
//!
//! Three to five replicas of [`Core`] over [`MemStore`] exchange their writes
//! through a simulated network that reorders, duplicates, delays and drops
//! messages (events and acknowledgements alike), while client sessions write and
//! read at random replicas, carrying their causal context as `kvctl` does. One
//! seeded generator drives everything, so a seed replays exactly.
//!
//! The simulator keeps its own ground truth and never trusts the core's clocks
//! for it: the causal past of every write (the writes applied at its origin when
//! it was made) and the writes each replica has applied (its local writes and
//! what [`Receipt::delivered`] reports). Against that ground truth, every seed
//! checks:
//!
//! 1. **causal delivery**: a replica applies a write only after its whole causal
//!    past, and only once;
//! 2. **convergence**: after a reliable flush, all replicas hold the same
//!    `applied` clock and the same siblings, event for event, for every key;
//! 3. **no lost writes**: every acknowledged write is applied everywhere, and
//!    once everything is stable each key's siblings are exactly its puts that no
//!    other write of the key saw: a write disappears only by being overwritten,
//!    or as a tombstone collected once stable;
//! 4. **sessions**: read-your-writes and monotonic reads: every write a session
//!    made or read is, at each later read of the key, a sibling or in the causal
//!    past of a sibling (or of a collected tombstone);
//! 5. **siblings**: at every read, a key's siblings are its causally maximal
//!    applied writes (so pairwise concurrent), less tombstones the replica knows
//!    to be stable; the last one is the largest by `(sum of timestamp, origin)`,
//!    the single-value view shows the largest put, and after the flush every
//!    replica shows the same.
//!
//! Along the way it also checks the core's bookkeeping against the ground truth:
//! its `applied` clock, the seqs it assigns, and that log collection never drops
//! an event a peer has not acknowledged.
//!
//! The mutation check runs the same machinery over a network that strips the
//! dependencies off every event it carries, and requires the causal-delivery
//! check to notice: the oracle can fail.
//!
//! Seeds: 1000 by default, `SIM_SEEDS=N` to change that, `SIM_SEED=S` to replay
//! one (`SIM_SEED=S cargo test -p kvnode --test simulation`).
//!
//! Left out: node restarts over a durable store, and repair through third
//! replicas (senders push only their own writes here).

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use kvnode::core::{ContextCheck, Core, CoreError, Limits, ReadResult, Receipt};
use kvnode::store::{MemStore, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vclock_proto::{Dot, Event, Op, Seq, VClock, Value};

/// Seeds run when neither `SIM_SEEDS` nor `SIM_SEED` is set.
const DEFAULT_SEEDS: u64 = 1000;
/// Seeds the mutation check tries.
const MUTATION_SEEDS: u64 = 20;
/// How many of the last steps a failure report shows.
const TRACE_TAIL: usize = 25;
/// A reliable flush settles in a few rounds; needing this many means it never will.
const MAX_FLUSH_ROUNDS: usize = 50;
/// The command that replays a seed, after `SIM_SEED=<seed>`.
const REPLAY: &str = "cargo test -p kvnode --test simulation";

#[test]
fn random_schedules_keep_causal_consistency() {
    let seeds = seeds_to_run();
    let mut total = Stats::default();
    for &seed in &seeds {
        match run_seed(seed, Network::Faithful) {
            Ok(stats) => total.add(&stats),
            Err(failure) => panic!(
                "simulation seed {seed} failed: {failure}\nreplay it with: SIM_SEED={seed} {REPLAY}"
            ),
        }
    }
    println!("{} seeds passed; totals: {total:?}", seeds.len());
}

#[test]
fn mutation_check_catches_delivery_that_ignores_dependencies() {
    let mut caught = Vec::new();
    for seed in 0..MUTATION_SEEDS {
        if let Err(failure) = run_seed(seed, Network::StripsDependencies) {
            if failure.check == Check::CausalDelivery {
                caught.push(seed);
            }
        }
    }
    assert!(
        !caught.is_empty(),
        "a network that strips dependencies went unnoticed by the causal-delivery check \
         in seeds 0..{MUTATION_SEEDS}"
    );
    println!(
        "causal-delivery violations caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

/// `SIM_SEED=S` runs seed `S` only; otherwise seeds `0..SIM_SEEDS` (default 1000).
fn seeds_to_run() -> Vec<u64> {
    if let Some(seed) = env_number("SIM_SEED") {
        return vec![seed];
    }
    (0..env_number("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let number = text
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}"));
    Some(number)
}

/// Runs one seed; a panic inside it becomes a failure that names the seed.
fn run_seed(seed: u64, network: Network) -> Result<Stats, Failure> {
    panic::catch_unwind(AssertUnwindSafe(|| simulate(seed, network)))
        .unwrap_or_else(|payload| Err(Failure::panicked(payload.as_ref())))
}

fn simulate(seed: u64, network: Network) -> Result<Stats, Failure> {
    let mut sim = Sim::new(seed, network).map_err(|v| Failure::new(v, "", &[]))?;
    match sim.run() {
        Ok(()) => Ok(sim.stats),
        Err(violation) => Err(Failure::new(
            violation,
            &format!("{:?}", sim.params),
            &sim.trace,
        )),
    }
}

// ---- Outcomes -------------------------------------------------------------------

/// The property a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    CausalDelivery,
    Convergence,
    NoLostWrites,
    Sessions,
    Siblings,
    /// The core's bookkeeping disagrees with the ground truth, or it failed.
    Core,
    /// Something panicked.
    Panic,
}

#[derive(Debug)]
struct Violation {
    check: Check,
    detail: String,
}

impl Violation {
    fn new(check: Check, detail: String) -> Self {
        Self { check, detail }
    }
}

impl From<CoreError> for Violation {
    fn from(e: CoreError) -> Self {
        Self::new(Check::Core, format!("the core refused a command: {e}"))
    }
}

type SimResult<T = ()> = Result<T, Violation>;

/// Returns a [`Violation`] of `$check` unless `$cond` holds.
macro_rules! ensure {
    ($cond:expr, $check:expr, $($detail:tt)+) => {
        if !$cond {
            return Err(Violation::new($check, format!($($detail)+)));
        }
    };
}

/// A failed seed: what broke, the seed's parameters and the last steps.
#[derive(Debug)]
struct Failure {
    check: Check,
    detail: String,
    params: String,
    first_shown_step: usize,
    last_steps: Vec<Step>,
}

impl Failure {
    fn new(violation: Violation, params: &str, trace: &[Step]) -> Self {
        let first_shown_step = trace.len().saturating_sub(TRACE_TAIL);
        Self {
            check: violation.check,
            detail: violation.detail,
            params: params.to_owned(),
            first_shown_step,
            last_steps: trace[first_shown_step..].to_vec(),
        }
    }

    fn panicked(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Self::new(Violation::new(Check::Panic, message), "", &[])
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:?} violated: {}", self.check, self.detail)?;
        if !self.params.is_empty() {
            writeln!(f, "parameters: {}", self.params)?;
        }
        if !self.last_steps.is_empty() {
            writeln!(f, "last steps:")?;
        }
        for (i, step) in self.last_steps.iter().enumerate() {
            writeln!(f, "  #{} {step}", self.first_shown_step + i)?;
        }
        Ok(())
    }
}

/// What the seeds exercised, to show that every path of the core was reached.
#[derive(Clone, Debug, Default)]
struct Stats {
    writes: u64,
    deletes: u64,
    reads: u64,
    /// Client operations skipped because the replica lagged the session's context.
    stale_contexts: u64,
    /// Stable tombstones found collected by a read.
    collected_tombstones_read: u64,
    events_delivered: u64,
    delivered_from_buffer: u64,
    duplicates: u64,
    refused: u64,
    messages_dropped: u64,
    messages_duplicated: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.writes += other.writes;
        self.deletes += other.deletes;
        self.reads += other.reads;
        self.stale_contexts += other.stale_contexts;
        self.collected_tombstones_read += other.collected_tombstones_read;
        self.events_delivered += other.events_delivered;
        self.delivered_from_buffer += other.delivered_from_buffer;
        self.duplicates += other.duplicates;
        self.refused += other.refused;
        self.messages_dropped += other.messages_dropped;
        self.messages_duplicated += other.messages_duplicated;
    }
}

// ---- Ground truth ---------------------------------------------------------------

/// A write's index in [`GroundTruth::writes`], in creation order.
type WriteId = usize;

/// A set of writes: a bitset over their ids.
#[derive(Clone, Debug, Default)]
struct WriteSet {
    words: Vec<u64>,
}

impl WriteSet {
    fn contains(&self, id: WriteId) -> bool {
        self.words
            .get(id / 64)
            .is_some_and(|word| word & (1 << (id % 64)) != 0)
    }

    fn insert(&mut self, id: WriteId) {
        let index = id / 64;
        if index >= self.words.len() {
            self.words.resize(index + 1, 0);
        }
        self.words[index] |= 1 << (id % 64);
    }

    fn union_with(&mut self, other: &WriteSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (word, &theirs) in self.words.iter_mut().zip(&other.words) {
            *word |= theirs;
        }
    }

    /// The smallest member of `self` that `other` lacks.
    fn first_not_in(&self, other: &WriteSet) -> Option<WriteId> {
        self.words.iter().enumerate().find_map(|(index, &word)| {
            let extra = word & !other.words.get(index).copied().unwrap_or(0);
            (extra != 0).then(|| index * 64 + extra.trailing_zeros() as usize)
        })
    }

    fn iter(&self) -> impl Iterator<Item = WriteId> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| index * 64 + bit)
        })
    }
}

/// One write, as its origin made it.
#[derive(Debug)]
struct Write {
    event: Arc<Event>,
    origin: usize,
    key: usize,
    /// The writes applied at the origin when this one was made: its causal past.
    past: WriteSet,
}

impl Write {
    fn is_delete(&self) -> bool {
        self.event.op == Op::Delete
    }
}

#[derive(Debug)]
struct GroundTruth {
    writes: Vec<Write>,
    /// `by_origin[o][seq - 1]` is the id of write `seq` of replica `o`.
    by_origin: Vec<Vec<WriteId>>,
}

impl GroundTruth {
    fn record(&mut self, origin: usize, key: usize, event: Arc<Event>, past: WriteSet) -> WriteId {
        let id = self.writes.len();
        self.writes.push(Write {
            event,
            origin,
            key,
            past,
        });
        self.by_origin[origin].push(id);
        id
    }

    fn dot(&self, id: WriteId) -> Dot {
        self.writes[id].event.dot()
    }

    /// The dots of `ids`, as a failure report shows them.
    fn dots(&self, ids: &[WriteId]) -> String {
        dot_list(ids.iter().map(|&id| self.dot(id)))
    }
}

/// Dots as `[node0:1, node2:3]`.
fn dot_list(dots: impl IntoIterator<Item = Dot>) -> String {
    let dots: Vec<String> = dots.into_iter().map(|dot| dot.to_string()).collect();
    format!("[{}]", dots.join(", "))
}

// ---- The simulated world --------------------------------------------------------

/// How the network treats the events it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Network {
    /// Events arrive as they were sent.
    Faithful,
    /// Broken on purpose: every event arrives with its `deps` cut down to its
    /// origin's entry, so receivers deliver it before its dependencies.
    StripsDependencies,
}

/// The random shape of one seed's world.
#[derive(Debug)]
struct Params {
    replicas: usize,
    sessions: usize,
    keys: usize,
    steps: usize,
    max_buffered: usize,
    /// Weight of "drop a message" against 95 for all other steps.
    drop_weight: u32,
    /// Chance that a delivered message stays in flight to arrive again.
    duplicate_chance: f64,
}

#[derive(Debug)]
struct Replica {
    core: Core<MemStore>,
    /// Ground truth: the writes this replica has applied.
    applied: WriteSet,
    /// Ground truth: how many writes of each origin it has applied.
    applied_per_origin: Vec<Seq>,
    /// Ground truth: per key, the applied writes of the key that no other applied
    /// write of the key has in its past. The siblings must be these, less the
    /// tombstones collected once stable.
    expected_siblings: Vec<Vec<WriteId>>,
    /// Ground truth: per peer, the writes its acknowledgements have shown applied.
    acked_by_peer: Vec<WriteSet>,
    /// Per peer, the highest own seq sent to it: a pipelining sender's cursor.
    sent_through: Vec<Seq>,
}

/// A client session, as `kvctl` keeps one.
#[derive(Debug)]
struct Session {
    /// The replica the session usually talks to.
    home: usize,
    /// The merge of every clock the session has received.
    context: VClock,
    /// Per key, the writes it made or read: each later read must cover them.
    must_see: Vec<WriteSet>,
}

#[derive(Clone, Debug)]
enum Message {
    Events {
        from: usize,
        to: usize,
        events: Vec<Event>,
    },
    /// The receiver's `applied` clock, acknowledging a batch. The simulator
    /// adds the writes that clock counts, for its ground truth.
    Ack {
        from: usize,
        to: usize,
        applied: VClock,
        applied_writes: WriteSet,
    },
}

impl Message {
    fn summary(&self) -> MessageSummary {
        match self {
            Message::Events { from, to, events } => MessageSummary::Events {
                from: *from,
                to: *to,
                seqs: (
                    events.first().map_or(0, |e| e.seq),
                    events.last().map_or(0, |e| e.seq),
                ),
            },
            Message::Ack { from, to, .. } => MessageSummary::Ack {
                from: *from,
                to: *to,
            },
        }
    }
}

/// A message as a failure report shows it.
#[derive(Clone, Debug)]
enum MessageSummary {
    Events {
        from: usize,
        to: usize,
        seqs: (Seq, Seq),
    },
    Ack {
        from: usize,
        to: usize,
    },
}

/// One step of a seed, for failure reports. Replicas and keys are indices.
#[derive(Clone, Debug)]
enum Step {
    Write {
        session: usize,
        at: usize,
        key: usize,
        delete: bool,
    },
    Read {
        session: usize,
        at: usize,
        key: usize,
    },
    Send {
        from: usize,
        to: usize,
        after: Seq,
        limit: usize,
    },
    Deliver {
        message: MessageSummary,
        kept_copy: bool,
    },
    Drop {
        message: MessageSummary,
    },
    Flush,
}

impl fmt::Display for MessageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageSummary::Events { from, to, seqs } => write!(
                f,
                "events {}..={} of node{from} to node{to}",
                seqs.0, seqs.1
            ),
            MessageSummary::Ack { from, to } => write!(f, "ack of node{from} to node{to}"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write {
                session,
                at,
                key,
                delete,
            } => {
                let what = if *delete { "deletes" } else { "puts" };
                write!(f, "session {session} {what} k{key} at node{at}")
            }
            Step::Read { session, at, key } => {
                write!(f, "session {session} reads k{key} at node{at}")
            }
            Step::Send {
                from,
                to,
                after,
                limit,
            } => write!(
                f,
                "node{from} sends node{to} up to {limit} own events after {after}"
            ),
            Step::Deliver { message, kept_copy } => {
                let copy = if *kept_copy {
                    " (a copy stays in flight)"
                } else {
                    ""
                };
                write!(f, "deliver {message}{copy}")
            }
            Step::Drop { message } => write!(f, "drop {message}"),
            Step::Flush => f.write_str("reliable flush"),
        }
    }
}

#[derive(Debug)]
struct Sim {
    rng: StdRng,
    network: Network,
    params: Params,
    nodes: Vec<String>,
    keys: Vec<String>,
    replicas: Vec<Replica>,
    sessions: Vec<Session>,
    truth: GroundTruth,
    in_flight: Vec<Message>,
    trace: Vec<Step>,
    stats: Stats,
    last_value: u64,
}

impl Sim {
    fn new(seed: u64, network: Network) -> SimResult<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let params = Params {
            replicas: rng.random_range(3..=5),
            sessions: rng.random_range(2..=4),
            keys: rng.random_range(3..=5),
            steps: rng.random_range(150..=300),
            max_buffered: if rng.random_bool(0.3) {
                rng.random_range(1..=4)
            } else {
                Limits::default().max_buffered
            },
            drop_weight: rng.random_range(0..=8),
            duplicate_chance: rng.random_range(0.0..0.2),
        };
        let nodes: Vec<String> = (0..params.replicas).map(|i| format!("node{i}")).collect();
        let keys = (0..params.keys).map(|k| format!("k{k}")).collect();
        let limits = Limits {
            max_buffered: params.max_buffered,
        };
        let mut replicas = Vec::new();
        for id in &nodes {
            replicas.push(Replica {
                core: Core::new(id.clone(), nodes.clone(), MemStore::new(), limits.clone())?,
                applied: WriteSet::default(),
                applied_per_origin: vec![0; params.replicas],
                expected_siblings: vec![Vec::new(); params.keys],
                acked_by_peer: vec![WriteSet::default(); params.replicas],
                sent_through: vec![0; params.replicas],
            });
        }
        let sessions = (0..params.sessions)
            .map(|_| Session {
                home: rng.random_range(0..params.replicas),
                context: VClock::new(),
                must_see: vec![WriteSet::default(); params.keys],
            })
            .collect();
        Ok(Self {
            rng,
            network,
            truth: GroundTruth {
                writes: Vec::new(),
                by_origin: vec![Vec::new(); params.replicas],
            },
            params,
            nodes,
            keys,
            replicas,
            sessions,
            in_flight: Vec::new(),
            trace: Vec::new(),
            stats: Stats::default(),
            last_value: 0,
        })
    }

    fn run(&mut self) -> SimResult {
        for _ in 0..self.params.steps {
            self.random_step()?;
        }
        self.trace.push(Step::Flush);
        self.flush()?;
        self.check_converged()?;
        self.check_no_lost_writes()?;
        self.check_sessions_after_flush()
    }

    /// One random step. Weights, out of `95 + drop_weight`: 25 client writes,
    /// 20 client reads, 20 sends, 30 deliveries, `drop_weight` losses.
    fn random_step(&mut self) -> SimResult {
        let roll = self.rng.random_range(0..95 + self.params.drop_weight);
        let replicas = self.replicas.len();
        match roll {
            0..25 => {
                let session = self.rng.random_range(0..self.sessions.len());
                let at = self.choose_replica(session);
                let key = self.rng.random_range(0..self.keys.len());
                let delete = self.rng.random_bool(0.15);
                self.client_write(session, at, key, delete)
            }
            25..45 => {
                let session = self.rng.random_range(0..self.sessions.len());
                let at = self.choose_replica(session);
                let key = self.rng.random_range(0..self.keys.len());
                self.trace.push(Step::Read { session, at, key });
                self.client_read(session, at, key)?;
                Ok(())
            }
            45..65 => {
                let from = self.rng.random_range(0..replicas);
                let to = (from + self.rng.random_range(1..replicas)) % replicas;
                self.send(from, to)
            }
            65..95 => {
                let kept_copy = self.rng.random_bool(self.params.duplicate_chance);
                self.deliver_random(kept_copy)
            }
            _ => {
                self.drop_random();
                Ok(())
            }
        }
    }

    // ---- Clients ----

    /// Mostly the session's home replica; sometimes another one, as when a
    /// client fails over or a load balancer moves it.
    fn choose_replica(&mut self, session: usize) -> usize {
        if self.rng.random_bool(0.6) {
            self.sessions[session].home
        } else {
            self.rng.random_range(0..self.replicas.len())
        }
    }

    /// Whether the replica has applied everything the session's context counts;
    /// when not, the client's operation fails and it retries later.
    fn context_satisfied(&self, session: usize, at: usize) -> SimResult<bool> {
        let context = &self.sessions[session].context;
        match self.replicas[at].core.check_context(context) {
            ContextCheck::Satisfied => Ok(true),
            ContextCheck::Behind(_) => Ok(false),
            other => Err(Violation::new(
                Check::Sessions,
                format!(
                    "session {session}'s context {context} is {other:?} at {}",
                    self.nodes[at]
                ),
            )),
        }
    }

    fn client_write(&mut self, session: usize, at: usize, key: usize, delete: bool) -> SimResult {
        self.trace.push(Step::Write {
            session,
            at,
            key,
            delete,
        });
        if !self.context_satisfied(session, at)? {
            self.stats.stale_contexts += 1;
            return Ok(());
        }
        let op = if delete {
            self.stats.deletes += 1;
            Op::Delete
        } else {
            self.last_value += 1;
            Op::Put(Value::from_serialize(&self.last_value).expect("a number is JSON"))
        };
        self.stats.writes += 1;
        let past = self.replicas[at].applied.clone();
        let replica = &mut self.replicas[at];
        let event = replica.core.local_write(self.keys[key].clone(), op)?;
        replica.core.commit()?;
        let expected = Dot::new(self.nodes[at].clone(), replica.applied_per_origin[at] + 1);
        ensure!(
            event.dot() == expected && event.key == self.keys[key],
            Check::Core,
            "a write of {} at {} became {} of {}, expected {expected}",
            self.keys[key],
            self.nodes[at],
            event.dot(),
            event.key
        );
        let id = self.truth.record(at, key, event.clone(), past);
        self.observe_apply(at, id)?;
        self.check_clock(at, self.replicas[at].core.applied(), "applied clock")?;
        let session = &mut self.sessions[session];
        session.context.merge(&event.timestamp());
        session.must_see[key].insert(id);
        Ok(())
    }

    /// Reads `key` for `session` at replica `at`, checking what comes back;
    /// false when the replica lags the session's context.
    fn client_read(&mut self, session: usize, at: usize, key: usize) -> SimResult<bool> {
        if !self.context_satisfied(session, at)? {
            self.stats.stale_contexts += 1;
            return Ok(false);
        }
        self.stats.reads += 1;
        let read: ReadResult = self.replicas[at].core.read(&self.keys[key])?;
        self.replicas[at].core.commit()?;
        let siblings = self.sibling_ids(&read)?;
        let collected = self.check_siblings(at, key, &siblings)?;
        self.check_winner(at, key, &read, &siblings)?;
        self.check_clock(at, &read.applied, "clock returned by a read")?;
        self.stats.collected_tombstones_read += collected.len() as u64;
        // What the session saw before must be a sibling now, or in the past of
        // one, or of a tombstone collected since.
        for id in self.sessions[session].must_see[key].iter() {
            let covered = siblings
                .iter()
                .chain(&collected)
                .any(|&s| s == id || self.truth.writes[s].past.contains(id));
            ensure!(
                covered,
                Check::Sessions,
                "session {session} read {} at {} and got {} (collected tombstones: {}), \
                 which miss {}, a write it had made or read before",
                self.keys[key],
                self.nodes[at],
                self.truth.dots(&siblings),
                self.truth.dots(&collected),
                self.truth.dot(id)
            );
        }
        let session = &mut self.sessions[session];
        session.context.merge(&read.applied);
        for &id in &siblings {
            session.must_see[key].insert(id);
        }
        Ok(true)
    }

    // ---- Replication ----

    /// Replica `from` pushes a prefix of its own log to `to`, from a cursor that
    /// is sometimes where it left off, sometimes the peer's last acknowledgement,
    /// and sometimes confused (behind or ahead).
    fn send(&mut self, from: usize, to: usize) -> SimResult {
        let acked = self.acked_own(from, to);
        let replica = &self.replicas[from];
        let after = match self.rng.random_range(0..10) {
            0..5 => acked.max(replica.sent_through[to]),
            5..8 => acked,
            _ => self.rng.random_range(0..=replica.applied_per_origin[from]),
        };
        let limit = self.rng.random_range(1..=6);
        self.trace.push(Step::Send {
            from,
            to,
            after,
            limit,
        });
        let events = self.outgoing(from, to, after, limit)?;
        if let Some(last) = events.last() {
            let cursor = &mut self.replicas[from].sent_through[to];
            *cursor = (*cursor).max(last.seq);
            self.in_flight.push(Message::Events { from, to, events });
        }
        Ok(())
    }

    /// How many of `from`'s own writes `to` has acknowledged, as `from` knows it.
    fn acked_own(&self, from: usize, to: usize) -> Seq {
        self.replicas[from]
            .core
            .acked(&self.nodes[to])
            .map_or(0, |clock| clock.get(&self.nodes[from]))
    }

    /// Up to `limit` of `from`'s own events after seq `after`, for `to`, checked:
    /// in order, without gaps, and with nothing collected from the log that `to`
    /// has not acknowledged.
    fn outgoing(&self, from: usize, to: usize, after: Seq, limit: usize) -> SimResult<Vec<Event>> {
        let events = self.replicas[from].core.own_events_after(after, limit)?;
        let node = &self.nodes[from];
        let own = self.replicas[from].applied_per_origin[from];
        let acked = self.acked_own(from, to);
        let first = events.first().map_or(own + 1, |e| e.seq);
        ensure!(
            first > after && first <= after.max(acked) + 1,
            Check::Core,
            "{node}'s log answers events after {after} from seq {first}, but {} acknowledged \
             only {acked} of them",
            self.nodes[to]
        );
        let expected_len = limit.min((own + 1).saturating_sub(first) as usize);
        let in_order = events
            .iter()
            .zip(first..)
            .all(|(e, seq)| e.origin == *node && e.seq == seq);
        ensure!(
            in_order && events.len() == expected_len,
            Check::Core,
            "{node}'s log answers {} for up to {limit} of its events after {after} \
             (it has made {own})",
            dot_list(events.iter().map(|e| e.dot()))
        );
        Ok(events.iter().map(|e| (**e).clone()).collect())
    }

    fn deliver_random(&mut self, kept_copy: bool) -> SimResult {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let index = self.rng.random_range(0..self.in_flight.len());
        let message = if kept_copy {
            self.stats.messages_duplicated += 1;
            self.in_flight[index].clone()
        } else {
            self.in_flight.swap_remove(index)
        };
        self.trace.push(Step::Deliver {
            message: message.summary(),
            kept_copy,
        });
        if let Some(ack) = self.handle(message)? {
            self.in_flight.push(ack);
        }
        Ok(())
    }

    fn drop_random(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let index = self.rng.random_range(0..self.in_flight.len());
        let message = self.in_flight.swap_remove(index);
        self.stats.messages_dropped += 1;
        self.trace.push(Step::Drop {
            message: message.summary(),
        });
    }

    /// Delivers a message; for a batch of events, returns the receiver's ack.
    fn handle(&mut self, message: Message) -> SimResult<Option<Message>> {
        match message {
            Message::Events { from, to, events } => self.receive(from, to, events).map(Some),
            Message::Ack {
                from,
                to,
                applied,
                applied_writes,
            } => {
                let replica = &mut self.replicas[to];
                replica.core.record_ack(&self.nodes[from], &applied)?;
                replica.core.commit()?;
                replica.acked_by_peer[from].union_with(&applied_writes);
                Ok(None)
            }
        }
    }

    /// Replica `from`'s acknowledgement to `to`: its `applied` clock now.
    fn ack(&self, from: usize, to: usize) -> Message {
        let replica = &self.replicas[from];
        Message::Ack {
            from,
            to,
            applied: replica.core.applied().clone(),
            applied_writes: replica.applied.clone(),
        }
    }

    fn receive(&mut self, from: usize, to: usize, mut events: Vec<Event>) -> SimResult<Message> {
        if self.network == Network::StripsDependencies {
            for e in &mut events {
                e.deps = [(e.origin.clone(), e.seq - 1)].into_iter().collect();
            }
        }
        let core = &mut self.replicas[to].core;
        let receipt: Receipt = core.receive(events)?;
        core.commit()?;
        self.stats.events_delivered += receipt.delivered.len() as u64;
        self.stats.delivered_from_buffer += receipt.from_buffer.len() as u64;
        self.stats.duplicates += receipt.duplicates as u64;
        self.stats.refused += receipt.refused as u64;
        for dot in &receipt.delivered {
            let id = self.write_id(dot)?;
            self.observe_apply(to, id)?;
        }
        self.check_clock(to, self.replicas[to].core.applied(), "applied clock")?;
        Ok(self.ack(to, from))
    }

    /// After the random phase, a reliable network: everything in flight arrives,
    /// then every replica pushes to every peer all it has not acknowledged until
    /// no replica applies anything more; then a clock exchange, so that every
    /// replica learns what everyone has applied and can collect its log.
    fn flush(&mut self) -> SimResult {
        while !self.in_flight.is_empty() {
            let index = self.rng.random_range(0..self.in_flight.len());
            let message = self.in_flight.swap_remove(index);
            if let Some(ack) = self.handle(message)? {
                self.handle(ack)?;
            }
        }
        let replicas = self.replicas.len();
        let mut rounds = 0;
        loop {
            ensure!(
                rounds < MAX_FLUSH_ROUNDS,
                Check::Convergence,
                "the reliable flush still delivers after {MAX_FLUSH_ROUNDS} rounds"
            );
            rounds += 1;
            let applied_before = self.applied_total();
            for from in 0..replicas {
                for to in (0..replicas).filter(|&to| to != from) {
                    let acked = self.acked_own(from, to);
                    let events = self.outgoing(from, to, acked, usize::MAX)?;
                    if !events.is_empty() {
                        let ack = self.receive(from, to, events)?;
                        self.handle(ack)?;
                    }
                }
            }
            if self.applied_total() == applied_before {
                break;
            }
        }
        for from in 0..replicas {
            for to in (0..replicas).filter(|&to| to != from) {
                self.handle(self.ack(from, to))?;
            }
        }
        Ok(())
    }

    fn applied_total(&self) -> Seq {
        self.replicas
            .iter()
            .flat_map(|r| &r.applied_per_origin)
            .sum()
    }

    // ---- The oracle ----

    fn write_id(&self, dot: &Dot) -> SimResult<WriteId> {
        self.nodes
            .iter()
            .position(|n| *n == dot.origin)
            .and_then(|origin| {
                let index = usize::try_from(dot.seq).ok()?.checked_sub(1)?;
                self.truth.by_origin[origin].get(index).copied()
            })
            .ok_or_else(|| {
                Violation::new(Check::Core, format!("the core names {dot}, never written"))
            })
    }

    fn sibling_ids(&self, read: &ReadResult) -> SimResult<Vec<WriteId>> {
        read.siblings
            .iter()
            .map(|e| self.write_id(&e.dot()))
            .collect()
    }

    /// Records that replica `at` applied write `id`, after checking causal
    /// delivery against the ground truth.
    fn observe_apply(&mut self, at: usize, id: WriteId) -> SimResult {
        let write = &self.truth.writes[id];
        let replica = &mut self.replicas[at];
        let node = &self.nodes[at];
        let dot = write.event.dot();
        ensure!(
            !replica.applied.contains(id),
            Check::CausalDelivery,
            "{node} applied {dot} twice"
        );
        if let Some(missing) = write.past.first_not_in(&replica.applied) {
            return Err(Violation::new(
                Check::CausalDelivery,
                format!(
                    "{node} applied {dot} before {}, which {} had applied when it wrote {dot}",
                    self.truth.dot(missing),
                    write.event.origin
                ),
            ));
        }
        replica.applied.insert(id);
        replica.applied_per_origin[write.origin] += 1;
        let siblings = &mut replica.expected_siblings[write.key];
        siblings.retain(|&s| !write.past.contains(s));
        siblings.push(id);
        Ok(())
    }

    /// Checks a clock of replica `at` against the writes the ground truth says it
    /// has applied.
    fn check_clock(&self, at: usize, clock: &VClock, what: &str) -> SimResult {
        let counts = &self.replicas[at].applied_per_origin;
        let agrees = self
            .nodes
            .iter()
            .zip(counts)
            .all(|(node, &count)| clock.get(node) == count);
        ensure!(
            agrees && clock.nodes().all(|n| self.nodes.contains(n)),
            Check::Core,
            "{}'s {what} {clock} disagrees with the writes it applied, {counts:?} per origin",
            self.nodes[at]
        );
        Ok(())
    }

    /// The siblings of `key` at replica `at` must be the causally maximal writes
    /// of the key it has applied, hence pairwise concurrent, less tombstones it
    /// has collected, which must be stable: deletes it knows every node applied.
    /// Returns the collected tombstones.
    fn check_siblings(
        &self,
        at: usize,
        key: usize,
        siblings: &[WriteId],
    ) -> SimResult<Vec<WriteId>> {
        for &a in siblings {
            for &b in siblings {
                ensure!(
                    !self.truth.writes[b].past.contains(a),
                    Check::Siblings,
                    "{} holds both {} and {} as siblings of {}, but the second saw the first",
                    self.nodes[at],
                    self.truth.dot(a),
                    self.truth.dot(b),
                    self.keys[key]
                );
            }
        }
        let expected = &self.replicas[at].expected_siblings[key];
        let (collected, missing): (Vec<WriteId>, Vec<WriteId>) = expected
            .iter()
            .filter(|id| !siblings.contains(id))
            .partition(|&&id| self.truth.writes[id].is_delete() && self.is_stable_at(at, id));
        let all_expected = siblings.iter().all(|id| expected.contains(id));
        ensure!(
            all_expected && missing.is_empty(),
            Check::Siblings,
            "{} holds siblings {} of {}, but the writes it applied make them {} \
             (of which it may have collected the stable tombstones {})",
            self.nodes[at],
            self.truth.dots(siblings),
            self.keys[key],
            self.truth.dots(expected),
            self.truth.dots(&collected)
        );
        Ok(collected)
    }

    /// Whether replica `at` knows that every node has applied write `id`.
    fn is_stable_at(&self, at: usize, id: WriteId) -> bool {
        let replica = &self.replicas[at];
        replica.applied.contains(id)
            && (0..self.replicas.len())
                .filter(|&peer| peer != at)
                .all(|peer| replica.acked_by_peer[peer].contains(id))
    }

    /// The last sibling is the largest by `(sum of timestamp, origin)`, and the
    /// single-value view shows the largest put (a delete hides the key only when
    /// no concurrent put remains).
    fn check_winner(
        &self,
        at: usize,
        key: usize,
        read: &ReadResult,
        siblings: &[WriteId],
    ) -> SimResult {
        let order = |id: &WriteId| {
            let e = &self.truth.writes[*id].event;
            (e.timestamp().sum(), e.origin.clone())
        };
        let last = siblings.iter().copied().max_by_key(order);
        let put = siblings
            .iter()
            .copied()
            .filter(|&id| !self.truth.writes[id].is_delete())
            .max_by_key(order);
        let value = put.and_then(|id| self.truth.writes[id].event.op.value());
        ensure!(
            siblings.last().copied() == last && read.winner() == value,
            Check::Siblings,
            "{} orders the siblings of {} as {} and shows {:?}; the rules put {} last and \
             show {:?}",
            self.nodes[at],
            self.keys[key],
            self.truth.dots(siblings),
            read.winner(),
            dot_list(last.map(|id| self.truth.dot(id))),
            value
        );
        Ok(())
    }

    // ---- Final checks ----

    fn check_converged(&self) -> SimResult {
        let reference = &self.replicas[0];
        let reference_dump = reference.core.store().dump();
        for (at, replica) in self.replicas.iter().enumerate() {
            let node = &self.nodes[at];
            ensure!(
                replica.core.buffered() == 0,
                Check::Convergence,
                "{node} still buffers {} events after the flush",
                replica.core.buffered()
            );
            for (origin, writes) in self.truth.by_origin.iter().enumerate() {
                ensure!(
                    replica.applied_per_origin[origin] == writes.len() as Seq,
                    Check::NoLostWrites,
                    "{node} applied {} of the {} writes of {}",
                    replica.applied_per_origin[origin],
                    writes.len(),
                    self.nodes[origin]
                );
            }
            self.check_clock(at, replica.core.applied(), "applied clock")?;
            ensure!(
                replica.core.applied() == reference.core.applied(),
                Check::Convergence,
                "{node} applied {} but {} applied {}",
                replica.core.applied(),
                self.nodes[0],
                reference.core.applied()
            );
            ensure!(
                replica.core.store().log_len() == 0,
                Check::Core,
                "{node} keeps {} log entries although every node acknowledged everything",
                replica.core.store().log_len()
            );
            let dump = replica.core.store().dump();
            let differing: Vec<&String> = self
                .keys
                .iter()
                .filter(|k| dump.get(*k) != reference_dump.get(*k))
                .collect();
            ensure!(
                dump == reference_dump,
                Check::Convergence,
                "{node} and {} hold different siblings for {differing:?}",
                self.nodes[0]
            );
            for key in 0..self.keys.len() {
                self.check_final_siblings(at, key)?;
            }
        }
        Ok(())
    }

    /// After the flush, replica `at` holds the siblings of `key` exactly as they
    /// were written, the same as replica 0 and with the same winner, and no
    /// tombstone: every delete is stable by now.
    fn check_final_siblings(&self, at: usize, key: usize) -> SimResult {
        let node = &self.nodes[at];
        let read = self.replicas[at].core.read(&self.keys[key])?;
        let siblings = self.sibling_ids(&read)?;
        self.check_siblings(at, key, &siblings)?;
        self.check_winner(at, key, &read, &siblings)?;
        for (sibling, &id) in read.siblings.iter().zip(&siblings) {
            let written = &self.truth.writes[id];
            ensure!(
                **sibling == *written.event,
                Check::Convergence,
                "{node} holds {sibling:?} as a sibling of {}, but it was written as {:?}",
                self.keys[key],
                written.event
            );
            ensure!(
                !written.is_delete(),
                Check::Convergence,
                "{node} still holds the tombstone {} of {}, though every node has \
                 acknowledged it",
                self.truth.dot(id),
                self.keys[key]
            );
        }
        let reference = self.replicas[0].core.read(&self.keys[key])?;
        ensure!(
            read.siblings == reference.siblings && read.winner() == reference.winner(),
            Check::Convergence,
            "{node} and {} hold different siblings of {}: {} and {}",
            self.nodes[0],
            self.keys[key],
            dot_list(read.siblings.iter().map(|e| e.dot())),
            dot_list(reference.siblings.iter().map(|e| e.dot()))
        );
        Ok(())
    }

    /// Computed afresh from the ground truth: once every write is everywhere and
    /// stable, the siblings of a key are the puts that no write of the key saw.
    /// A write may disappear only by being overwritten, or as a collected
    /// tombstone.
    fn check_no_lost_writes(&self) -> SimResult {
        for (key, name) in self.keys.iter().enumerate() {
            let writes: Vec<WriteId> = (0..self.truth.writes.len())
                .filter(|&id| self.truth.writes[id].key == key)
                .collect();
            let survivors: Vec<WriteId> = writes
                .iter()
                .copied()
                .filter(|&w| !self.truth.writes[w].is_delete())
                .filter(|&w| {
                    !writes
                        .iter()
                        .any(|&v| self.truth.writes[v].past.contains(w))
                })
                .collect();
            for (at, replica) in self.replicas.iter().enumerate() {
                let mut siblings = self.sibling_ids(&replica.core.read(name)?)?;
                siblings.sort_unstable();
                let lost: Vec<WriteId> = survivors
                    .iter()
                    .copied()
                    .filter(|w| !siblings.contains(w))
                    .collect();
                ensure!(
                    siblings == survivors,
                    Check::NoLostWrites,
                    "{} holds siblings {} of {name}, but its writes {} leave {}; lost: {}",
                    self.nodes[at],
                    self.truth.dots(&siblings),
                    self.truth.dots(&writes),
                    self.truth.dots(&survivors),
                    self.truth.dots(&lost)
                );
            }
        }
        Ok(())
    }

    /// After the flush, every session's context is satisfied everywhere, and a
    /// read of every key still shows what the session wrote and read.
    fn check_sessions_after_flush(&mut self) -> SimResult {
        for session in 0..self.sessions.len() {
            for at in 0..self.replicas.len() {
                ensure!(
                    self.context_satisfied(session, at)?,
                    Check::Sessions,
                    "session {session}'s context {} is still ahead of {} after the flush",
                    self.sessions[session].context,
                    self.nodes[at]
                );
            }
            for key in 0..self.keys.len() {
                let at = self.rng.random_range(0..self.replicas.len());
                self.trace.push(Step::Read { session, at, key });
                self.client_read(session, at, key)?;
            }
        }
        Ok(())
    }
}
