//! Storage: the synchronous trait the causal core reads and writes through,
//! the in-memory store ([`MemStore`], for tests and `memory = true`) and the
//! production store on fjall ([`durable`], whose journal files [`journal`]
//! allocates ahead of the writes). Nothing here knows the core's rules.
//!
//! The core keeps three things in storage: each key's siblings, the log of
//! applied events (kept until every node has applied them) and the `applied`
//! clock. Changes made between two [`Store::commit`] calls form one transaction:
//! a durable engine makes them visible and durable together, or not at all.

pub mod durable;
pub mod journal;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use vclock_proto::{Event, NodeId, Seq, VClock};

/// A storage failure. The node cannot go on safely after one, so callers report
/// it as an internal error.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// Result of storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// The siblings of one key: the writes to it that no other applied write has
/// overwritten, sorted so that the single-value winner is last.
pub type Siblings = Vec<Arc<Event>>;

/// How many more events a read of the log may return: at most `events` of
/// them and `bytes` of their size, but at least one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    events: usize,
    bytes: usize,
    taken: usize,
}

impl Budget {
    pub(crate) fn new(events: usize, bytes: usize) -> Self {
        Self {
            events,
            bytes,
            taken: 0,
        }
    }

    /// Takes `event` if it fits (the first one always does).
    pub(crate) fn take(&mut self, event: &Event) -> bool {
        let size = event.size_bytes();
        let fits = self.taken < self.events && (self.taken == 0 || size <= self.bytes);
        if fits {
            self.taken += 1;
            self.bytes = self.bytes.saturating_sub(size);
        }
        fits
    }
}

/// What the causal core needs from storage. Synchronous: the core runs on one
/// writer path and never awaits.
pub trait Store {
    /// The siblings of `key` (empty when the key was never written).
    fn siblings(&self, key: &str) -> StoreResult<Siblings>;
    /// Replaces the siblings of `key`.
    fn set_siblings(&mut self, key: &str, siblings: Siblings) -> StoreResult<()>;
    /// Appends an applied event to the log. Each origin's events arrive in seq order.
    fn append(&mut self, event: Arc<Event>) -> StoreResult<()>;
    /// Up to `limit` logged events of `origin` with a seq greater than `after`, in order.
    fn log_after(&self, origin: &str, after: Seq, limit: usize) -> StoreResult<Vec<Arc<Event>>>;
    /// Like [`Store::log_after`], but also stops before the event that would
    /// take the events' size ([`Event::size_bytes`]) over `max_bytes`; the
    /// first event comes whatever its size. A store that reads its log from
    /// disk reads no further.
    fn log_after_within(
        &self,
        origin: &str,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<Arc<Event>>> {
        let mut events = self.log_after(origin, after, limit)?;
        let mut budget = Budget::new(limit, max_bytes);
        let keep = events.iter().take_while(|e| budget.take(e)).count();
        events.truncate(keep);
        Ok(events)
    }
    /// Drops logged events of `origin` with a seq up to `through`.
    fn truncate(&mut self, origin: &str, through: Seq) -> StoreResult<()>;
    /// Number of events in the log.
    fn log_len(&self) -> u64;
    /// Number of logged events held in memory; a store may keep the oldest
    /// ones on disk only (all of them, by default).
    fn log_in_memory(&self) -> u64 {
        self.log_len()
    }
    /// Bytes of the logged events held in memory, as [`Event::size_bytes`]
    /// counts them (0 for a store that does not count them).
    fn log_in_memory_bytes(&self) -> u64 {
        0
    }
    /// The `applied` clock as of the last commit.
    fn applied(&self) -> StoreResult<VClock>;
    /// Ends the current transaction, recording `applied` with it.
    fn commit(&mut self, applied: &VClock) -> StoreResult<()>;
    /// Like [`Store::commit`], but a store that syncs may hand the sync back
    /// instead of waiting for it: the transaction is then written (a crash of
    /// the process keeps it) and the returned [`PendingSync`] makes it durable,
    /// without borrowing the store. Nothing of it may be shown or sent until
    /// the sync is done.
    fn commit_deferred(&mut self, applied: &VClock) -> StoreResult<Option<PendingSync>> {
        self.commit(applied).map(|()| None)
    }
    /// Number of fsyncs done so far (0 for a store that never syncs).
    fn fsyncs(&self) -> u64 {
        0
    }
    /// Up to `limit` keys with siblings after `after` (from the first key
    /// when `None`), in key order, with their siblings, uncommitted changes
    /// included; stops before the key that would take the siblings' size
    /// ([`Event::size_bytes`]) over `max_bytes` (the first key comes whatever
    /// its size). A bootstrap streams a store with it, chunk by chunk.
    fn keys_after(
        &self,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<(String, Siblings)>>;
    /// Drops every logged event of every origin, and forgets how far each
    /// origin's log went: after a bootstrap the log starts again from the
    /// clock the snapshot was taken at, which may be below it.
    fn reset_log(&mut self) -> StoreResult<()>;
}

/// Takes keys from `keys` (in key order) while `limit` and `max_bytes` allow,
/// the first one always.
pub(crate) fn take_keys(
    keys: impl Iterator<Item = StoreResult<(String, Siblings)>>,
    limit: usize,
    max_bytes: usize,
) -> StoreResult<Vec<(String, Siblings)>> {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    for entry in keys {
        if taken.len() >= limit {
            break;
        }
        let (key, siblings) = entry?;
        let size = key.len() + siblings.iter().map(|s| s.size_bytes()).sum::<usize>();
        if !taken.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        taken.push((key, siblings));
    }
    Ok(taken)
}

/// The sync of a commit written by [`Store::commit_deferred`].
pub struct PendingSync(Box<dyn FnOnce() -> StoreResult<()> + Send>);

impl PendingSync {
    /// A sync done by `sync`.
    pub fn new(sync: impl FnOnce() -> StoreResult<()> + Send + 'static) -> Self {
        Self(Box::new(sync))
    }

    /// Makes the commit durable. After an error the process must stop: the
    /// commit may or may not survive a crash of the machine.
    pub fn sync(self) -> StoreResult<()> {
        (self.0)()
    }
}

impl std::fmt::Debug for PendingSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingSync")
    }
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn siblings(&self, key: &str) -> StoreResult<Siblings> {
        (**self).siblings(key)
    }
    fn set_siblings(&mut self, key: &str, siblings: Siblings) -> StoreResult<()> {
        (**self).set_siblings(key, siblings)
    }
    fn append(&mut self, event: Arc<Event>) -> StoreResult<()> {
        (**self).append(event)
    }
    fn log_after(&self, origin: &str, after: Seq, limit: usize) -> StoreResult<Vec<Arc<Event>>> {
        (**self).log_after(origin, after, limit)
    }
    fn log_after_within(
        &self,
        origin: &str,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<Arc<Event>>> {
        (**self).log_after_within(origin, after, limit, max_bytes)
    }
    fn truncate(&mut self, origin: &str, through: Seq) -> StoreResult<()> {
        (**self).truncate(origin, through)
    }
    fn log_len(&self) -> u64 {
        (**self).log_len()
    }
    fn log_in_memory(&self) -> u64 {
        (**self).log_in_memory()
    }
    fn log_in_memory_bytes(&self) -> u64 {
        (**self).log_in_memory_bytes()
    }
    fn applied(&self) -> StoreResult<VClock> {
        (**self).applied()
    }
    fn commit(&mut self, applied: &VClock) -> StoreResult<()> {
        (**self).commit(applied)
    }
    fn commit_deferred(&mut self, applied: &VClock) -> StoreResult<Option<PendingSync>> {
        (**self).commit_deferred(applied)
    }
    fn fsyncs(&self) -> u64 {
        (**self).fsyncs()
    }
    fn keys_after(
        &self,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<(String, Siblings)>> {
        (**self).keys_after(after, limit, max_bytes)
    }
    fn reset_log(&mut self) -> StoreResult<()> {
        (**self).reset_log()
    }
}

/// Storage in memory: everything is lost when the process ends.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    keys: BTreeMap<String, Siblings>,
    log: BTreeMap<NodeId, VecDeque<Arc<Event>>>,
    log_len: u64,
    applied: VClock,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key with siblings, in key order (for tests that compare replicas).
    pub fn dump(&self) -> BTreeMap<String, Siblings> {
        self.keys
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl Store for MemStore {
    fn siblings(&self, key: &str) -> StoreResult<Siblings> {
        Ok(self.keys.get(key).cloned().unwrap_or_default())
    }

    fn set_siblings(&mut self, key: &str, siblings: Siblings) -> StoreResult<()> {
        if siblings.is_empty() {
            self.keys.remove(key);
        } else {
            self.keys.insert(key.to_owned(), siblings);
        }
        Ok(())
    }

    fn append(&mut self, event: Arc<Event>) -> StoreResult<()> {
        let log = self.log.entry(event.origin.clone()).or_default();
        if let Some(last) = log.back() {
            if event.seq != last.seq + 1 {
                return Err(StoreError(format!(
                    "log of {} jumps from {} to {}",
                    event.origin, last.seq, event.seq
                )));
            }
        }
        log.push_back(event);
        self.log_len += 1;
        Ok(())
    }

    fn log_after(&self, origin: &str, after: Seq, limit: usize) -> StoreResult<Vec<Arc<Event>>> {
        let Some(log) = self.log.get(origin) else {
            return Ok(Vec::new());
        };
        let Some(first) = log.front().map(|e| e.seq) else {
            return Ok(Vec::new());
        };
        let skip = (after + 1).saturating_sub(first) as usize;
        Ok(log.iter().skip(skip).take(limit).cloned().collect())
    }

    fn truncate(&mut self, origin: &str, through: Seq) -> StoreResult<()> {
        if let Some(log) = self.log.get_mut(origin) {
            while log.front().is_some_and(|e| e.seq <= through) {
                log.pop_front();
                self.log_len -= 1;
            }
        }
        Ok(())
    }

    fn log_len(&self) -> u64 {
        self.log_len
    }

    fn log_in_memory_bytes(&self) -> u64 {
        let events = self.log.values().flatten();
        events.map(|e| e.size_bytes() as u64).sum()
    }

    fn applied(&self) -> StoreResult<VClock> {
        Ok(self.applied.clone())
    }

    fn commit(&mut self, applied: &VClock) -> StoreResult<()> {
        self.applied = applied.clone();
        Ok(())
    }

    fn keys_after(
        &self,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<(String, Siblings)>> {
        use std::ops::Bound;
        let from = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        let keys = self
            .keys
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(k, v)| Ok((k.clone(), v.clone())));
        take_keys(keys, limit, max_bytes)
    }

    fn reset_log(&mut self) -> StoreResult<()> {
        self.log.clear();
        self.log_len = 0;
        Ok(())
    }
}
