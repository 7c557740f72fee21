//! Deterministic simulation of the causal core and its replication protocol,
//! with crashes, restarts, data loss, cut links and time.
//!
//! Three to five replicas of [`Core`] exchange their writes through a simulated
//! network that reorders, duplicates, delays and drops messages (requests and
//! answers alike), cuts links between replicas while both stay up, and now and
//! then inflates an answer to claim more of the receiver's writes than it made;
//! client sessions write and read at random replicas, carrying their causal
//! context as `kvctl` does. Time is simulated. One seeded generator drives
//! everything, so a seed replays exactly.
//!
//! Each replica runs the node's own replication protocol: one
//! [`kvnode::core::replication::Link`] per peer, polled at random moments (as
//! the node's replication task wakes) and fed the answers to its requests, so
//! retransmission after `retransmit_after` or a failure, repair through any
//! replica after `repair_after`, idle clock exchanges and the checks on
//! acknowledgements are the very code a node runs; only the sockets are
//! simulated. A client whose context is ahead of a replica starts the node's
//! [`ContextWait`], which asks the origins of the missing entries: the
//! sessions' contexts must never be denied, and forged contexts (counting
//! writes an origin never made) must be refused whenever the origin answers.
//!
//! Each replica works like the node's writer path: the commands it takes (client
//! writes, received batches, peers' acknowledgements) form groups of random size,
//! each ended by one [`Core::commit`]. Only a commit makes a group visible: a
//! client's write is acknowledged, and a batch is answered, once the group is
//! committed; links push only committed events and reads see only committed
//! state (as in the node, where both take the core between groups). At random
//! moments a replica crashes: its core, buffer, links and open group are
//! dropped without a commit; it stays down for a while or restarts at once,
//! with a new [`Core`] built over its store's committed state and new links.
//!
//! Now and then a replica **loses its data**: it crashes and its store is
//! replaced by an empty one (a deleted data directory), at a moment when every
//! write it committed is committed at another replica too (otherwise those
//! writes would be gone for good, which no protocol can prevent), and while no
//! other replica is recovering from such a loss. Every (re)start runs the
//! node's own recovery ([`Recovery`]), fed as the node feeds it: what each
//! peer's clock counts of the replica's writes (and whether it holds writes of
//! other origins the replica lacks) from its links' answers, their notices of
//! overclaimed acknowledgements and the peers' clock exchanges, and its links'
//! failures. A store in a data directory where the replica has been live (its
//! identity file, written then) with no unfinished bootstrap is complete: it
//! goes live once every peer has answered or failed, or after a request's
//! timeout; an empty one waits until every peer has answered; an unfinished one
//! bootstraps first. A replica that is not live refuses client writes (the
//! session tries later), answers no question about a context (the client
//! waits), and serves reads only when [`Recovery::serves_reads`] says. When the recovery decides to bootstrap, the
//! replica copies its source's keys through the simulated network in chunks of
//! one or two keys (requests and answers can be lost, delayed or duplicated;
//! the source may crash, restart or refuse; the bootstrap then fails, and goes
//! on later from the last chunk installed, as the node's marker file keeps it),
//! with client writes and replication going on between chunks, so that later
//! chunks show writes beyond earlier chunks' clocks. The source records the
//! requester's clock before it reads each chunk between two groups; each chunk
//! is installed in one commit; after the last one the replica has applied the
//! meet of the chunks' clocks, and takes the rest through replication before it
//! goes live. While its marker is there it takes no batch, and shows its peers
//! no more than the meet of the chunks installed so far.
//!
//! Membership changes too. In some seeds one replica starts **outside the
//! membership**, down and empty, and is **added** at a random step (or before
//! the final flush), as `kvctl cluster add` and its first start do: every
//! member hands the new membership to its core ([`Core::set_members`],
//! through its writer path) and starts a link to it; the new replica checks
//! with its peers, bootstraps from one and goes live. Its peers' logs keep,
//! from then on, what it has not acknowledged; what they collected before is
//! in its snapshot. And once in a while a live replica is **removed**, as
//! `kvctl cluster remove` does (while no replica recovers its history): the
//! others take the new membership and drop their link to it, at once or at
//! their next start; clients write elsewhere; the removed replica keeps
//! running and sending its own writes. Its peers then no longer wait for its
//! acknowledgements to collect their logs. Every check below holds for the
//! members: they converge, hold every acknowledged write (the removed
//! replica's included), and collect their logs; the removed replica may lag.
//!
//! The same simulation runs over two stores:
//!
//! - [`MemStore`], wrapped to keep a copy of its state at each commit, which a
//!   crash goes back to (1000 seeds by default);
//! - [`DurableStore`] in a temporary directory (under `/dev/shm` when there is
//!   one, `SIM_DURABLE_DIR` to choose) with [`Durability::None`], where a crash
//!   drops the store with its uncommitted changes and reopens the directory:
//!   the node's recovery path (50 seeds by default; odd seeds keep only 4
//!   events of the log in memory, so that the rest is read from disk). A data
//!   loss deletes the replica's directory.
//!
//! The simulator keeps its own ground truth and never trusts the core's clocks
//! for it: the causal past of every write (the writes applied at its origin when
//! it was made) and the writes each replica has applied (its local writes and
//! what [`Receipt::delivered`] reports), both in all and as of its last commit.
//! Against that ground truth, every seed checks:
//!
//! 1. **causal delivery**: a replica applies a write only after its whole causal
//!    past, and only once;
//! 2. **convergence**: after a reliable flush, all replicas hold the same
//!    `applied` clock and the same siblings, event for event, for every key;
//! 3. **no lost writes**: every acknowledged write is applied everywhere, and
//!    once everything is stable each key's siblings are exactly its puts that no
//!    other write of the key saw: a write disappears only by being overwritten,
//!    or as a tombstone collected once stable, or by a crash before the commit
//!    of its group (it was never acknowledged);
//! 4. **sessions**: read-your-writes and monotonic reads: every write a session
//!    made (and had acknowledged) or read is, at each later read of the key, a
//!    sibling or in the causal past of a sibling (or of a collected tombstone);
//! 5. **siblings**: at every read, a key's siblings are its causally maximal
//!    applied writes (so pairwise concurrent), less tombstones the replica knows
//!    to be stable; the last one is the largest by `(sum of timestamp, origin)`,
//!    the single-value view shows the largest put, and after the flush every
//!    replica shows the same;
//! 6. **recovery**: after a crash, the rebuilt core's `applied` clock counts
//!    exactly the writes the replica had committed (nothing after a data loss),
//!    its siblings are those of its committed writes (or, half-way through a
//!    bootstrap, of the chunks it installed), and a write lost in the crash is
//!    held by no other replica, in no buffer and in no message in flight (it
//!    never left); what its peers hold as its acknowledgements, and its answers
//!    in flight, count no more than it ever committed;
//! 7. **no dot reused**: the ground truth names the write of every dot; a
//!    replica never gives a new write a dot that names another (only a write
//!    lost in a crash before its commit gives its dot back), and never goes
//!    live holding fewer of its own writes than it made;
//! 8. **bootstraps**: each chunk is exactly its source's state for its range of
//!    keys when read, the meet of the chunks' clocks counts a causally closed
//!    set of writes, the replica's clock after the install is that meet, and its
//!    keys show every write the meet counts (a write shown beyond the meet and
//!    delivered again later changes nothing).
//!
//! Along the way it also checks the core's bookkeeping against the ground truth:
//! its `applied` clock, the seqs it assigns, and that log collection never drops
//! an event a peer has not acknowledged (a peer that lost its data may need
//! events every node had acknowledged before: a snapshot gives them back; a
//! replica that bootstrapped lacks in its log its own writes the snapshot
//! installed). Check 3 holds for a replica that lost its data too: after the
//! final flush it holds every acknowledged write.
//!
//! Each seed ends in three phases on a reliable network. First every replica
//! restarts, every link heals and time passes until the replicas agree. Then
//! one fault is held while they settle again, so that only repair through a
//! third replica can carry some writes: a cut link whose one end makes writes,
//! or an origin that pushes writes to one peer (through a lost batch and a
//! lying answer) and goes down; the live replicas must converge on everything
//! any of them holds. Last, everything heals and the final checks run.
//!
//! Mutation checks run the same machinery broken on purpose and require the
//! oracle to notice: a network that strips the dependencies off every event
//! (caught as a causal-delivery violation), a store whose commit does not
//! persist the `applied` clock, links that push uncommitted events (both
//! caught by the recovery check), replicas that acknowledge writes and
//! batches before their commit (caught by the recovery or session checks),
//! the protocol's own switches ([`kvnode::core::replication::Mutations`]):
//! links that never retransmit, links that never repair other origins'
//! writes, and links that trust acknowledgements beyond what their node made;
//! and replicas that go live at once over the empty store a data loss left
//! (`force_new_history`), caught by the dot and lost-write checks.
//!
//! The node has known shortcomings around a replica that lost its data, which
//! the oracle reports; by default the simulation steers around each of them,
//! so that everything else is still checked (see `Avoid`, which describes each
//! one and how it is avoided). `SIM_NODE_AS_IS=all`, or a comma-separated
//! list of `Avoid`'s fields, runs the node as it is in those respects.
//!
//! Seeds: 1000 in memory and 50 on disk by default; `SIM_SEEDS=N` and
//! `SIM_DURABLE_SEEDS=N` change that, `SIM_SEED=S` replays one seed in both
//! (`SIM_SEED=S cargo test -p kvnode --test simulation`), and `SIM_TRACE=N`
//! shows the last `N` steps of a failure instead of 25.
//!
//! Left out: the per-peer acknowledged clocks surviving a restart (the core
//! starts them from zero, which the simulation accepts), pipelined requests (a
//! link has one in flight), answers inflated to a recovering replica (it takes
//! what its peers claim to hold of its writes as true), and two replicas
//! recovering from a data loss at once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kvnode::core::replication::{
    Action, Answer, Link, Mutations, Notice, RequestBody, RequestId, Settings,
};
use kvnode::core::{
    ContextError, ContextWait, Core, CoreError, Decision, Limits, Phase, ReadResult, Receipt,
    Recovery, Trust, WaitStep,
};
use kvnode::storage::durable::{Durability, DurableStore, DEFAULT_LOG_MEMORY_EVENTS};
use kvnode::storage::{MemStore, Siblings, Store, StoreResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vclock_proto::{Dot, Event, Op, Seq, VClock, Value, Write as KeyWrite};

/// In-memory seeds run when neither `SIM_SEEDS` nor `SIM_SEED` is set.
const DEFAULT_SEEDS: u64 = 1000;
/// Seeds on the durable store when neither `SIM_DURABLE_SEEDS` nor `SIM_SEED` is set.
const DEFAULT_DURABLE_SEEDS: u64 = 50;
/// Seeds each mutation check tries.
const MUTATION_SEEDS: u64 = 20;
/// How many of the last steps a failure report shows, unless `SIM_TRACE`
/// says.
const TRACE_TAIL: usize = 25;
/// The command that replays a seed, after `SIM_SEED=<seed>`.
const REPLAY: &str = "cargo test -p kvnode --test simulation";

#[test]
fn random_schedules_keep_causal_consistency() {
    let seeds = seeds_to_run("SIM_SEEDS", DEFAULT_SEEDS);
    let total = run_seeds(&seeds, "random_schedules_keep_causal_consistency", |seed| {
        run_seed(seed, Mutation::None, MemBackend::default())
    });
    // Every path of the protocol was taken, or the checks above prove less
    // than they seem to.
    if seeds.len() >= 100 {
        let paths = [
            ("retransmissions", total.retransmissions),
            ("repaired events", total.repaired_events),
            ("overclaims refused", total.overclaims_refused),
            ("failed requests", total.failed_requests),
            ("origins asked about a context", total.origins_asked),
            ("forged contexts refused", total.forged_contexts_refused),
            (
                "events delivered from the buffer",
                total.delivered_from_buffer,
            ),
            ("crashes", total.crashes),
            ("buffered events swept", total.swept_events),
            ("atomic writes", total.txns),
            ("snapshot reads", total.snapshots),
            ("data losses", total.data_losses),
            ("removals", total.removals),
            ("joins", total.joins),
            ("bootstraps installed", total.bootstraps_done),
            ("bootstraps failed", total.bootstraps_failed),
            (
                "siblings installed beyond the meet",
                total.shown_beyond_meet,
            ),
            ("writes delivered again to a key", total.shown_again),
        ];
        for (path, count) in paths {
            assert!(count > 0, "no seed exercised {path}: {total:?}");
        }
    }
}

#[test]
fn random_schedules_keep_causal_consistency_on_durable_store() {
    let seeds = seeds_to_run("SIM_DURABLE_SEEDS", DEFAULT_DURABLE_SEEDS);
    let _ = run_seeds(
        &seeds,
        "random_schedules_keep_causal_consistency_on_durable_store",
        |seed| {
            // Odd seeds keep only a few events of the log in memory, so that
            // replication, repair and recovery read the rest from disk.
            let log_memory = if seed % 2 == 1 {
                4
            } else {
                DEFAULT_LOG_MEMORY_EVENTS
            };
            run_seed(seed, Mutation::None, DurableBackend::new(log_memory))
        },
    );
}

#[test]
fn mutation_check_catches_delivery_that_ignores_dependencies() {
    let caught = mutation_caught(&[Check::CausalDelivery], |seed| {
        run_seed(seed, Mutation::StripsDependencies, MemBackend::default())
    });
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

#[test]
fn mutation_check_catches_a_commit_that_loses_the_applied_clock() {
    let caught = mutation_caught(&[Check::Recovery], |seed| {
        run_seed(seed, Mutation::None, MemBackend::losing_applied_clock())
    });
    assert!(
        !caught.is_empty(),
        "a store that does not persist the applied clock went unnoticed by the recovery \
         check in seeds 0..{MUTATION_SEEDS}"
    );
    println!(
        "lost applied clocks caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

#[test]
fn mutation_check_catches_acknowledging_before_commit() {
    let caught = mutation_caught(&[Check::Recovery, Check::Sessions], |seed| {
        run_seed(seed, Mutation::AcksBeforeCommit, MemBackend::default())
    });
    assert!(
        !caught.is_empty(),
        "acknowledging writes and batches before their commit went unnoticed by the \
         recovery and session checks in seeds 0..{MUTATION_SEEDS}"
    );
    println!(
        "acknowledgements before commit caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

#[test]
fn mutation_check_catches_senders_that_push_uncommitted_events() {
    let caught = mutation_caught(&[Check::Recovery], |seed| {
        run_seed(seed, Mutation::SendsUncommitted, MemBackend::default())
    });
    assert!(
        !caught.is_empty(),
        "senders that push uncommitted events went unnoticed by the recovery check \
         in seeds 0..{MUTATION_SEEDS}"
    );
    println!(
        "uncommitted events leaving a replica caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

#[test]
fn mutation_check_catches_a_sender_that_never_retransmits() {
    let caught = mutation_caught(
        &[Check::Convergence, Check::NoLostWrites, Check::Sessions],
        |seed| run_seed(seed, Mutation::NeverRetransmits, MemBackend::default()),
    );
    assert!(
        !caught.is_empty(),
        "links that never go back to the acknowledged cursor went unnoticed in seeds \
         0..{MUTATION_SEEDS}"
    );
    println!(
        "links that never retransmit caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

#[test]
fn mutation_check_catches_a_repair_that_skips_other_origins() {
    let caught = mutation_caught(&[Check::Convergence, Check::NoLostWrites], |seed| {
        run_seed(seed, Mutation::NeverRepairs, MemBackend::default())
    });
    assert!(
        !caught.is_empty(),
        "links that never repair other origins' writes went unnoticed in seeds \
         0..{MUTATION_SEEDS}"
    );
    println!(
        "links that never repair caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

#[test]
fn mutation_check_catches_acknowledgements_trusted_beyond_what_was_made() {
    let caught = mutation_caught(
        &[Check::Core, Check::Convergence, Check::NoLostWrites],
        |seed| run_seed(seed, Mutation::TrustsAcks, MemBackend::default()),
    );
    assert!(
        !caught.is_empty(),
        "links that trust acknowledgements beyond what their node made went unnoticed in \
         seeds 0..{MUTATION_SEEDS}"
    );
    println!(
        "trusted overclaims caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

#[test]
fn mutation_check_catches_a_replica_that_forgets_its_history() {
    let caught = mutation_caught(&[Check::DotReuse, Check::NoLostWrites], |seed| {
        run_seed(seed, Mutation::ForgetsHistory, MemBackend::default())
    });
    assert!(
        !caught.is_empty(),
        "replicas that go live at once over the empty store left by a data loss went \
         unnoticed by the dot and lost-write checks in seeds 0..{MUTATION_SEEDS}"
    );
    println!(
        "replicas forgetting their history caught in {} of {MUTATION_SEEDS} seeds: {caught:?}",
        caught.len()
    );
}

/// Runs `seeds`, panicking at the first failure with the command that replays it.
fn run_seeds(seeds: &[u64], test: &str, run: impl Fn(u64) -> Result<Stats, Failure>) -> Stats {
    let mut total = Stats::default();
    for &seed in seeds {
        match run(seed) {
            Ok(stats) => total.add(&stats),
            Err(failure) => panic!(
                "simulation seed {seed} failed: {failure}\nreplay it with: \
                 SIM_SEED={seed} {REPLAY} {test}"
            ),
        }
    }
    println!("{} seeds passed; totals: {total:?}", seeds.len());
    total
}

/// The seeds among `0..MUTATION_SEEDS` where `run` fails with one of `checks`.
fn mutation_caught(checks: &[Check], run: impl Fn(u64) -> Result<Stats, Failure>) -> Vec<u64> {
    (0..MUTATION_SEEDS)
        .filter(|&seed| run(seed).is_err_and(|failure| checks.contains(&failure.check)))
        .collect()
}

/// `SIM_SEED=S` runs seed `S` only; otherwise seeds `0..$count_var` (default
/// `default`).
fn seeds_to_run(count_var: &str, default: u64) -> Vec<u64> {
    if let Some(seed) = env_number("SIM_SEED") {
        return vec![seed];
    }
    (0..env_number(count_var).unwrap_or(default)).collect()
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
fn run_seed<B: Backend>(seed: u64, mutation: Mutation, backend: B) -> Result<Stats, Failure> {
    panic::catch_unwind(AssertUnwindSafe(|| simulate(seed, mutation, backend)))
        .unwrap_or_else(|payload| Err(Failure::panicked(payload.as_ref())))
}

fn simulate<B: Backend>(seed: u64, mutation: Mutation, backend: B) -> Result<Stats, Failure> {
    let mut sim = Sim::new(seed, mutation, backend).map_err(|v| Failure::new(v, "", &[]))?;
    match sim.run() {
        Ok(()) => Ok(sim.stats),
        Err(violation) => Err(Failure::new(
            violation,
            &format!("{:?}", sim.params),
            &sim.trace,
        )),
    }
}

// ---- Stores ---------------------------------------------------------------------

/// Where the replicas keep their state, and what a crash leaves of it.
trait Backend {
    type Store: Store + fmt::Debug;

    /// Opens the store of replica `at`: empty the first time, and after a crash
    /// with what it had committed. The replica's previous store is dropped.
    fn open(&mut self, at: usize) -> StoreResult<Self::Store>;

    /// Replica `at` (down, its store dropped) loses its data: the next
    /// [`Self::open`] finds an empty store.
    fn lose(&mut self, at: usize) -> Result<(), String>;

    /// Every key with siblings, in key order.
    fn dump(store: &Self::Store) -> StoreResult<BTreeMap<String, Siblings>>;
}

/// [`MemStore`]s that a crash takes back to their last commit.
#[derive(Debug, Default)]
struct MemBackend {
    /// Per replica, its store as of its last commit.
    committed: Vec<Rc<RefCell<MemStore>>>,
    /// Broken on purpose: commits keep everything but the `applied` clock.
    loses_applied_clock: bool,
}

impl MemBackend {
    fn losing_applied_clock() -> Self {
        Self {
            loses_applied_clock: true,
            ..Self::default()
        }
    }
}

impl Backend for MemBackend {
    type Store = CrashableMemStore;

    fn open(&mut self, at: usize) -> StoreResult<CrashableMemStore> {
        while self.committed.len() <= at {
            self.committed.push(Rc::default());
        }
        let committed = self.committed[at].clone();
        let live = committed.borrow().clone();
        Ok(CrashableMemStore {
            live,
            committed,
            loses_applied_clock: self.loses_applied_clock,
        })
    }

    fn lose(&mut self, at: usize) -> Result<(), String> {
        if let Some(committed) = self.committed.get(at) {
            *committed.borrow_mut() = MemStore::default();
        }
        Ok(())
    }

    fn dump(store: &CrashableMemStore) -> StoreResult<BTreeMap<String, Siblings>> {
        Ok(store.live.dump())
    }
}

/// A [`MemStore`] whose every commit also saves a copy of it, for a crash to go
/// back to: the changes since the last commit are what a crash loses.
#[derive(Debug)]
struct CrashableMemStore {
    live: MemStore,
    committed: Rc<RefCell<MemStore>>,
    loses_applied_clock: bool,
}

impl Store for CrashableMemStore {
    fn siblings(&self, key: &str) -> StoreResult<Siblings> {
        self.live.siblings(key)
    }
    fn set_siblings(&mut self, key: &str, siblings: Siblings) -> StoreResult<()> {
        self.live.set_siblings(key, siblings)
    }
    fn append(&mut self, event: Arc<Event>) -> StoreResult<()> {
        self.live.append(event)
    }
    fn log_after(&self, origin: &str, after: Seq, limit: usize) -> StoreResult<Vec<Arc<Event>>> {
        self.live.log_after(origin, after, limit)
    }
    fn truncate(&mut self, origin: &str, through: Seq) -> StoreResult<()> {
        self.live.truncate(origin, through)
    }
    fn log_len(&self) -> u64 {
        self.live.log_len()
    }
    fn applied(&self) -> StoreResult<VClock> {
        self.live.applied()
    }
    fn commit(&mut self, applied: &VClock) -> StoreResult<()> {
        self.live.commit(applied)?;
        let mut snapshot = self.live.clone();
        if self.loses_applied_clock {
            let previous = self.committed.borrow().applied()?;
            snapshot.commit(&previous)?;
        }
        *self.committed.borrow_mut() = snapshot;
        Ok(())
    }
    fn fsyncs(&self) -> u64 {
        self.live.fsyncs()
    }
    fn keys_after(
        &self,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<(String, Siblings)>> {
        self.live.keys_after(after, limit, max_bytes)
    }
    fn reset_log(&mut self) -> StoreResult<()> {
        self.live.reset_log()
    }
}

/// [`DurableStore`]s in a temporary directory, one subdirectory per replica;
/// a crash drops the store with its uncommitted changes and reopens it.
#[derive(Debug)]
struct DurableBackend {
    dir: tempfile::TempDir,
    /// Events of the log each store keeps in memory.
    log_memory: usize,
}

impl DurableBackend {
    /// In `SIM_DURABLE_DIR` when set, else in `/dev/shm` when there is one:
    /// opening a new fjall database syncs files and directories, which is
    /// slow on a busy disk and free in memory. A crash here is the process's
    /// (the store is dropped), so the medium does not change what is tested.
    fn new(log_memory: usize) -> Self {
        let base = std::env::var_os("SIM_DURABLE_DIR")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("kvnode-sim-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot make a directory in {}: {e}", base.display()));
        Self { dir, log_memory }
    }

    fn replica_dir(&self, at: usize) -> PathBuf {
        self.dir.path().join(format!("node{at}"))
    }
}

impl Backend for DurableBackend {
    type Store = DurableStore;

    fn open(&mut self, at: usize) -> StoreResult<DurableStore> {
        DurableStore::open(&self.replica_dir(at), Durability::None)
            .map(|store| store.with_log_memory_events(self.log_memory))
    }

    /// The directory is deleted, as an operator replacing a disk does.
    fn lose(&mut self, at: usize) -> Result<(), String> {
        let dir = self.replica_dir(at);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot delete {}: {e}", dir.display())),
        }
    }

    fn dump(store: &DurableStore) -> StoreResult<BTreeMap<String, Siblings>> {
        store.dump()
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
    /// A snapshot read of several keys shows part of a transaction, or a
    /// write without one of its causal past on another key it read.
    Snapshot,
    /// A restarted replica does not hold exactly what it had committed, or a
    /// write lost in a crash had left the replica.
    Recovery,
    /// A replica gives a new write the dot of another write, or goes live
    /// holding fewer of its own writes than it made (its next write would).
    DotReuse,
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
        let tail = env_number("SIM_TRACE").map_or(TRACE_TAIL, |n| n as usize);
        let first_shown_step = trace.len().saturating_sub(tail);
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
    /// Client atomic writes of several keys.
    txns: u64,
    /// Client snapshot reads of several keys.
    snapshots: u64,
    /// Client operations skipped because the replica lagged the session's context.
    stale_contexts: u64,
    /// Client operations skipped because the session waited for a write's ack.
    waiting_for_ack: u64,
    /// Stable tombstones found collected by a read.
    collected_tombstones_read: u64,
    events_delivered: u64,
    delivered_from_buffer: u64,
    duplicates: u64,
    refused: u64,
    messages_dropped: u64,
    messages_duplicated: u64,
    commits: u64,
    /// Commits of groups of more than one command.
    group_commits: u64,
    crashes: u64,
    /// Crashes that lost an open group.
    crashes_losing_a_group: u64,
    /// Client writes lost in a crash before their commit (never acknowledged).
    writes_lost: u64,
    /// Events lost in a crash while buffered.
    buffered_lost: u64,
    /// Client operations at a replica that was down.
    unavailable: u64,
    /// Origins asked whether a context's writes exist.
    origins_asked: u64,
    /// Contexts counting writes never made, refused (409).
    forged_contexts_refused: u64,
    /// Links going back to the acknowledged cursor.
    retransmissions: u64,
    /// Events sent by repair through a replica other than their origin.
    repaired_events: u64,
    /// Acknowledgements inflated beyond what their receiver made, sent...
    overclaims_sent: u64,
    /// ...and refused by the link.
    overclaims_refused: u64,
    /// Requests that failed (lost, timed out, refused, busy).
    failed_requests: u64,
    /// Rounds of simulated time that settling took.
    settle_rounds: u64,
    /// Buffered events dropped by a sweep (and sent again by their senders).
    swept_events: u64,
    /// Crashes that also lost the replica's data.
    data_losses: u64,
    /// Replicas removed from the membership.
    removals: u64,
    /// Replicas added to the membership.
    joins: u64,
    /// Client operations refused by a replica that was recovering.
    refused_while_recovering: u64,
    /// Bootstraps started...
    bootstraps: u64,
    /// ...installed...
    bootstraps_done: u64,
    /// ...and failed (the source went down or refused, a request was lost).
    bootstraps_failed: u64,
    /// Chunks of snapshots installed.
    chunks: u64,
    /// Siblings installed by a bootstrap beyond the meet of its chunks' clocks.
    shown_beyond_meet: u64,
    /// Writes delivered to a key that a snapshot had already shown them on.
    shown_again: u64,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.writes += other.writes;
        self.deletes += other.deletes;
        self.reads += other.reads;
        self.txns += other.txns;
        self.snapshots += other.snapshots;
        self.stale_contexts += other.stale_contexts;
        self.waiting_for_ack += other.waiting_for_ack;
        self.collected_tombstones_read += other.collected_tombstones_read;
        self.events_delivered += other.events_delivered;
        self.delivered_from_buffer += other.delivered_from_buffer;
        self.duplicates += other.duplicates;
        self.refused += other.refused;
        self.messages_dropped += other.messages_dropped;
        self.messages_duplicated += other.messages_duplicated;
        self.commits += other.commits;
        self.group_commits += other.group_commits;
        self.crashes += other.crashes;
        self.crashes_losing_a_group += other.crashes_losing_a_group;
        self.writes_lost += other.writes_lost;
        self.buffered_lost += other.buffered_lost;
        self.unavailable += other.unavailable;
        self.origins_asked += other.origins_asked;
        self.forged_contexts_refused += other.forged_contexts_refused;
        self.retransmissions += other.retransmissions;
        self.repaired_events += other.repaired_events;
        self.overclaims_sent += other.overclaims_sent;
        self.overclaims_refused += other.overclaims_refused;
        self.failed_requests += other.failed_requests;
        self.settle_rounds += other.settle_rounds;
        self.swept_events += other.swept_events;
        self.data_losses += other.data_losses;
        self.removals += other.removals;
        self.joins += other.joins;
        self.refused_while_recovering += other.refused_while_recovering;
        self.bootstraps += other.bootstraps;
        self.bootstraps_done += other.bootstraps_done;
        self.bootstraps_failed += other.bootstraps_failed;
        self.chunks += other.chunks;
        self.shown_beyond_meet += other.shown_beyond_meet;
        self.shown_again += other.shown_again;
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

/// One write (one event: a single write, or a transaction of several), as
/// its origin made it.
#[derive(Debug)]
struct Write {
    event: Arc<Event>,
    origin: usize,
    /// The keys it writes, each with whether it deletes it.
    keys: Vec<(usize, bool)>,
    /// The writes applied at the origin when this one was made: its causal past.
    past: WriteSet,
    /// Lost in a crash of its origin before its group was committed. Its seq is
    /// then given to a later write of the origin.
    lost: bool,
}

impl Write {
    /// Whether it writes `key`.
    fn writes(&self, key: usize) -> bool {
        self.keys.iter().any(|&(k, _)| k == key)
    }

    /// Whether it deletes `key`.
    fn deletes(&self, key: usize) -> bool {
        self.keys.iter().any(|&(k, delete)| k == key && delete)
    }
}

#[derive(Debug)]
struct GroundTruth {
    writes: Vec<Write>,
    /// `by_origin[o][seq - 1]` is the id of write `seq` of replica `o`: which
    /// write each dot names. Writes lost in a crash before their commit leave
    /// it (their seqs are given again); no other dot may ever name a second
    /// write.
    by_origin: Vec<Vec<WriteId>>,
}

impl GroundTruth {
    fn record(
        &mut self,
        origin: usize,
        keys: Vec<(usize, bool)>,
        event: Arc<Event>,
        past: WriteSet,
    ) -> WriteId {
        let id = self.writes.len();
        self.writes.push(Write {
            event,
            origin,
            keys,
            past,
            lost: false,
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

/// What the simulation breaks on purpose, for the mutation checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    None,
    /// Every event arrives with its `deps` cut down to its origin's entry, so
    /// receivers deliver it before its dependencies.
    StripsDependencies,
    /// Links push events of the open group, before its commit.
    SendsUncommitted,
    /// Replicas answer each command at once: a client's write, and a batch
    /// with an ack, are acknowledged before the commit of their group.
    AcksBeforeCommit,
    /// Links never go back to the acknowledged cursor (the protocol's own
    /// mutation switch).
    NeverRetransmits,
    /// Links never repair other origins' writes (the protocol's own switch).
    NeverRepairs,
    /// Links take acknowledgements beyond what their node made (the
    /// protocol's own switch).
    TrustsAcks,
    /// A replica that lost its data goes live at once over its empty store
    /// (`force_new_history`), without getting its history back from a peer.
    ForgetsHistory,
}

impl Mutation {
    /// The protocol's own deliberate bugs for this mutation.
    fn protocol(self) -> Mutations {
        Mutations {
            never_retransmit: self == Mutation::NeverRetransmits,
            never_repair: self == Mutation::NeverRepairs,
            trust_acks: self == Mutation::TrustsAcks,
        }
    }
}

/// Known shortcomings of the node around a replica that lost its data, which
/// the oracle reports as violations. By default the simulation steers around
/// each one (each field says how), so that everything else is still checked;
/// `SIM_NODE_AS_IS=all` runs the node as it is, and then reports them.
#[derive(Clone, Copy, Debug)]
struct Avoid {
    /// A tombstone that a bootstrap installs (one its source had not
    /// collected yet) is never collected by the replica that installed it:
    /// collection drops the tombstones of the events in the log, and a
    /// bootstrap starts the log afresh. Once the delete is stable, the other
    /// replicas drop it and the replica keeps it for ever. Avoided: the final
    /// comparisons leave out such a tombstone.
    installed_tombstones: bool,
    /// A bootstrap installs writes without logging them: the replica cannot
    /// send them to a peer that lacks them, not even its own writes. Only the
    /// logs of the replicas that received them by replication can; if those
    /// lose their data too before every replica has the writes, the replicas
    /// that lack them never get them. Avoided: a replica loses its data only
    /// once every replica has applied what every bootstrap installed.
    unlogged_installed_writes: bool,
}

impl Avoid {
    /// Everything avoided, unless `SIM_NODE_AS_IS` names the shortcomings to
    /// leave as they are (by field name, comma-separated), or is `all`.
    fn from_env() -> Self {
        let as_is = std::env::var("SIM_NODE_AS_IS").unwrap_or_default();
        let names: Vec<&str> = as_is.split(',').map(str::trim).collect();
        let avoid = |name: &str| !names.iter().any(|n| *n == name || *n == "all");
        let avoided = Self {
            installed_tombstones: avoid("installed_tombstones"),
            unlogged_installed_writes: avoid("unlogged_installed_writes"),
        };
        let known = format!("{avoided:?}");
        for name in names.iter().filter(|n| !n.is_empty() && **n != "all") {
            assert!(
                known.contains(&format!("{name}:")),
                "SIM_NODE_AS_IS names {name:?}, not a field of {known}"
            );
        }
        avoided
    }
}

/// The fault the last phase of a seed holds while the network is reliable,
/// so that only repair through a third replica can bring some writes across.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FinalFault {
    None,
    /// The link between the two replicas is cut while both stay up; the first
    /// makes writes that the second can only get from a third.
    Cut(usize, usize),
    /// The first replica makes writes, pushes them to the second only, and
    /// goes down.
    OriginDown(usize, usize),
}

/// The random shape of one seed's world.
#[derive(Debug)]
struct Params {
    replicas: usize,
    sessions: usize,
    keys: usize,
    steps: usize,
    max_buffered: usize,
    max_batch_events: usize,
    /// Weight of "drop a message" against [`STEP_WEIGHTS`] for all other steps.
    drop_weight: u32,
    /// Chance that a delivered message stays in flight to arrive again.
    duplicate_chance: f64,
    /// Chance that an acknowledgement arrives claiming more of the receiver's
    /// writes than it made (a confused or lying peer).
    overclaim_chance: f64,
    /// Chance that a crashed replica restarts at once.
    instant_restart: f64,
    /// Chance that a group ends after one command.
    single_command_groups: f64,
    /// Most commands in a group.
    max_group: usize,
    final_fault: FinalFault,
}

/// What the ground truth says one replica has applied and knows.
#[derive(Clone, Debug)]
struct Knowledge {
    /// The writes this replica has applied.
    applied: WriteSet,
    /// How many writes of each origin it has applied.
    applied_per_origin: Vec<Seq>,
    /// Per key, the applied writes of the key that no other applied write of the
    /// key has in its past. The siblings must be these, less the tombstones
    /// collected once stable. A bootstrap sets a key's to its source's.
    expected_siblings: Vec<Vec<WriteId>>,
    /// Per key, the tombstones that a bootstrap's source had collected when it
    /// sent the key: gone here too.
    collected_by_source: Vec<Vec<WriteId>>,
    /// Per peer, the writes its acknowledgements have shown applied.
    acked_by_peer: Vec<WriteSet>,
}

impl Knowledge {
    /// What a replica that holds nothing knows.
    fn empty(replicas: usize, keys: usize) -> Self {
        Self {
            applied: WriteSet::default(),
            applied_per_origin: vec![0; replicas],
            expected_siblings: vec![Vec::new(); keys],
            collected_by_source: vec![Vec::new(); keys],
            acked_by_peer: vec![WriteSet::default(); replicas],
        }
    }
}

/// What a replica owes for a command of its open group, once it is committed.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// Acknowledge write `id` to `session`.
    Write { session: usize, id: WriteId },
    /// Answer request `request` of `peer`'s link (of its `incarnation`) with
    /// the `applied` clock after the commit, or with "busy".
    Batch {
        peer: usize,
        incarnation: u32,
        request: RequestId,
        busy: bool,
    },
}

/// A bootstrap under way: the replica copies `source`'s keys chunk by chunk.
#[derive(Debug)]
struct Bootstrap {
    source: usize,
    /// The request waiting for its chunk, and when it was sent.
    waiting: Option<(u64, Duration)>,
}

/// How far a bootstrap got, as the node's marker file keeps it: a bootstrap
/// that failed, or that a crash interrupted, goes on from there (from
/// whichever peer it then bootstraps from).
#[derive(Clone, Debug, Default)]
struct Progress {
    /// The last key installed: the next chunk starts after it.
    after: Option<String>,
    /// The meet of the clocks of the chunks installed so far.
    meet: Option<VClock>,
}

/// A chunk of a replica's state, as `POST /peer/v1/snapshot` answers.
#[derive(Clone, Debug)]
struct Chunk {
    entries: Vec<(String, Siblings)>,
    /// The clock the chunk was read at.
    applied: VClock,
    /// Keys follow the last one.
    more: bool,
    /// Ground truth: the source's expected siblings of each key of the
    /// chunk's range when it was read.
    expected: Vec<(usize, Vec<WriteId>)>,
}

/// What the members had when a replica joined.
#[derive(Debug)]
struct Joined {
    /// The replica that joined.
    at: usize,
    /// Per replica, how many of its own writes it had committed: those it
    /// may have collected from its log before it counted the new member.
    own_committed: Vec<Seq>,
    /// Per replica, the writes stable there (tombstones it may have
    /// collected before it counted the new member).
    stable: Vec<WriteSet>,
}

/// The commands a replica has taken since its last commit.
#[derive(Debug, Default)]
struct Group {
    commands: usize,
    /// The group is committed once it holds this many commands.
    target: usize,
    replies: Vec<Reply>,
}

#[derive(Debug)]
struct Replica<S> {
    /// `None` while the replica is down.
    core: Option<Core<S>>,
    /// Its links to every peer (`None` at its own index), as the node's
    /// replication tasks hold them; rebuilt at each restart.
    links: Vec<Option<Link>>,
    /// Counts restarts: answers to requests of an earlier run never arrive.
    incarnation: u32,
    /// Ground truth, including the open group.
    now: Knowledge,
    /// Ground truth as of the last commit: what a crash goes back to.
    committed: Knowledge,
    /// The core's `applied` clock as of the last commit: what clients and
    /// links see (the node publishes it after each commit).
    committed_clock: VClock,
    /// The join of every clock it has committed: what its peers may hold as
    /// its acknowledgement (its clock goes back when it loses its data, or
    /// when a bootstrap's meet lacks writes it had).
    highest_committed: VClock,
    group: Group,
    /// Its recovery, as the node's recovery task runs it: whether it serves
    /// writes and reads yet, or must first bootstrap. Rebuilt at each restart.
    recovery: Recovery,
    /// The bootstrap under way, in the memory of the running replica.
    bootstrap: Option<Bootstrap>,
    /// The node's marker file: a bootstrap began and has not finished, and
    /// how far it got. It survives a crash (the store is then incomplete, not
    /// trusted).
    progress: Option<Progress>,
    /// The node's identity file in its data directory, written once it is
    /// live on it: a store without one is not complete.
    identity: bool,
    /// It lost its data and has not been live since.
    recovering_history: bool,
    /// How often it lost its data.
    data_losses: u32,
    /// Its own writes up to this seq are not in its log: a bootstrap
    /// installed them.
    log_floor: Seq,
    /// The tombstones its bootstraps installed.
    installed_tombstones: WriteSet,
    /// The clock its last bootstrap installed (the meet of its chunks').
    installed: VClock,
    /// The join of the clocks of every chunk it installed: its keys may show
    /// writes up to it.
    shown: VClock,
}

impl<S: Store> Replica<S> {
    fn core(&self) -> &Core<S> {
        self.core.as_ref().expect("the replica is up")
    }

    fn core_mut(&mut self) -> &mut Core<S> {
        self.core.as_mut().expect("the replica is up")
    }

    fn is_up(&self) -> bool {
        self.core.is_some()
    }

    /// Up and serving writes.
    fn is_live(&self) -> bool {
        self.is_up() && self.recovery.is_live()
    }
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
    /// A write it waits to see acknowledged; it does nothing else meanwhile.
    waiting_for: Option<WriteId>,
}

#[derive(Clone, Debug)]
enum Message {
    /// A request of `from`'s link to `to`, sent by `from`'s `incarnation` to
    /// `to`'s `to_incarnation` (a request never reaches a later run of its
    /// receiver as sent to it: a clock in it may be older than that run).
    /// For a clock exchange, `writes` are those the sent clock counts.
    Request {
        from: usize,
        to: usize,
        incarnation: u32,
        to_incarnation: u32,
        id: RequestId,
        body: RequestBody,
        writes: WriteSet,
    },
    /// `from`'s answer to request `id` of `to`'s link (of its `incarnation`).
    /// The simulator adds the writes an answered clock counts, for its
    /// ground truth.
    Answer {
        from: usize,
        to: usize,
        incarnation: u32,
        id: RequestId,
        answer: Answer,
        writes: WriteSet,
    },
    /// A request of bootstrapping replica `from` (its `incarnation`) for the
    /// chunk of `to`'s keys after `after`, with `from`'s committed clock
    /// (which counts `writes`).
    Snapshot {
        from: usize,
        to: usize,
        incarnation: u32,
        id: u64,
        after: Option<String>,
        limit: usize,
        applied: VClock,
        writes: WriteSet,
    },
    /// `from`'s answer to snapshot request `id`: a chunk (whose clock counts
    /// `writes`), or `None` when refused (503, 400, connection refused).
    Chunk {
        from: usize,
        to: usize,
        incarnation: u32,
        id: u64,
        chunk: Option<Chunk>,
        writes: WriteSet,
    },
}

impl Message {
    fn ends(&self) -> (usize, usize) {
        match self {
            Message::Request { from, to, .. }
            | Message::Answer { from, to, .. }
            | Message::Snapshot { from, to, .. }
            | Message::Chunk { from, to, .. } => (*from, *to),
        }
    }

    /// The writes it carries or whose clock it carries.
    fn carries(&self, id: WriteId, dot: &Dot) -> bool {
        match self {
            Message::Request {
                body: RequestBody::Events { events, .. },
                ..
            } => events.iter().any(|e| e.dot() == *dot),
            Message::Request { writes, .. }
            | Message::Answer { writes, .. }
            | Message::Snapshot { writes, .. } => writes.contains(id),
            Message::Chunk { chunk, writes, .. } => {
                writes.contains(id)
                    || chunk.iter().any(|chunk| {
                        chunk
                            .entries
                            .iter()
                            .any(|(_, siblings)| siblings.iter().any(|s| s.dot() == *dot))
                    })
            }
        }
    }

    fn summary(&self) -> MessageSummary {
        match self {
            Message::Request { from, to, body, .. } => match body {
                RequestBody::Events { events, repair } => MessageSummary::Events {
                    from: *from,
                    to: *to,
                    dots: (
                        events.first().map(|e| e.dot()),
                        events.last().map_or(0, |e| e.seq),
                    ),
                    repair: repair.is_some(),
                },
                RequestBody::Exchange { .. } => MessageSummary::Exchange {
                    from: *from,
                    to: *to,
                },
            },
            Message::Answer {
                from, to, answer, ..
            } => MessageSummary::Answer {
                from: *from,
                to: *to,
                answer: match answer {
                    Answer::Clock(clock) => clock.to_string(),
                    Answer::Busy(_) => "busy".into(),
                    Answer::Unreachable(_) => "unreachable".into(),
                    Answer::Refused(_) => "refused".into(),
                },
            },
            Message::Snapshot {
                from, to, after, ..
            } => MessageSummary::Snapshot {
                from: *from,
                to: *to,
                after: after.clone(),
            },
            Message::Chunk {
                from, to, chunk, ..
            } => MessageSummary::Chunk {
                from: *from,
                to: *to,
                chunk: chunk.as_ref().map(|chunk| {
                    let keys = chunk.entries.iter().map(|(key, _)| key.clone()).collect();
                    (keys, chunk.applied.to_string(), chunk.more)
                }),
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
        dots: (Option<Dot>, Seq),
        repair: bool,
    },
    Exchange {
        from: usize,
        to: usize,
    },
    Answer {
        from: usize,
        to: usize,
        answer: String,
    },
    Snapshot {
        from: usize,
        to: usize,
        after: Option<String>,
    },
    /// The keys, the clock, and whether more follow; `None` when refused.
    Chunk {
        from: usize,
        to: usize,
        chunk: Option<(Vec<String>, String, bool)>,
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
    Txn {
        session: usize,
        at: usize,
        keys: Vec<(usize, bool)>,
    },
    Snapshot {
        session: usize,
        at: usize,
        keys: Vec<usize>,
    },
    Poll {
        from: usize,
        to: usize,
        sent: Option<MessageSummary>,
    },
    /// A bootstrapping replica asks its source for a chunk.
    AskChunk {
        message: MessageSummary,
    },
    Deliver {
        message: MessageSummary,
        kept_copy: bool,
    },
    Lost {
        message: MessageSummary,
        why: &'static str,
    },
    Overclaim {
        message: MessageSummary,
    },
    Commit {
        at: usize,
        commands: usize,
    },
    Crash {
        at: usize,
        commands: usize,
        writes: usize,
    },
    Restart {
        at: usize,
    },
    Advance {
        millis: u128,
    },
    Cut {
        a: usize,
        b: usize,
        cut: bool,
    },
    ForgedContext {
        at: usize,
        origin: usize,
        claims: Seq,
    },
    Sweep {
        at: usize,
        dropped: usize,
    },
    /// The replica crashed and its store was replaced by an empty one.
    LoseData {
        at: usize,
    },
    /// A replica is removed from the membership.
    Remove {
        at: usize,
    },
    /// The replica waiting to join is added, and starts.
    Join {
        at: usize,
    },
    /// What a replica's recovery decided.
    Decide {
        at: usize,
        decision: Decision,
    },
    /// A chunk of `source`'s keys installed; with the meet once the last is.
    Install {
        at: usize,
        source: usize,
        keys: usize,
        meet: Option<String>,
    },
    BootstrapFailed {
        at: usize,
        source: usize,
        why: &'static str,
    },
    Phase(&'static str),
}

impl fmt::Display for MessageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageSummary::Events {
                from,
                to,
                dots,
                repair,
            } => {
                let what = if *repair { "repair" } else { "events" };
                match &dots.0 {
                    Some(first) => {
                        write!(f, "{what} {first}..={} of node{from} to node{to}", dots.1)
                    }
                    None => write!(f, "empty {what} of node{from} to node{to}"),
                }
            }
            MessageSummary::Exchange { from, to } => {
                write!(f, "clock exchange of node{from} to node{to}")
            }
            MessageSummary::Answer { from, to, answer } => {
                write!(f, "answer {answer} of node{from} to node{to}")
            }
            MessageSummary::Snapshot { from, to, after } => write!(
                f,
                "snapshot request of node{from} to node{to} for the keys after {after:?}"
            ),
            MessageSummary::Chunk { from, to, chunk } => match chunk {
                Some((keys, clock, more)) => write!(
                    f,
                    "chunk {keys:?} at {clock} of node{from} to node{to}{}",
                    if *more {
                        ", more to come"
                    } else {
                        ", the last"
                    }
                ),
                None => write!(f, "snapshot refusal of node{from} to node{to}"),
            },
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
            Step::Txn { session, at, keys } => {
                let writes: Vec<String> = keys
                    .iter()
                    .map(|(key, delete)| format!("{} k{key}", if *delete { "del" } else { "put" }))
                    .collect();
                write!(
                    f,
                    "session {session} writes atomically {} at node{at}",
                    writes.join(", ")
                )
            }
            Step::Snapshot { session, at, keys } => {
                let keys: Vec<String> = keys.iter().map(|key| format!("k{key}")).collect();
                write!(
                    f,
                    "session {session} reads {} at node{at} as a snapshot",
                    keys.join(", ")
                )
            }
            Step::Poll { from, to, sent } => match sent {
                Some(message) => write!(f, "node{from}'s link to node{to} sends {message}"),
                None => write!(f, "node{from}'s link to node{to} waits"),
            },
            Step::AskChunk { message } => write!(f, "send {message}"),
            Step::Deliver { message, kept_copy } => {
                let copy = if *kept_copy {
                    " (a copy stays in flight)"
                } else {
                    ""
                };
                write!(f, "deliver {message}{copy}")
            }
            Step::Lost { message, why } => write!(f, "lose {message} ({why})"),
            Step::Overclaim { message } => {
                write!(f, "deliver {message}, inflated beyond what node made")
            }
            Step::Commit { at, commands } => {
                write!(f, "node{at} commits a group of {commands} commands")
            }
            Step::Crash {
                at,
                commands,
                writes,
            } => write!(
                f,
                "node{at} crashes, losing a group of {commands} commands ({writes} client \
                 writes)"
            ),
            Step::Restart { at } => write!(f, "node{at} restarts"),
            Step::Advance { millis } => write!(f, "time passes: {millis} ms"),
            Step::Cut { a, b, cut } => {
                let what = if *cut { "cut" } else { "healed" };
                write!(f, "the link between node{a} and node{b} is {what}")
            }
            Step::ForgedContext { at, origin, claims } => write!(
                f,
                "a client at node{at} sends a context counting {claims} writes of node{origin}"
            ),
            Step::Sweep { at, dropped } => {
                write!(f, "node{at} sweeps its buffer, dropping {dropped} events")
            }
            Step::LoseData { at } => write!(f, "node{at} loses its data"),
            Step::Remove { at } => write!(f, "node{at} is removed from the membership"),
            Step::Join { at } => write!(f, "node{at} is added to the membership and starts"),
            Step::Decide { at, decision } => {
                write!(f, "node{at}'s recovery decides: {decision:?}")
            }
            Step::Install {
                at,
                source,
                keys,
                meet,
            } => match meet {
                Some(meet) => write!(
                    f,
                    "node{at} installs the last chunk of node{source} ({keys} keys): applied \
                     is the meet {meet}"
                ),
                None => write!(f, "node{at} installs a chunk of node{source} ({keys} keys)"),
            },
            Step::BootstrapFailed { at, source, why } => {
                write!(f, "node{at}'s bootstrap from node{source} fails: {why}")
            }
            Step::Phase(name) => write!(f, "--- {name} ---"),
        }
    }
}

/// Weights of the random steps: client writes, client reads, link polls,
/// deliveries, commits of an open group, crashes, restarts, time passing,
/// cutting or healing a link, forged contexts, buffer sweeps, the recovery
/// task of a recovering replica waking, a crash that loses the replica's
/// data, the removal of a replica from the membership, the addition of the
/// replica waiting to join; drops come on top.
const STEP_WEIGHTS: [u32; 15] = [25, 20, 25, 30, 5, 3, 4, 10, 2, 2, 4, 8, 1, 1, 1];

/// Share of seeds that start a replica outside the membership, added later.
const JOIN_CHANCE: f64 = 0.3;

/// Share of client writes made as atomic writes of several keys, and of
/// client reads made as snapshot reads of several keys.
const TXN_CHANCE: f64 = 0.2;

/// How the simulated links pace themselves.
fn link_settings(params: &Params, mutation: Mutation) -> Settings {
    Settings {
        retransmit_after: Duration::from_secs(1),
        repair_after: Duration::from_secs(3),
        sync_interval: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        max_batch_events: params.max_batch_events,
        max_batch_bytes: 1 << 20,
        mutations: mutation.protocol(),
    }
}

/// The time a settling round lets pass.
const ROUND: Duration = Duration::from_millis(100);
/// Settling takes a few repair periods; needing this many rounds means it never will.
const MAX_SETTLE_ROUNDS: usize = 1200;
/// How long a client's context may wait (only the first step of a wait is simulated).
const CAUSAL_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Sim<B: Backend> {
    rng: StdRng,
    mutation: Mutation,
    backend: B,
    params: Params,
    limits: Limits,
    settings: Settings,
    nodes: Vec<String>,
    keys: Vec<String>,
    replicas: Vec<Replica<B::Store>>,
    sessions: Vec<Session>,
    truth: GroundTruth,
    in_flight: Vec<Message>,
    /// Links cut both ways, as `(lower, higher)` pairs.
    cut: std::collections::BTreeSet<(usize, usize)>,
    /// The simulated time.
    now: Duration,
    trace: Vec<Step>,
    stats: Stats,
    last_value: u64,
    /// While settling: every command is committed at once, and no message is
    /// lost, duplicated or inflated.
    settling: bool,
    /// The id of the next snapshot request.
    next_snapshot_id: u64,
    /// A replica that loses its data at the first step where it may (see
    /// [`Self::may_lose_data`]).
    doomed: Option<usize>,
    /// The replica removed from the membership, if any: no peer sends to it
    /// or counts on its acknowledgements any more, clients write elsewhere,
    /// and it still sends its own writes to the others.
    removed: Option<usize>,
    /// A replica not a member yet: down, with an empty store, until a step
    /// adds it; it then starts as a new node does and bootstraps.
    joining: Option<usize>,
    /// The replica that joined, and how many of its own writes each replica
    /// had committed then: those it may have collected from its log before
    /// it counted the new member (the new member gets them in a snapshot).
    joined: Option<Joined>,
    /// The seed changes the membership (a join or a removal).
    changes_members: bool,
    avoid: Avoid,
}

impl<B: Backend> Sim<B> {
    fn new(seed: u64, mutation: Mutation, mut backend: B) -> SimResult<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let replicas = rng.random_range(3..=5);
        let mut pair = || {
            let a = rng.random_range(0..replicas);
            (a, (a + rng.random_range(1..replicas)) % replicas)
        };
        let (a, b) = pair();
        let final_fault = match rng.random_range(0..3) {
            0 => FinalFault::None,
            1 => FinalFault::Cut(a, b),
            _ => FinalFault::OriginDown(a, b),
        };
        let params = Params {
            replicas,
            sessions: rng.random_range(2..=4),
            keys: rng.random_range(3..=5),
            steps: rng.random_range(150..=300),
            max_buffered: if rng.random_bool(0.3) {
                rng.random_range(1..=4)
            } else {
                Limits::default().max_buffered
            },
            max_batch_events: rng.random_range(1..=6),
            drop_weight: rng.random_range(0..=8),
            duplicate_chance: rng.random_range(0.0..0.2),
            overclaim_chance: if rng.random_bool(0.5) {
                rng.random_range(0.0..0.1)
            } else {
                0.0
            },
            instant_restart: rng.random_range(0.2..0.9),
            single_command_groups: rng.random_range(0.2..0.8),
            max_group: rng.random_range(2..=6),
            final_fault,
        };
        let nodes: Vec<String> = (0..params.replicas).map(|i| format!("node{i}")).collect();
        let keys = (0..params.keys).map(|k| format!("k{k}")).collect();
        let limits = Limits {
            max_buffered: params.max_buffered,
            ..Limits::default()
        };
        let settings = link_settings(&params, mutation);
        let knowledge = Knowledge::empty(params.replicas, params.keys);
        let mut replicas = Vec::new();
        for (at, id) in nodes.iter().enumerate() {
            let store = backend.open(at).map_err(|e| {
                Violation::new(Check::Core, format!("cannot open the store of {id}: {e}"))
            })?;
            let core = Core::new(id.clone(), nodes.clone(), store, limits.clone())?;
            // The first start of a cluster: every replica is live at once.
            replicas.push(Replica {
                committed_clock: core.applied().clone(),
                highest_committed: core.applied().clone(),
                core: Some(core),
                links: Vec::new(),
                incarnation: 0,
                now: knowledge.clone(),
                committed: knowledge.clone(),
                group: Group::default(),
                recovery: Recovery::live(),
                bootstrap: None,
                progress: None,
                identity: true,
                recovering_history: false,
                data_losses: 0,
                log_floor: 0,
                installed_tombstones: WriteSet::default(),
                installed: VClock::new(),
                shown: VClock::new(),
            });
        }
        let sessions = (0..params.sessions)
            .map(|_| Session {
                home: rng.random_range(0..params.replicas),
                context: VClock::new(),
                must_see: vec![WriteSet::default(); params.keys],
                waiting_for: None,
            })
            .collect();
        let mut sim = Self {
            rng,
            mutation,
            backend,
            truth: GroundTruth {
                writes: Vec::new(),
                by_origin: vec![Vec::new(); params.replicas],
            },
            params,
            limits,
            settings,
            nodes,
            keys,
            replicas,
            sessions,
            in_flight: Vec::new(),
            cut: Default::default(),
            now: Duration::ZERO,
            trace: Vec::new(),
            stats: Stats::default(),
            last_value: 0,
            settling: false,
            next_snapshot_id: 0,
            doomed: None,
            removed: None,
            joining: None,
            joined: None,
            changes_members: false,
            avoid: Avoid::from_env(),
        };
        // Some seeds start one replica outside the membership, to be added.
        let last = sim.replicas.len() - 1;
        let in_final_fault = match sim.params.final_fault {
            FinalFault::Cut(a, b) | FinalFault::OriginDown(a, b) => a == last || b == last,
            FinalFault::None => false,
        };
        let least = match sim.params.final_fault {
            FinalFault::Cut(..) => 4,
            _ => 3,
        };
        if sim.replicas.len() >= least && !in_final_fault && sim.rng.random_bool(JOIN_CHANCE) {
            sim.joining = Some(last);
            sim.changes_members = true;
            let replica = &mut sim.replicas[last];
            replica.core = None;
            replica.identity = false;
            replica.recovering_history = true;
            for session in &mut sim.sessions {
                if session.home == last {
                    session.home = 0;
                }
            }
            for at in 0..last {
                sim.take_members(at)?;
            }
        }
        for at in 0..sim.replicas.len() {
            sim.replicas[at].links = sim.new_links(at);
        }
        Ok(sim)
    }

    /// Replica `at`'s links to its peers, as a node starts them.
    fn new_links(&self, at: usize) -> Vec<Option<Link>> {
        (0..self.replicas.len())
            .map(|peer| {
                self.is_peer_of(at, peer).then(|| {
                    Link::new(
                        self.nodes[at].clone(),
                        self.nodes[peer].clone(),
                        self.settings.clone(),
                        self.now,
                    )
                })
            })
            .collect()
    }

    fn core(&self, at: usize) -> &Core<B::Store> {
        self.replicas[at].core()
    }

    /// How many of `at`'s own writes it may have collected before it counted
    /// `peer` as a member: all it had committed when `peer` joined, if it did.
    fn collected_before_join(&self, peer: usize, at: usize) -> Seq {
        match &self.joined {
            Some(joined) if joined.at == peer => joined.own_committed[at],
            _ => 0,
        }
    }

    /// Whether replica `at` is a member (not removed, not waiting to join).
    fn is_member(&self, at: usize) -> bool {
        self.removed != Some(at) && self.joining != Some(at)
    }

    /// Whether replica `at` links to `peer` and counts on its
    /// acknowledgements: a member does so for the other members, a replica
    /// outside the membership (removed) for everyone.
    fn is_peer_of(&self, at: usize, peer: usize) -> bool {
        peer != at && (self.is_member(peer) || !self.is_member(at))
    }

    /// Adds the replica waiting to join, as an operator's `kvctl cluster
    /// add` then its start do: every member takes the new membership (at
    /// once, or at its next start) and starts a link to it; it starts with
    /// an empty store, checks with its peers, and bootstraps.
    fn join_member(&mut self) -> SimResult {
        let Some(joined) = self.joining else {
            return Ok(());
        };
        // Taken while the new replica is no member yet.
        let stable = (0..self.replicas.len())
            .map(|at| {
                let mut set = WriteSet::default();
                for id in self.replicas[at].now.applied.iter() {
                    if self.is_stable_at(at, id) {
                        set.insert(id);
                    }
                }
                set
            })
            .collect();
        let own_committed = (0..self.replicas.len())
            .map(|at| self.replicas[at].committed.applied_per_origin[at])
            .collect();
        self.joining = None;
        self.joined = Some(Joined {
            at: joined,
            own_committed,
            stable,
        });
        self.trace.push(Step::Join { at: joined });
        self.stats.joins += 1;
        let up: Vec<usize> = (0..self.replicas.len())
            .filter(|&at| at != joined && self.is_up(at))
            .collect();
        for at in up {
            let link = Link::new(
                self.nodes[at].clone(),
                self.nodes[joined].clone(),
                self.settings.clone(),
                self.now,
            );
            if let Some(slot) = self.replicas[at].links.get_mut(joined) {
                *slot = Some(link);
            }
            self.take_members(at)?;
        }
        self.restart(joined)
    }

    /// The members, in index order.
    fn members(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&at| self.is_member(at))
            .collect()
    }

    /// Removes a live replica from the membership, once per run: one that is
    /// not part of the final fault and not about to lose its data. Every
    /// other replica learns it at once (as the node that made the change and
    /// its announcer tell them), or at its next start when down.
    fn remove_member(&mut self) -> SimResult {
        if self.removed.is_some() {
            return Ok(());
        }
        // The final fault's replicas stay, and a cut link keeps a third
        // member to repair through.
        let (spared, least) = match self.params.final_fault {
            FinalFault::Cut(a, b) => (vec![a, b], 4),
            FinalFault::OriginDown(a, b) => (vec![a, b], 3),
            FinalFault::None => (Vec::new(), 3),
        };
        // Not while a replica recovers its history: the removed replica may
        // hold the only copy of the recovering one's writes (an operator
        // removes nodes while every member is live).
        let recovering = self
            .replicas
            .iter()
            .any(|r| r.recovering_history || r.progress.is_some());
        if self.replicas.len() < least || recovering {
            return Ok(());
        }
        let candidates: Vec<usize> = (0..self.replicas.len())
            .filter(|&at| {
                self.replicas[at].is_live()
                    && !spared.contains(&at)
                    && self.doomed != Some(at)
                    && !self.replicas[at].recovering_history
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let removed = candidates[self.rng.random_range(0..candidates.len())];
        self.removed = Some(removed);
        self.changes_members = true;
        self.stats.removals += 1;
        self.trace.push(Step::Remove { at: removed });
        for session in 0..self.sessions.len() {
            if self.sessions[session].home == removed {
                self.sessions[session].home = (removed + 1) % self.replicas.len();
            }
        }
        for at in (0..self.replicas.len()).filter(|&at| at != removed) {
            // A replica that is down has no links; it starts without one
            // to the removed replica.
            if let Some(link) = self.replicas[at].links.get_mut(removed) {
                *link = None;
            }
            self.take_members(at)?;
        }
        Ok(())
    }

    /// Hands the membership to replica `at`'s core, as the node's writer
    /// does; a removed peer no longer holds back its log collection.
    fn take_members(&mut self, at: usize) -> SimResult {
        if !self.changes_members || !self.is_up(at) {
            return Ok(());
        }
        let active: Vec<String> = self
            .members()
            .into_iter()
            .map(|m| self.nodes[m].clone())
            .collect();
        let nodes = self.nodes.clone();
        let removed = self.removed.map(|r| self.nodes[r].clone());
        let replica = &mut self.replicas[at];
        replica.core_mut().set_members(&nodes, &active)?;
        if let Some(removed) = removed {
            replica.recovery.remove(&removed);
        }
        self.add_to_group(at, None)
    }

    fn is_up(&self, at: usize) -> bool {
        self.replicas[at].is_up()
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn run(&mut self) -> SimResult {
        for _ in 0..self.params.steps {
            self.random_step()?;
        }
        self.join_member()?;
        self.trace.push(Step::Phase(
            "every link healed; settle on a reliable network",
        ));
        self.cut.clear();
        self.settle(None)?;
        self.final_fault()?;
        self.trace.push(Step::Phase("settle with every link up"));
        self.settle(None)?;
        self.check_converged()?;
        self.check_no_lost_writes()?;
        self.check_sessions_after_flush()
    }

    /// One random step, weighted by [`STEP_WEIGHTS`] and the drop weight.
    fn random_step(&mut self) -> SimResult {
        if let Some(at) = self
            .doomed
            .filter(|&at| self.is_up(at) && self.may_lose_data(at))
        {
            self.doomed = None;
            self.lose_data(at)?;
            if self.rng.random_bool(self.params.instant_restart) {
                self.restart(at)?;
            }
            return Ok(());
        }
        let total: u32 = STEP_WEIGHTS.iter().sum();
        let mut roll = self.rng.random_range(0..total + self.params.drop_weight);
        let kind = STEP_WEIGHTS
            .iter()
            .position(|&weight| {
                let here = roll < weight;
                roll = roll.saturating_sub(weight);
                here
            })
            .unwrap_or(STEP_WEIGHTS.len());
        let replicas = self.replicas.len();
        match kind {
            0 => {
                let session = self.rng.random_range(0..self.sessions.len());
                let at = self.choose_replica(session);
                if self.keys.len() > 1 && self.rng.random_bool(TXN_CHANCE) {
                    let keys = self.pick_keys();
                    let keys = keys
                        .into_iter()
                        .map(|key| (key, self.rng.random_bool(0.15)))
                        .collect();
                    return self.client_txn(session, at, keys);
                }
                let key = self.rng.random_range(0..self.keys.len());
                let delete = self.rng.random_bool(0.15);
                self.client_write(session, at, key, delete)
            }
            1 => {
                let session = self.rng.random_range(0..self.sessions.len());
                let at = self.choose_replica(session);
                if self.keys.len() > 1 && self.rng.random_bool(TXN_CHANCE) {
                    let keys = self.pick_keys();
                    self.trace.push(Step::Snapshot {
                        session,
                        at,
                        keys: keys.clone(),
                    });
                    self.client_snapshot(session, at, &keys)?;
                    return Ok(());
                }
                let key = self.rng.random_range(0..self.keys.len());
                self.trace.push(Step::Read { session, at, key });
                self.client_read(session, at, key)?;
                Ok(())
            }
            2 => {
                let from = self.rng.random_range(0..replicas);
                let to = (from + self.rng.random_range(1..replicas)) % replicas;
                self.poll(from, to)
            }
            3 => {
                let kept_copy = self.rng.random_bool(self.params.duplicate_chance);
                self.deliver_random(kept_copy)
            }
            4 => {
                let open: Vec<usize> = (0..replicas)
                    .filter(|&at| self.is_up(at) && self.replicas[at].group.commands > 0)
                    .collect();
                if open.is_empty() {
                    return Ok(());
                }
                let at = open[self.rng.random_range(0..open.len())];
                self.commit(at)
            }
            5 => {
                let at = self.rng.random_range(0..replicas);
                if !self.is_up(at) {
                    return Ok(());
                }
                self.crash(at)?;
                if self.rng.random_bool(self.params.instant_restart) {
                    self.restart(at)?;
                }
                Ok(())
            }
            6 => {
                let down: Vec<usize> = (0..replicas)
                    .filter(|&at| !self.is_up(at) && self.joining != Some(at))
                    .collect();
                if down.is_empty() {
                    return Ok(());
                }
                let at = down[self.rng.random_range(0..down.len())];
                self.restart(at)
            }
            7 => {
                let millis = self.rng.random_range(1..=1500);
                self.advance(Duration::from_millis(millis));
                Ok(())
            }
            8 => {
                let a = self.rng.random_range(0..replicas);
                let b = (a + self.rng.random_range(1..replicas)) % replicas;
                let pair = (a.min(b), a.max(b));
                let cut = self.cut.insert(pair);
                if !cut {
                    self.cut.remove(&pair);
                }
                self.trace.push(Step::Cut { a, b, cut });
                Ok(())
            }
            9 => self.forged_context(),
            10 => {
                let at = self.rng.random_range(0..replicas);
                if self.is_up(at) {
                    let dropped = self.replicas[at].core_mut().sweep_buffer();
                    self.stats.swept_events += dropped.len() as u64;
                    self.trace.push(Step::Sweep {
                        at,
                        dropped: dropped.len(),
                    });
                }
                Ok(())
            }
            11 => {
                let recovering: Vec<usize> = (0..replicas)
                    .filter(|&at| self.is_up(at) && !self.replicas[at].is_live())
                    .collect();
                if recovering.is_empty() {
                    return Ok(());
                }
                let at = recovering[self.rng.random_range(0..recovering.len())];
                self.recover(at)
            }
            12 => {
                // A replica that made writes, so that it has a history to
                // get back.
                let made: Vec<usize> = (0..replicas)
                    .filter(|&at| !self.truth.by_origin[at].is_empty())
                    .collect();
                let made: Vec<usize> = made.into_iter().filter(|&at| self.is_member(at)).collect();
                if self.doomed.is_none() && !made.is_empty() {
                    self.doomed = Some(made[self.rng.random_range(0..made.len())]);
                }
                Ok(())
            }
            13 => self.remove_member(),
            14 => self.join_member(),
            _ => {
                self.drop_random();
                Ok(())
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if !self.settling {
            self.trace.push(Step::Advance {
                millis: by.as_millis(),
            });
        }
    }

    // ---- The writer path ----

    /// Adds a command that replica `at` has just run to its open group, and
    /// commits the group once it is full.
    fn add_to_group(&mut self, at: usize, reply: Option<Reply>) -> SimResult {
        if self.replicas[at].group.commands == 0 {
            let target = if self.settling || self.rng.random_bool(self.params.single_command_groups)
            {
                1
            } else {
                self.rng.random_range(2..=self.params.max_group)
            };
            self.replicas[at].group.target = target;
        }
        let group = &mut self.replicas[at].group;
        group.commands += 1;
        group.replies.extend(reply);
        let full = group.commands >= group.target;
        if let Some(reply) = reply.filter(|_| self.mutation == Mutation::AcksBeforeCommit) {
            self.answer(at, reply);
        }
        if full {
            self.commit(at)?;
        }
        Ok(())
    }

    /// Commits replica `at`'s open group, then answers its commands: client
    /// writes are acknowledged, batches' senders get an answer.
    fn commit(&mut self, at: usize) -> SimResult {
        let commands = std::mem::take(&mut self.replicas[at].group.commands);
        let replies = std::mem::take(&mut self.replicas[at].group.replies);
        self.trace.push(Step::Commit { at, commands });
        self.stats.commits += 1;
        if commands > 1 {
            self.stats.group_commits += 1;
        }
        let replica = &mut self.replicas[at];
        replica.core_mut().commit()?;
        replica.committed = replica.now.clone();
        replica.committed_clock = replica.core().applied().clone();
        replica.highest_committed.merge(&replica.committed_clock);
        self.check_clock(at, &self.replicas[at].committed_clock, "committed clock")?;
        if self.mutation != Mutation::AcksBeforeCommit {
            for reply in replies {
                self.answer(at, reply);
            }
        }
        Ok(())
    }

    /// Replica `at` answers a command: a client's write is acknowledged (the
    /// session adds it to its context), a batch's sender gets its answer.
    fn answer(&mut self, at: usize, reply: Reply) {
        match reply {
            Reply::Write { session, id } => {
                let write = &self.truth.writes[id];
                let session = &mut self.sessions[session];
                if session.waiting_for == Some(id) {
                    session.waiting_for = None;
                }
                session.context.merge(&write.event.timestamp());
                for &(key, _) in &write.keys {
                    session.must_see[key].insert(id);
                }
            }
            Reply::Batch {
                peer,
                incarnation,
                request,
                busy,
            } => {
                let replica = &self.replicas[at];
                let answer = if busy {
                    Answer::Busy("the buffer is full".into())
                } else {
                    Answer::Clock(replica.core().applied().clone())
                };
                self.in_flight.push(Message::Answer {
                    from: at,
                    to: peer,
                    incarnation,
                    id: request,
                    answer,
                    writes: replica.now.applied.clone(),
                });
            }
        }
    }

    /// Replica `at` crashes: its core (with its buffer and its peers'
    /// acknowledged clocks), its links and its open group are dropped without
    /// a commit. It stays down until [`Self::restart`].
    fn crash(&mut self, at: usize) -> SimResult {
        let node = self.nodes[at].clone();
        let replies = std::mem::take(&mut self.replicas[at].group.replies);
        let commands = std::mem::take(&mut self.replicas[at].group.commands);
        let lost: Vec<WriteId> = replies
            .iter()
            .filter_map(|reply| match *reply {
                Reply::Write { session, id } => {
                    // The client's request fails: it did not get an ack.
                    let session = &mut self.sessions[session];
                    if session.waiting_for == Some(id) {
                        session.waiting_for = None;
                    }
                    Some(id)
                }
                Reply::Batch { .. } => None,
            })
            .collect();
        self.trace.push(Step::Crash {
            at,
            commands,
            writes: lost.len(),
        });
        self.stats.crashes += 1;
        self.stats.crashes_losing_a_group += u64::from(commands > 0);
        self.stats.writes_lost += lost.len() as u64;
        self.stats.buffered_lost += self.core(at).buffered() as u64;

        // Drop the old store first: a durable one holds its directory's lock.
        let replica = &mut self.replicas[at];
        let live = replica.recovery.is_live();
        replica.core = None;
        replica.links.clear();
        replica.bootstrap = None;
        replica.now = replica.committed.clone();
        replica.group = Group::default();

        // Its writes after the last commit are exactly the lost ones; their
        // seqs go to its next writes. A recovering replica makes none (and
        // may hold fewer of its own writes than it made).
        let own = &mut self.truth.by_origin[at];
        let committed_own = if live {
            self.replicas[at].committed.applied_per_origin[at] as usize
        } else {
            own.len()
        };
        let mut dropped: Vec<WriteId> = own.split_off(committed_own.min(own.len()));
        dropped.sort_unstable();
        let mut expected_lost = lost.clone();
        expected_lost.sort_unstable();
        ensure!(
            dropped == expected_lost,
            Check::Core,
            "{node} had written {} since its last commit, but its open group held {}",
            self.truth.dots(&dropped),
            self.truth.dots(&expected_lost)
        );
        for &id in &lost {
            self.truth.writes[id].lost = true;
        }
        self.check_lost_never_left(at, &lost)
    }

    /// Replica `at` restarts: a new core over what its store had committed,
    /// new links that know nothing of their peers yet, and a new recovery.
    /// As the node decides: a store in a data directory that has the node's
    /// identity file (written once live on it) and no bootstrap's marker is
    /// complete (it goes live once every peer has answered or failed, or
    /// after the grace of a request's timeout); one with a marker finishes
    /// its bootstrap first; any other waits until every peer has answered,
    /// and bootstraps from a peer that holds more of its writes or writes of
    /// other origins it lacks.
    fn restart(&mut self, at: usize) -> SimResult {
        let node = self.nodes[at].clone();
        self.trace.push(Step::Restart { at });
        let store = self.backend.open(at).map_err(|e| {
            Violation::new(
                Check::Recovery,
                format!("{node} cannot reopen its store after a crash: {e}"),
            )
        })?;
        let core = Core::new(node.clone(), self.nodes.clone(), store, self.limits.clone())
            .map_err(|e| {
                Violation::new(
                    Check::Recovery,
                    format!("{node} cannot restart over its store: {e}"),
                )
            })?;
        let replica = &self.replicas[at];
        let trust = match (replica.progress.is_some(), replica.identity) {
            (true, _) => Trust::Unfinished,
            (false, true) => Trust::Complete,
            (false, false) => Trust::Unknown,
        };
        let peers = self.nodes.iter().filter(|n| **n != node).cloned().collect();
        let force_new_history = self.mutation == Mutation::ForgetsHistory;
        let grace = self.settings.request_timeout;
        let recovery = Recovery::new(
            node.clone(),
            peers,
            trust,
            force_new_history,
            self.now,
            grace,
        );
        let replica = &mut self.replicas[at];
        replica.core = Some(core);
        replica.incarnation += 1;
        replica.recovery = recovery;
        self.replicas[at].links = self.new_links(at);
        self.check_recovered(at)?;
        if at != self.removed.unwrap_or(usize::MAX) {
            self.take_members(at)?;
        }
        // The node decides once as it starts, then whenever its recovery
        // task wakes.
        self.recover(at)
    }

    /// After a restart, replica `at` holds exactly what it had committed.
    fn check_recovered(&self, at: usize) -> SimResult {
        let node = &self.nodes[at];
        let replica = &self.replicas[at];
        let core = replica.core();
        let counts = &replica.committed.applied_per_origin;
        let agrees = self
            .nodes
            .iter()
            .zip(counts)
            .all(|(n, &count)| core.applied().get(n) == count);
        ensure!(
            agrees && core.applied().nodes().all(|n| self.nodes.contains(n)),
            Check::Recovery,
            "{node} restarted with applied {}, but it had committed {counts:?} writes per \
             origin",
            core.applied()
        );
        ensure!(
            *core.applied() == replica.committed_clock,
            Check::Recovery,
            "{node} restarted with applied {}, but its last commit recorded {}",
            core.applied(),
            replica.committed_clock
        );
        ensure!(
            core.buffered() == 0,
            Check::Recovery,
            "{node} restarted with {} buffered events",
            core.buffered()
        );
        for (peer, acked) in replica.committed.acked_by_peer.iter().enumerate() {
            let Some(clock) = core.acked(&self.nodes[peer]) else {
                continue;
            };
            let truth = self.per_origin(acked);
            let within = self
                .nodes
                .iter()
                .zip(&truth)
                .all(|(n, &count)| clock.get(n) <= count);
            ensure!(
                within,
                Check::Recovery,
                "{node} restarted believing {} acknowledged {clock}, but it had acknowledged \
                 only {truth:?} writes per origin",
                self.nodes[peer]
            );
        }
        for key in 0..self.keys.len() {
            let read = core.read(&self.keys[key])?;
            let siblings = self.sibling_ids(&read)?;
            self.check_siblings(at, key, &siblings)?;
            self.check_winner(at, key, &read, &siblings)?;
        }
        self.check_log_holds_unacknowledged(at)?;
        // What its peers hold as its acknowledgements, and the answers it sent
        // that are still in flight, count only what it had committed: they
        // stay true across the crash (or, once it lost its data, were true).
        let committed = &replica.highest_committed;
        for (other, peer) in self.replicas.iter().enumerate() {
            let Some(acked) = peer
                .core
                .as_ref()
                .filter(|_| other != at)
                .and_then(|core| core.acked(node))
            else {
                continue;
            };
            ensure!(
                committed.covers(acked),
                Check::Recovery,
                "{} holds {acked} as acknowledged by {node}, which had committed only \
                 {committed} when it crashed",
                self.nodes[other]
            );
        }
        for message in &self.in_flight {
            let applied = match message {
                Message::Answer {
                    from,
                    answer: Answer::Clock(applied),
                    ..
                } if *from == at => applied,
                Message::Chunk {
                    from,
                    chunk: Some(chunk),
                    ..
                } if *from == at => &chunk.applied,
                _ => continue,
            };
            ensure!(
                committed.covers(applied),
                Check::Recovery,
                "an answer of {node} in flight counts {applied}, but {node} had committed \
                 only {committed} when it crashed"
            );
        }
        Ok(())
    }

    // ---- Data loss and recovery ----

    /// Whether replica `at` may lose its data now: no replica is recovering
    /// its history, and every write `at` has committed is committed at
    /// another replica too. Otherwise acknowledged writes would be gone for
    /// good, which no protocol can prevent.
    fn may_lose_data(&self, at: usize) -> bool {
        let recovering = self
            .replicas
            .iter()
            .any(|r| r.recovering_history || r.progress.is_some());
        let installed_everywhere = self.replicas.iter().all(|r| {
            self.replicas.iter().all(|other| {
                self.nodes
                    .iter()
                    .enumerate()
                    .all(|(o, node)| other.committed.applied_per_origin[o] >= r.installed.get(node))
            })
        });
        let avoided = self.avoid.unlogged_installed_writes && !installed_everywhere;
        !recovering
            && !avoided
            && self.replicas[at].committed.applied.iter().all(|id| {
                // A removed replica may be gone for good: it holds nothing
                // the members can count on.
                self.replicas.iter().enumerate().any(|(other, r)| {
                    other != at && self.is_member(other) && r.committed.applied.contains(id)
                })
            })
    }

    /// Replica `at` crashes and loses its data: its store is replaced by an
    /// empty one (a deleted data directory, a new disk). It must get its
    /// history back from its peers before it serves writes again.
    fn lose_data(&mut self, at: usize) -> SimResult {
        self.crash(at)?;
        self.trace.push(Step::LoseData { at });
        self.stats.data_losses += 1;
        self.backend
            .lose(at)
            .map_err(|e| Violation::new(Check::Core, e))?;
        let empty = Knowledge::empty(self.replicas.len(), self.keys.len());
        let replica = &mut self.replicas[at];
        replica.now = empty.clone();
        replica.committed = empty;
        replica.committed_clock = VClock::zeroed(self.nodes.iter().cloned());
        replica.progress = None;
        replica.identity = false;
        replica.recovering_history = true;
        replica.data_losses += 1;
        replica.log_floor = 0;
        replica.installed_tombstones = WriteSet::default();
        replica.installed = VClock::new();
        replica.shown = VClock::new();
        Ok(())
    }

    /// A clock of `peer` came in (an answer to replica `at`'s link, or a
    /// clock exchange of the peer's): while `at` recovers, what the peer holds
    /// of its writes counts, and whether it holds writes of other origins
    /// that `at` lacks.
    fn peer_clock(&mut self, at: usize, peer: usize, clock: &VClock) {
        let replica = &mut self.replicas[at];
        if replica.recovery.is_live() {
            return;
        }
        let me = &self.nodes[at];
        let mine = &replica.committed_clock;
        let ahead = clock.iter().any(|(n, &seq)| n != me && seq > mine.get(n));
        replica.recovery.heard(&self.nodes[peer], clock.get(me));
        if ahead {
            replica.recovery.ahead(&self.nodes[peer]);
        }
    }

    /// Whether replica `at` is copying a peer's state.
    fn bootstrapping(&self, at: usize) -> bool {
        matches!(
            self.replicas[at].recovery.phase(),
            Phase::Bootstrapping { .. }
        )
    }

    /// Whether replica `at` takes no batch while a bootstrap is under way or
    /// unfinished (its marker is there), as the node answers them 503.
    fn holds_back(&self, at: usize) -> bool {
        let replica = &self.replicas[at];
        replica.progress.is_some() && !replica.recovery.is_live()
    }

    /// Whether replica `at` serves reads.
    fn serves_reads(&self, at: usize) -> bool {
        let replica = &self.replicas[at];
        replica.is_up() && replica.recovery.serves_reads()
    }

    /// Replica `at`'s recovery task wakes: a snapshot request that waited too
    /// long fails (the node's request times out), a bootstrap goes on with
    /// its next request, or the recovery decides.
    fn recover(&mut self, at: usize) -> SimResult {
        let replica = &self.replicas[at];
        if !replica.is_up() || replica.recovery.is_live() {
            return Ok(());
        }
        if let Some(bootstrap) = &replica.bootstrap {
            return match bootstrap.waiting {
                Some((_, sent)) if self.now < sent + self.settings.request_timeout => Ok(()),
                Some(_) => self.bootstrap_failed(at, "no answer in time"),
                None => self.request_chunk(at),
            };
        }
        let replica = &mut self.replicas[at];
        let decision = replica.recovery.decide(self.now, &replica.committed_clock);
        if decision != Decision::Wait || !self.settling {
            self.trace.push(Step::Decide {
                at,
                decision: decision.clone(),
            });
        }
        match decision {
            Decision::Wait => Ok(()),
            Decision::Live => self.went_live(at),
            Decision::Bootstrap(source) => {
                let source = self.index_of(&source)?;
                self.begin_bootstrap(at, source)
            }
        }
    }

    /// Replica `at` serves writes from now on: it must hold every write it
    /// made (but those lost in a crash before their commit), or its next
    /// write takes the dot of an older one.
    fn went_live(&mut self, at: usize) -> SimResult {
        let made = self.truth.by_origin[at].len() as Seq;
        let replica = &mut self.replicas[at];
        replica.recovering_history = false;
        // The node writes its identity file once live.
        replica.identity = true;
        let holds = replica.committed_clock.get(&self.nodes[at]);
        ensure!(
            holds == made,
            Check::DotReuse,
            "{} goes live holding {holds} of its writes, but it made {made}: its next write \
             would take the dot of an older one",
            self.nodes[at]
        );
        self.check_keys_cover_applied(at, "goes live")?;
        self.check_keys_within_applied(at)
    }

    /// No key of replica `at` shows a write its clock does not count: a read
    /// would show it without its causal past, with a clock that lacks it.
    /// (After an install, keys show the source's state when each chunk was
    /// read; the replica serves nothing until replication has brought it the
    /// rest.)
    fn check_keys_within_applied(&self, at: usize) -> SimResult {
        let replica = &self.replicas[at].now;
        for (key, shown) in replica.expected_siblings.iter().enumerate() {
            if let Some(&beyond) = shown.iter().find(|&&id| !replica.applied.contains(id)) {
                return Err(Violation::new(
                    Check::Recovery,
                    format!(
                        "{} goes live with {} showing {}, which its clock does not count",
                        self.nodes[at],
                        self.keys[key],
                        self.truth.dot(beyond)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Every write replica `at` has applied shows on each key it writes: as
    /// a sibling, or in the past of one. (Always so but after an install: its
    /// keys then show the source's state when each chunk was read.)
    fn check_keys_cover_applied(&self, at: usize, when: &str) -> SimResult {
        let replica = &self.replicas[at].now;
        for (key, expected) in replica.expected_siblings.iter().enumerate() {
            let missing = replica.applied.iter().find(|&id| {
                self.truth.writes[id].writes(key)
                    && !expected
                        .iter()
                        .any(|&s| s == id || self.truth.writes[s].past.contains(id))
            });
            if let Some(missing) = missing {
                return Err(Violation::new(
                    Check::Recovery,
                    format!(
                        "{} {when} with {} showing {}, which miss {}, a write its clock counts",
                        self.nodes[at],
                        self.keys[key],
                        self.truth.dots(expected),
                        self.truth.dot(missing)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Commits replica `at`'s open group with one more command (a step of a
    /// bootstrap, or a recorded acknowledgement), as the node's writer does
    /// before it answers.
    fn commit_now(&mut self, at: usize) -> SimResult {
        self.replicas[at].group.commands += 1;
        self.commit(at)
    }

    /// Replica `at` starts a bootstrap from `source`, or goes on with one
    /// that failed or that a crash interrupted: the marker, then the core
    /// drops its log and buffer, then the first snapshot request.
    fn begin_bootstrap(&mut self, at: usize, source: usize) -> SimResult {
        self.stats.bootstraps += 1;
        let replica = &mut self.replicas[at];
        replica.progress.get_or_insert_with(Progress::default);
        replica.core_mut().begin_install()?;
        replica.log_floor = replica.committed_clock.get(&self.nodes[at]);
        replica.bootstrap = Some(Bootstrap {
            source,
            waiting: None,
        });
        self.commit_now(at)?;
        self.request_chunk(at)
    }

    /// Replica `at` asks its bootstrap's source for the next chunk, with its
    /// clock (which the source records as what `at` holds).
    fn request_chunk(&mut self, at: usize) -> SimResult {
        let id = self.next_snapshot_id;
        self.next_snapshot_id += 1;
        let limit = self.rng.random_range(1..=2);
        let (applied, writes) = self.shown(at);
        let replica = &mut self.replicas[at];
        let progress = replica.progress.clone().expect("a bootstrap under way");
        let bootstrap = replica.bootstrap.as_mut().expect("a bootstrap under way");
        bootstrap.waiting = Some((id, self.now));
        let message = Message::Snapshot {
            from: at,
            to: bootstrap.source,
            incarnation: replica.incarnation,
            id,
            after: progress.after,
            limit,
            applied,
            writes,
        };
        let source = bootstrap.source;
        self.trace.push(Step::AskChunk {
            message: message.summary(),
        });
        if self.is_cut(at, source) {
            self.lose(message, "the link is cut");
        } else {
            self.in_flight.push(message);
        }
        Ok(())
    }

    /// Replica `source` answers a snapshot request of `at`, as the node's
    /// route does: refused unless live, refused for a clock counting writes
    /// it never made; else it records `at`'s clock as what `at` holds
    /// (through its writer, committed), then reads the chunk between two
    /// groups.
    #[allow(clippy::too_many_arguments)]
    fn serve_snapshot(
        &mut self,
        at: usize,
        source: usize,
        incarnation: u32,
        id: u64,
        after: Option<String>,
        limit: usize,
        applied: VClock,
        writes: WriteSet,
    ) -> SimResult {
        let refuse = |sim: &mut Self| {
            sim.in_flight.push(Message::Chunk {
                from: source,
                to: at,
                incarnation,
                id,
                chunk: None,
                writes: WriteSet::default(),
            });
            Ok(())
        };
        let replica = &self.replicas[source];
        let made = replica.committed_clock.get(&self.nodes[source]);
        if !replica.recovery.is_live() || applied.get(&self.nodes[source]) > made {
            return refuse(self);
        }
        let replica = &mut self.replicas[source];
        replica.core_mut().record_ack(&self.nodes[at], &applied)?;
        replica.now.acked_by_peer[at].union_with(&writes);
        self.check_log_holds_unacknowledged(source)?;
        self.commit_now(source)?;
        let max_bytes = if self.rng.random_bool(0.3) {
            self.rng.random_range(1..300)
        } else {
            usize::MAX
        };
        let core = self.core(source);
        let (entries, clock) = core.snapshot_chunk(after.as_deref(), limit, max_bytes)?;
        let more = match entries.last() {
            Some((last, _)) => !core
                .store()
                .keys_after(Some(last), 1, 0)
                .map_err(CoreError::from)?
                .is_empty(),
            None => false,
        };
        let node = &self.nodes[source];
        ensure!(
            clock == self.replicas[source].committed_clock,
            Check::Core,
            "{node} read a chunk at {clock}, but its committed clock is {}",
            self.replicas[source].committed_clock
        );
        // The chunk is exactly the source's state for its range of keys.
        let through = if more {
            entries.last().map(|(key, _)| key.clone())
        } else {
            None
        };
        let in_range = |key: &str| {
            after.as_deref().is_none_or(|a| key > a) && through.as_deref().is_none_or(|t| key <= t)
        };
        ensure!(
            entries.len() <= limit && entries.iter().all(|(key, _)| in_range(key)),
            Check::Core,
            "{node} answered {} keys after {after:?} for a limit of {limit}",
            entries.len()
        );
        let mut expected = Vec::new();
        for key in (0..self.keys.len()).filter(|&key| in_range(&self.keys[key])) {
            let siblings = match entries.iter().find(|(k, _)| *k == self.keys[key]) {
                Some((_, siblings)) => siblings
                    .iter()
                    .map(|e| self.write_id(&e.dot()))
                    .collect::<SimResult<Vec<_>>>()?,
                None => Vec::new(),
            };
            self.check_siblings(source, key, &siblings)?;
            let replica = &self.replicas[source].now;
            expected.push((key, replica.expected_siblings[key].clone()));
        }
        self.in_flight.push(Message::Chunk {
            from: source,
            to: at,
            incarnation,
            id,
            chunk: Some(Chunk {
                entries,
                applied: clock,
                more,
                expected,
            }),
            writes: self.replicas[source].committed.applied.clone(),
        });
        Ok(())
    }

    /// Replica `at` takes the answer to its snapshot request: a refusal fails
    /// the bootstrap; a chunk is checked, installed and committed, and the
    /// last one ends the bootstrap.
    fn take_chunk(&mut self, at: usize, source: usize, chunk: Option<Chunk>) -> SimResult {
        let Some(chunk) = chunk else {
            return self.bootstrap_failed(at, "the source refused");
        };
        let node = self.nodes[at].clone();
        let replica = &mut self.replicas[at];
        let progress = replica.progress.as_mut().expect("a bootstrap under way");
        let after = progress.after.clone();
        let mut previous = after.clone();
        for (key, siblings) in &chunk.entries {
            ensure!(
                previous.as_ref().is_none_or(|p| key > p) && !siblings.is_empty(),
                Check::Core,
                "{node} got a chunk of node{source} with {key:?} after {previous:?}, or \
                 without siblings"
            );
            previous = Some(key.clone());
        }
        let through = match (chunk.more, chunk.entries.last()) {
            (false, _) => None,
            (true, Some((last, _))) => Some(last.clone()),
            (true, None) => {
                return Err(Violation::new(
                    Check::Core,
                    format!("node{source} sent {node} an empty chunk with more to come"),
                ))
            }
        };
        let meet = match progress.meet.take() {
            Some(mut meet) => {
                meet.meet(&chunk.applied);
                meet
            }
            None => chunk.applied.clone(),
        };
        progress.meet = Some(meet.clone());
        progress.after = through.clone();
        replica
            .bootstrap
            .as_mut()
            .expect("a bootstrap under way")
            .waiting = None;
        replica.shown.merge(&chunk.applied);
        // Ground truth: the keys of the range hold what the chunk shows, the
        // source's state when it was read (checked then), less the tombstones
        // it had collected.
        for (key, expected) in chunk.expected {
            let shown = match chunk.entries.iter().find(|(k, _)| *k == self.keys[key]) {
                Some((_, siblings)) => siblings
                    .iter()
                    .map(|e| self.write_id(&e.dot()))
                    .collect::<SimResult<Vec<_>>>()?,
                None => Vec::new(),
            };
            let replica = &mut self.replicas[at];
            for &id in &shown {
                if self.truth.writes[id].deletes(key) {
                    replica.installed_tombstones.insert(id);
                }
            }
            replica.now.collected_by_source[key] = expected
                .iter()
                .copied()
                .filter(|id| !shown.contains(id))
                .collect();
            replica.now.expected_siblings[key] = expected;
        }
        let keys = chunk.entries.len();
        self.replicas[at].core_mut().install_chunk(
            after.as_deref(),
            through.as_deref(),
            chunk.entries,
        )?;
        self.stats.chunks += 1;
        self.trace.push(Step::Install {
            at,
            source,
            keys,
            meet: through.is_none().then(|| meet.to_string()),
        });
        self.commit_now(at)?;
        if through.is_none() {
            self.finish_bootstrap(at, &meet)?;
        }
        Ok(())
    }

    /// Replica `at` has installed its last chunk: it has applied exactly the
    /// writes the meet of the chunks' clocks counts (which must be causally
    /// closed), and shows what the chunks showed; it gets what lies beyond
    /// through replication. Then its recovery decides again.
    fn finish_bootstrap(&mut self, at: usize, meet: &VClock) -> SimResult {
        let node = self.nodes[at].clone();
        let mut applied = WriteSet::default();
        let mut per_origin = vec![0; self.replicas.len()];
        for (origin, writes) in self.truth.by_origin.iter().enumerate() {
            let count = meet.get(&self.nodes[origin]);
            ensure!(
                count <= writes.len() as Seq,
                Check::Core,
                "{node} bootstrapped to {meet}, which counts writes {} never made",
                self.nodes[origin]
            );
            for &id in &writes[..count as usize] {
                applied.insert(id);
            }
            per_origin[origin] = count;
        }
        for id in applied.iter() {
            if let Some(missing) = self.truth.writes[id].past.first_not_in(&applied) {
                return Err(Violation::new(
                    Check::CausalDelivery,
                    format!(
                        "{node} bootstrapped to {meet}, which counts {} but not {}, in its \
                         causal past",
                        self.truth.dot(id),
                        self.truth.dot(missing)
                    ),
                ));
            }
        }
        let replica = &mut self.replicas[at];
        let beyond = replica
            .now
            .expected_siblings
            .iter()
            .flatten()
            .filter(|&&id| !applied.contains(id))
            .count();
        self.stats.shown_beyond_meet += beyond as u64;
        replica.now.applied = applied;
        replica.now.applied_per_origin = per_origin;
        replica.core_mut().finish_install(meet);
        replica.bootstrap = None;
        replica.log_floor = meet.get(&node);
        replica.installed = meet.clone();
        self.commit_now(at)?;
        self.check_clock(
            at,
            &self.replicas[at].committed_clock,
            "clock after a bootstrap",
        )?;
        self.check_keys_cover_applied(at, "installs a snapshot")?;
        let replica = &mut self.replicas[at];
        replica.progress = None;
        replica.recovery.bootstrapped(replica.shown.clone());
        self.stats.bootstraps_done += 1;
        self.recover(at)
    }

    /// Replica `at`'s bootstrap fails: it checks again (its store, half
    /// installed, keeps its marker and the progress made).
    fn bootstrap_failed(&mut self, at: usize, why: &'static str) -> SimResult {
        let replica = &mut self.replicas[at];
        let bootstrap = replica.bootstrap.take().expect("a bootstrap under way");
        replica.recovery.bootstrap_failed();
        self.stats.bootstraps_failed += 1;
        self.trace.push(Step::BootstrapFailed {
            at,
            source: bootstrap.source,
            why,
        });
        Ok(())
    }

    /// The writes `lost` in replica `at`'s crash had not left: they were never
    /// committed, so never sent.
    fn check_lost_never_left(&self, at: usize, lost: &[WriteId]) -> SimResult {
        let node = &self.nodes[at];
        for &id in lost {
            let dot = self.truth.dot(id);
            for (other, replica) in self.replicas.iter().enumerate() {
                ensure!(
                    !replica.now.applied.contains(id),
                    Check::Recovery,
                    "{node} lost {dot} in a crash before committing it, but {} has applied it",
                    self.nodes[other]
                );
                let buffered = replica.core.as_ref().is_some_and(|core| {
                    core.buffered_events(usize::MAX)
                        .iter()
                        .any(|(e, _)| e.dot() == dot)
                });
                ensure!(
                    !buffered,
                    Check::Recovery,
                    "{node} lost {dot} in a crash before committing it, but {} buffers it",
                    self.nodes[other]
                );
            }
            let in_flight = self.in_flight.iter().any(|m| m.carries(id, &dot));
            ensure!(
                !in_flight,
                Check::Recovery,
                "{node} lost {dot} in a crash before committing it, but a message in flight \
                 carries it"
            );
        }
        Ok(())
    }

    // ---- Clients ----

    /// Mostly the session's home replica; sometimes another one, as when a
    /// client fails over or a load balancer moves it.
    fn choose_replica(&mut self, session: usize) -> usize {
        if self.rng.random_bool(0.6) {
            self.sessions[session].home
        } else {
            let members = self.members();
            members[self.rng.random_range(0..members.len())]
        }
    }

    /// Whether the replica has committed everything the session's context
    /// counts; when not, the client's operation fails and it retries later.
    /// A context ahead of the replica starts the node's wait, which asks the
    /// origins of the missing entries (those that answer, over links that are
    /// not cut): the session's context counts only acknowledged writes, so no
    /// origin may deny them.
    fn context_satisfied(&mut self, session: usize, at: usize) -> SimResult<bool> {
        let context = self.sessions[session].context.clone();
        match self.wait_step(at, &context)? {
            None => Ok(true),
            Some(denied) => {
                ensure!(
                    denied.is_none(),
                    Check::Sessions,
                    "session {session}'s context {context} at {} was refused: {denied:?}",
                    self.nodes[at]
                );
                Ok(false)
            }
        }
    }

    /// Runs the first step of a client's wait for `context` at replica `at`:
    /// `None` when satisfied, else the verdict of the origins asked (`None`
    /// when none denies the writes: the client waits or times out).
    fn wait_step(
        &mut self,
        at: usize,
        context: &VClock,
    ) -> SimResult<Option<Option<ContextError>>> {
        let replica = &self.replicas[at];
        let core = replica.core();
        let mut wait = ContextWait::new(context.clone(), self.now, CAUSAL_WAIT);
        match wait.step(self.now, core.id(), core.nodes(), &replica.committed_clock) {
            WaitStep::Satisfied => Ok(None),
            WaitStep::Failed(error) => Ok(Some(Some(error))),
            WaitStep::Wait { .. } => Ok(Some(None)),
            WaitStep::Ask(origins) => {
                for origin in origins {
                    let o = self.index_of(&origin)?;
                    if !self.answers_origin_questions(o) || self.is_cut(at, o) {
                        continue;
                    }
                    self.stats.origins_asked += 1;
                    let clock = &self.replicas[o].committed_clock;
                    if let Some(error) = wait.origin_answered(&origin, clock) {
                        return Ok(Some(Some(error)));
                    }
                }
                Ok(Some(None))
            }
        }
    }

    /// Whether replica `o` answers an origin's question about a context: a
    /// recovering origin answers 503 (it may lack writes it made), and the
    /// client waits.
    fn answers_origin_questions(&self, o: usize) -> bool {
        self.is_up(o) && self.replicas[o].recovery.is_live()
    }

    /// A client at a random replica sends a context that counts writes some
    /// origin never made: the wait must refuse it (409) whenever the origin
    /// answers, and never take it as satisfied.
    fn forged_context(&mut self) -> SimResult {
        let replicas = self.replicas.len();
        let at = self.rng.random_range(0..replicas);
        let origin = self.rng.random_range(0..replicas);
        if !self.serves_reads(at) || self.replicas[origin].group.commands > 0 {
            return Ok(());
        }
        let made = self.truth.by_origin[origin].len() as Seq;
        let claims = made + self.rng.random_range(1..=3);
        self.trace.push(Step::ForgedContext { at, origin, claims });
        let context: VClock = [(self.nodes[origin].clone(), claims)].into_iter().collect();
        let verdict = self.wait_step(at, &context)?;
        let answers =
            origin == at || (self.answers_origin_questions(origin) && !self.is_cut(at, origin));
        match verdict {
            Some(Some(ContextError::UnknownHistory(_))) => {
                self.stats.forged_contexts_refused += 1;
                Ok(())
            }
            Some(None) if !answers => Ok(()),
            other => Err(Violation::new(
                Check::Sessions,
                format!(
                    "a context counting {claims} writes of {} (which made {made}) got {other:?} \
                     at {}",
                    self.nodes[origin], self.nodes[at]
                ),
            )),
        }
    }

    /// Whether the session still waits for the ack of a write (then it does
    /// nothing else, as a client blocked on its request).
    fn waiting(&mut self, session: usize) -> bool {
        let waiting = self.sessions[session].waiting_for.is_some();
        self.stats.waiting_for_ack += u64::from(waiting);
        waiting
    }

    fn client_write(&mut self, session: usize, at: usize, key: usize, delete: bool) -> SimResult {
        self.trace.push(Step::Write {
            session,
            at,
            key,
            delete,
        });
        self.client_write_keys(session, at, &[(key, delete)])
    }

    /// 2 to 4 distinct keys (at most all of them), in random order.
    fn pick_keys(&mut self) -> Vec<usize> {
        let count = self.rng.random_range(2..=4).min(self.keys.len());
        rand::seq::index::sample(&mut self.rng, self.keys.len(), count).into_vec()
    }

    /// A client's atomic write of `keys` (each with whether it deletes it).
    fn client_txn(&mut self, session: usize, at: usize, keys: Vec<(usize, bool)>) -> SimResult {
        self.trace.push(Step::Txn {
            session,
            at,
            keys: keys.clone(),
        });
        self.client_write_keys(session, at, &keys)
    }

    /// A client's write of `keys` at `at`, unless the session waits for an
    /// acknowledgement, the replica is down or lags the session's context.
    fn client_write_keys(
        &mut self,
        session: usize,
        at: usize,
        keys: &[(usize, bool)],
    ) -> SimResult {
        if self.waiting(session) {
            return Ok(());
        }
        if !self.is_up(at) {
            self.stats.unavailable += 1;
            return Ok(());
        }
        if !self.replicas[at].recovery.is_live() {
            // 503 `recovering`: the client tries again later.
            self.stats.refused_while_recovering += 1;
            return Ok(());
        }
        if !self.context_satisfied(session, at)? {
            self.stats.stale_contexts += 1;
            return Ok(());
        }
        self.stats.txns += u64::from(keys.len() > 1);
        self.write_at(Some(session), at, keys).map(|_| ())
    }

    /// Replica `at` makes a write of `keys` (each with whether it deletes
    /// it; several make a transaction), for `session` if any: it waits for
    /// the acknowledgement.
    fn write_at(
        &mut self,
        session: Option<usize>,
        at: usize,
        keys: &[(usize, bool)],
    ) -> SimResult<WriteId> {
        let mut writes = Vec::with_capacity(keys.len());
        for &(key, delete) in keys {
            let op = if delete {
                self.stats.deletes += 1;
                Op::Delete
            } else {
                self.last_value += 1;
                Op::Put(Value::from_serialize(&self.last_value).expect("a number is JSON"))
            };
            writes.push(KeyWrite {
                key: self.keys[key].clone(),
                op,
            });
        }
        self.stats.writes += 1;
        let replica = &mut self.replicas[at];
        let past = replica.now.applied.clone();
        let event = replica.core_mut().write_all(writes.clone())?.event;
        let expected = Dot::new(
            self.nodes[at].clone(),
            replica.now.applied_per_origin[at] + 1,
        );
        let older = usize::try_from(event.seq)
            .ok()
            .and_then(|seq| seq.checked_sub(1))
            .and_then(|index| self.truth.by_origin[at].get(index));
        if let Some(&older) = older {
            return Err(Violation::new(
                Check::DotReuse,
                format!(
                    "{} gave its write of {writes:?} the dot {}, which names its earlier write \
                     of {:?}",
                    self.nodes[at],
                    event.dot(),
                    self.truth.writes[older].event.to_writes()
                ),
            ));
        }
        let made = event.to_writes();
        ensure!(
            event.dot() == expected && made == writes,
            Check::Core,
            "a write of {writes:?} at {} became {} of {made:?}, expected {expected}",
            self.nodes[at],
            event.dot(),
        );
        let id = self.truth.record(at, keys.to_vec(), event, past);
        self.observe_apply(at, id)?;
        self.check_clock(at, self.core(at).applied(), "applied clock")?;
        let reply = session.map(|session| {
            self.sessions[session].waiting_for = Some(id);
            Reply::Write { session, id }
        });
        self.add_to_group(at, reply)?;
        Ok(id)
    }

    /// Reads `key` for `session` at replica `at`, checking what comes back;
    /// false when the replica is down or lags the session's context. The read
    /// is served after the replica's open group: it sees committed state only.
    fn client_read(&mut self, session: usize, at: usize, key: usize) -> SimResult<bool> {
        self.client_snapshot(session, at, &[key])
    }

    /// Reads `keys` together for `session` at replica `at`, as a snapshot
    /// read does: each key is checked as a single read is, and together they
    /// must be one causally consistent cut. Each write shown for one key
    /// brings, for every other key read, its own write there (a transaction
    /// is seen whole) and the writes of its causal past there: those must be
    /// shown too, or a write that saw them, or be tombstones collected since.
    fn client_snapshot(&mut self, session: usize, at: usize, keys: &[usize]) -> SimResult<bool> {
        if self.waiting(session) {
            return Ok(false);
        }
        if !self.is_up(at) {
            self.stats.unavailable += 1;
            return Ok(false);
        }
        if !self.serves_reads(at) {
            self.stats.refused_while_recovering += 1;
            return Ok(false);
        }
        if self.replicas[at].group.commands > 0 {
            self.commit(at)?;
        }
        if !self.context_satisfied(session, at)? {
            self.stats.stale_contexts += 1;
            return Ok(false);
        }
        self.stats.reads += 1;
        self.stats.snapshots += u64::from(keys.len() > 1);
        let mut shown = Vec::with_capacity(keys.len());
        for &key in keys {
            let read: ReadResult = self.core(at).read(&self.keys[key])?;
            let siblings = self.sibling_ids(&read)?;
            let collected = self.check_siblings(at, key, &siblings)?;
            self.check_winner(at, key, &read, &siblings)?;
            self.check_clock(at, &read.applied, "clock returned by a read")?;
            self.stats.collected_tombstones_read += collected.len() as u64;
            // What the session saw before must be a sibling now, or in the
            // past of one, or of a tombstone collected since.
            for id in self.sessions[session].must_see[key].iter() {
                ensure!(
                    self.covers(&siblings, &collected, id),
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
            shown.push((key, siblings, collected, read.applied));
        }
        for (a, siblings_a, _, clock) in &shown {
            ensure!(
                *clock == shown[0].3,
                Check::Snapshot,
                "{}'s snapshot read k{} with clock {clock} but k{} with {}",
                self.nodes[at],
                a,
                shown[0].0,
                shown[0].3
            );
            for &s in siblings_a {
                let write = &self.truth.writes[s];
                for (b, siblings_b, collected_b, _) in &shown {
                    let brought = std::iter::once(s).filter(|_| write.writes(*b)).chain(
                        write
                            .past
                            .iter()
                            .filter(|&w| self.truth.writes[w].writes(*b)),
                    );
                    for w in brought {
                        ensure!(
                            self.covers(siblings_b, collected_b, w),
                            Check::Snapshot,
                            "{}'s snapshot shows {} for k{a} but {} for k{b}, which miss {}, \
                             {}",
                            self.nodes[at],
                            self.truth.dot(s),
                            self.truth.dots(siblings_b),
                            self.truth.dot(w),
                            if w == s {
                                "the same atomic write"
                            } else {
                                "a write it depends on"
                            }
                        );
                    }
                }
            }
        }
        let session = &mut self.sessions[session];
        for (key, siblings, _, clock) in shown {
            session.context.merge(&clock);
            for id in siblings {
                session.must_see[key].insert(id);
            }
        }
        Ok(true)
    }

    /// Whether a read of a key that showed `siblings`, with the stable
    /// tombstones `collected` gone, covers write `id` of that key: shows it,
    /// or a write that saw it, or it was collected.
    fn covers(&self, siblings: &[WriteId], collected: &[WriteId], id: WriteId) -> bool {
        siblings
            .iter()
            .chain(collected)
            .any(|&s| s == id || self.truth.writes[s].past.contains(id))
    }

    // ---- Replication: the node's own protocol, on simulated time ----

    /// What replica `at`'s links may send: its committed clock (the node's
    /// published one), or with the mutation everything it applied.
    fn durable(&self, at: usize) -> (VClock, WriteSet) {
        let replica = &self.replicas[at];
        if self.mutation == Mutation::SendsUncommitted {
            (
                replica.core().applied().clone(),
                replica.now.applied.clone(),
            )
        } else {
            self.shown(at)
        }
    }

    /// The clock replica `at` shows its peers (in its answers, clock
    /// exchanges and snapshot requests), with the writes it counts: its
    /// committed clock; while a bootstrap is unfinished, no more than the
    /// meet of the chunks installed so far (nothing before the first), as
    /// `Node::shown` does.
    fn shown(&self, at: usize) -> (VClock, WriteSet) {
        let replica = &self.replicas[at];
        let Some(progress) = replica
            .progress
            .as_ref()
            .filter(|_| !replica.recovery.is_live())
        else {
            return (
                replica.committed_clock.clone(),
                replica.committed.applied.clone(),
            );
        };
        let mut clock = replica.committed_clock.clone();
        clock.meet(&progress.meet.clone().unwrap_or_default());
        let mut writes = WriteSet::default();
        for (origin, ids) in self.truth.by_origin.iter().enumerate() {
            let count = clock.get(&self.nodes[origin]) as usize;
            for &id in ids.iter().take(count) {
                writes.insert(id);
            }
        }
        (clock, writes)
    }

    /// Replica `from`'s link to `to` is polled, as its replication task does
    /// when it wakes; a request it asks for goes on the wire (and is lost if
    /// the link is cut).
    fn poll(&mut self, from: usize, to: usize) -> SimResult {
        if !self.is_up(from) {
            return Ok(());
        }
        let (durable, writes) = self.durable(from);
        let replica = &mut self.replicas[from];
        let core = replica.core.as_ref().expect("the replica is up");
        // None to a removed peer.
        let Some(link) = replica.links[to].as_mut() else {
            return Ok(());
        };
        let action = link.poll(self.now, &durable, core);
        let notices = link.take_notices();
        self.observe_notices(from, to, notices, &WriteSet::default())?;
        let Action::Send(request) = action else {
            if !self.settling {
                self.trace.push(Step::Poll {
                    from,
                    to,
                    sent: None,
                });
            }
            return Ok(());
        };
        if let RequestBody::Events { events, repair } = &request.body {
            self.check_outgoing(from, to, events, repair.as_deref(), &durable)?;
        }
        let message = Message::Request {
            from,
            to,
            incarnation: self.replicas[from].incarnation,
            to_incarnation: self.replicas[to].incarnation,
            id: request.id,
            body: request.body,
            writes,
        };
        self.trace.push(Step::Poll {
            from,
            to,
            sent: Some(message.summary()),
        });
        if self.is_cut(from, to) {
            self.lose(message, "the link is cut");
        } else {
            self.in_flight.push(message);
        }
        Ok(())
    }

    /// A batch of `from`'s link to `to` holds what the protocol promises: its
    /// own committed writes in order from where the peer stands, or another
    /// origin's writes `from` holds, in order.
    fn check_outgoing(
        &self,
        from: usize,
        to: usize,
        events: &[Arc<Event>],
        repair: Option<&str>,
        durable: &VClock,
    ) -> SimResult {
        let node = &self.nodes[from];
        let origin = repair.unwrap_or(node);
        let in_order = events.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        let bounded = events.len() <= self.params.max_batch_events;
        let held = events
            .iter()
            .all(|e| e.origin == origin && e.seq <= durable.get(origin));
        ensure!(
            !events.is_empty() && in_order && bounded && held && origin != self.nodes[to],
            Check::Core,
            "{node}'s link to {} sends {} as {}",
            self.nodes[to],
            dot_list(events.iter().map(|e| e.dot())),
            if repair.is_some() {
                "repair"
            } else {
                "its own writes"
            }
        );
        Ok(())
    }

    /// Replica `at`'s log still holds every own write that some peer has not
    /// acknowledged: log collection waits for everyone.
    fn check_log_holds_unacknowledged(&self, at: usize) -> SimResult {
        let node = &self.nodes[at];
        let own = self.replicas[at].committed.applied_per_origin[at];
        // Its own writes that a bootstrap installed are not in its log.
        let floor = self.replicas[at].log_floor;
        for peer in (0..self.replicas.len()).filter(|&peer| self.is_peer_of(at, peer)) {
            let acked = &self.replicas[at].now.acked_by_peer[peer];
            let acked = self.truth.by_origin[at]
                .iter()
                .take_while(|&&id| acked.contains(id))
                .count() as Seq;
            let acked = acked.max(floor).max(self.collected_before_join(peer, at));
            if acked >= own {
                continue;
            }
            let events = self.core(at).own_events_after(acked, usize::MAX)?;
            let holds = events.first().map(|e| e.seq) == Some(acked + 1);
            ensure!(
                holds,
                Check::Core,
                "{node}'s log starts its own writes at {:?}, but {} acknowledged only {acked} \
                 of them",
                events.first().map(|e| e.seq),
                self.nodes[peer]
            );
        }
        Ok(())
    }

    /// Takes what replica `at`'s link to `peer` noticed. An acknowledgement is
    /// recorded by the core (for log collection), through the writer path,
    /// and `writes` (what the answer's clock really counts) join the ground
    /// truth.
    fn observe_notices(
        &mut self,
        at: usize,
        peer: usize,
        notices: Vec<Notice>,
        writes: &WriteSet,
    ) -> SimResult {
        for notice in notices {
            // While it recovers, the node counts what each peer holds of its
            // writes from every clock the peer sends, and its failures.
            let live = self.replicas[at].recovery.is_live();
            match notice {
                Notice::Acknowledged { clock, .. } => {
                    self.peer_clock(at, peer, &clock);
                    let replica = &mut self.replicas[at];
                    replica.core_mut().record_ack(&self.nodes[peer], &clock)?;
                    replica.now.acked_by_peer[peer].union_with(writes);
                    self.check_log_holds_unacknowledged(at)?;
                    self.add_to_group(at, None)?;
                }
                // A peer that lost its data needs writes that every node had
                // acknowledged when it still held them: it gets them back
                // from a snapshot. A replica that bootstrapped lacks in its
                // log its own writes that the snapshot installed.
                Notice::Collected { through, .. }
                    if self.replicas[peer].data_losses > 0
                        && through
                            <= self.replicas[peer].highest_committed.get(&self.nodes[at]) => {}
                Notice::Collected { through, .. } if through <= self.replicas[at].log_floor => {}
                Notice::Collected { through, .. }
                    if through <= self.collected_before_join(peer, at) => {}
                Notice::Collected { from, through } => {
                    return Err(Violation::new(
                        Check::NoLostWrites,
                        format!(
                            "{} needs writes {from}..={through} of {}, which collected them \
                             from its log",
                            self.nodes[peer], self.nodes[at]
                        ),
                    ))
                }
                Notice::LogUnreadable(e) => {
                    return Err(Violation::new(
                        Check::Core,
                        format!("{} cannot read its log: {e}", self.nodes[at]),
                    ))
                }
                Notice::Resending { .. } | Notice::WentBack { .. } => {
                    self.stats.retransmissions += 1
                }
                Notice::Repairing { events, .. } => self.stats.repaired_events += events as u64,
                Notice::Overclaimed { claimed, .. } if !live => {
                    // Expected while recovering: the peer holds writes this
                    // replica lost.
                    self.replicas[at].recovery.heard(&self.nodes[peer], claimed);
                }
                Notice::Overclaimed { .. } => self.stats.overclaims_refused += 1,
                Notice::Failed { .. } => {
                    self.stats.failed_requests += 1;
                    if !live {
                        self.replicas[at].recovery.unreachable(&self.nodes[peer]);
                    }
                }
                Notice::Reachable => {}
            }
        }
        Ok(())
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
        self.handle(message, kept_copy)
    }

    fn drop_random(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let index = self.rng.random_range(0..self.in_flight.len());
        let message = self.in_flight.swap_remove(index);
        self.stats.messages_dropped += 1;
        self.lose(message, "dropped");
    }

    fn lose(&mut self, message: Message, why: &'static str) {
        self.trace.push(Step::Lost {
            message: message.summary(),
            why,
        });
    }

    /// Delivers a message: a request for the receiver's writer path (a batch
    /// is answered once the receiver commits it), a snapshot request for its
    /// route, or an answer for the link or bootstrap that asked.
    fn handle(&mut self, message: Message, kept_copy: bool) -> SimResult {
        let (from, to) = message.ends();
        if self.is_cut(from, to) {
            self.lose(message, "the link is cut");
            return Ok(());
        }
        let summary = message.summary();
        match message {
            Message::Request { .. } | Message::Snapshot { .. } if !self.is_up(to) => {
                let incarnation = match message {
                    Message::Request { incarnation, .. }
                    | Message::Snapshot { incarnation, .. } => incarnation,
                    _ => unreachable!("a request"),
                };
                // Refused at once, or no answer at all: the link times out.
                if self.settling || self.rng.random_bool(0.5) {
                    self.trace.push(Step::Lost {
                        message: summary,
                        why: "the receiver is down: connection refused",
                    });
                    self.in_flight.push(match message {
                        Message::Request { id, .. } => Message::Answer {
                            from: to,
                            to: from,
                            incarnation,
                            id,
                            answer: Answer::Unreachable("connection refused".into()),
                            writes: WriteSet::default(),
                        },
                        Message::Snapshot { id, .. } => Message::Chunk {
                            from: to,
                            to: from,
                            incarnation,
                            id,
                            chunk: None,
                            writes: WriteSet::default(),
                        },
                        _ => unreachable!("a request"),
                    });
                } else {
                    self.lose_summary(summary, "the receiver is down");
                }
                Ok(())
            }
            Message::Request {
                from,
                to,
                incarnation,
                to_incarnation,
                id,
                body,
                writes,
            } => {
                self.trace.push(Step::Deliver {
                    message: summary,
                    kept_copy,
                });
                match body {
                    RequestBody::Events { events, .. } => {
                        let events = events.iter().map(|e| (**e).clone()).collect();
                        self.receive(from, to, incarnation, id, events)
                    }
                    RequestBody::Exchange { applied } => {
                        self.exchange(from, to, incarnation, to_incarnation, id, applied, writes)
                    }
                }
            }
            Message::Snapshot {
                from,
                to,
                incarnation,
                id,
                after,
                limit,
                applied,
                writes,
            } => {
                self.trace.push(Step::Deliver {
                    message: summary,
                    kept_copy,
                });
                self.serve_snapshot(from, to, incarnation, id, after, limit, applied, writes)
            }
            Message::Chunk {
                from,
                to,
                incarnation,
                id,
                chunk,
                ..
            } => {
                if !self.is_up(to) || self.replicas[to].incarnation != incarnation {
                    self.lose_summary(summary, "the replica that asked is gone");
                    return Ok(());
                }
                self.trace.push(Step::Deliver {
                    message: summary,
                    kept_copy,
                });
                let waiting = self.replicas[to]
                    .bootstrap
                    .as_ref()
                    .filter(|b| b.source == from)
                    .and_then(|b| b.waiting);
                if waiting.is_none_or(|(waits_for, _)| waits_for != id) {
                    // An answer to a request given up on, or a copy.
                    return Ok(());
                }
                self.take_chunk(to, from, chunk)
            }
            Message::Answer {
                from,
                to,
                incarnation,
                id,
                mut answer,
                writes,
            } => {
                let mut summary = summary;
                if !self.is_up(to) || self.replicas[to].incarnation != incarnation {
                    self.lose_summary(summary, "the link that asked is gone");
                    return Ok(());
                }
                let made = self.replicas[to].committed_clock.get(&self.nodes[to]);
                // A recovering replica takes what peers claim to hold of its
                // writes as true: lies are left out of its recovery.
                let lies = !self.settling && self.replicas[to].recovery.is_live();
                if let Answer::Clock(clock) = &mut answer {
                    if lies && self.rng.random_bool(self.params.overclaim_chance) {
                        let claims = if self.rng.random_bool(0.5) {
                            Seq::MAX
                        } else {
                            made + self.rng.random_range(1..=50)
                        };
                        clock.set(&self.nodes[to], claims);
                        self.stats.overclaims_sent += 1;
                        if let MessageSummary::Answer { answer, .. } = &mut summary {
                            *answer = clock.to_string();
                        }
                        self.trace.push(Step::Overclaim { message: summary });
                    } else {
                        self.trace.push(Step::Deliver {
                            message: summary,
                            kept_copy,
                        });
                    }
                } else {
                    self.trace.push(Step::Deliver {
                        message: summary,
                        kept_copy,
                    });
                }
                let (durable, _) = self.durable(to);
                // An answer from a peer removed since is dropped with its link.
                let Some(link) = self.replicas[to].links[from].as_mut() else {
                    return Ok(());
                };
                link.answered(self.now, id, answer, &durable);
                let notices = link.take_notices();
                self.observe_notices(to, from, notices, &writes)
            }
        }
    }

    /// Replica `to` takes a clock exchange of `from`'s link, as the node's
    /// route does: while recovering it counts what `from` holds of its writes
    /// (when the request was sent to this run of it); it records the clock
    /// through its writer and answers with its published clock. A clock
    /// counting writes it never made is refused (400) once it is live, and
    /// answered without being recorded while it recovers.
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        from: usize,
        to: usize,
        incarnation: u32,
        to_incarnation: u32,
        id: RequestId,
        applied: VClock,
        writes: WriteSet,
    ) -> SimResult {
        let replica = &mut self.replicas[to];
        let (claimed, made) = (
            applied.get(&self.nodes[to]),
            replica.committed_clock.get(&self.nodes[to]),
        );
        let live = replica.recovery.is_live();
        if to_incarnation == replica.incarnation {
            self.peer_clock(to, from, &applied);
        }
        let (shown, shown_writes) = self.shown(to);
        let replica = &mut self.replicas[to];
        if claimed > made {
            let (answer, writes) = if live {
                let refused = format!("counts {claimed} writes of a node that made {made}");
                (Answer::Refused(refused), WriteSet::default())
            } else {
                (Answer::Clock(shown), shown_writes)
            };
            self.in_flight.push(Message::Answer {
                from: to,
                to: from,
                incarnation,
                id,
                answer,
                writes,
            });
            return Ok(());
        }
        replica.core_mut().record_ack(&self.nodes[from], &applied)?;
        replica.now.acked_by_peer[from].union_with(&writes);
        self.check_log_holds_unacknowledged(to)?;
        self.in_flight.push(Message::Answer {
            from: to,
            to: from,
            incarnation,
            id,
            answer: Answer::Clock(shown),
            writes: shown_writes,
        });
        self.add_to_group(to, None)
    }

    fn lose_summary(&mut self, message: MessageSummary, why: &'static str) {
        self.trace.push(Step::Lost { message, why });
    }

    /// Replica `to` takes a batch from `from`'s link (request `id`), answered
    /// after the commit of its group.
    fn receive(
        &mut self,
        from: usize,
        to: usize,
        incarnation: u32,
        id: RequestId,
        mut events: Vec<Event>,
    ) -> SimResult {
        if self.mutation == Mutation::StripsDependencies {
            for e in &mut events {
                e.deps = [(e.origin.clone(), e.seq - 1)].into_iter().collect();
            }
        }
        if self.bootstrapping(to) || self.holds_back(to) {
            // 503: batches are taken once the snapshot is installed.
            self.in_flight.push(Message::Answer {
                from: to,
                to: from,
                incarnation,
                id,
                answer: Answer::Busy("bootstrapping".into()),
                writes: WriteSet::default(),
            });
            return Ok(());
        }
        let receipt: Receipt = self.replicas[to].core_mut().receive(events)?;
        ensure!(
            receipt.conflicts.is_empty(),
            Check::Recovery,
            "{} holds other events with the dots {}: a dot was given twice",
            self.nodes[to],
            dot_list(receipt.conflicts.iter().cloned())
        );
        self.stats.events_delivered += receipt.delivered.len() as u64;
        self.stats.delivered_from_buffer += receipt.from_buffer.len() as u64;
        self.stats.duplicates += receipt.duplicates as u64;
        self.stats.refused += receipt.refused as u64;
        for dot in &receipt.delivered {
            let id = self.write_id(dot)?;
            self.observe_apply(to, id)?;
        }
        self.check_clock(to, self.core(to).applied(), "applied clock")?;
        let reply = Reply::Batch {
            peer: from,
            incarnation,
            request: id,
            busy: receipt.refused > 0,
        };
        self.add_to_group(to, Some(reply))
    }

    /// Delivers everything in flight, in random order, with what that brings.
    fn drain_in_flight(&mut self) -> SimResult {
        while !self.in_flight.is_empty() {
            let index = self.rng.random_range(0..self.in_flight.len());
            let message = self.in_flight.swap_remove(index);
            self.handle(message, false)?;
        }
        Ok(())
    }

    /// A reliable network and no more crashes: every down replica but
    /// `keep_down` restarts, every open group is committed and each command
    /// from now on commits at once; then time passes in rounds, every link is
    /// polled and every message arrives, until the live replicas agree on
    /// their clocks and every link between them knows it (links that are cut
    /// stay cut).
    fn settle(&mut self, keep_down: Option<usize>) -> SimResult {
        self.settling = true;
        for at in 0..self.replicas.len() {
            if !self.is_up(at) && Some(at) != keep_down {
                self.restart(at)?;
            }
            if self.is_up(at) && self.replicas[at].group.commands > 0 {
                self.commit(at)?;
            }
        }
        let mut rounds = 0;
        loop {
            self.drain_in_flight()?;
            if self.settled() {
                self.stats.settle_rounds += rounds as u64;
                // One more idle clock exchange on every link, as a node makes
                // every sync_interval: it lets each replica collect its log.
                let until = self.now + self.settings.sync_interval + ROUND;
                while self.now < until {
                    self.poll_all()?;
                }
                self.drain_in_flight()?;
                return Ok(());
            }
            ensure!(
                rounds < MAX_SETTLE_ROUNDS,
                Check::Convergence,
                "the replicas still disagree after {MAX_SETTLE_ROUNDS} rounds of {ROUND:?} \
                 on a reliable network: {}",
                self.clocks()
            );
            rounds += 1;
            self.poll_all()?;
        }
    }

    /// One round of settling: time passes, every recovering replica's
    /// recovery task wakes, every link is polled, and every message arrives.
    fn poll_all(&mut self) -> SimResult {
        self.advance(ROUND);
        for at in 0..self.replicas.len() {
            self.recover(at)?;
        }
        for from in 0..self.replicas.len() {
            for to in (0..self.replicas.len()).filter(|&to| to != from) {
                self.poll(from, to)?;
            }
        }
        self.drain_in_flight()
    }

    /// Whether the replicas that are up are live, hold the same clock, and
    /// every link between two of them that is not cut has had it
    /// acknowledged.
    fn settled(&self) -> bool {
        let live: Vec<usize> = (0..self.replicas.len())
            .filter(|&at| self.is_up(at) && self.is_member(at))
            .collect();
        let reference = &self.replicas[live[0]].committed_clock;
        // A removed replica that is up has sent the members all its writes.
        let drained = self.removed.filter(|&r| self.is_up(r)).is_none_or(|r| {
            let replica = &self.replicas[r];
            let own = &self.nodes[r];
            replica.group.commands == 0 && reference.get(own) >= replica.committed_clock.get(own)
        });
        drained
            && live.iter().all(|&at| {
                let replica = &self.replicas[at];
                replica.recovery.is_live()
                    && replica.committed_clock == *reference
                    && replica.group.commands == 0
                    && live
                        .iter()
                        .filter(|&&peer| peer != at && !self.is_cut(at, peer))
                        .all(|&peer| {
                            let link = replica.links[peer].as_ref().expect("a link to every peer");
                            link.acked() == Some(reference) && !link.is_waiting()
                        })
            })
    }

    /// Every replica's committed clock, for reports.
    fn clocks(&self) -> String {
        let clocks: Vec<String> = (0..self.replicas.len())
            .map(|at| {
                if self.is_up(at) {
                    format!("{}: {}", self.nodes[at], self.replicas[at].committed_clock)
                } else {
                    format!("{}: down", self.nodes[at])
                }
            })
            .collect();
        clocks.join(", ")
    }

    /// The seed's last fault (see [`FinalFault`]), held while the replicas
    /// settle: writes that only repair through a third replica can carry must
    /// reach every live replica. Then everything heals.
    fn final_fault(&mut self) -> SimResult {
        match self.params.final_fault {
            FinalFault::None => Ok(()),
            FinalFault::Cut(a, b) => {
                self.trace
                    .push(Step::Phase("a cut link; repair through a third replica"));
                self.cut.insert((a.min(b), a.max(b)));
                self.trace.push(Step::Cut { a, b, cut: true });
                for key in 0..self.keys.len() {
                    self.write_at(None, a, &[(key, false)])?;
                }
                self.settle(None)?;
                self.check_live_converged()?;
                self.cut.clear();
                Ok(())
            }
            FinalFault::OriginDown(origin, via) => {
                self.trace
                    .push(Step::Phase("an origin down after reaching one peer"));
                let writes: Vec<WriteId> = (0..self.keys.len())
                    .map(|key| self.write_at(None, origin, &[(key, false)]))
                    .collect::<SimResult<_>>()?;
                // Push them to `via` alone, then take the origin down. The
                // first batch is lost and the first answer overclaims: only
                // retransmission and a link that checks acknowledgements get
                // the writes across.
                let last = self
                    .truth
                    .dot(*writes.last().expect("at least one key"))
                    .seq;
                let (mut lost, mut overclaimed) = (false, false);
                for _ in 0..MAX_SETTLE_ROUNDS {
                    if self.replicas[via].now.applied_per_origin[origin] >= last {
                        break;
                    }
                    self.advance(ROUND);
                    self.poll(origin, via)?;
                    while let Some(mut message) = self.in_flight.pop() {
                        match &mut message {
                            Message::Request {
                                body: RequestBody::Events { .. },
                                ..
                            } if !lost => {
                                lost = true;
                                self.lose(message, "lost on purpose");
                                continue;
                            }
                            Message::Answer {
                                answer: Answer::Clock(clock),
                                ..
                            } if lost && !overclaimed => {
                                overclaimed = true;
                                clock.set(&self.nodes[origin], Seq::MAX);
                                self.trace.push(Step::Overclaim {
                                    message: message.summary(),
                                });
                            }
                            _ => {}
                        }
                        self.handle(message, false)?;
                    }
                }
                ensure!(
                    self.replicas[via].now.applied_per_origin[origin] >= last,
                    Check::Convergence,
                    "{} never got {}'s writes on a reliable link",
                    self.nodes[via],
                    self.nodes[origin]
                );
                self.crash(origin)?;
                self.settle(Some(origin))?;
                self.check_live_converged()?;
                let holder = &self.replicas[via].now.applied;
                let members = (0..self.replicas.len()).filter(|&at| self.is_member(at));
                for at in members.filter(|&at| self.is_up(at)) {
                    let missing = holder.first_not_in(&self.replicas[at].now.applied);
                    ensure!(
                        missing.is_none(),
                        Check::NoLostWrites,
                        "{} lacks {}, which {} holds, while {} is down",
                        self.nodes[at],
                        self.truth.dots(&missing.into_iter().collect::<Vec<_>>()),
                        self.nodes[via],
                        self.nodes[origin]
                    );
                }
                Ok(())
            }
        }
    }

    /// The live replicas have applied the same writes and hold the same
    /// siblings for every key.
    fn check_live_converged(&self) -> SimResult {
        let live: Vec<usize> = (0..self.replicas.len())
            .filter(|&at| self.is_up(at) && self.is_member(at))
            .collect();
        let reference = live[0];
        let reference_dump = self.dump(reference)?;
        for &at in &live {
            let replica = &self.replicas[at];
            ensure!(
                replica.now.applied_per_origin == self.replicas[reference].now.applied_per_origin
                    && replica.core().buffered() == 0,
                Check::Convergence,
                "with a fault held, {} applied {:?} writes per origin ({} buffered) and {} \
                 applied {:?}",
                self.nodes[at],
                replica.now.applied_per_origin,
                replica.core().buffered(),
                self.nodes[reference],
                self.replicas[reference].now.applied_per_origin
            );
            ensure!(
                self.dump(at)? == reference_dump,
                Check::Convergence,
                "with a fault held, {} and {} hold different siblings",
                self.nodes[at],
                self.nodes[reference]
            );
        }
        Ok(())
    }

    fn index_of(&self, node: &str) -> SimResult<usize> {
        self.nodes.iter().position(|n| n == node).ok_or_else(|| {
            Violation::new(Check::Core, format!("the core names {node}, not a replica"))
        })
    }

    /// How many writes of each origin `set` holds.
    fn per_origin(&self, set: &WriteSet) -> Vec<Seq> {
        let mut counts = vec![0; self.replicas.len()];
        for id in set.iter() {
            counts[self.truth.writes[id].origin] += 1;
        }
        counts
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
        let replica = &mut self.replicas[at].now;
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
        for &(key, _) in &write.keys {
            let siblings = &mut replica.expected_siblings[key];
            // A key installed by a bootstrap may show the write already, or a
            // write that saw it: it changes nothing there.
            let writes = &self.truth.writes;
            if siblings
                .iter()
                .any(|&s| s == id || writes[s].past.contains(id))
            {
                self.stats.shown_again += 1;
                continue;
            }
            siblings.retain(|&s| !write.past.contains(s));
            siblings.push(id);
        }
        Ok(())
    }

    /// Checks a clock of replica `at` against the writes the ground truth says it
    /// has applied.
    fn check_clock(&self, at: usize, clock: &VClock, what: &str) -> SimResult {
        let counts = &self.replicas[at].now.applied_per_origin;
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
        let expected = &self.replicas[at].now.expected_siblings[key];
        let by_source = &self.replicas[at].now.collected_by_source[key];
        let (collected, missing): (Vec<WriteId>, Vec<WriteId>) = expected
            .iter()
            .filter(|id| !siblings.contains(id))
            .partition(|&&id| {
                (self.truth.writes[id].deletes(key) && self.is_stable_at(at, id))
                    || by_source.contains(&id)
            });
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
        let replica = &self.replicas[at].now;
        let stable_at_join = |peer: usize| {
            self.joined
                .as_ref()
                .is_some_and(|j| j.at == peer && j.stable[at].contains(id))
        };
        replica.applied.contains(id)
            && (0..self.replicas.len())
                .filter(|&peer| self.is_peer_of(at, peer))
                .all(|peer| replica.acked_by_peer[peer].contains(id) || stable_at_join(peer))
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
            .filter(|&id| !self.truth.writes[id].deletes(key))
            .max_by_key(order);
        let value = put.and_then(|id| {
            let op = self.truth.writes[id].event.op_for(&self.keys[key]);
            op.and_then(Op::value)
        });
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

    /// Every key of replica `at` with its siblings, for the comparisons:
    /// without the tombstones that linger after a bootstrap.
    fn dump(&self, at: usize) -> SimResult<BTreeMap<String, Siblings>> {
        let mut dump = B::dump(self.core(at).store()).map_err(|e| {
            Violation::new(
                Check::Core,
                format!("cannot list the keys of {}: {e}", self.nodes[at]),
            )
        })?;
        for (key, siblings) in &mut dump {
            siblings.retain(|e| !self.lingers(key, e));
        }
        dump.retain(|_, siblings| !siblings.is_empty());
        Ok(dump)
    }

    /// A read of `key` at replica `at` for the final checks: without the
    /// tombstones that linger after a bootstrap.
    fn final_read(&self, at: usize, key: usize) -> SimResult<ReadResult> {
        let mut read = self.core(at).read(&self.keys[key])?;
        read.siblings.retain(|e| !self.lingers(&self.keys[key], e));
        Ok(read)
    }

    /// Whether `e`, a sibling of `key`, is a tombstone that a bootstrap
    /// installed and that every replica has applied: the replica that
    /// installed it keeps it, where the others collect it (see
    /// [`Avoid::installed_tombstones`]).
    fn lingers(&self, key: &str, e: &Event) -> bool {
        self.avoid.installed_tombstones
            && e.op_for(key) == Some(&Op::Delete)
            && self.write_id(&e.dot()).is_ok_and(|id| {
                let members: Vec<_> = self
                    .members()
                    .into_iter()
                    .map(|m| &self.replicas[m])
                    .collect();
                members.iter().any(|r| r.installed_tombstones.contains(id))
                    && members.iter().all(|r| r.now.applied.contains(id))
            })
    }

    fn check_converged(&self) -> SimResult {
        let first = self.members()[0];
        let reference = self.core(first);
        let reference_dump = self.dump(first)?;
        for (at, replica) in self.replicas.iter().enumerate() {
            if !self.is_member(at) {
                continue;
            }
            let node = &self.nodes[at];
            let core = replica.core();
            ensure!(
                core.buffered() == 0,
                Check::Convergence,
                "{node} still buffers {} events after the flush",
                core.buffered()
            );
            ensure!(
                replica.group.commands == 0 && *core.applied() == replica.committed_clock,
                Check::Convergence,
                "{node} has not committed everything after the flush"
            );
            for (origin, writes) in self.truth.by_origin.iter().enumerate() {
                ensure!(
                    replica.now.applied_per_origin[origin] == writes.len() as Seq,
                    Check::NoLostWrites,
                    "{node} applied {} of the {} writes of {}",
                    replica.now.applied_per_origin[origin],
                    writes.len(),
                    self.nodes[origin]
                );
            }
            self.check_clock(at, core.applied(), "applied clock")?;
            ensure!(
                core.applied() == reference.applied(),
                Check::Convergence,
                "{node} applied {} but {} applied {}",
                core.applied(),
                self.nodes[first],
                reference.applied()
            );
            ensure!(
                core.store().log_len() == 0,
                Check::Core,
                "{node} keeps {} log entries although every node acknowledged everything \
                 (stable {}, applied {}, acked {:?})",
                core.store().log_len(),
                core.stable(),
                core.applied(),
                self.nodes
                    .iter()
                    .map(|n| core.acked(n).map(ToString::to_string))
                    .collect::<Vec<_>>()
            );
            let dump = self.dump(at)?;
            let differing: Vec<&String> = self
                .keys
                .iter()
                .filter(|k| dump.get(*k) != reference_dump.get(*k))
                .collect();
            ensure!(
                dump == reference_dump,
                Check::Convergence,
                "{node} and {} hold different siblings for {differing:?}: {} and {}",
                self.nodes[first],
                dot_list(
                    differing.iter().flat_map(|k| dump
                        .get(*k)
                        .into_iter()
                        .flatten()
                        .map(|e| e.dot()))
                ),
                dot_list(differing.iter().flat_map(|k| {
                    reference_dump
                        .get(*k)
                        .into_iter()
                        .flatten()
                        .map(|e| e.dot())
                }))
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
        let read = self.final_read(at, key)?;
        let siblings = self.sibling_ids(&read)?;
        self.check_siblings(at, key, &siblings)?;
        self.check_winner(at, key, &read, &siblings)?;
        for (sibling, &id) in read.siblings.iter().zip(&siblings) {
            let written = &self.truth.writes[id];
            let expected = written.event.for_key(&self.keys[key]);
            ensure!(
                Some(&**sibling) == expected.as_ref(),
                Check::Convergence,
                "{node} holds {sibling:?} as a sibling of {}, but it was written as {:?}",
                self.keys[key],
                written.event
            );
            ensure!(
                !written.deletes(key),
                Check::Convergence,
                "{node} still holds the tombstone {} of {}, though every node has \
                 acknowledged it",
                self.truth.dot(id),
                self.keys[key]
            );
        }
        let reference = self.final_read(self.members()[0], key)?;
        ensure!(
            read.siblings == reference.siblings && read.winner() == reference.winner(),
            Check::Convergence,
            "{node} and {} hold different siblings of {}: {} and {}",
            self.nodes[self.members()[0]],
            self.keys[key],
            dot_list(read.siblings.iter().map(|e| e.dot())),
            dot_list(reference.siblings.iter().map(|e| e.dot()))
        );
        Ok(())
    }

    /// Computed afresh from the ground truth: once every write is everywhere and
    /// stable, the siblings of a key are the puts that no write of the key saw.
    /// A write may disappear only by being overwritten, as a collected
    /// tombstone, or by a crash before its commit (it was never acknowledged).
    fn check_no_lost_writes(&self) -> SimResult {
        for (key, name) in self.keys.iter().enumerate() {
            let writes: Vec<WriteId> = (0..self.truth.writes.len())
                .filter(|&id| self.truth.writes[id].writes(key) && !self.truth.writes[id].lost)
                .collect();
            let survivors: Vec<WriteId> = writes
                .iter()
                .copied()
                .filter(|&w| !self.truth.writes[w].deletes(key))
                .filter(|&w| {
                    !writes
                        .iter()
                        .any(|&v| self.truth.writes[v].past.contains(w))
                })
                .collect();
            for at in self.members() {
                let mut siblings = self.sibling_ids(&self.final_read(at, key)?)?;
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

    /// After the flush, no session waits for an ack, every session's context is
    /// satisfied everywhere, and a read of every key still shows what the
    /// session wrote and read.
    fn check_sessions_after_flush(&mut self) -> SimResult {
        for session in 0..self.sessions.len() {
            ensure!(
                self.sessions[session].waiting_for.is_none(),
                Check::Sessions,
                "session {session} still waits for an ack after the flush"
            );
            for at in self.members() {
                ensure!(
                    self.context_satisfied(session, at)?,
                    Check::Sessions,
                    "session {session}'s context {} is still ahead of {} after the flush",
                    self.sessions[session].context,
                    self.nodes[at]
                );
            }
            let members = self.members();
            for key in 0..self.keys.len() {
                let at = members[self.rng.random_range(0..members.len())];
                self.trace.push(Step::Read { session, at, key });
                self.client_read(session, at, key)?;
            }
        }
        Ok(())
    }
}
