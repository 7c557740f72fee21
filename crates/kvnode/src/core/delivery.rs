//! Delivery: the rules of the store applied to one replica's state.
//!
//! [`Core`] takes commands (a local write, a batch of received events, a read,
//! an acknowledgement from a peer) and answers with what happened.
//!
//! The rules, numbered as in `docs/design.md` ("The rules"):
//!
//! 1. A local write gets `seq = applied[self] + 1` and `deps = applied`.
//! 2. A received event from origin `j` is delivered iff `seq == applied[j] + 1`
//!    and `deps[m] <= applied[m]` for every `m != j`; one with `seq <= applied[j]`
//!    is a duplicate; any other is buffered. After every delivery the buffer is
//!    retried, per origin in seq order, until nothing more is deliverable.
//! 3. Applying event `e` to a key removes every sibling that `e` saw and adds `e`.
//!    Siblings are sorted by `(sum of timestamp, origin)`, so every replica holds
//!    the same list.
//! 4. The single-value view shows the last put among the siblings. A delete
//!    hides the key only when no concurrent put remains (add-wins), so that
//!    collecting a stable tombstone never changes what a read shows.
//!
//! Events stay in the log until they are stable (every node acknowledged them);
//! collecting a stable delete also drops its tombstone sibling.

use std::collections::BTreeMap;
use std::sync::Arc;

use vclock_proto::{Dot, Event, Missing, NodeId, Op, Seq, VClock, Write};

use super::context::{check_context, ContextCheck};
use crate::storage::{PendingSync, Siblings, Store, StoreError};

/// Why the core refused a command.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A received event is malformed or names nodes outside the cluster. Nothing
    /// of its batch was applied.
    #[error("invalid event {dot}: {reason}")]
    InvalidEvent {
        /// The offending event.
        dot: Dot,
        /// What is wrong with it.
        reason: String,
    },
    /// A peer's clock counts more of this node's writes than this node has
    /// made: a peer with another history, or a bug. Nothing was recorded.
    #[error("{peer} claims {claimed} writes of this node, which has made only {made}")]
    Overclaimed {
        /// The peer.
        peer: NodeId,
        /// What its clock counts of this node's writes.
        claimed: Seq,
        /// What this node has made.
        made: Seq,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of core commands.
pub type CoreResult<T> = Result<T, CoreError>;

/// Limits of the core.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How many undeliverable events the buffer may hold. Past it, further
    /// undeliverable events are refused (not acknowledged; the sender resends).
    pub max_buffered: usize,
    /// How many bytes of events (keys, values and clocks, as [`Event::size_bytes`]
    /// counts them) the buffer may hold, with the same effect past it.
    pub max_buffered_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_buffered: 100_000,
            max_buffered_bytes: 256 << 20,
        }
    }
}

/// What happened to a batch of received events.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Events applied, in the order they were applied (including those taken
    /// from the buffer).
    pub delivered: Vec<Dot>,
    /// Of `delivered`, the ones that had waited in the buffer.
    pub from_buffer: Vec<Dot>,
    /// Events of this batch left in the buffer, with what each waits for.
    pub buffered: Vec<(Dot, Vec<Missing>)>,
    /// Events already applied or already buffered.
    pub duplicates: usize,
    /// Events refused because the buffer is full.
    pub refused: usize,
    /// The limit that refused them: `max_buffered` or `max_buffered_bytes`.
    pub refused_by: Option<&'static str>,
    /// Events refused because this node holds a different event with the same
    /// dot (applied, or buffered and not deliverable when the other was): two
    /// histories for one origin.
    pub conflicts: Vec<Dot>,
    /// What happened to each event, in order: the node's trace.
    pub steps: Vec<Step>,
}

/// One event's fate within a batch, in the order things happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The event was applied.
    Applied(Applied),
    /// The event was put in the buffer, waiting for these writes.
    Buffered(Arc<Event>, Vec<Missing>),
}

/// An applied event and what it did to its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The event.
    pub event: Arc<Event>,
    /// True when it had waited in the buffer.
    pub from_buffer: bool,
    /// How many siblings each key it wrote had before and after it was
    /// applied, in the order of [`Event::writes`].
    pub siblings: Vec<SiblingCount>,
}

/// How many siblings a key had before and after an event wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiblingCount {
    /// Before the event.
    pub before: usize,
    /// After the event.
    pub after: usize,
}

/// The answer to a read: the siblings and the clock, taken together.
#[derive(Debug, Clone)]
pub struct ReadResult {
    /// The key's siblings, winner last.
    pub siblings: Siblings,
    /// The node's `applied` clock at the moment of the read.
    pub applied: VClock,
}

impl ReadResult {
    /// The single-value view: the value of the last put among the siblings,
    /// `None` when the key is absent or every sibling is a delete.
    pub fn winner(&self) -> Option<&vclock_proto::Value> {
        self.siblings.iter().rev().find_map(|e| e.op.value())
    }
}

/// One replica's causal state.
#[derive(Debug)]
pub struct Core<S> {
    id: NodeId,
    nodes: Vec<NodeId>,
    applied: VClock,
    buffer: BTreeMap<NodeId, BTreeMap<Seq, Arc<Event>>>,
    buffered: usize,
    buffered_bytes: usize,
    /// The dots buffered at the last [`Core::sweep_buffer`].
    swept: Vec<Dot>,
    conflicts: u64,
    acked: BTreeMap<NodeId, VClock>,
    /// The log holds no event up to these seqs (as of this run): collection
    /// starts above them, and does not read the log while `stable` stays there.
    collected: VClock,
    limits: Limits,
    store: S,
    /// Test only (`torn-txns`): writes of transactions not applied yet.
    #[cfg(feature = "broken-causality")]
    torn: Vec<Arc<Event>>,
}

impl<S: Store> Core<S> {
    /// A replica `id` of a cluster of `nodes` (which must contain `id`), over
    /// `store`, whose committed state it resumes from.
    pub fn new(id: NodeId, nodes: Vec<NodeId>, store: S, limits: Limits) -> CoreResult<Self> {
        let mut nodes = nodes;
        nodes.sort();
        nodes.dedup();
        assert!(
            nodes.contains(&id),
            "the node list must contain the node itself"
        );
        let mut applied = VClock::zeroed(nodes.iter().cloned());
        applied.merge(&store.applied()?);
        let acked = nodes
            .iter()
            .filter(|n| **n != id)
            .map(|n| (n.clone(), VClock::zeroed(nodes.iter().cloned())))
            .collect();
        Ok(Self {
            id,
            nodes,
            applied,
            buffer: BTreeMap::new(),
            buffered: 0,
            buffered_bytes: 0,
            swept: Vec::new(),
            conflicts: 0,
            acked,
            collected: VClock::new(),
            limits,
            store,
            #[cfg(feature = "broken-causality")]
            torn: Vec::new(),
        })
    }

    /// This replica's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Every node of the cluster, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Takes a new membership: `known` is every node that is or was a
    /// member (whose writes and clock entries are valid), `active` the ones
    /// not removed. A removed peer no longer holds back log collection; a new
    /// one holds it back from now on, until it acknowledges.
    pub fn set_members(&mut self, known: &[NodeId], active: &[NodeId]) -> CoreResult<()> {
        let mut nodes = known.to_vec();
        nodes.push(self.id.clone());
        nodes.sort();
        nodes.dedup();
        let zeroed = VClock::zeroed(nodes.iter().cloned());
        self.applied.merge(&zeroed);
        self.acked
            .retain(|peer, _| active.iter().any(|a| a == peer));
        for peer in active.iter().filter(|a| **a != self.id) {
            self.acked
                .entry(peer.clone())
                .or_insert_with(|| zeroed.clone());
        }
        self.nodes = nodes;
        self.collect()
    }

    /// The writes applied here, per origin.
    pub fn applied(&self) -> &VClock {
        &self.applied
    }

    /// The storage underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Relates a client's context to what this node has applied.
    pub fn check_context(&self, context: &VClock) -> ContextCheck {
        check_context(&self.id, &self.nodes, &self.applied, context)
    }

    /// Accepts a write from a client (rule 1). The caller has already waited for
    /// the client's context to be satisfied.
    pub fn local_write(&mut self, key: String, op: Op) -> CoreResult<Arc<Event>> {
        Ok(self.write(key, op)?.event)
    }

    /// [`Self::local_write`], telling also what the write did to its key.
    pub fn write(&mut self, key: String, op: Op) -> CoreResult<Applied> {
        self.write_all(vec![Write { key, op }])
    }

    /// Accepts an atomic transaction from a client: one event, one dot, every
    /// write applied here now and at every replica in one step. The keys must
    /// be distinct and not empty (the caller checks its client limits).
    pub fn write_all(&mut self, writes: Vec<Write>) -> CoreResult<Applied> {
        self.finish_torn()?;
        let seq = self.applied.get(&self.id) + 1;
        let event = Event::of_writes(self.id.clone(), seq, writes, self.applied.clone());
        let Some(event) = event else {
            return Err(CoreError::InvalidEvent {
                dot: Dot::new(self.id.clone(), seq),
                reason: "a transaction needs at least one write".into(),
            });
        };
        if let Some(reason) = invalid_writes(&event) {
            return Err(CoreError::InvalidEvent {
                dot: event.dot(),
                reason,
            });
        }
        self.apply(Arc::new(event), false)
    }

    /// Takes a batch of events from a peer (rule 2). The batch is validated as a
    /// whole first: an invalid event rejects it without changing anything.
    pub fn receive(&mut self, events: Vec<Event>) -> CoreResult<Receipt> {
        self.finish_torn()?;
        for e in &events {
            self.validate(e)?;
        }
        let mut receipt = Receipt::default();
        let mut parked = Vec::new();
        for e in events {
            let origin_applied = self.applied.get(&e.origin);
            if e.seq <= origin_applied {
                match self.store.log_after(&e.origin, e.seq - 1, 1)?.first() {
                    Some(held) if held.seq == e.seq && **held != e => {
                        self.conflict(&e, &mut receipt)
                    }
                    // The same event, or one collected from the log since
                    // every node applied it: nothing to compare it with.
                    _ => receipt.duplicates += 1,
                }
                continue;
            }
            let deliverable = e.seq == origin_applied + 1 && self.deps_satisfied(&e);
            if let Some(held) = self.buffered_at(&e.origin, e.seq) {
                if **held == e {
                    receipt.duplicates += 1;
                    continue;
                }
                if !deliverable {
                    // Neither copy can be applied yet; the one held stays.
                    // This one is not acknowledged, so its sender sends it
                    // again, and it is applied once it can be.
                    self.conflict(&e, &mut receipt);
                    continue;
                }
                // A copy that cannot be applied must not block one that can:
                // the held copy goes, and counts as the conflict.
                let held = held.clone();
                self.pop_buffered(&e.origin, e.seq);
                self.conflict(&held, &mut receipt);
            }
            if deliverable {
                let dot = e.dot();
                let applied = self.apply(Arc::new(e), false)?;
                receipt.steps.push(Step::Applied(applied));
                receipt.delivered.push(dot);
                if self.buffered > 0 {
                    self.drain_buffer(&mut receipt)?;
                }
            } else if let Some(limit) = self.buffer_full(&e) {
                receipt.refused += 1;
                receipt.refused_by = Some(limit);
            } else {
                self.buffered += 1;
                self.buffered_bytes += e.size_bytes();
                parked.push(e.dot());
                let e = Arc::new(e);
                receipt
                    .steps
                    .push(Step::Buffered(e.clone(), self.waiting_for(&e)));
                self.buffer
                    .entry(e.origin.clone())
                    .or_default()
                    .insert(e.seq, e);
            }
        }
        // Report what this batch left waiting, and on what.
        receipt.buffered = parked
            .into_iter()
            .filter_map(|dot| {
                let e = self.buffer.get(&dot.origin)?.get(&dot.seq)?;
                Some((dot, self.waiting_for(e)))
            })
            .collect();
        Ok(receipt)
    }

    /// Reads a key: its siblings and the `applied` clock, as one state (rule 5).
    pub fn read(&self, key: &str) -> CoreResult<ReadResult> {
        Ok(ReadResult {
            siblings: self.store.siblings(key)?,
            applied: self.applied.clone(),
        })
    }

    /// Ends the current group of commands: one storage transaction.
    pub fn commit(&mut self) -> CoreResult<()> {
        self.store.commit(&self.applied)?;
        Ok(())
    }

    /// Ends the current group like [`Self::commit`], handing back the sync to
    /// disk when the store defers it (see [`Store::commit_deferred`]).
    pub fn commit_deferred(&mut self) -> CoreResult<Option<PendingSync>> {
        Ok(self.store.commit_deferred(&self.applied)?)
    }

    /// Records that `peer` has applied everything `clock` counts, and collects
    /// what every node has now applied.
    /// A clock that counts more of this node's writes than it has made is
    /// refused: log collection must never count on writes a peer cannot have.
    pub fn record_ack(&mut self, peer: &str, clock: &VClock) -> CoreResult<()> {
        self.finish_torn()?;
        let (claimed, made) = (clock.get(&self.id), self.applied.get(&self.id));
        if claimed > made {
            return Err(CoreError::Overclaimed {
                peer: peer.to_owned(),
                claimed,
                made,
            });
        }
        let Some(acked) = self.acked.get_mut(peer) else {
            return Ok(());
        };
        // Replaced, not merged: a peer that lost its data and bootstraps
        // again counts less than before, and the log must keep what it lacks
        // (an older answer arriving late only delays collection).
        *acked = VClock::zeroed(self.nodes.iter().cloned());
        acked.merge(clock);
        self.collect()
    }

    /// Drops stable events from the log, and the tombstones of stable deletes
    /// from their keys.
    fn collect(&mut self) -> CoreResult<()> {
        // Read a chunk at a time, bounded in bytes too: with large values a
        // long log (after a partition) is read back from disk.
        const CHUNK: usize = 1024;
        const CHUNK_BYTES: usize = 8 << 20;
        let stable = self.stable();
        for origin in self.nodes.clone() {
            let through = stable.get(&origin);
            if through <= self.collected.get(&origin) {
                continue;
            }
            loop {
                let events = self
                    .store
                    .log_after_within(&origin, 0, CHUNK, CHUNK_BYTES)?;
                let stable_events: Vec<_> =
                    events.iter().take_while(|e| e.seq <= through).collect();
                let Some(last) = stable_events.last().map(|e| e.seq) else {
                    break;
                };
                for e in &stable_events {
                    let deletes = e.writes().filter(|(_, op)| **op == Op::Delete);
                    for (key, _) in deletes {
                        let mut siblings = self.store.siblings(key)?;
                        let before = siblings.len();
                        siblings.retain(|s| !(s.origin == e.origin && s.seq == e.seq));
                        if siblings.len() != before {
                            self.store.set_siblings(key, siblings)?;
                        }
                    }
                }
                self.store.truncate(&origin, last)?;
                if last == through || stable_events.len() < events.len() {
                    break;
                }
            }
            // Every event up to `through` is gone: the loop stops at the first
            // event above it, or at the end of the log.
            self.collected.set(&origin, through);
        }
        Ok(())
    }

    /// The writes every node has applied: the pointwise minimum of this node's
    /// `applied` and every peer's acknowledged clock.
    pub fn stable(&self) -> VClock {
        let mut stable = self.applied.clone();
        for acked in self.acked.values() {
            stable.meet(acked);
        }
        stable
    }

    /// The last clock `peer` acknowledged.
    pub fn acked(&self, peer: &str) -> Option<&VClock> {
        self.acked.get(peer)
    }

    /// Up to `limit` of this node's own events with a seq above `after`, for
    /// pushing to a peer.
    pub fn own_events_after(&self, after: Seq, limit: usize) -> CoreResult<Vec<Arc<Event>>> {
        Ok(self.store.log_after(&self.id, after, limit)?)
    }

    /// Starts installing a snapshot of a peer's state (a bootstrap): drops
    /// the log and the buffer. Until [`Self::finish_install`] the replica's
    /// clock stays what it was; its keys change chunk by chunk.
    pub fn begin_install(&mut self) -> CoreResult<()> {
        self.finish_torn()?;
        self.store.reset_log()?;
        self.buffer.clear();
        self.buffered = 0;
        self.buffered_bytes = 0;
        self.swept.clear();
        self.collected = VClock::new();
        Ok(())
    }

    /// Installs one chunk of a snapshot: the keys after `after` through
    /// `through` (to the end when `None`) become exactly `entries`, whose keys
    /// lie in that range, in order. Keys of this replica in the range that the
    /// snapshot lacks are dropped.
    pub fn install_chunk(
        &mut self,
        after: Option<&str>,
        through: Option<&str>,
        entries: Vec<(String, Siblings)>,
    ) -> CoreResult<()> {
        const PAGE: usize = 1024;
        let mut cursor = after.map(str::to_owned);
        'pages: loop {
            let page = self.store.keys_after(cursor.as_deref(), PAGE, usize::MAX)?;
            let full = page.len() == PAGE;
            for (key, _) in page {
                if through.is_some_and(|t| key.as_str() > t) {
                    break 'pages;
                }
                if entries.binary_search_by(|(k, _)| k.cmp(&key)).is_err() {
                    self.store.set_siblings(&key, Vec::new())?;
                }
                cursor = Some(key);
            }
            if !full {
                break;
            }
        }
        for (key, siblings) in entries {
            self.store.set_siblings(&key, siblings)?;
        }
        Ok(())
    }

    /// Ends an install: the replica has applied exactly what `clock` counts
    /// (the meet of the clocks its chunks were read at), and receives what
    /// lies beyond it as any replica does.
    pub fn finish_install(&mut self, clock: &VClock) {
        let mut applied = VClock::zeroed(self.nodes.iter().cloned());
        applied.merge(clock);
        self.applied = applied;
    }

    /// Up to `limit` keys after `after` with their siblings, bounded by
    /// `max_bytes`, and the clock they were read at: a chunk of a snapshot
    /// for a bootstrapping peer.
    pub fn snapshot_chunk(
        &self,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> CoreResult<(Vec<(String, Siblings)>, VClock)> {
        let entries = self.store.keys_after(after, limit, max_bytes)?;
        Ok((entries, self.applied.clone()))
    }

    /// Number of events waiting in the buffer, per origin.
    pub fn buffered_per_origin(&self) -> BTreeMap<NodeId, u64> {
        self.buffer
            .iter()
            .filter(|(_, events)| !events.is_empty())
            .map(|(origin, events)| (origin.clone(), events.len() as u64))
            .collect()
    }

    /// Drops the buffered events that were already waiting at the previous
    /// sweep, and returns their dots; the shell calls it at a fixed interval,
    /// so an event leaves the buffer after one to two intervals. Dropping a
    /// buffered event is always safe: it was not acknowledged, so its sender
    /// sends it again. So nothing lives in the buffer for ever, such as an
    /// event whose dependencies name writes that nobody made.
    pub fn sweep_buffer(&mut self) -> Vec<Dot> {
        let stale = std::mem::take(&mut self.swept);
        let mut dropped = Vec::new();
        for dot in stale {
            if self.buffered_at(&dot.origin, dot.seq).is_some() {
                self.pop_buffered(&dot.origin, dot.seq);
                dropped.push(dot);
            }
        }
        self.swept = self
            .buffer
            .values()
            .flat_map(|events| events.values().map(|e| e.dot()))
            .collect();
        dropped
    }

    /// Total number of buffered events.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Up to `limit` buffered events with what each waits for.
    pub fn buffered_events(&self, limit: usize) -> Vec<(Arc<Event>, Vec<Missing>)> {
        self.buffer
            .values()
            .flat_map(|events| events.values())
            .take(limit)
            .map(|e| (e.clone(), self.waiting_for(e)))
            .collect()
    }

    fn is_member(&self, node: &str) -> bool {
        self.nodes
            .binary_search_by(|n| n.as_str().cmp(node))
            .is_ok()
    }

    /// The limit that a buffered `e` would break, if any.
    fn buffer_full(&self, e: &Event) -> Option<&'static str> {
        if self.buffered >= self.limits.max_buffered {
            Some("max_buffered")
        } else if self.buffered_bytes + e.size_bytes() > self.limits.max_buffered_bytes {
            Some("max_buffered_bytes")
        } else {
            None
        }
    }

    /// Bytes of the buffered events, as [`Event::size_bytes`] counts them.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    fn buffered_at(&self, origin: &str, seq: Seq) -> Option<&Arc<Event>> {
        self.buffer.get(origin).and_then(|events| events.get(&seq))
    }

    /// Counts `e` as a second, different copy of a dot this node holds.
    fn conflict(&mut self, e: &Event, receipt: &mut Receipt) {
        self.conflicts += 1;
        receipt.conflicts.push(e.dot());
    }

    /// Events refused since this replica started because it held a different
    /// event with the same dot.
    pub fn conflicts(&self) -> u64 {
        self.conflicts
    }

    fn validate(&self, e: &Event) -> CoreResult<()> {
        let invalid = |reason: String| {
            Err(CoreError::InvalidEvent {
                dot: e.dot(),
                reason,
            })
        };
        if !self.is_member(&e.origin) {
            return invalid(format!(
                "origin {} is not a member of the cluster",
                e.origin
            ));
        }
        if e.seq == 0 {
            return invalid("seq must be at least 1".into());
        }
        if let Some(reason) = invalid_writes(e) {
            return invalid(reason);
        }
        if let Some(unknown) = super::context::unknown_node(&e.deps, &self.nodes) {
            return invalid(format!("deps name {unknown}, not a member of the cluster"));
        }
        if e.deps.get(&e.origin) != e.seq - 1 {
            return invalid(format!(
                "deps[{}] is {}, must be seq - 1 = {}",
                e.origin,
                e.deps.get(&e.origin),
                e.seq - 1
            ));
        }
        if e.origin == self.id && e.seq > self.applied.get(&self.id) {
            return invalid(format!(
                "claims to be write {} of this node, which has made only {}",
                e.seq,
                self.applied.get(&self.id)
            ));
        }
        Ok(())
    }

    fn deps_satisfied(&self, e: &Event) -> bool {
        #[cfg(feature = "broken-causality")]
        if crate::broken::on("skip-deps") {
            return true;
        }
        e.deps
            .iter()
            .all(|(node, &seq)| *node == e.origin || self.applied.get(node) >= seq)
    }

    fn waiting_for(&self, e: &Event) -> Vec<Missing> {
        let mut want = e.deps.clone();
        want.set(&e.origin, e.seq - 1);
        self.applied.missing(&want).collect()
    }

    /// Delivers buffered events until none is deliverable.
    fn drain_buffer(&mut self, receipt: &mut Receipt) -> CoreResult<()> {
        loop {
            let mut progress = false;
            let origins: Vec<NodeId> = self.buffer.keys().cloned().collect();
            for origin in origins {
                while let Some(e) = self.next_buffered(&origin) {
                    let next = self.applied.get(&origin) + 1;
                    if e.seq < next {
                        self.pop_buffered(&origin, e.seq);
                    } else if e.seq == next && self.deps_satisfied(&e) {
                        self.pop_buffered(&origin, e.seq);
                        let dot = e.dot();
                        let applied = self.apply(e, true)?;
                        receipt.steps.push(Step::Applied(applied));
                        receipt.delivered.push(dot.clone());
                        receipt.from_buffer.push(dot);
                        progress = true;
                    } else {
                        break;
                    }
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    fn next_buffered(&self, origin: &str) -> Option<Arc<Event>> {
        self.buffer
            .get(origin)
            .and_then(|events| events.values().next().cloned())
    }

    fn pop_buffered(&mut self, origin: &str, seq: Seq) {
        if let Some(events) = self.buffer.get_mut(origin) {
            if let Some(e) = events.remove(&seq) {
                self.buffered -= 1;
                self.buffered_bytes -= e.size_bytes();
            }
        }
    }

    /// Applies one event whose dependencies are all applied (rule 3): every
    /// write of a transaction in this one step, so that no read, which takes
    /// the core as a whole, sees part of it.
    fn apply(&mut self, e: Arc<Event>, from_buffer: bool) -> CoreResult<Applied> {
        let mut counts = Vec::with_capacity(e.key_count());
        for (i, (key, _)) in e.writes().enumerate() {
            // A key's siblings hold the event's write to that key alone.
            let write = if e.is_txn() {
                Arc::new(e.for_key(key).expect("the event writes its own keys"))
            } else {
                e.clone()
            };
            #[cfg(feature = "broken-causality")]
            if i > 0 && crate::broken::on("torn-txns") {
                self.torn.push(write);
                continue;
            }
            #[cfg(not(feature = "broken-causality"))]
            let _ = i;
            counts.push(self.apply_write(key, write)?);
        }
        self.applied.set(&e.origin, e.seq);
        self.store.append(e.clone())?;
        Ok(Applied {
            event: e,
            from_buffer,
            siblings: counts,
        })
    }

    /// Test only (`torn-txns`): applies the writes of transactions left
    /// for later.
    fn finish_torn(&mut self) -> CoreResult<()> {
        #[cfg(feature = "broken-causality")]
        for write in std::mem::take(&mut self.torn) {
            self.apply_write(&write.key.clone(), write)?;
        }
        Ok(())
    }

    /// Makes `write` a sibling of `key`, dropping the siblings it saw; unless
    /// the key already holds it or a write that saw it. That happens only after
    /// a bootstrap: a key copied late in the snapshot may show writes that came
    /// after the snapshot's clock, and they are delivered again.
    fn apply_write(&mut self, key: &str, write: Arc<Event>) -> CoreResult<SiblingCount> {
        let mut siblings = self.store.siblings(key)?;
        let before = siblings.len();
        let (origin, seq) = (&write.origin, write.seq);
        if siblings
            .iter()
            .any(|s| (&s.origin == origin && s.seq == seq) || s.saw(origin, seq))
        {
            return Ok(SiblingCount {
                before,
                after: before,
            });
        }
        siblings.retain(|s| !write.saw(&s.origin, s.seq));
        siblings.push(write);
        siblings.sort_by_cached_key(|s| (s.timestamp().sum(), s.origin.clone()));
        let after = siblings.len();
        self.store.set_siblings(key, siblings)?;
        Ok(SiblingCount { before, after })
    }
}

/// What is wrong with an event's writes, if anything: every key must be named
/// and written once.
fn invalid_writes(e: &Event) -> Option<String> {
    if e.writes().any(|(key, _)| key.is_empty()) {
        return Some("empty key".into());
    }
    if e.is_txn() {
        let mut keys: Vec<&str> = e.writes().map(|(key, _)| key).collect();
        keys.sort_unstable();
        if let Some(twice) = keys.windows(2).find(|w| w[0] == w[1]) {
            return Some(format!("writes key {:?} twice", twice[0]));
        }
    }
    None
}

impl<S: Store> super::replication::NodeView for Core<S> {
    fn acked(&self, peer: &str) -> Option<&VClock> {
        Core::acked(self, peer)
    }

    fn log_after(
        &self,
        origin: &str,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> crate::storage::StoreResult<Vec<Arc<Event>>> {
        self.store.log_after_within(origin, after, limit, max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStore;
    use vclock_proto::Value;

    fn core(id: &str) -> Core<MemStore> {
        let nodes = ["a", "b", "c"].map(String::from).to_vec();
        Core::new(id.into(), nodes, MemStore::new(), Limits::default()).unwrap()
    }

    fn put(n: i64) -> Op {
        Op::Put(Value::from_serialize(&n).unwrap())
    }

    fn unwrap_events(events: &[Arc<Event>]) -> Vec<Event> {
        events.iter().map(|e| (**e).clone()).collect()
    }

    #[test]
    fn local_writes_overwrite_and_count() {
        let mut a = core("a");
        let e1 = a.local_write("x".into(), put(1)).unwrap();
        let e2 = a.local_write("x".into(), put(2)).unwrap();
        assert_eq!((e1.seq, e2.seq), (1, 2));
        assert_eq!(e2.deps.get("a"), 1);
        let read = a.read("x").unwrap();
        assert_eq!(read.siblings.len(), 1);
        assert_eq!(read.winner().unwrap().json(), "2");
        assert_eq!(read.applied.get("a"), 2);
    }

    /// `e` with another value: the same dot, another history.
    fn forged(e: &Event, value: &str) -> Event {
        Event {
            op: Op::Put(Value::from_serialize(value).unwrap()),
            ..e.clone()
        }
    }

    #[test]
    fn a_second_copy_of_an_applied_dot_with_other_content_is_refused_and_counted() {
        let (mut a, mut b) = (core("a"), core("b"));
        let real = a.local_write("x".into(), put(1)).unwrap();
        b.receive(vec![(*real).clone()]).unwrap();
        let receipt = b.receive(vec![forged(&real, "forged")]).unwrap();
        assert_eq!(receipt.conflicts, vec![Dot::new("a", 1)]);
        assert_eq!(receipt.duplicates, 0);
        assert_eq!(b.conflicts(), 1);
        let read = b.read("x").unwrap();
        assert_eq!(read.winner().map(|v| v.json().to_owned()), Some("1".into()));
        // The same copy again is a plain duplicate.
        let receipt = b.receive(vec![(*real).clone()]).unwrap();
        assert_eq!((receipt.duplicates, receipt.conflicts.len()), (1, 0));
    }

    #[test]
    fn junk_in_the_buffer_does_not_block_the_real_event_with_its_dot() {
        let (mut a, mut b) = (core("a"), core("b"));
        let real = a.local_write("x".into(), put(1)).unwrap();
        // A junk copy of a:1 that waits for writes of c that will never exist.
        let mut junk = forged(&real, "junk");
        junk.deps.set("c", 1_000_000);
        let receipt = b.receive(vec![junk]).unwrap();
        assert_eq!(receipt.buffered.len(), 1);
        let receipt = b.receive(vec![(*real).clone()]).unwrap();
        assert_eq!(receipt.delivered, vec![Dot::new("a", 1)]);
        assert_eq!(
            receipt.conflicts,
            vec![Dot::new("a", 1)],
            "the junk is the conflict"
        );
        assert_eq!(b.buffered(), 0, "the junk left the buffer");
        assert_eq!(b.applied().get("a"), 1);
    }

    #[test]
    fn a_copy_that_cannot_be_applied_yet_does_not_replace_the_buffered_one() {
        let (mut a, mut b, mut c) = (core("a"), core("b"), core("c"));
        let ec = c.local_write("y".into(), put(7)).unwrap();
        a.receive(vec![(*ec).clone()]).unwrap();
        let real = a.local_write("x".into(), put(1)).unwrap();
        // b holds the real a:1, waiting for c:1; a different a:1 arrives.
        b.receive(vec![(*real).clone()]).unwrap();
        let receipt = b.receive(vec![forged(&real, "forged")]).unwrap();
        assert_eq!(receipt.conflicts, vec![Dot::new("a", 1)]);
        assert_eq!(b.buffered(), 1);
        let receipt = b.receive(vec![(*ec).clone()]).unwrap();
        assert_eq!(receipt.from_buffer, vec![Dot::new("a", 1)]);
        let read = b.read("x").unwrap();
        assert_eq!(read.winner().map(|v| v.json().to_owned()), Some("1".into()));
    }

    #[test]
    fn a_buffered_event_leaves_at_the_second_sweep_and_comes_back_when_resent() {
        let (mut a, mut b, mut c) = (core("a"), core("b"), core("c"));
        let ec = c.local_write("y".into(), put(7)).unwrap();
        a.receive(vec![(*ec).clone()]).unwrap();
        let ea = a.local_write("x".into(), put(1)).unwrap();
        b.receive(vec![(*ea).clone()]).unwrap();
        assert_eq!(b.buffered(), 1);
        assert!(b.sweep_buffer().is_empty(), "the first sweep only marks it");
        assert_eq!(b.sweep_buffer(), vec![Dot::new("a", 1)]);
        assert_eq!(b.buffered(), 0);
        // Its sender sends it again; it is buffered and delivered as usual.
        b.receive(vec![(*ea).clone()]).unwrap();
        let receipt = b.receive(vec![(*ec).clone()]).unwrap();
        assert_eq!(receipt.from_buffer, vec![Dot::new("a", 1)]);
        assert_eq!(b.applied().get("a"), 1);
    }

    #[test]
    fn out_of_order_event_is_buffered_then_delivered() {
        let (mut a, mut b, mut c) = (core("a"), core("b"), core("c"));
        let ea = a.local_write("x".into(), put(100)).unwrap();
        b.receive(vec![(*ea).clone()]).unwrap();
        let eb = b.local_write("x".into(), put(200)).unwrap();

        // c gets b's write first: it depends on a:1, so it waits.
        let receipt = c.receive(vec![(*eb).clone()]).unwrap();
        assert!(receipt.delivered.is_empty());
        assert_eq!(
            receipt.buffered,
            vec![(
                Dot::new("b", 1),
                vec![Missing {
                    node: "a".into(),
                    have: 0,
                    want: 1
                }]
            )]
        );
        assert_eq!(c.buffered(), 1);
        assert!(c.read("x").unwrap().siblings.is_empty());

        // a's write arrives: both are applied, in causal order.
        let receipt = c.receive(vec![(*ea).clone()]).unwrap();
        assert_eq!(receipt.delivered, vec![Dot::new("a", 1), Dot::new("b", 1)]);
        assert_eq!(receipt.from_buffer, vec![Dot::new("b", 1)]);
        assert_eq!(c.buffered(), 0);
        assert_eq!(c.read("x").unwrap().winner().unwrap().json(), "200");
    }

    #[test]
    fn duplicates_are_ignored() {
        let (mut a, mut b) = (core("a"), core("b"));
        let e = a.local_write("x".into(), put(1)).unwrap();
        b.receive(vec![(*e).clone()]).unwrap();
        let receipt = b.receive(vec![(*e).clone(), (*e).clone()]).unwrap();
        assert_eq!(receipt.duplicates, 2);
        assert_eq!(b.applied().get("a"), 1);
    }

    #[test]
    fn concurrent_writes_become_siblings_with_one_winner() {
        let (mut a, mut b) = (core("a"), core("b"));
        let ea = a.local_write("k".into(), put(1)).unwrap();
        let eb = b.local_write("k".into(), put(2)).unwrap();
        a.receive(vec![(*eb).clone()]).unwrap();
        b.receive(vec![(*ea).clone()]).unwrap();
        let (ra, rb) = (a.read("k").unwrap(), b.read("k").unwrap());
        assert_eq!(ra.siblings, rb.siblings);
        assert_eq!(ra.siblings.len(), 2);
        // Equal sums: the larger origin id wins.
        assert_eq!(ra.winner().unwrap().json(), "2");

        // A write that saw both replaces both.
        let resolved = a.local_write("k".into(), put(3)).unwrap();
        b.receive(vec![(*resolved).clone()]).unwrap();
        assert_eq!(b.read("k").unwrap().siblings.len(), 1);
        assert_eq!(b.read("k").unwrap().winner().unwrap().json(), "3");
    }

    #[test]
    fn delete_leaves_a_tombstone_until_it_is_stable() {
        let (mut a, mut b, mut c) = (core("a"), core("b"), core("c"));
        a.local_write("k".into(), put(1)).unwrap();
        let del = a.local_write("k".into(), Op::Delete).unwrap();
        let read = a.read("k").unwrap();
        assert_eq!(read.siblings.len(), 1);
        assert!(read.winner().is_none());

        let events: Vec<Event> = a
            .store()
            .log_after("a", 0, 10)
            .unwrap()
            .iter()
            .map(|e| (**e).clone())
            .collect();
        b.receive(events.clone()).unwrap();
        c.receive(events).unwrap();
        a.record_ack("b", &b.applied().clone()).unwrap();
        assert_eq!(
            a.read("k").unwrap().siblings.len(),
            1,
            "not stable: c has not acknowledged"
        );
        a.record_ack("c", &c.applied().clone()).unwrap();
        assert!(
            a.read("k").unwrap().siblings.is_empty(),
            "stable tombstone {del:?} collected"
        );
        assert_eq!(a.store().log_len(), 0);
    }

    #[test]
    fn a_concurrent_put_wins_over_a_delete() {
        let (mut a, mut b) = (core("a"), core("b"));
        let first = a.local_write("k".into(), put(1)).unwrap();
        b.receive(vec![(*first).clone()]).unwrap();
        let del = a.local_write("k".into(), Op::Delete).unwrap();
        let upd = b.local_write("k".into(), put(2)).unwrap();
        a.receive(vec![(*upd).clone()]).unwrap();
        b.receive(vec![(*del).clone()]).unwrap();
        for node in [&a, &b] {
            let read = node.read("k").unwrap();
            assert_eq!(read.siblings.len(), 2);
            assert_eq!(read.winner().unwrap().json(), "2");
        }
    }

    fn writes(list: &[(&str, Option<i64>)]) -> Vec<Write> {
        let op = |v: Option<i64>| v.map_or(Op::Delete, put);
        list.iter()
            .map(|&(key, v)| Write {
                key: key.into(),
                op: op(v),
            })
            .collect()
    }

    /// A transaction is one event: applied (or buffered) whole at every
    /// replica, each of its keys holding the write to that key alone under
    /// the transaction's dot, siblings and winners per key as for single
    /// writes, and its tombstones collected once stable.
    #[test]
    fn a_transaction_is_applied_whole_everywhere() {
        let (mut a, mut b, mut c) = (core("a"), core("b"), core("c"));
        let ec = c.local_write("y".into(), put(7)).unwrap();
        a.receive(vec![(*ec).clone()]).unwrap();
        let txn = a
            .write_all(writes(&[("x", Some(1)), ("y", None), ("z", Some(3))]))
            .unwrap();
        let e = txn.event.clone();
        assert_eq!((e.seq, e.key_count()), (1, 3));
        assert_eq!(txn.siblings.len(), 3);

        // b lacks c:1, on which the transaction depends: all of it waits.
        let receipt = b.receive(vec![(*e).clone()]).unwrap();
        assert_eq!(receipt.buffered.len(), 1);
        assert_eq!(receipt.buffered[0].0, Dot::new("a", 1));
        for key in ["x", "y", "z"] {
            assert!(b.read(key).unwrap().siblings.is_empty(), "{key}");
        }
        // A concurrent write of b to z: z gets two siblings, x none extra.
        let concurrent = b.local_write("z".into(), put(30)).unwrap();
        let receipt = b.receive(vec![(*ec).clone()]).unwrap();
        assert_eq!(receipt.from_buffer, vec![Dot::new("a", 1)]);
        let Some(Step::Applied(applied)) = receipt.steps.last() else {
            panic!("{:?}", receipt.steps);
        };
        let counts: Vec<_> = applied
            .siblings
            .iter()
            .map(|c| (c.before, c.after))
            .collect();
        assert_eq!(
            counts,
            vec![(0, 1), (1, 1), (1, 2)],
            "x new, y replaced, z concurrent"
        );
        a.receive(vec![(*concurrent).clone()]).unwrap();

        for node in [&a, &b] {
            let x = node.read("x").unwrap();
            assert_eq!((x.siblings.len(), x.winner().unwrap().json()), (1, "1"));
            assert_eq!(x.siblings[0].dot(), e.dot());
            assert!(!x.siblings[0].is_txn(), "a key holds its own write");
            let y = node.read("y").unwrap();
            assert_eq!((y.siblings.len(), y.winner()), (1, None), "deleted");
            assert_eq!(node.read("z").unwrap().siblings.len(), 2);
        }
        let logged = a.store().log_after("a", 0, 10).unwrap();
        assert_eq!(*logged[0], *e, "the log keeps the whole transaction");

        // Stable everywhere: y's tombstone goes.
        c.receive(vec![(*e).clone(), (*concurrent).clone()])
            .unwrap();
        a.record_ack("b", &b.applied().clone()).unwrap();
        a.record_ack("c", &c.applied().clone()).unwrap();
        assert!(
            a.read("y").unwrap().siblings.is_empty(),
            "tombstone collected"
        );
        assert_eq!(a.read("x").unwrap().siblings.len(), 1);
    }

    #[test]
    fn a_transaction_writing_a_key_twice_or_an_empty_key_is_refused() {
        let (mut a, mut b) = (core("a"), core("b"));
        for bad in [
            writes(&[("x", Some(1)), ("x", Some(2))]),
            writes(&[("x", Some(1)), ("", Some(2))]),
            Vec::new(),
        ] {
            let err = a.write_all(bad).unwrap_err();
            assert!(matches!(err, CoreError::InvalidEvent { .. }), "{err}");
        }
        assert_eq!(a.applied().get("a"), 0, "no dot was taken");

        let good = a
            .write_all(writes(&[("x", Some(1)), ("y", Some(2))]))
            .unwrap()
            .event;
        let mut twice = (*good).clone();
        twice.also[0].key = "x".into();
        let err = b.receive(vec![twice]).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        assert_eq!(b.applied().get("a"), 0);
    }

    #[test]
    fn invalid_batches_change_nothing() {
        let mut a = core("a");
        let mut b = core("b");
        let good = b.local_write("k".into(), put(1)).unwrap();
        let mut stranger = (*good).clone();
        stranger.origin = "z".into();
        let err = a.receive(vec![(*good).clone(), stranger]).unwrap_err();
        assert!(matches!(err, CoreError::InvalidEvent { .. }), "{err}");
        assert_eq!(a.applied().get("b"), 0);

        let mut bad_deps = (*good).clone();
        bad_deps.deps.set("b", 7);
        assert!(a.receive(vec![bad_deps]).is_err());

        let mut forged = (*good).clone();
        forged.origin = "a".into();
        forged.deps = VClock::new();
        assert!(
            a.receive(vec![forged]).is_err(),
            "a cannot receive its own unmade write"
        );
        assert_eq!(a.applied().get("a"), 0);
    }

    #[test]
    fn full_buffer_refuses_without_acknowledging() {
        let nodes = ["a", "b", "c"].map(String::from).to_vec();
        let mut c = Core::new(
            "c".into(),
            nodes,
            MemStore::new(),
            Limits {
                max_buffered: 1,
                ..Limits::default()
            },
        )
        .unwrap();
        let mut a = core("a");
        let mut b = core("b");
        let ea = a.local_write("x".into(), put(1)).unwrap();
        b.receive(vec![(*ea).clone()]).unwrap();
        let eb1 = b.local_write("x".into(), put(2)).unwrap();
        let eb2 = b.local_write("y".into(), put(3)).unwrap();
        let receipt = c.receive(unwrap_events(&[eb1, eb2.clone()])).unwrap();
        assert_eq!((receipt.buffered.len(), receipt.refused), (1, 1));
        c.receive(vec![(*ea).clone()]).unwrap();
        assert_eq!(
            c.applied().get("b"),
            1,
            "the refused event was not acknowledged"
        );
        c.receive(vec![(*eb2).clone()]).unwrap();
        assert_eq!(c.applied().get("b"), 2);
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_too() {
        let nodes = ["a", "b", "c"].map(String::from).to_vec();
        let big = |n: usize| Op::Put(Value::from_serialize(&"v".repeat(n)).unwrap());
        let (mut a, mut b) = (core("a"), core("b"));
        let ea = a.local_write("x".into(), put(1)).unwrap();
        b.receive(vec![(*ea).clone()]).unwrap();
        let eb1 = b.local_write("x".into(), big(600)).unwrap();
        let eb2 = b.local_write("y".into(), big(600)).unwrap();
        let limit = eb1.size_bytes() + 100;
        let limits = Limits {
            max_buffered_bytes: limit,
            ..Limits::default()
        };
        let mut c = Core::new("c".into(), nodes, MemStore::new(), limits).unwrap();
        let receipt = c.receive(unwrap_events(&[eb1, eb2.clone()])).unwrap();
        assert_eq!((receipt.buffered.len(), receipt.refused), (1, 1));
        assert_eq!(receipt.refused_by, Some("max_buffered_bytes"));
        assert!(c.buffered_bytes() <= limit);
        c.receive(vec![(*ea).clone()]).unwrap();
        assert_eq!((c.buffered(), c.buffered_bytes()), (0, 0));
        c.receive(vec![(*eb2).clone()]).unwrap();
        assert_eq!(c.applied().get("b"), 2);
    }

    #[test]
    fn log_is_collected_once_every_node_has_applied() {
        let (mut a, mut b, mut c) = (core("a"), core("b"), core("c"));
        let e = a.local_write("x".into(), put(1)).unwrap();
        assert_eq!(a.store().log_len(), 1);
        b.receive(vec![(*e).clone()]).unwrap();
        a.record_ack("b", &b.applied().clone()).unwrap();
        assert_eq!(a.store().log_len(), 1, "c has not applied it yet");
        c.receive(vec![(*e).clone()]).unwrap();
        a.record_ack("c", &c.applied().clone()).unwrap();
        assert_eq!(a.store().log_len(), 0);
        assert_eq!(a.stable().get("a"), 1);
    }

    #[test]
    fn a_snapshot_read_in_chunks_then_caught_up_equals_the_source() {
        let (mut a, mut b) = (core("a"), core("b"));
        for (key, n) in [("k1", 1), ("k2", 2), ("k3", 3), ("k4", 4)] {
            a.local_write(key.into(), put(n)).unwrap();
        }
        a.local_write("k3".into(), Op::Delete).unwrap();
        // b holds a key the source never had (an old backup, say).
        b.local_write("k0".into(), put(0)).unwrap();
        b.commit().unwrap();

        b.begin_install().unwrap();
        let (first, at_first) = a.snapshot_chunk(None, 2, usize::MAX).unwrap();
        assert_eq!(first.len(), 2);
        let through = first.last().map(|(k, _)| k.clone());
        b.install_chunk(None, through.as_deref(), first).unwrap();
        // The source moves on between chunks: a later chunk shows writes
        // beyond the first chunk's clock, to keys on both sides of the cut.
        a.local_write("k1".into(), put(10)).unwrap();
        a.local_write("k4".into(), put(40)).unwrap();
        a.local_write("k5".into(), put(5)).unwrap();
        let (rest, at_rest) = a
            .snapshot_chunk(through.as_deref(), 10, usize::MAX)
            .unwrap();
        b.install_chunk(through.as_deref(), None, rest).unwrap();
        let mut meet = at_first.clone();
        meet.meet(&at_rest);
        b.finish_install(&meet);
        assert_eq!(b.applied().get("a"), at_first.get("a"));
        assert_eq!(b.applied().get("b"), 0, "the old local write is gone");

        // Catch-up: everything after the meet, some of it shown already.
        let after = b.applied().get("a");
        let later = unwrap_events(&a.store().log_after("a", after, 100).unwrap());
        assert_eq!(later.len(), 3);
        let receipt = b.receive(later).unwrap();
        assert_eq!(receipt.delivered.len(), 3);
        assert_eq!(b.applied(), a.applied());
        assert_eq!(b.store().dump(), a.store().dump());
        assert!(b.read("k0").unwrap().siblings.is_empty());
        assert_eq!(
            b.read("k4").unwrap().siblings.len(),
            1,
            "k4 was not doubled"
        );
    }

    #[test]
    fn a_clock_claiming_writes_this_node_never_made_is_refused() {
        let (mut a, mut b) = (core("a"), core("b"));
        let e = a.local_write("x".into(), put(1)).unwrap();
        b.receive(vec![(*e).clone()]).unwrap();
        let lying = [("a", u64::MAX), ("b", 0), ("c", 0)]
            .into_iter()
            .collect::<VClock>();
        assert!(matches!(
            a.record_ack("b", &lying),
            Err(CoreError::Overclaimed {
                claimed: u64::MAX,
                made: 1,
                ..
            })
        ));
        assert_eq!(a.acked("b").unwrap().get("a"), 0, "nothing recorded");
        assert_eq!(a.store().log_len(), 1);
    }

    #[test]
    fn contexts_are_checked_against_history() {
        let mut a = core("a");
        a.local_write("x".into(), put(1)).unwrap();
        let ctx =
            |entries: &[(&str, u64)]| entries.iter().map(|&(n, s)| (n, s)).collect::<VClock>();
        assert_eq!(a.check_context(&ctx(&[("a", 1)])), ContextCheck::Satisfied);
        assert_eq!(
            a.check_context(&ctx(&[("b", 2)])),
            ContextCheck::Behind(vec![Missing {
                node: "b".into(),
                have: 0,
                want: 2
            }])
        );
        assert!(matches!(
            a.check_context(&ctx(&[("a", 5)])),
            ContextCheck::Impossible(_)
        ));
        assert_eq!(
            a.check_context(&ctx(&[("zz", 1)])),
            ContextCheck::UnknownNode("zz".into())
        );
        // A zero entry counts nothing: a member added before `a` heard of it.
        assert_eq!(a.check_context(&ctx(&[("zz", 0)])), ContextCheck::Satisfied);
    }
}
