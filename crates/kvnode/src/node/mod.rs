//! The node: the causal core behind one writer path, and what HTTP handlers call.
//!
//! Every command that changes state (a client write, a batch from a peer, a
//! peer's acknowledgement) goes through one channel to one writer thread. The
//! writer takes everything that is waiting, runs it through the core under the
//! core's lock and writes the whole group as one storage batch; then, with the
//! lock released, it syncs the batch to disk, publishes the new `applied` clock
//! and answers each caller. The published clock is the node's durable state:
//! replication sends only what it covers, and acknowledges nothing else. Reads
//! take the lock briefly; they show other nodes' writes at once (their origin
//! already has them on disk) and this node's own once they are published.

pub mod bootstrap;
pub mod membership;
pub mod peer;
pub mod replication;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use vclock_proto::{
    BufferedEvent, Event, NodeId, Op, PeerStatus, RecoveryStatus, Seq, SnapshotChunk, SnapshotKey,
    StatusResponse, TraceKind, TraceRef, VClock, Write,
};

use crate::config::{Config, Member};
use crate::core::replication::{Mutations, Settings};
use crate::core::{
    self, ContextCheck, ContextError, ContextWait, Core, Limits, Phase, ReadResult, Receipt,
    Recovery, Trust, WaitStep,
};
use crate::error::{Error, Result};
use crate::observe::metrics::{LinkMetrics, Metrics};
use crate::observe::trace::Tracer;
use crate::storage::durable::Durability;
use crate::storage::{Siblings, Store};

/// Most commands the writer takes into one commit.
const MAX_GROUP: usize = 4096;
/// How often the writer sweeps the buffer: an event leaves it after one to two
/// sweeps (see [`Core::sweep_buffer`]).
const BUFFER_SWEEP: Duration = Duration::from_secs(300);
/// Capacity of the writer's queue; callers wait when it is full.
const QUEUE: usize = 16 * 1024;

/// The storage the node runs on.
pub type BoxStore = Box<dyn Store + Send>;

enum Command {
    /// One write, or an atomic transaction of writes to distinct keys.
    Write {
        writes: Vec<Write>,
        reply: oneshot::Sender<Result<Arc<Event>>>,
        /// Its share of `max_queued_bytes`, given back once its group is done.
        queued: OwnedSemaphorePermit,
    },
    Receive {
        peer: NodeId,
        cause: Option<TraceRef>,
        events: Vec<Event>,
        reply: oneshot::Sender<Result<(Receipt, VClock)>>,
        queued: OwnedSemaphorePermit,
    },
    Ack {
        peer: NodeId,
        applied: VClock,
    },
    /// A new membership: every node known, and the active ones.
    Members {
        known: Vec<NodeId>,
        active: Vec<NodeId>,
    },
    /// A step of a bootstrap (see [`bootstrap`]).
    Install {
        step: InstallStep,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Commit what came before, answer, and stop.
    Stop {
        done: oneshot::Sender<()>,
    },
}

/// A step of installing a peer's snapshot, run by the writer.
#[derive(Debug)]
pub(crate) enum InstallStep {
    /// Drop the log and the buffer.
    Begin,
    /// The keys after `after` through `through` (the end when `None`) become
    /// `entries`.
    Chunk {
        after: Option<String>,
        through: Option<String>,
        entries: Vec<(String, Siblings)>,
    },
    /// The replica has applied what this clock counts.
    Finish(VClock),
}

/// The node's recovery state, and a bootstrap's progress.
#[derive(Debug)]
struct RecoveryState {
    recovery: Recovery,
    /// How far the current bootstrap got; `None` when none is under way.
    progress: Option<bootstrap::Progress>,
    /// Keys copied by the last bootstrap, once done.
    copied: u64,
}

/// The file that marks a data directory whose bootstrap has not finished: its
/// store is then not trusted to hold all of this node's writes.
pub const BOOTSTRAP_MARKER: &str = "BOOTSTRAPPING";

/// The file that names the node a data directory belongs to, written once
/// the node is live on it: a directory without it is new, lost what it held,
/// or was never live (see [`crate::core::recovery`]).
pub const NODE_IDENTITY: &str = "NODE";

/// The replication link from this node to one peer.
#[derive(Debug)]
pub struct Link {
    /// The peer.
    pub member: Member,
    /// Set by the fault hook: nothing is sent while paused.
    pub paused: AtomicBool,
    /// Wakes the link's sender: new writes to send, or a resume.
    pub wake: Notify,
    /// Batches, errors and acknowledgement times, for `/metrics`.
    pub metrics: LinkMetrics,
    /// Set when the peer left the membership (or moved): the sender stops.
    removed: AtomicBool,
    health: Mutex<LinkHealth>,
}

#[derive(Debug, Default)]
struct LinkHealth {
    reachable: bool,
    last_error: Option<String>,
}

impl Link {
    fn new(member: Member) -> Self {
        Self {
            member,
            paused: AtomicBool::new(false),
            wake: Notify::new(),
            metrics: LinkMetrics::default(),
            removed: AtomicBool::new(false),
            health: Mutex::new(LinkHealth::default()),
        }
    }

    /// Records the outcome of a request to the peer; returns true when the
    /// peer's reachability changed.
    pub fn record(&self, outcome: std::result::Result<(), String>) -> bool {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let was = health.reachable;
        health.reachable = outcome.is_ok();
        health.last_error = outcome.err();
        was != health.reachable
    }

    /// True when the fault hook paused this link.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// True once the peer left the membership or moved: the sender stops.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Stops the link's sender.
    fn close(&self) {
        self.removed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

struct Shared {
    config: Arc<Config>,
    core: Mutex<Core<BoxStore>>,
    applied: watch::Sender<VClock>,
    /// One link per active peer; replaced whole when the membership changes.
    links: RwLock<Arc<Vec<Arc<Link>>>>,
    /// The membership, and the ids it knows (for the hot paths).
    members: RwLock<membership::Members>,
    /// Serializes membership changes.
    members_change: tokio::sync::Mutex<()>,
    /// Wakes the membership announcer: the membership changed.
    members_news: Notify,
    metrics: Arc<Metrics>,
    tracer: Tracer,
    /// Bytes of writes and batches handed to the writer and not yet done, out
    /// of `max_queued_bytes`.
    queued: Arc<Semaphore>,
    /// Slots of trace streams, `max_trace_streams` of them.
    streams: Arc<Semaphore>,
    peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// True once the node is shutting down: senders finish their batch and stop.
    stopping: watch::Sender<bool>,
    /// The start of the node's clock: the core counts time from here.
    started: tokio::time::Instant,
    recovery: Mutex<RecoveryState>,
    /// Set once the recovery is live, for good: the writes', reads' and
    /// acknowledgements' paths then check nothing more.
    live: AtomicBool,
    /// Wakes the recovery task: a peer's clock or failure came in.
    recovery_news: Notify,
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core<BoxStore>> {
        // A panic while holding the lock is a bug; the state is still the last
        // consistent one the core left, so keep serving.
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recovery(&self) -> MutexGuard<'_, RecoveryState> {
        self.recovery.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn links(&self) -> Arc<Vec<Arc<Link>>> {
        self.links.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A running node.
pub struct Node {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.shared.config.node_id)
            .finish()
    }
}

impl Node {
    /// Starts a node's writer over `store`. Replication is started separately,
    /// with [`replication::spawn_links`], inside an actix runtime.
    pub fn start(config: Config, store: BoxStore) -> Result<Arc<Self>> {
        let peer_tls =
            crate::tls::peer_client_config(&config).map_err(|e| Error::Internal(e.to_string()))?;
        let config = Arc::new(config);
        let members = membership::load(&config)?;
        let node_ids = members.known();
        let mut core = Core::new(
            config.node_id.clone(),
            node_ids.clone(),
            store,
            Limits {
                max_buffered: config.max_buffered,
                max_buffered_bytes: config.max_buffered_bytes,
            },
        )?;
        let active: Vec<NodeId> = members.active().map(|m| m.id.clone()).collect();
        core.set_members(&node_ids, &active)?;
        let (applied, _) = watch::channel(core.applied().clone());
        let progress = match config.memory {
            true => None,
            false => bootstrap::read_marker(&config.data_dir),
        };
        // Complete: kept with fsync in a data directory where this node has
        // been live (its identity file is there), no bootstrap half-way.
        let trust = if progress.is_some() {
            Trust::Unfinished
        } else if !config.memory
            && config.durability == Durability::Fsync
            && config.data_dir.join(NODE_IDENTITY).exists()
        {
            Trust::Complete
        } else {
            Trust::Unknown
        };
        if config.force_new_history {
            warn!(
                "force_new_history: this node accepts writes without checking that no peer \
                 holds more of its writes; if it lost its data it may reuse their dots"
            );
        }
        // Removed peers too: what they hold of this node's writes counts.
        let peer_ids: Vec<NodeId> = node_ids
            .iter()
            .filter(|id| **id != config.node_id)
            .cloned()
            .collect();
        let mut recovery = Recovery::new(
            config.node_id.clone(),
            peer_ids,
            trust,
            config.force_new_history,
            Duration::ZERO,
            config.peer_timeout,
        );
        for removed in members.entries().iter().filter(|m| m.removed) {
            recovery.remove(&removed.id);
        }
        // Live at once with force_new_history or without peers; otherwise
        // the recovery task decides, as peers answer.
        recovery.decide(Duration::ZERO, core.applied());
        let live = recovery.is_live();
        let tracer = Tracer::new(
            config.node_id.clone(),
            config.trace_buffer,
            config.trace_buffer_bytes,
            config.trace_file.as_deref(),
        )
        .map_err(|e| {
            Error::Internal(format!(
                "cannot open the trace file {}: {e}",
                config
                    .trace_file
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            ))
        })?;
        let links = members
            .active()
            .filter(|m| m.id != config.node_id)
            .map(|m| {
                Arc::new(Link::new(Member {
                    id: m.id.clone(),
                    url: m.url.clone(),
                }))
            })
            .collect();
        let queued = Arc::new(Semaphore::new(
            config.max_queued_bytes.min(Semaphore::MAX_PERMITS),
        ));
        let streams = Arc::new(Semaphore::new(
            config.max_trace_streams.min(Semaphore::MAX_PERMITS),
        ));
        let shared = Arc::new(Shared {
            streams,
            config,
            core: Mutex::new(core),
            applied,
            links: RwLock::new(Arc::new(links)),
            members: RwLock::new(membership::Members::new(members)),
            members_change: tokio::sync::Mutex::new(()),
            members_news: Notify::new(),
            metrics: Arc::new(Metrics::new()),
            tracer,
            queued,
            peer_tls,
            stopping: watch::channel(false).0,
            started: tokio::time::Instant::now(),
            recovery: Mutex::new(RecoveryState {
                recovery,
                progress,
                copied: 0,
            }),
            live: AtomicBool::new(live),
            recovery_news: Notify::new(),
        });
        let (writer, commands) = mpsc::channel(QUEUE);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("kvnode-writer".into())
            .spawn(move || run_writer(&writer_shared, commands))
            .map_err(|e| Error::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(Self { shared, writer }))
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.shared.config.node_id
    }

    /// The node's counters and histograms.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The node's trace.
    pub fn tracer(&self) -> &Tracer {
        &self.shared.tracer
    }

    /// The time on the node's clock, as the core counts it: since the start.
    pub fn now(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// The instant of `time` on the node's clock (see [`Self::now`]).
    pub fn instant(&self, time: Duration) -> tokio::time::Instant {
        self.shared.started + time
    }

    /// How the replication links pace themselves, from the configuration.
    pub fn replication_settings(&self) -> Settings {
        let config = self.config();
        Settings {
            retransmit_after: config.retransmit_after,
            repair_after: config.repair_after,
            sync_interval: config.sync_interval,
            request_timeout: config.peer_timeout,
            max_batch_events: config.max_batch_events,
            max_batch_bytes: config.max_batch_bytes,
            mutations: Mutations::default(),
        }
    }

    /// The TLS configuration of requests to peers (`tls_ca`), if any.
    pub fn peer_tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.shared.peer_tls.as_ref()
    }

    /// A client for requests to peers, with the cluster secret and `tls_ca`.
    pub fn peer_client(&self, timeout: Duration) -> awc::Client {
        crate::tls::peer_client(
            timeout,
            self.config().cluster_secret.as_ref(),
            self.peer_tls(),
        )
    }

    /// Starts the shutdown: replication senders finish the request they are
    /// sending and stop.
    pub fn begin_shutdown(&self) {
        self.shared.stopping.send_replace(true);
    }

    /// True once [`Self::begin_shutdown`] was called.
    pub fn is_stopping(&self) -> bool {
        *self.shared.stopping.borrow()
    }

    /// Watches for the shutdown.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shared.stopping.subscribe()
    }

    /// Stops the writer once it has committed and answered every command queued
    /// so far. Later commands get 503. Returns false if the writer was gone.
    pub async fn stop_writer(&self) -> bool {
        let (done, stopped) = oneshot::channel();
        if self.writer.send(Command::Stop { done }).await.is_err() {
            return false;
        }
        stopped.await.is_ok()
    }

    /// The replication links, one per active peer, in id order.
    pub fn links(&self) -> Arc<Vec<Arc<Link>>> {
        self.shared.links()
    }

    /// The committed `applied` clock: what is durable, published after each
    /// commit (the core's own clock may be ahead while a sync is under way).
    pub fn committed(&self) -> VClock {
        self.shared.applied.borrow().clone()
    }

    /// Watches the committed `applied` clock.
    pub fn watch_committed(&self) -> watch::Receiver<VClock> {
        self.shared.applied.subscribe()
    }

    /// Runs `f` on the core, under its lock (for the replication senders).
    pub(crate) fn with_core<T>(&self, f: impl FnOnce(&Core<BoxStore>) -> T) -> T {
        f(&self.shared.core())
    }

    /// Classifies a context against the committed clock.
    pub fn check_context(&self, context: &VClock) -> ContextCheck {
        core::check_context(
            self.id(),
            &self.node_ids(),
            &self.shared.applied.borrow(),
            context,
        )
    }

    /// Waits until this node has applied everything `context` counts (rules 1
    /// and 5 of `docs/design.md`), at most `causal_wait`. While waiting it asks the origin of each
    /// missing entry whether it made those writes at all, so that a context
    /// claiming writes that never happened gets a 409 rather than a timeout
    /// (the decisions are [`ContextWait`]'s).
    pub async fn wait_for(&self, context: &VClock) -> Result<()> {
        let bound = self.config().causal_wait;
        let mut wait = ContextWait::new(context.clone(), self.now(), bound);
        let mut applied = self.watch_committed();
        let (answers_tx, mut answers) = mpsc::unbounded_channel::<(NodeId, VClock)>();
        loop {
            let step = wait.step(
                self.now(),
                self.id(),
                &self.node_ids(),
                &applied.borrow_and_update(),
            );
            let deadline = match step {
                WaitStep::Satisfied => return Ok(()),
                WaitStep::Failed(error) => return Err(self.context_error(error, bound)),
                WaitStep::Ask(origins) => {
                    for origin in origins {
                        self.ask_origin(origin, bound, answers_tx.clone());
                    }
                    continue;
                }
                WaitStep::Wait { deadline } => deadline,
            };
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(stopping());
                    }
                }
                Some((origin, clock)) = answers.recv() => {
                    if let Some(error) = wait.origin_answered(&origin, &clock) {
                        return Err(self.context_error(error, bound));
                    }
                }
                _ = tokio::time::sleep_until(self.instant(deadline)) => {}
            }
        }
    }

    /// Asks `origin` for its clock, in the background; its answer (if any)
    /// goes to `answers`.
    fn ask_origin(
        &self,
        origin: NodeId,
        bound: Duration,
        answers: mpsc::UnboundedSender<(NodeId, VClock)>,
    ) {
        let links = self.links();
        let Some(link) = links.iter().find(|l| l.member.id == origin) else {
            return;
        };
        let url = link.member.url.clone();
        let me = self.id().clone();
        let client = self.peer_client(self.config().peer_timeout.min(bound));
        actix_web::rt::spawn(async move {
            let answer = peer::ask_clock(&client, &url, &me).await;
            if let Ok(clock) = answer {
                let _ = answers.send((origin, clock));
            }
        });
    }

    fn context_error(&self, error: ContextError, bound: Duration) -> Error {
        match error {
            ContextError::UnknownNode(node) => Error::UnknownNode(node, self.node_ids().join(", ")),
            ContextError::UnknownHistory(missing) => Error::UnknownHistory(missing),
            ContextError::Timeout(missing) => Error::CausalTimeout {
                missing,
                waited_ms: bound.as_millis(),
            },
        }
    }

    /// A client write, once its context is satisfied ([`Self::wait_for`]):
    /// hands it to the writer, which applies and commits it even if nobody
    /// waits for the answer any more.
    pub async fn write(&self, key: String, op: Op) -> Result<Arc<Event>> {
        self.write_all(vec![Write { key, op }]).await
    }

    /// A client's atomic transaction, once its context is satisfied: one
    /// event, one dot, for every write of `writes` (distinct keys, checked
    /// against the client limits by the caller). Like [`Self::write`], it is
    /// applied and committed even if nobody waits for the answer any more.
    pub async fn write_all(&self, writes: Vec<Write>) -> Result<Arc<Event>> {
        if let Some(why) = self.not_live() {
            return Err(Error::Recovering(why));
        }
        if self.is_removed() {
            return Err(Error::Unavailable(format!(
                "{} was removed from the cluster: write to another node",
                self.id()
            )));
        }
        let (txn, delete) = (writes.len() > 1, writes.iter().all(|w| w.op == Op::Delete));
        // Measured as the event will be, before it exists, with an entry
        // in its clock for every node.
        let bytes = Event::size_of(
            self.id(),
            writes.iter().map(|w| (w.key.as_str(), &w.op)),
            self.node_ids().iter().map(String::as_str),
        );
        let queued = self.reserve(bytes)?;
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Write {
            writes,
            reply,
            queued,
        })
        .await?;
        let event = answer.await.map_err(|_| stopping())??;
        if txn {
            self.shared.metrics.txn_write();
        } else {
            self.shared.metrics.write(delete);
        }
        Ok(event)
    }

    /// A client read: waits for `context`, then reads siblings and clock together.
    pub async fn read(&self, key: &str, context: Option<&VClock>) -> Result<ReadResult> {
        let mut results = self.read_keys(&[key], context).await?;
        results
            .pop()
            .ok_or_else(|| Error::Internal("a read of one key read none".into()))
    }

    /// A snapshot read: waits for `context`, then reads every key of `keys`
    /// at one moment of the node's state, under the core's lock. The writer
    /// applies events in causal order under that lock, so the answers form a
    /// causally consistent cut: no key shows a write without every write it
    /// depends on that the other keys show. Every result has the cut's clock.
    pub async fn read_keys(
        &self,
        keys: &[&str],
        context: Option<&VClock>,
    ) -> Result<Vec<ReadResult>> {
        if !self.is_live() && !self.shared.recovery().recovery.serves_reads() {
            let why = self.not_live().unwrap_or_default();
            return Err(Error::Recovering(format!(
                "reads are refused until then: {why}"
            )));
        }
        if let Some(context) = context {
            self.wait_for(context).await?;
        }
        // Test only: each key read on its own, a pause apart, with its own
        // clock; the last one read is the latest.
        #[cfg(feature = "broken-causality")]
        let fractured = crate::broken::on("fractured-snapshots");
        #[cfg(not(feature = "broken-causality"))]
        let fractured = false;
        let mut results = if fractured {
            let mut results = Vec::with_capacity(keys.len());
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    std::thread::sleep(std::time::Duration::from_micros(300));
                }
                results.push(self.shared.core().read(key)?);
            }
            results
        } else {
            let core = self.shared.core();
            let results = keys.iter().map(|key| core.read(key));
            results.collect::<core::CoreResult<Vec<_>>>()?
        };
        // This node's own writes show only once durable. The read waits for
        // those among the keys it read, not for every one its clock counts,
        // and its clock then counts no more of them than are durable: the
        // ones beyond touched none of these keys, and no other node's write
        // can depend on them (they were not sent yet), so the keys with that
        // clock are still a causally consistent cut.
        let id = self.id();
        let shown_own = results
            .iter()
            .flat_map(|r| r.siblings.iter())
            .filter(|e| e.origin == *id)
            .map(|e| e.seq)
            .max()
            .unwrap_or(0);
        let durable = self.once_durable(shown_own).await?;
        for result in &mut results {
            if durable < result.applied.get(id) {
                result.applied.set(id, durable);
            }
        }
        // Traced once shown, so after the records of the writes it shows.
        let tracer = &self.shared.tracer;
        if tracer.is_on() {
            for (key, result) in keys.iter().zip(&results) {
                tracer.record(TraceKind::Read, &result.applied, |e| {
                    e.key = Some((*key).to_owned());
                    e.value = result.winner().cloned();
                    e.siblings = Some(result.siblings.len() as u64);
                });
            }
        }
        self.shared.metrics.read();
        Ok(results)
    }

    /// Waits until this node's own writes up to `own` are durable. The core
    /// may hold a group whose sync is under way; this node's own writes are
    /// shown only once durable: a crash of the machine must not take back a
    /// write a client saw, nor let the node reuse its seqs. Writes of other
    /// nodes are shown at once: their origin has them on disk, and this node
    /// acknowledges them only after its own sync, so a crash here loses
    /// nothing the origin could not send again.
    ///
    /// Returns how many of its own writes are durable by then (at least `own`).
    async fn once_durable(&self, own: Seq) -> Result<Seq> {
        let mut published = self.watch_committed();
        loop {
            let durable = published.borrow_and_update().get(self.id());
            if durable >= own {
                return Ok(durable);
            }
            if published.changed().await.is_err() {
                return Err(stopping());
            }
        }
    }

    /// A chunk of this node's state for a bootstrapping peer: up to `limit`
    /// keys after `after`, read at one moment, shown once durable.
    pub async fn snapshot_chunk(&self, after: Option<&str>, limit: usize) -> Result<SnapshotChunk> {
        /// About the most bytes of siblings in one chunk (at least one key).
        const MAX_CHUNK_BYTES: usize = 4 << 20;
        let (entries, more, applied) = self.with_core(|core| {
            let (entries, applied) = core.snapshot_chunk(after, limit, MAX_CHUNK_BYTES)?;
            let more = match entries.last() {
                Some((last, _)) => !core.store().keys_after(Some(last), 1, 0)?.is_empty(),
                None => false,
            };
            Ok::<_, core::CoreError>((entries, more, applied))
        })?;
        self.once_durable(applied.get(self.id())).await?;
        let keys = entries
            .into_iter()
            .map(|(key, siblings)| SnapshotKey {
                key,
                siblings: siblings.iter().map(|s| (**s).clone()).collect(),
            })
            .collect();
        Ok(SnapshotChunk {
            node: self.id().clone(),
            applied,
            keys,
            more,
        })
    }

    /// Why this node does not serve writes yet; `None` once it does.
    pub fn not_live(&self) -> Option<String> {
        if self.is_live() {
            return None;
        }
        let applied = self.committed();
        self.shared.recovery().recovery.waiting_for(&applied)
    }

    /// The clock this node shows its peers (in its clock exchanges, its
    /// answers to theirs and its snapshot requests) when `applied` is what it
    /// has committed. While a bootstrap is unfinished, no more than the meet
    /// of the chunks installed so far (nothing before the first): `applied`
    /// may count writes that the install takes back, and a peer that took
    /// them as held might collect them from its log and never send them
    /// again.
    pub fn shown(&self, mut applied: VClock) -> VClock {
        if self.is_live() {
            return applied;
        }
        if let Some(progress) = &self.shared.recovery().progress {
            applied.meet(progress.meet.as_ref().unwrap_or(&VClock::new()));
        }
        applied
    }

    /// True once the node serves reads and writes (it stays so).
    fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::Acquire)
    }

    /// What the recovery decides now, given what this node holds of its own
    /// writes; marks the node live once it is.
    pub(crate) fn decide(&self, now: Duration) -> core::Decision {
        let applied = self.committed();
        let decision = self.shared.recovery().recovery.decide(now, &applied);
        if decision == core::Decision::Live {
            self.shared.live.store(true, Ordering::Release);
        }
        decision
    }

    /// Where the node stands in its recovery.
    pub fn phase(&self) -> Phase {
        self.shared.recovery().recovery.phase().clone()
    }

    /// A peer's clock came in (an answer, or a message of its own): while
    /// the node is not live, what it holds of this node's writes, and whether
    /// it holds writes of other origins this node lacks, count.
    pub fn peer_clock(&self, peer: &str, clock: &VClock) {
        if self.is_live() {
            return;
        }
        let (me, mine) = (self.id(), self.committed());
        let ahead = clock.nodes().any(|n| n != me && clock.get(n) > mine.get(n));
        self.peer_holds(peer, clock.get(me), ahead);
    }

    /// `peer` holds `holds` of this node's writes, and writes of other
    /// origins this node lacks when `ahead` (see [`Self::peer_clock`]).
    pub fn peer_holds(&self, peer: &str, holds: Seq, ahead: bool) {
        if self.is_live() {
            return;
        }
        let mut state = self.shared.recovery();
        if !state.recovery.is_live() {
            state.recovery.heard(peer, holds);
            if ahead {
                state.recovery.ahead(peer);
            }
            self.shared.recovery_news.notify_one();
        }
    }

    /// A request to a peer failed (see [`Self::peer_clock`]).
    pub fn peer_unreachable(&self, peer: &str) {
        let mut state = self.shared.recovery();
        if !state.recovery.is_live() {
            state.recovery.unreachable(peer);
            self.shared.recovery_news.notify_one();
        }
    }

    /// Hands a bootstrap step to the writer and waits for its commit.
    pub(crate) async fn install(&self, step: InstallStep) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Install { step, reply }).await?;
        answer.await.map_err(|_| stopping())?
    }

    /// A batch from `peer` (whose trace record of the send is `cause`): what
    /// happened to it, and the clock to acknowledge with.
    pub async fn receive(
        &self,
        peer: NodeId,
        cause: Option<TraceRef>,
        events: Vec<Event>,
    ) -> Result<(Receipt, VClock)> {
        if !self.is_live() {
            let state = self.shared.recovery();
            if let Phase::Bootstrapping { source, .. } = state.recovery.phase() {
                return Err(Error::Unavailable(format!(
                    "bootstrapping from {source}: batches are taken once the snapshot is installed"
                )));
            }
            if state.progress.is_some() {
                return Err(Error::Unavailable(
                    "an unfinished bootstrap must go on first: batches are taken once the \
                     snapshot is installed"
                        .into(),
                ));
            }
        }
        self.shared.metrics.batch_received(events.len());
        let queued = self.reserve(events.iter().map(Event::size_bytes).sum())?;
        let (reply, answer) = oneshot::channel();
        self.submit(Command::Receive {
            peer,
            cause,
            events,
            reply,
            queued,
        })
        .await?;
        answer.await.map_err(|_| stopping())?
    }

    /// Records a peer's acknowledged clock (used for log collection).
    pub async fn record_ack(&self, peer: &str, applied: VClock) -> Result<()> {
        self.submit(Command::Ack {
            peer: peer.to_owned(),
            applied,
        })
        .await
    }

    /// What `/status` shows.
    pub fn status(&self) -> StatusResponse {
        // The committed clock, not the core's: while a group's sync is under
        // way the core counts writes a crash would take back, and a client
        // that took this clock as its context would then get a false 409.
        // Peers are acknowledged and sent only what is committed, so the lags
        // count committed writes too.
        let applied = self.committed();
        let members = self.members();
        let core = self.shared.core();
        let own = applied.get(self.id());
        let peers = self
            .links()
            .iter()
            .map(|link| {
                let acked = core.acked(&link.member.id).cloned().unwrap_or_default();
                let health = link.health.lock().unwrap_or_else(|e| e.into_inner());
                PeerStatus {
                    node: link.member.id.clone(),
                    url: link.member.url.clone(),
                    lag: own.saturating_sub(acked.get(self.id())),
                    acked,
                    paused: link.is_paused(),
                    reachable: health.reachable,
                    last_error: health.last_error.clone(),
                }
            })
            .collect();
        StatusResponse {
            node: self.id().clone(),
            buffered: core.buffered_per_origin(),
            buffered_total: core.buffered() as u64,
            buffered_events: core
                .buffered_events(100)
                .into_iter()
                .map(|(e, waiting_for)| BufferedEvent {
                    dot: e.dot(),
                    key: e.key.clone(),
                    also: e.also.iter().map(|w| w.key.clone()).collect(),
                    waiting_for,
                })
                .collect(),
            log_len: core.store().log_len(),
            log_in_memory: core.store().log_in_memory(),
            log_in_memory_bytes: core.store().log_in_memory_bytes(),
            queued_bytes: self.queued_bytes() as u64,
            trace_bytes: self.shared.tracer.bytes() as u64,
            // Met with the committed clock: a peer may hold (and have
            // acknowledged) another origin's event that this node has applied
            // but not yet synced.
            stable: {
                let mut stable = core.stable();
                stable.meet(&applied);
                stable
            },
            fsyncs: core.store().fsyncs(),
            conflicts: core.conflicts(),
            buffered_bytes: core.buffered_bytes() as u64,
            recovery: {
                let state = self.shared.recovery();
                RecoveryStatus {
                    phase: match state.recovery.phase() {
                        Phase::Checking => "checking",
                        Phase::Bootstrapping { .. } => "bootstrapping",
                        Phase::Live => "live",
                    }
                    .into(),
                    waiting_for: state.recovery.waiting_for(&applied),
                    keys_copied: state.progress.as_ref().map_or(state.copied, |p| p.copied),
                }
            },
            applied,
            peers,
            members_version: members.version(),
            members: members.entries(),
        }
    }

    /// Takes `bytes` of `max_queued_bytes` (all of it for a larger request, so
    /// that any one request can pass alone), or refuses with 503 when they are
    /// taken: a full queue in bytes sheds load rather than hold it.
    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit> {
        let limit = self.config().max_queued_bytes;
        let wanted = bytes.min(limit).min(Semaphore::MAX_PERMITS);
        let permits = u32::try_from(wanted).unwrap_or(u32::MAX);
        self.shared
            .queued
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| {
                Error::Unavailable(format!(
                    "the writer's queue holds {} bytes of requests, and this one needs {bytes}: \
                     over the limit of max_queued_bytes = {limit}; send again later",
                    self.queued_bytes()
                ))
            })
    }

    /// A slot for one trace stream (served or proxied), held until it ends; 503
    /// naming `max_trace_streams` when every slot is taken.
    pub fn stream_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.shared
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Error::Unavailable(format!(
                "{} trace streams are open, the limit of max_trace_streams; poll GET /v1/trace \
                 or try again later",
                self.config().max_trace_streams
            ))
            })
    }

    /// Bytes of writes and batches handed to the writer and not yet done.
    pub fn queued_bytes(&self) -> usize {
        let limit = self.config().max_queued_bytes.min(Semaphore::MAX_PERMITS);
        limit.saturating_sub(self.shared.queued.available_permits())
    }

    async fn submit(&self, command: Command) -> Result<()> {
        self.writer.send(command).await.map_err(|_| stopping())
    }
}

fn stopping() -> Error {
    Error::Unavailable("the node is stopping".into())
}

/// The writer path: one group of commands, one commit.
fn run_writer(shared: &Shared, mut commands: mpsc::Receiver<Command>) {
    let mut group = Vec::with_capacity(64);
    let mut swept_at = Instant::now();
    while let Some(first) = commands.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match commands.try_recv() {
                Ok(command) => group.push(command),
                Err(_) => break,
            }
        }
        let mut replies = Vec::with_capacity(group.len());
        // Trace records of the group's own writes, made once it is durable: a
        // record never shows a dot that a crash before the sync would give to
        // another write. (Other nodes' events are traced at once, as reads show
        // them at once: their origin holds them, and would send them again.)
        let mut traces: Vec<DeferredTrace> = Vec::new();
        // The group's shares of `max_queued_bytes`, given back once answered.
        let mut held = Vec::with_capacity(group.len());
        let mut wrote = false;
        let mut stop = None;
        let commands = group.len();
        let (started, staged, applied) = {
            let mut core = shared.core();
            for command in group.drain(..) {
                match command {
                    Command::Write {
                        writes,
                        reply,
                        queued,
                    } => {
                        held.push(queued);
                        let result = core.write_all(writes).map_err(Error::from);
                        if let (Ok(applied), true) = (&result, shared.tracer.is_on()) {
                            let (applied, clock) = (applied.clone(), core.applied().clone());
                            traces.push(Box::new(move |t| t.write(&applied, &clock)));
                        }
                        wrote |= result.is_ok();
                        replies.push(Reply::Write(reply, result.map(|a| a.event)));
                    }
                    Command::Receive {
                        peer,
                        cause,
                        events,
                        reply,
                        queued,
                    } => {
                        held.push(queued);
                        let traced = shared.tracer.is_on().then(|| {
                            let dots: Vec<_> = events.iter().map(Event::dot).collect();
                            (dots, core.applied().clone())
                        });
                        let result = core.receive(events).map_err(Error::from);
                        if let Ok(receipt) = &result {
                            if let Some((dots, before)) = &traced {
                                shared
                                    .tracer
                                    .receive(&peer, cause, dots, &receipt.steps, before);
                            }
                            log_receipt(receipt);
                            shared
                                .metrics
                                .delivered_from_buffer(receipt.from_buffer.len());
                        }
                        replies.push(Reply::Receive(reply, result));
                    }
                    Command::Ack { peer, applied } => match core.record_ack(&peer, &applied) {
                        Ok(()) => {}
                        Err(e @ core::CoreError::Overclaimed { .. }) => {
                            warn!("acknowledgement refused: {e}")
                        }
                        Err(e) => error!("cannot collect the log: {e}"),
                    },
                    Command::Members { known, active } => {
                        if let Err(e) = core.set_members(&known, &active) {
                            error!("cannot collect the log after a membership change: {e}");
                        }
                    }
                    Command::Install { step, reply } => {
                        let result = match step {
                            InstallStep::Begin => core.begin_install(),
                            InstallStep::Chunk {
                                after,
                                through,
                                entries,
                            } => core.install_chunk(after.as_deref(), through.as_deref(), entries),
                            InstallStep::Finish(clock) => {
                                core.finish_install(&clock);
                                Ok(())
                            }
                        };
                        replies.push(Reply::Install(reply, result.map_err(Error::from)));
                    }
                    Command::Stop { done } => stop = Some(done),
                }
            }
            // Commands come at least every sync_interval (peers' clock
            // exchanges), so the sweep needs no timer of its own.
            if swept_at.elapsed() >= BUFFER_SWEEP {
                swept_at = Instant::now();
                let dropped = core.sweep_buffer();
                if !dropped.is_empty() {
                    let dots: Vec<String> = dropped.iter().map(ToString::to_string).collect();
                    warn!(
                        "dropped {} events that waited in the buffer for over {BUFFER_SWEEP:?} \
                         (their senders send them again): {}",
                        dots.len(),
                        dots.join(", ")
                    );
                }
            }
            let started = Instant::now();
            let staged = core.commit_deferred();
            (started, staged, core.applied().clone())
        };
        // The sync runs without the core's lock, so that reads and senders go
        // on meanwhile. They show or send nothing the published clock does not
        // cover (see `Node::read` and the senders), and the clock is published
        // only once the group is durable.
        let committed = match staged {
            Ok(Some(pending)) => pending.sync().map_err(core::CoreError::from),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        shared.metrics.commit(commands, started.elapsed());
        if committed.is_ok() {
            for trace in traces {
                trace(&shared.tracer);
            }
            shared.applied.send_if_modified(|current| {
                let changed = *current != applied;
                *current = applied.clone();
                changed
            });
        }
        // Given back before the answers, so that an answered client finds room.
        drop(held);
        for reply in replies.drain(..) {
            reply.send(&committed, &applied);
        }
        if let Err(e) = committed {
            // Memory is now ahead of disk. Stop rather than serve or replicate
            // state that a restart would not find; a restart recovers from disk.
            error!("commit failed: {e}; stopping the node to protect its data");
            std::process::exit(70);
        }
        if wrote {
            for link in shared.links().iter() {
                link.wake.notify_one();
            }
        }
        if let Some(done) = stop {
            info!("writer: last commit done, stopped");
            let _ = done.send(());
            return;
        }
    }
    debug!("writer stopped");
}

/// A trace record to make once its group is durable.
type DeferredTrace = Box<dyn FnOnce(&Tracer)>;

enum Reply {
    Install(oneshot::Sender<Result<()>>, Result<()>),
    Write(oneshot::Sender<Result<Arc<Event>>>, Result<Arc<Event>>),
    Receive(oneshot::Sender<Result<(Receipt, VClock)>>, Result<Receipt>),
}

impl Reply {
    fn send(self, committed: &core::CoreResult<()>, applied: &VClock) {
        let failed = |e: &core::CoreError| Error::Internal(format!("commit failed: {e}"));
        match self {
            Reply::Install(tx, result) => {
                let _ = tx.send(committed.as_ref().map_err(failed).and(result));
            }
            Reply::Write(tx, result) => {
                let result = match committed {
                    Ok(()) => result,
                    Err(e) => Err(failed(e)),
                };
                let _ = tx.send(result);
            }
            Reply::Receive(tx, result) => {
                let result = match committed {
                    Ok(()) => result.map(|r| (r, applied.clone())),
                    Err(e) => Err(failed(e)),
                };
                let _ = tx.send(result);
            }
        }
    }
}

fn log_receipt(receipt: &Receipt) {
    for (dot, missing) in &receipt.buffered {
        let waits: Vec<String> = missing.iter().map(ToString::to_string).collect();
        info!("buffered {dot}: waiting for {}", waits.join(", "));
    }
    for dot in &receipt.from_buffer {
        info!("delivered {dot} from the buffer");
    }
    for dot in &receipt.conflicts {
        warn!(
            "refused {dot}: this node holds a different event with the same dot \
             (two histories for one origin: a forged event, or a node that reused its dots)"
        );
    }
    if receipt.refused > 0 {
        info!(
            "buffer full: refused {} events (the sender will retry)",
            receipt.refused
        );
    }
    debug!(
        "received batch: {} delivered, {} duplicates",
        receipt.delivered.len(),
        receipt.duplicates
    );
}

/// A node over a [`crate::storage::MemStore`] in a cluster `n1`, `n2`, `n3`
/// (peers unreachable, no senders started), configured with `env`
/// (`KVNODE_*` variables), for in-process HTTP tests.
#[cfg(test)]
pub(crate) fn test_node(env: &[(&str, &str)]) -> Arc<Node> {
    let mut vars: std::collections::HashMap<String, String> = [
        ("KVNODE_NODE_ID", "n1"),
        (
            "KVNODE_NODES",
            "n1=http://127.0.0.1:9,n2=http://127.0.0.1:9,n3=http://127.0.0.1:9",
        ),
        // Its peers never answer: it starts its history without them.
        ("KVNODE_FORCE_NEW_HISTORY", "true"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::load_from(None, vars).expect("a valid test configuration");
    Node::start(config, Box::new(crate::storage::MemStore::new())).expect("a node")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Condvar;

    use vclock_proto::Value;

    use super::*;
    use crate::storage::{MemStore, PendingSync, Siblings, StoreResult};

    /// A store whose syncs wait until the test opens its gate.
    struct GatedStore {
        inner: MemStore,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Store for GatedStore {
        fn siblings(&self, key: &str) -> StoreResult<Siblings> {
            self.inner.siblings(key)
        }
        fn set_siblings(&mut self, key: &str, siblings: Siblings) -> StoreResult<()> {
            self.inner.set_siblings(key, siblings)
        }
        fn append(&mut self, event: Arc<Event>) -> StoreResult<()> {
            self.inner.append(event)
        }
        fn log_after(
            &self,
            origin: &str,
            after: u64,
            limit: usize,
        ) -> StoreResult<Vec<Arc<Event>>> {
            self.inner.log_after(origin, after, limit)
        }
        fn truncate(&mut self, origin: &str, through: u64) -> StoreResult<()> {
            self.inner.truncate(origin, through)
        }
        fn log_len(&self) -> u64 {
            self.inner.log_len()
        }
        fn applied(&self) -> StoreResult<VClock> {
            self.inner.applied()
        }
        fn commit(&mut self, applied: &VClock) -> StoreResult<()> {
            self.inner.commit(applied)
        }
        fn keys_after(
            &self,
            after: Option<&str>,
            limit: usize,
            max_bytes: usize,
        ) -> StoreResult<Vec<(String, Siblings)>> {
            self.inner.keys_after(after, limit, max_bytes)
        }
        fn reset_log(&mut self) -> StoreResult<()> {
            self.inner.reset_log()
        }
        fn commit_deferred(&mut self, applied: &VClock) -> StoreResult<Option<PendingSync>> {
            self.inner.commit(applied)?;
            let gate = self.gate.clone();
            Ok(Some(PendingSync::new(move || {
                let (open, opened) = &*gate;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
                Ok(())
            })))
        }
    }

    /// Waits (at most 10 s) until the writer has applied a write of `origin`,
    /// whether or not its sync is done.
    async fn wait_applied(node: &Node, origin: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.with_core(|core| core.applied().get(origin)) == 0 {
            assert!(
                Instant::now() < deadline,
                "the writer never applied a write of {origin}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[actix_web::test]
    async fn other_nodes_writes_are_shown_before_the_sync_and_acknowledged_after() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = gated_node(&gate, &[]);
        let mut deps = VClock::default();
        deps.set("n2", 0);
        let event = Event {
            origin: "n2".into(),
            seq: 1,
            key: "k".into(),
            op: Op::Put(Value::from_serialize(&2).unwrap()),
            also: Vec::new(),
            deps,
        };
        let receive = actix_web::rt::spawn({
            let node = node.clone();
            async move { node.receive("n2".into(), None, vec![event]).await }
        });
        wait_applied(&node, "n2").await;
        // Readable while the sync is held; not acknowledged, not published.
        let read = node.read("k", None).await.unwrap();
        assert_eq!(read.winner().map(|v| v.json().to_owned()), Some("2".into()));
        assert_eq!(read.applied.get("n2"), 1);
        assert!(!receive.is_finished());
        assert_eq!(node.committed().get("n2"), 0);

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let (_, ack) = receive.await.unwrap().unwrap();
        assert_eq!(ack.get("n2"), 1);
        assert_eq!(node.committed().get("n2"), 1);
    }

    /// A node `n1` of `n1`, `n2` (peers unreachable, no senders) over a store
    /// whose syncs wait for `gate`, configured with `env`.
    pub(crate) fn gated_node(
        gate: &Arc<(Mutex<bool>, Condvar)>,
        env: &[(&str, &str)],
    ) -> Arc<Node> {
        let vars = [
            ("KVNODE_NODE_ID", "n1"),
            (
                "KVNODE_NODES",
                "n1=http://127.0.0.1:9,n2=http://127.0.0.1:9",
            ),
            ("KVNODE_FORCE_NEW_HISTORY", "true"),
        ]
        .iter()
        .chain(env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let config = Config::load_from(None, vars).unwrap();
        let store = GatedStore {
            inner: MemStore::new(),
            gate: gate.clone(),
        };
        Node::start(config, Box::new(store)).unwrap()
    }

    /// Writes 1 to `key` on a gated node and waits until the writer has
    /// applied it: its sync then waits for the gate.
    async fn write_held_in_sync(
        node: &Arc<Node>,
        key: &str,
    ) -> tokio::task::JoinHandle<Result<Arc<Event>>> {
        let write = actix_web::rt::spawn({
            let (node, key) = (node.clone(), key.to_owned());
            async move {
                let put = Op::Put(Value::from_serialize(&1).unwrap());
                node.write(key, put).await
            }
        });
        wait_applied(node, "n1").await;
        write
    }

    #[actix_web::test]
    async fn nothing_of_a_local_write_is_shown_before_its_sync() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = gated_node(&gate, &[]);

        // The writer applies the write, then waits in the sync.
        let write = write_held_in_sync(&node, "k").await;
        let read = actix_web::rt::spawn({
            let node = node.clone();
            async move { node.read("k", None).await }
        });
        // Neither the read nor the write can answer, and the published clock
        // does not count the write, until the sync is done.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!read.is_finished() && !write.is_finished());
        assert_eq!(node.committed().get("n1"), 0);
        assert!(
            node.check_context(&node.with_core(|c| c.applied().clone())) != ContextCheck::Satisfied
        );

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let read = read.await.unwrap().unwrap();
        assert_eq!(read.winner().map(|v| v.json().to_owned()), Some("1".into()));
        assert_eq!(read.applied.get("n1"), 1);
        assert_eq!(write.await.unwrap().unwrap().seq, 1);
        assert_eq!(node.committed().get("n1"), 1);
    }

    #[actix_web::test]
    async fn a_read_waits_only_for_own_writes_to_the_keys_it_reads() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = gated_node(&gate, &[]);
        let write = write_held_in_sync(&node, "a").await;

        // Another key answers at once, with a clock that does not count the
        // write whose sync is under way.
        let at_once = Duration::from_secs(10);
        let other = tokio::time::timeout(at_once, node.read("b", None))
            .await
            .expect("a read of another key does not wait for the sync")
            .unwrap();
        assert_eq!(other.winner(), None);
        assert_eq!(other.applied.get("n1"), 0);
        let snapshot = tokio::time::timeout(at_once, node.read_keys(&["b", "c"], None))
            .await
            .expect("a snapshot of other keys does not wait for the sync")
            .unwrap();
        assert!(snapshot.iter().all(|r| r.applied.get("n1") == 0));

        // The written key waits for the sync, as does a snapshot holding it.
        let read = actix_web::rt::spawn({
            let node = node.clone();
            async move { node.read_keys(&["b", "a"], None).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!read.is_finished() && !write.is_finished());

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let read = read.await.unwrap().unwrap();
        assert_eq!(
            read[1].winner().map(|v| v.json().to_owned()),
            Some("1".into())
        );
        assert!(read.iter().all(|r| r.applied.get("n1") == 1));
        assert_eq!(write.await.unwrap().unwrap().seq, 1);
    }

    /// A trace reader never sees a dot that a crash before the sync would give
    /// to another write.
    #[actix_web::test]
    async fn local_writes_are_traced_once_durable() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = gated_node(&gate, &[("KVNODE_TRACE_BUFFER", "100")]);
        let kinds = |node: &Node| -> Vec<TraceKind> {
            let trace = node.tracer().since(0);
            trace.events.iter().map(|e| e.kind).collect()
        };
        let put = Op::Put(Value::from_serialize(&1).unwrap());
        let write = actix_web::rt::spawn({
            let node = node.clone();
            async move { node.write("k".into(), put).await }
        });
        wait_applied(&node, "n1").await;
        let read = actix_web::rt::spawn({
            let node = node.clone();
            async move { node.read("k", None).await }
        });
        assert_eq!(kinds(&node), [], "applied, not yet durable");

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        write.await.unwrap().unwrap();
        read.await.unwrap().unwrap();
        assert_eq!(
            kinds(&node),
            [TraceKind::Write, TraceKind::Read],
            "the read shows the write, so comes after it"
        );
    }

    #[actix_web::test]
    async fn status_counts_only_what_is_on_disk() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = gated_node(&gate, &[]);
        let put = Op::Put(Value::from_serialize(&1).unwrap());
        let write = actix_web::rt::spawn({
            let node = node.clone();
            async move { node.write("k".into(), put).await }
        });
        wait_applied(&node, "n1").await;
        // Applied in memory, its sync held: a crash would take it back.
        let status = node.status();
        assert_eq!(status.applied.get("n1"), 0, "{:?}", status.applied);
        assert_eq!(node.check_context(&status.applied), ContextCheck::Satisfied);
        assert_eq!(status.peers[0].lag, 0, "nothing durable to send n2");
        assert!(status.stable.get("n1") <= status.applied.get("n1"));

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        write.await.unwrap().unwrap();
        let status = node.status();
        assert_eq!(status.applied.get("n1"), 1);
        assert_eq!(status.peers[0].lag, 1, "n2 has acknowledged nothing");
    }

    /// The writer's queue is bounded in bytes: past `max_queued_bytes` a write
    /// gets 503 naming the limit, and changes nothing; a request larger than
    /// the whole limit passes alone.
    #[actix_web::test]
    async fn the_writers_queue_is_bounded_in_bytes() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = gated_node(&gate, &[("KVNODE_MAX_QUEUED_BYTES", "1000")]);
        let put = |bytes: usize| Op::Put(Value::from_serialize(&"v".repeat(bytes)).unwrap());
        let first = actix_web::rt::spawn({
            let (node, op) = (node.clone(), put(600));
            async move { node.write("k".into(), op).await }
        });
        wait_applied(&node, "n1").await;
        let held = node.status().queued_bytes;
        // The event's measure: overhead, origin, key, value, and a clock
        // entry (name and counter) for each of the two nodes.
        assert_eq!(
            held,
            128 + 2 + 1 + 602 + 2 * (2 + 16),
            "held until its group is done"
        );

        let err = node.write("k".into(), put(600)).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        assert!(err.to_string().contains("max_queued_bytes = 1000"), "{err}");
        assert_eq!(node.with_core(|c| c.applied().get("n1")), 1, "refused");

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        first.await.unwrap().unwrap();
        assert_eq!(node.status().queued_bytes, 0);
        let event = node.write("k".into(), put(5000)).await.unwrap();
        assert_eq!(event.seq, 2, "a write over the whole limit passes alone");
        assert_eq!(node.status().queued_bytes, 0);
    }

    /// `stable` counts what every node holds durably, this one included: an
    /// event its origin has (and acknowledged) but whose sync here is under way
    /// is not stable yet.
    #[actix_web::test]
    async fn status_counts_as_stable_only_what_is_on_disk_here() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = gated_node(&gate, &[]);
        let event = Event {
            origin: "n2".into(),
            seq: 1,
            key: "k".into(),
            op: Op::Put(Value::from_serialize(&1).unwrap()),
            also: Vec::new(),
            deps: VClock::default(),
        };
        let receive = actix_web::rt::spawn({
            let node = node.clone();
            async move { node.receive("n2".into(), None, vec![event]).await }
        });
        wait_applied(&node, "n2").await;
        let mut at_n2 = VClock::default();
        at_n2.set("n2", 1);
        node.shared.core().record_ack("n2", &at_n2).unwrap();
        assert_eq!(node.status().stable.get("n2"), 0, "its sync is held");

        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        receive.await.unwrap().unwrap();
        assert_eq!(node.status().stable.get("n2"), 1);
    }

    /// Serves every request with a 400 and counts them.
    fn refusing_peer() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim().to_ascii_lowercase();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(value) = line.strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                counted.fetch_add(1, Ordering::SeqCst);
                let answer = r#"{"error":{"code":"bad_request","message":"not for me"}}"#;
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (url, requests)
    }

    #[actix_web::test]
    async fn a_refused_batch_is_retried_and_shown_in_status() {
        let (url, requests) = refusing_peer();
        let vars = [
            ("KVNODE_NODE_ID".to_owned(), "n1".to_owned()),
            (
                "KVNODE_NODES".to_owned(),
                format!("n1=http://127.0.0.1:9,n2={url}"),
            ),
            // Its peer refuses everything: it starts its history without it.
            ("KVNODE_FORCE_NEW_HISTORY".to_owned(), "true".to_owned()),
        ]
        .into_iter()
        .collect();
        let config = Config::load_from(None, vars).unwrap();
        let node = Node::start(config, Box::new(MemStore::new())).unwrap();
        let senders = replication::spawn_links(&node);
        let put = Op::Put(Value::from_serialize(&1).unwrap());
        node.write("k".into(), put).await.unwrap();
        // Sent, refused, sent again after a backoff, and again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while requests.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the link does not retry");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = node.status();
        let n2 = &status.peers[0];
        assert!(!n2.reachable);
        let error = n2.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("400") && error.contains("not for me"),
            "{error}"
        );
        assert_eq!(n2.lag, 1);
        node.begin_shutdown();
        for sender in senders {
            sender.await.unwrap();
        }
    }
}
