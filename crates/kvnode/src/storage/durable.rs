//! Durable storage: the core's [`Store`] on fjall, an embedded LSM tree.
//!
//! # Layout
//!
//! One fjall database per data directory, with three keyspaces:
//!
//! - `keys`: key -> its siblings, as the JSON array of their events;
//! - `log`: origin bytes, `0x00`, seq as 8 big-endian bytes -> the JSON array
//!   of that origin's events appended in one commit, from that seq on (a
//!   chunk), so that one origin's events are contiguous and in seq order, and a
//!   commit writes one entry per origin rather than one per event (a single
//!   event object, as older versions wrote, is read as a chunk of one);
//! - `meta`: `applied` -> the `applied` clock as JSON; `collected` `0x00`
//!   origin -> the seq through which that origin's events were collected, as
//!   text (a chunk is deleted once all of its events are collected; until then
//!   this tells which of its events to skip when the log is loaded).
//!
//! Values are [`vclock_proto::Value`]s, the client's JSON text, which JSON
//! encoding stores and returns unchanged.
//!
//! # Transactions
//!
//! Everything between two [`Store::commit`] calls is one fjall write batch,
//! committed atomically: a crash before the batch is in the journal leaves the
//! previous commit intact, never part of a group. With [`Durability::Fsync`] the
//! batch is synced to disk (one fsync per commit) before `commit` returns.
//!
//! Until the commit, changes live in memory so that the core reads its own
//! writes: an overlay of changed keys, the appended events (the tail of the
//! in-memory log) and the log keys to delete.
//!
//! The log's newest events are also kept in memory, at most
//! [`DEFAULT_LOG_MEMORY_EVENTS`] of them and [`DEFAULT_LOG_MEMORY_BYTES`] over
//! all origins (see [`DurableStore::with_log_memory_events`] and
//! [`DurableStore::with_log_memory_bytes`]). While every peer keeps up, the log
//! is collected long before that, and [`Store::log_after`] never reads the disk.
//! When a peer is down or partitioned, the log grows: its oldest events then
//! stay only in the `log` keyspace, so memory stays bounded, and they are read
//! back chunk by chunk when the peer returns and asks for them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use serde::Deserialize;
use vclock_proto::{Event, NodeId, Seq, VClock};

use crate::storage::journal::JournalAllocator;
use crate::storage::{Budget, PendingSync, Siblings, Store, StoreError, StoreResult};

/// Size of a keyspace's memtable. Smaller than fjall's default (64 MiB): the
/// write path inserts into the memtable's skip list once per key and chunk, and
/// a smaller list is searched faster; flushes are cheap next to that.
const MEMTABLE_BYTES: u64 = 8 << 20;

/// The key of the `applied` clock in the `meta` keyspace.
const APPLIED: &str = "applied";

/// When a commit is durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Each commit is synced to disk before it returns (`fsync`).
    #[default]
    Fsync,
    /// Commits are handed to the operating system but not synced: they survive a
    /// crash of the process, not of the machine. For throwaway benchmarks.
    None,
}

/// Default of [`DurableStore::with_log_memory_events`]: with small values, some
/// tens of MiB.
pub const DEFAULT_LOG_MEMORY_EVENTS: usize = 65_536;

/// Default of [`DurableStore::with_log_memory_bytes`]: 64 MiB.
pub const DEFAULT_LOG_MEMORY_BYTES: usize = 64 << 20;

/// One origin's part of the log.
///
/// Its events have contiguous seqs: the oldest ones, `on_disk`, are only in the
/// `log` keyspace; the rest are in `events`, in memory (and on disk, but for
/// the `unsaved` ones).
#[derive(Debug, Default)]
struct OriginLog {
    /// The first and last seq of the events only on disk, if any.
    on_disk: Option<(Seq, Seq)>,
    /// The newest logged events, in seq order.
    events: VecDeque<Arc<Event>>,
    /// Their size, as [`Event::size_bytes`] counts it.
    bytes: usize,
    /// How many events at the back of `events` are not in the `log` keyspace yet.
    unsaved: usize,
    /// The highest seq ever appended (to refuse a log that goes back).
    last: Seq,
    /// Committed chunks in the `log` keyspace: first seq -> last seq.
    chunks: BTreeMap<Seq, Seq>,
    /// Collected through this seq since the last commit (to record in `meta`).
    collected: Option<Seq>,
}

impl OriginLog {
    /// The seq of the newest event in the log, in memory or on disk.
    fn newest(&self) -> Option<Seq> {
        let in_memory = self.events.back().map(|e| e.seq);
        in_memory.or(self.on_disk.map(|(_, last)| last))
    }
}

/// The core's storage on disk, in fjall.
pub struct DurableStore {
    path: PathBuf,
    durability: Durability,
    db: Database,
    keys: Keyspace,
    log_ks: Keyspace,
    meta: Keyspace,
    /// Keys changed since the last commit; `None` when they have no siblings left.
    pending_keys: HashMap<String, Option<Siblings>>,
    /// Committed siblings of recently used keys, decoded.
    cache: SiblingCache,
    /// `log` keys of committed events truncated since the last commit.
    pending_removes: Vec<Vec<u8>>,
    log: BTreeMap<NodeId, OriginLog>,
    log_len: u64,
    /// How much of the log is kept in memory, over all origins.
    keep: Keep,
    /// The `applied` clock of the last commit.
    applied: VClock,
    fsyncs: u64,
    /// Allocates the journal's blocks ahead of its writes (with fsync only).
    journal: Option<JournalAllocator>,
    cache_on: bool,
    /// Set when a commit failed: memory is then ahead of the disk, so every
    /// later call fails rather than serve state that may never be durable.
    failed: Option<String>,
    /// Makes the next commit fail (for tests).
    #[cfg(test)]
    fail_next_commit: bool,
}

impl fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("pending_keys", &self.pending_keys.len())
            .field("pending_removes", &self.pending_removes.len())
            .field("log_len", &self.log_len)
            .field("applied", &self.applied)
            .field("fsyncs", &self.fsyncs)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Default size of the cache of decoded siblings, in bytes of keys and values.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// The cache of committed siblings, weighed by the bytes of their keys and values.
type SiblingCache = quick_cache::sync::Cache<String, Siblings, SiblingWeight>;

#[derive(Clone, Debug)]
struct SiblingWeight;

/// What a decoded event costs in memory besides its keys' and values' text:
/// the `Arc`'d struct, its strings' allocations and its clock, a B-tree whose
/// leaf is allocated whole (about 0.5 KiB with the allocator's rounding, as
/// measured on a node whose cache was full).
const EVENT_IN_MEMORY: usize = 512;
/// What a cache entry costs besides its siblings: the key's `String`, the
/// `Vec` and the cache's own slot.
const ENTRY_IN_MEMORY: usize = 96;

impl quick_cache::Weighter<String, Siblings> for SiblingWeight {
    fn weight(&self, key: &String, siblings: &Siblings) -> u64 {
        let events: usize = siblings
            .iter()
            .map(|e| {
                let text: usize = e
                    .writes()
                    .map(|(k, op)| k.len() + op.value().map_or(0, |v| v.json().len()))
                    .sum();
                EVENT_IN_MEMORY + text
            })
            .sum();
        (ENTRY_IN_MEMORY + key.len() + events) as u64
    }
}

fn sibling_cache(bytes: u64) -> SiblingCache {
    // Estimated entries: small values are the common case.
    let entries = (bytes / 1024).clamp(16, 1 << 20) as usize;
    SiblingCache::with_weighter(entries, bytes.max(1), SiblingWeight)
}

/// The `log` key of event `(origin, seq)`.
fn log_key(origin: &str, seq: Seq) -> Vec<u8> {
    let mut key = Vec::with_capacity(origin.len() + 9);
    key.extend_from_slice(origin.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The `meta` key of the seq through which `origin`'s events were collected.
fn collected_key(origin: &str) -> Vec<u8> {
    let mut key = b"collected\0".to_vec();
    key.extend_from_slice(origin.as_bytes());
    key
}

/// Decodes a `log` value: a chunk of events, or one event as older versions wrote.
fn decode_chunk(bytes: &[u8]) -> serde_json::Result<Vec<Event>> {
    if bytes.trim_ascii_start().starts_with(b"[") {
        serde_json::from_slice(bytes)
    } else {
        serde_json::from_slice(bytes).map(|event| vec![event])
    }
}

/// The `(origin, seq)` of a `log` key.
fn parse_log_key(key: &[u8]) -> Option<(&str, Seq)> {
    let (seq, rest) = key.split_last_chunk::<8>().map(|(r, s)| (*s, r))?;
    let origin = rest.strip_suffix(&[0])?;
    let origin = std::str::from_utf8(origin).ok()?;
    Some((origin, Seq::from_be_bytes(seq)))
}

/// Drops the oldest saved events from memory, from the origins that hold the
/// most, until at most `keep` remain; they stay in the `log` keyspace.
fn evict(log: &mut BTreeMap<NodeId, OriginLog>, keep: Keep) {
    let mut events: usize = log.values().map(|l| l.events.len()).sum();
    let mut bytes: usize = log.values().map(|l| l.bytes).sum();
    while events > keep.events || bytes > keep.bytes {
        // The oldest saved event of the origin holding the most saved ones.
        let Some(origin) = log.values_mut().max_by_key(|l| l.events.len() - l.unsaved) else {
            return;
        };
        if origin.events.len() == origin.unsaved {
            return;
        }
        let Some(event) = origin.events.pop_front() else {
            return;
        };
        // Seqs are contiguous: the evicted events are first..=event.seq.
        origin.on_disk = Some((origin.on_disk.map_or(event.seq, |(f, _)| f), event.seq));
        let size = event.size_bytes();
        origin.bytes -= size;
        events -= 1;
        bytes -= size;
    }
}

/// How much of the log [`evict`] keeps in memory.
#[derive(Debug, Clone, Copy)]
struct Keep {
    events: usize,
    bytes: usize,
}

impl Default for Keep {
    fn default() -> Self {
        Self {
            events: DEFAULT_LOG_MEMORY_EVENTS,
            bytes: DEFAULT_LOG_MEMORY_BYTES,
        }
    }
}

impl DurableStore {
    /// Opens the store in `dir`, creating the directory and an empty store when
    /// they do not exist, and loads the log and the `applied` clock.
    ///
    /// Fails when the directory is in use by another store, or when the stored
    /// log is inconsistent: a gap in an origin's seqs, or an event beyond the
    /// `applied` clock (the core commits every event with the clock that
    /// counts it).
    pub fn open(dir: &Path, durability: Durability) -> StoreResult<Self> {
        let path = dir.to_path_buf();
        let fail = |what: &str, e: &dyn fmt::Display| {
            StoreError(format!("{}: {what}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory", &e))?;
        let db = Database::builder(dir).open().map_err(|e| match e {
            fjall::Error::Locked => fail("cannot open", &"in use by another process"),
            e => fail("cannot open the database", &e),
        })?;
        let keyspace = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(|e| fail(&format!("cannot open keyspace {name}"), &e))
        };
        let keys = keyspace("keys")?;
        let log_ks = keyspace("log")?;
        let meta = keyspace("meta")?;

        let applied = match meta
            .get(APPLIED)
            .map_err(|e| fail("cannot read the applied clock", &e))?
        {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| fail("corrupt applied clock", &e))?
            }
            None => VClock::new(),
        };

        let mut log: BTreeMap<NodeId, OriginLog> = BTreeMap::new();
        let mut log_len = 0;
        for guard in log_ks.iter() {
            let (key, bytes) = guard
                .into_inner()
                .map_err(|e| fail("cannot read the log", &e))?;
            let (origin, first) =
                parse_log_key(&key).ok_or_else(|| fail("corrupt log key", &format!("{key:?}")))?;
            let events = decode_chunk(&bytes)
                .map_err(|e| fail(&format!("corrupt log chunk {origin}:{first}"), &e))?;
            let entry = log.entry(origin.to_owned()).or_default();
            if entry.collected.is_none() {
                let through = meta
                    .get(collected_key(origin))
                    .map_err(|e| fail("cannot read the collected seqs", &e))?
                    .map(|bytes| String::from_utf8_lossy(&bytes).parse::<Seq>())
                    .transpose()
                    .map_err(|e| fail(&format!("corrupt collected seq of {origin}"), &e))?;
                entry.collected = Some(through.unwrap_or(0));
            }
            let collected = entry.collected.unwrap_or(0);
            let mut last = first;
            for (i, event) in events.into_iter().enumerate() {
                let seq = first + i as Seq;
                if event.origin != origin || event.seq != seq {
                    return Err(fail(
                        "corrupt log",
                        &format!(
                            "chunk {origin}:{first} holds event {} at {seq}",
                            event.dot()
                        ),
                    ));
                }
                if seq > applied.get(origin) {
                    return Err(fail(
                        "corrupt log",
                        &format!("event {origin}:{seq} is beyond the applied clock {applied}"),
                    ));
                }
                last = seq;
                if seq <= collected {
                    continue;
                }
                if entry.newest().is_some_and(|p| p + 1 != seq) {
                    return Err(fail(
                        "corrupt log",
                        &format!("log of {origin} jumps from {} to {seq}", entry.last),
                    ));
                }
                entry.bytes += event.size_bytes();
                entry.events.push_back(Arc::new(event));
                entry.last = seq;
                log_len += 1;
            }
            entry.chunks.insert(first, last);
            entry.last = entry.last.max(last);
            evict(&mut log, Keep::default());
        }
        for entry in log.values_mut() {
            entry.collected = None;
        }
        let journal = (durability == Durability::Fsync).then(|| {
            let mut journal = JournalAllocator::new(dir);
            journal.check();
            journal
        });

        Ok(Self {
            path,
            durability,
            db,
            keys,
            log_ks,
            meta,
            pending_keys: HashMap::new(),
            cache: sibling_cache(DEFAULT_CACHE_BYTES),
            pending_removes: Vec::new(),
            log,
            log_len,
            keep: Keep::default(),
            applied,
            fsyncs: 0,
            journal,
            cache_on: true,
            failed: None,
            #[cfg(test)]
            fail_next_commit: false,
        })
    }

    /// Keeps up to `bytes` of recently used keys' siblings decoded in memory
    /// (default [`DEFAULT_CACHE_BYTES`]; 0 turns the cache off).
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache = sibling_cache(bytes);
        self.cache_on = bytes > 0;
        self
    }

    /// Keeps at most `events` of the log's newest events in memory, over all
    /// origins (default [`DEFAULT_LOG_MEMORY_EVENTS`]); older ones are read
    /// from disk when asked for. Events of the open transaction always stay.
    pub fn with_log_memory_events(mut self, events: usize) -> Self {
        self.keep.events = events;
        evict(&mut self.log, self.keep);
        self
    }

    /// Keeps at most `bytes` of the log's newest events in memory, as
    /// [`Event::size_bytes`] counts them (default [`DEFAULT_LOG_MEMORY_BYTES`]);
    /// with large values this bound is reached before the count's.
    pub fn with_log_memory_bytes(mut self, bytes: usize) -> Self {
        self.keep.bytes = bytes;
        evict(&mut self.log, self.keep);
        self
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every key with siblings, in key order, including uncommitted changes (for
    /// tests that compare replicas). Reads the whole `keys` keyspace.
    pub fn dump(&self) -> StoreResult<BTreeMap<String, Siblings>> {
        let mut all = BTreeMap::new();
        for guard in self.keys.iter() {
            let (key, bytes) = guard
                .into_inner()
                .map_err(|e| self.error("cannot read the keys", &e))?;
            let key = String::from_utf8(key.to_vec()).map_err(|e| self.error("corrupt key", &e))?;
            let siblings = self.decode_siblings(&key, &bytes)?;
            all.insert(key, siblings);
        }
        for (key, siblings) in &self.pending_keys {
            match siblings {
                Some(s) => all.insert(key.clone(), s.clone()),
                None => all.remove(key),
            };
        }
        Ok(all)
    }

    /// Fails once a commit has failed.
    fn usable(&self) -> StoreResult<()> {
        match &self.failed {
            None => Ok(()),
            Some(e) => Err(StoreError(format!("unusable after a failed commit: {e}"))),
        }
    }

    fn error(&self, what: &str, e: &dyn fmt::Display) -> StoreError {
        StoreError(format!("{}: {what}: {e}", self.path.display()))
    }

    fn decode_siblings(&self, key: &str, bytes: &[u8]) -> StoreResult<Siblings> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.error(&format!("corrupt siblings of key {key:?}"), &e))
    }

    fn encode<T: serde::Serialize + ?Sized>(&self, what: &str, v: &T) -> StoreResult<Vec<u8>> {
        serde_json::to_vec(v).map_err(|e| self.error(&format!("cannot encode {what}"), &e))
    }
}

impl Store for DurableStore {
    fn siblings(&self, key: &str) -> StoreResult<Siblings> {
        self.usable()?;
        if let Some(pending) = self.pending_keys.get(key) {
            return Ok(pending.clone().unwrap_or_default());
        }
        if let Some(siblings) = self.cache.get(key) {
            return Ok(siblings);
        }
        let siblings = match self
            .keys
            .get(key)
            .map_err(|e| self.error(&format!("cannot read key {key:?}"), &e))?
        {
            Some(bytes) => self.decode_siblings(key, &bytes)?,
            None => Vec::new(),
        };
        if self.cache_on {
            self.cache.insert(key.to_owned(), siblings.clone());
        }
        Ok(siblings)
    }

    fn set_siblings(&mut self, key: &str, siblings: Siblings) -> StoreResult<()> {
        self.usable()?;
        let siblings = (!siblings.is_empty()).then_some(siblings);
        self.pending_keys.insert(key.to_owned(), siblings);
        Ok(())
    }

    fn append(&mut self, event: Arc<Event>) -> StoreResult<()> {
        self.usable()?;
        if event.origin.contains('\0') {
            return Err(self.error(
                "cannot log an event",
                &format!("origin {:?} contains a NUL byte", event.origin),
            ));
        }
        let log = self.log.entry(event.origin.clone()).or_default();
        if let Some(newest) = log.newest() {
            if event.seq != newest + 1 {
                return Err(StoreError(format!(
                    "log of {} jumps from {newest} to {}",
                    event.origin, event.seq
                )));
            }
        } else if event.seq <= log.last {
            return Err(StoreError(format!(
                "log of {} goes back from {} to {}",
                event.origin, log.last, event.seq
            )));
        }
        log.last = event.seq;
        log.bytes += event.size_bytes();
        log.events.push_back(event);
        log.unsaved += 1;
        self.log_len += 1;
        Ok(())
    }

    fn log_after(&self, origin: &str, after: Seq, limit: usize) -> StoreResult<Vec<Arc<Event>>> {
        self.log_after_within(origin, after, limit, usize::MAX)
    }

    fn log_after_within(
        &self,
        origin: &str,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<Arc<Event>>> {
        self.usable()?;
        let Some(log) = self.log.get(origin) else {
            return Ok(Vec::new());
        };
        let mut budget = Budget::new(limit, max_bytes);
        let mut events = Vec::new();
        if let Some((first, last)) = log.on_disk {
            let from = (after + 1).max(first);
            if from <= last
                && !self.read_on_disk(origin, log, from, last, &mut budget, &mut events)?
            {
                return Ok(events);
            }
        }
        let Some(first) = log.events.front().map(|e| e.seq) else {
            return Ok(events);
        };
        let skip = (after + 1).saturating_sub(first) as usize;
        let more = log.events.iter().skip(skip).take_while(|e| budget.take(e));
        events.extend(more.cloned());
        Ok(events)
    }

    fn truncate(&mut self, origin: &str, through: Seq) -> StoreResult<()> {
        self.usable()?;
        let Some(log) = self.log.get_mut(origin) else {
            return Ok(());
        };
        let mut collected = None;
        if let Some((first, last)) = log.on_disk.filter(|&(first, _)| first <= through) {
            // Events only on disk go first.
            let gone = through.min(last);
            self.log_len -= gone - first + 1;
            collected = Some(gone);
            log.on_disk = (gone < last).then_some((gone + 1, last));
        }
        while log.events.front().is_some_and(|e| e.seq <= through) {
            let Some(e) = log.events.pop_front() else {
                break;
            };
            log.bytes -= e.size_bytes();
            if log.events.len() < log.unsaved {
                // Appended in this transaction: it never reaches the disk.
                log.unsaved -= 1;
            }
            collected = Some(e.seq);
            self.log_len -= 1;
        }
        let Some(collected) = collected else {
            return Ok(());
        };
        log.collected = Some(collected);
        // Chunks whose every event is collected go; a chunk partly collected
        // stays, and `collected` tells the next open which of its events to skip.
        while let Some((&first, &last)) = log.chunks.first_key_value() {
            if last > collected {
                break;
            }
            log.chunks.remove(&first);
            self.pending_removes.push(log_key(origin, first));
        }
        Ok(())
    }

    fn log_len(&self) -> u64 {
        self.log_len
    }

    fn log_in_memory(&self) -> u64 {
        self.log.values().map(|log| log.events.len() as u64).sum()
    }

    fn log_in_memory_bytes(&self) -> u64 {
        self.log.values().map(|log| log.bytes as u64).sum()
    }

    fn applied(&self) -> StoreResult<VClock> {
        self.usable()?;
        Ok(self.applied.clone())
    }

    fn commit(&mut self, applied: &VClock) -> StoreResult<()> {
        self.commit_group(applied, false).map(|_| ())
    }

    fn commit_deferred(&mut self, applied: &VClock) -> StoreResult<Option<PendingSync>> {
        self.commit_group(applied, true)
    }

    fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    fn keys_after(
        &self,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<(String, Siblings)>> {
        use std::ops::Bound;
        self.usable()?;
        let from = match after {
            Some(key) => Bound::Excluded(key.as_bytes()),
            None => Bound::Unbounded,
        };
        // Committed keys in order, with the uncommitted changes merged in
        // (there are none between two commits, when a bootstrap reads).
        let mut pending: Vec<(&String, &Option<Siblings>)> = self
            .pending_keys
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .collect();
        pending.sort_by(|a, b| a.0.cmp(b.0));
        let mut pending = pending.into_iter().peekable();
        let mut committed = self
            .keys
            .range::<&[u8], _>((from, Bound::Unbounded))
            .map(|guard| {
                let (key, bytes) = guard
                    .into_inner()
                    .map_err(|e| self.error("cannot read the keys", &e))?;
                let key =
                    String::from_utf8(key.to_vec()).map_err(|e| self.error("corrupt key", &e))?;
                Ok((key, bytes))
            })
            .peekable();
        let merged = std::iter::from_fn(|| loop {
            let next_committed = match committed.peek() {
                Some(Ok((key, _))) => Some(key.clone()),
                Some(Err(_)) => return committed.next().and_then(|r| r.err()).map(Err),
                None => None,
            };
            let take_pending = match (pending.peek(), &next_committed) {
                (Some((p, _)), Some(c)) => p.as_str() <= c.as_str(),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_pending {
                let (key, siblings) = pending.next()?;
                if next_committed.as_deref() == Some(key.as_str()) {
                    committed.next();
                }
                match siblings {
                    Some(s) => return Some(Ok((key.clone(), s.clone()))),
                    None => continue,
                }
            }
            let (key, bytes) = committed.next()?.ok()?;
            return Some(self.decode_siblings(&key, &bytes).map(|s| (key, s)));
        });
        crate::storage::take_keys(merged, limit, max_bytes)
    }

    fn reset_log(&mut self) -> StoreResult<()> {
        self.usable()?;
        // Origins whose log is empty now may still have a collected seq on
        // disk: it must go back to 0 as well.
        let mut origins: Vec<NodeId> = self.log.keys().cloned().collect();
        for guard in self.meta.prefix(collected_key("")) {
            let key = guard
                .key()
                .map_err(|e| self.error("cannot read the collected seqs", &e))?;
            let origin = &key[collected_key("").len()..];
            origins.push(String::from_utf8_lossy(origin).into_owned());
        }
        for origin in origins {
            let last = self.log.get(&origin).map_or(0, |log| log.last);
            self.truncate(&origin, last)?;
            let log = self.log.entry(origin).or_default();
            // Recorded as collected through 0, so that a reopened store
            // skips none of the events logged from now on.
            log.collected = Some(0);
            log.last = 0;
        }
        Ok(())
    }
}

impl DurableStore {
    /// Commits the pending changes as one batch; with `defer`, returns the sync
    /// instead of doing it.
    fn commit_group(&mut self, applied: &VClock, defer: bool) -> StoreResult<Option<PendingSync>> {
        self.usable()?;
        let appended = self.log.values().any(|log| log.unsaved > 0);
        let collected = self.log.values().any(|log| log.collected.is_some());
        let new_data = appended || !self.pending_keys.is_empty() || *applied != self.applied;
        if !new_data && self.pending_removes.is_empty() && !collected {
            self.applied = applied.clone();
            return Ok(None);
        }
        // Only a group that adds data needs the sync: a lost truncation is
        // harmless (the events are collected again), and the journal is
        // sequential, so the next synced commit makes it durable anyway.
        let sync = new_data && self.durability == Durability::Fsync;
        let mode = if sync && !defer {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        if let Err(e) = self.write_batch(mode, applied) {
            self.failed = Some(e.0.clone());
            return Err(e);
        }
        for (key, siblings) in self.pending_keys.drain() {
            match siblings {
                Some(siblings) if self.cache_on => self.cache.insert(key, siblings),
                _ => {
                    self.cache.remove(&key);
                }
            }
        }
        self.pending_removes.clear();
        for log in self.log.values_mut() {
            if log.unsaved > 0 {
                let mut unsaved = log.events.iter().skip(log.events.len() - log.unsaved);
                if let (Some(first), Some(last)) = (unsaved.next(), log.events.back()) {
                    log.chunks.insert(first.seq, last.seq);
                }
            }
            log.unsaved = 0;
            log.collected = None;
        }
        evict(&mut self.log, self.keep);
        self.applied = applied.clone();
        if !sync {
            return Ok(None);
        }
        self.fsyncs += 1;
        if let Some(journal) = &mut self.journal {
            journal.committed();
        }
        if !defer {
            return Ok(None);
        }
        let db = self.db.clone();
        let path = self.path.clone();
        Ok(Some(PendingSync::new(move || {
            db.persist(PersistMode::SyncAll)
                .map_err(|e| StoreError(format!("{}: cannot sync: {e}", path.display())))
        })))
    }

    /// Appends to `events` what `budget` takes of `origin`'s events with seqs
    /// from `from` through `to`, read from the chunks on disk; false when the
    /// budget ran out first.
    fn read_on_disk(
        &self,
        origin: &str,
        log: &OriginLog,
        from: Seq,
        to: Seq,
        budget: &mut Budget,
        events: &mut Vec<Arc<Event>>,
    ) -> StoreResult<bool> {
        // The chunk that holds `from`, then the ones after it.
        let start = log
            .chunks
            .range(..=from)
            .next_back()
            .map_or(from, |(&first, _)| first);
        for (&first, &last) in log.chunks.range(start..) {
            if first > to {
                break;
            }
            if last < from {
                continue;
            }
            let bytes = self
                .log_ks
                .get(log_key(origin, first))
                .map_err(|e| self.error("cannot read the log", &e))?
                .ok_or_else(|| {
                    self.error(
                        "cannot read the log",
                        &format!("chunk {origin}:{first} is missing"),
                    )
                })?;
            let chunk = decode_chunk(&bytes)
                .map_err(|e| self.error(&format!("corrupt log chunk {origin}:{first}"), &e))?;
            for event in chunk {
                if event.seq < from {
                    continue;
                }
                if event.seq > to {
                    break;
                }
                if !budget.take(&event) {
                    return Ok(false);
                }
                events.push(Arc::new(event));
            }
        }
        Ok(true)
    }

    /// Writes the pending changes and `applied` as one batch.
    fn write_batch(&self, mode: PersistMode, applied: &VClock) -> StoreResult<()> {
        #[cfg(test)]
        if self.fail_next_commit {
            return Err(self.error("cannot commit", &"injected failure"));
        }
        let mut batch = self.db.batch().durability(Some(mode));
        for (key, siblings) in &self.pending_keys {
            match siblings {
                Some(s) => batch.insert(&self.keys, key.as_str(), self.encode("siblings", s)?),
                None => batch.remove(&self.keys, key.as_str()),
            }
        }
        let mut inserted = Vec::new();
        for (origin, log) in &self.log {
            let unsaved: Vec<&Arc<Event>> = log
                .events
                .iter()
                .skip(log.events.len() - log.unsaved)
                .collect();
            if let Some(first) = unsaved.first() {
                let key = log_key(origin, first.seq);
                batch.insert(
                    &self.log_ks,
                    key.as_slice(),
                    self.encode("events", &unsaved)?,
                );
                inserted.push(key);
            }
            if let Some(collected) = log.collected {
                batch.insert(&self.meta, collected_key(origin), collected.to_string());
            }
        }
        // Removals are of committed chunks, insertions of new ones. Seqs go
        // back only after a bootstrap ([`Store::reset_log`]): a new chunk may
        // then take the key of one removed in the same batch, and stays.
        for key in self
            .pending_removes
            .iter()
            .filter(|k| !inserted.contains(k))
        {
            batch.remove(&self.log_ks, key.as_slice());
        }
        batch.insert(&self.meta, APPLIED, self.encode("applied clock", applied)?);
        batch.commit().map_err(|e| self.error("cannot commit", &e))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use vclock_proto::{Op, Value};

    use super::*;
    use crate::storage::MemStore;

    fn event(origin: &str, seq: Seq, key: &str, value: &str) -> Arc<Event> {
        Arc::new(Event {
            origin: origin.into(),
            seq,
            key: key.into(),
            op: Op::Put(Value::from_json(value).unwrap()),
            also: Vec::new(),
            deps: [(origin, seq - 1)].into_iter().collect(),
        })
    }

    fn clock(entries: &[(&str, Seq)]) -> VClock {
        entries.iter().map(|&(n, s)| (n, s)).collect()
    }

    fn open(dir: &Path) -> DurableStore {
        DurableStore::open(dir, Durability::Fsync).unwrap()
    }

    #[test]
    fn fits_the_node_store_box() {
        // The node keeps its store as a `Box<dyn Store + Send>`.
        fn boxed(s: DurableStore) -> Box<dyn Store + Send> {
            Box::new(s)
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut store = boxed(open(tmp.path()));
        store.append(event("a", 1, "x", "1")).unwrap();
        store.commit(&clock(&[("a", 1)])).unwrap();
        assert_eq!(store.fsyncs(), 1);
    }

    #[test]
    fn durability_parses_from_config_text() {
        let d: Durability = serde_json::from_str(r#""fsync""#).unwrap();
        assert_eq!(d, Durability::Fsync);
        let d: Durability = serde_json::from_str(r#""none""#).unwrap();
        assert_eq!(d, Durability::None);
        assert!(serde_json::from_str::<Durability>(r#""sometimes""#).is_err());
    }

    #[test]
    fn log_keys_round_trip_and_sort_by_origin_then_seq() {
        assert_eq!(parse_log_key(&log_key("node1", 258)), Some(("node1", 258)));
        assert!(log_key("a", u64::MAX) < log_key("ab", 0));
        assert!(log_key("a", 255) < log_key("a", 256));
        assert_eq!(parse_log_key(b"short"), None);
    }

    #[test]
    fn opens_a_missing_directory_and_starts_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        let store = open(&dir);
        assert!(dir.is_dir());
        assert_eq!(store.applied().unwrap(), VClock::new());
        assert_eq!(store.log_len(), 0);
        assert!(store.siblings("x").unwrap().is_empty());
        assert_eq!(store.fsyncs(), 0);
    }

    #[test]
    fn open_errors_name_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let err = DurableStore::open(&file, Durability::Fsync).unwrap_err();
        assert!(err.0.contains(&file.display().to_string()), "{err}");
    }

    #[test]
    fn a_directory_opens_once_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let first = open(tmp.path());
        let err = DurableStore::open(tmp.path(), Durability::Fsync).unwrap_err();
        assert!(err.0.contains(&tmp.path().display().to_string()), "{err}");
        assert!(err.0.contains("in use"), "{err}");
        drop(first);
        open(tmp.path());
    }

    #[test]
    fn committed_state_survives_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let (a1, a2, b1) = (
            event("a", 1, "x", "1"),
            event(
                "a",
                2,
                "y",
                r#"{"big": 12345678901234567890123, "f": 2.50}"#,
            ),
            event("b", 1, "x", "\"bee\""),
        );
        {
            let mut s = open(tmp.path());
            s.set_siblings("x", vec![a1.clone(), b1.clone()]).unwrap();
            s.set_siblings("y", vec![a2.clone()]).unwrap();
            s.set_siblings("gone", vec![a1.clone()]).unwrap();
            for e in [&a1, &a2, &b1] {
                s.append(e.clone()).unwrap();
            }
            s.commit(&clock(&[("a", 2), ("b", 1)])).unwrap();
            assert_eq!(s.fsyncs(), 1);
            s.set_siblings("gone", Vec::new()).unwrap();
            s.commit(&clock(&[("a", 2), ("b", 1)])).unwrap();
            assert_eq!(s.fsyncs(), 2);
        }
        let s = open(tmp.path());
        assert_eq!(s.applied().unwrap(), clock(&[("a", 2), ("b", 1)]));
        assert_eq!(s.siblings("x").unwrap(), vec![a1.clone(), b1.clone()]);
        assert_eq!(s.siblings("y").unwrap(), vec![a2.clone()]);
        // Values keep their exact text.
        assert_eq!(
            s.siblings("y").unwrap()[0].op.value().unwrap().json(),
            r#"{"big": 12345678901234567890123, "f": 2.50}"#
        );
        assert!(s.siblings("gone").unwrap().is_empty());
        assert_eq!(s.log_len(), 3);
        assert_eq!(
            s.log_after("a", 0, 10).unwrap(),
            vec![a1.clone(), a2.clone()]
        );
        assert_eq!(s.log_after("a", 1, 10).unwrap(), vec![a2]);
        assert_eq!(s.log_after("b", 0, 10).unwrap(), vec![b1]);
        assert_eq!(s.dump().unwrap().len(), 2);
    }

    #[test]
    fn uncommitted_changes_are_visible_then_lost_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let (a1, a2) = (event("a", 1, "x", "1"), event("a", 2, "x", "2"));
        {
            let mut s = open(tmp.path());
            s.set_siblings("x", vec![a1.clone()]).unwrap();
            s.append(a1.clone()).unwrap();
            s.commit(&clock(&[("a", 1)])).unwrap();

            s.set_siblings("x", vec![a2.clone()]).unwrap();
            s.set_siblings("y", vec![a2.clone()]).unwrap();
            s.append(a2.clone()).unwrap();
            s.truncate("a", 1).unwrap();
            // The core reads its own uncommitted writes.
            assert_eq!(s.siblings("x").unwrap(), vec![a2.clone()]);
            assert_eq!(s.log_after("a", 0, 10).unwrap(), vec![a2.clone()]);
            assert_eq!(s.log_len(), 1);
            assert_eq!(s.applied().unwrap(), clock(&[("a", 1)]));
        }
        let s = open(tmp.path());
        assert_eq!(s.applied().unwrap(), clock(&[("a", 1)]));
        assert_eq!(s.siblings("x").unwrap(), vec![a1.clone()]);
        assert!(s.siblings("y").unwrap().is_empty());
        assert_eq!(s.log_after("a", 0, 10).unwrap(), vec![a1]);
        assert_eq!(s.log_len(), 1);
    }

    #[test]
    fn a_failed_commit_makes_the_store_unusable() {
        let tmp = tempfile::tempdir().unwrap();
        let (a1, a2) = (event("a", 1, "x", "1"), event("a", 2, "x", "2"));
        {
            let mut s = open(tmp.path());
            s.set_siblings("x", vec![a1.clone()]).unwrap();
            s.append(a1.clone()).unwrap();
            s.commit(&clock(&[("a", 1)])).unwrap();
            s.set_siblings("x", vec![a2.clone()]).unwrap();
            s.append(a2.clone()).unwrap();
            s.fail_next_commit = true;
            let err = s.commit(&clock(&[("a", 2)])).unwrap_err();
            assert!(err.0.contains("injected failure"), "{err}");
            s.fail_next_commit = false;
            // Nothing of the failed group may be served (e.g. sent to peers).
            assert!(s.siblings("x").is_err());
            assert!(s.log_after("a", 0, 10).is_err());
            assert!(s.applied().is_err());
            let err = s.commit(&clock(&[("a", 2)])).unwrap_err();
            assert!(err.0.contains("failed commit"), "{err}");
        }
        let s = open(tmp.path());
        assert_eq!(s.applied().unwrap(), clock(&[("a", 1)]));
        assert_eq!(s.siblings("x").unwrap(), vec![a1.clone()]);
        assert_eq!(s.log_after("a", 0, 10).unwrap(), vec![a1]);
    }

    #[test]
    fn truncation_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let events: Vec<_> = (1..=10).map(|i| event("a", i, "k", "0")).collect();
        {
            let mut s = open(tmp.path());
            for e in &events[..6] {
                s.append(e.clone()).unwrap();
            }
            s.commit(&clock(&[("a", 6)])).unwrap();
            // Truncate committed events and some appended in the same group.
            for e in &events[6..] {
                s.append(e.clone()).unwrap();
            }
            s.truncate("a", 8).unwrap();
            s.truncate("nobody", 8).unwrap();
            assert_eq!(s.log_len(), 2);
            s.commit(&clock(&[("a", 10)])).unwrap();
            // A group that only truncates is committed without a sync.
            let synced = s.fsyncs();
            s.truncate("a", 9).unwrap();
            s.commit(&clock(&[("a", 10)])).unwrap();
            assert_eq!(s.fsyncs(), synced);
            // A group that changes nothing writes nothing.
            s.commit(&clock(&[("a", 10)])).unwrap();
            assert_eq!(s.fsyncs(), synced);
        }
        let mut s = open(tmp.path());
        assert_eq!(s.log_len(), 1);
        assert_eq!(s.log_after("a", 0, 10).unwrap(), vec![events[9].clone()]);
        s.truncate("a", 10).unwrap();
        s.commit(&clock(&[("a", 10)])).unwrap();
        drop(s);
        let mut s = open(tmp.path());
        assert_eq!(s.log_len(), 0);
        assert!(s.log_after("a", 0, 10).unwrap().is_empty());
        // The log of an origin never goes back, even when empty.
        assert!(s.append(event("a", 11, "k", "0")).is_ok());
        assert!(s.append(event("a", 13, "k", "0")).is_err());
        s.truncate("a", 11).unwrap();
        assert!(s.append(event("a", 5, "k", "0")).is_err());
    }

    #[test]
    fn reads_a_log_of_one_event_per_entry_as_older_versions_wrote_it() {
        let tmp = tempfile::tempdir().unwrap();
        let events: Vec<_> = (1..=3).map(|i| event("a", i, "k", "0")).collect();
        {
            let s = open(tmp.path());
            for e in &events {
                let json = serde_json::to_vec(e).unwrap();
                s.log_ks.insert(log_key("a", e.seq), json).unwrap();
            }
            let applied = serde_json::to_vec(&clock(&[("a", 3)])).unwrap();
            s.meta.insert(APPLIED, applied).unwrap();
            s.db.persist(PersistMode::SyncAll).unwrap();
        }
        let mut s = open(tmp.path());
        assert_eq!(s.log_after("a", 0, 10).unwrap(), events);
        s.truncate("a", 2).unwrap();
        s.commit(&clock(&[("a", 3)])).unwrap();
        drop(s);
        let s = open(tmp.path());
        assert_eq!(s.log_after("a", 0, 10).unwrap(), events[2..]);
    }

    /// Runs one random sequence of operations against a `MemStore` and a
    /// `DurableStore`, reopening the durable one after some commits, and
    /// compares everything they answer.
    fn compare_with_memstore(seed: u64, steps: usize, log_memory: usize) {
        const ORIGINS: [&str; 3] = ["a", "b", "c"];
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut mem = MemStore::new();
        let open = |dir: &Path| open(dir).with_log_memory_events(log_memory);
        let open_after = |store: DurableStore, dir: &Path| {
            drop(store);
            open(dir)
        };
        let mut durable = Some(open(tmp.path()));
        let mut next: BTreeMap<&str, Seq> = ORIGINS.iter().map(|o| (*o, 1)).collect();
        let mut made: Vec<Arc<Event>> = Vec::new();
        let mut reopens = 0;

        let check = |rng: &mut StdRng, mem: &MemStore, d: &DurableStore, step: usize| {
            let key = format!("k{}", rng.random_range(0..20));
            assert_eq!(
                d.siblings(&key).unwrap(),
                mem.siblings(&key).unwrap(),
                "{step}"
            );
            let origin = ORIGINS[rng.random_range(0..3)];
            let after = rng.random_range(0..60);
            let limit = rng.random_range(0..20);
            assert_eq!(
                d.log_after(origin, after, limit).unwrap(),
                mem.log_after(origin, after, limit).unwrap(),
                "step {step}: log_after({origin}, {after}, {limit})"
            );
            assert_eq!(d.log_len(), mem.log_len(), "{step}");
            assert!(
                d.log_in_memory() <= (log_memory + uncommitted(d)) as u64,
                "{step}"
            );
            assert_eq!(d.applied().unwrap(), mem.applied().unwrap(), "{step}");
            let after = rng
                .random_ratio(3, 4)
                .then(|| format!("k{}", rng.random_range(0..20)));
            let (limit, max_bytes) = (rng.random_range(0..8), rng.random_range(0..400));
            assert_eq!(
                d.keys_after(after.as_deref(), limit, max_bytes).unwrap(),
                mem.keys_after(after.as_deref(), limit, max_bytes).unwrap(),
                "step {step}: keys_after({after:?}, {limit}, {max_bytes})"
            );
        };

        for step in 0..steps {
            let d = durable.as_mut().unwrap();
            match rng.random_range(0..100) {
                0..35 => {
                    let origin = ORIGINS[rng.random_range(0..3)];
                    let mut seq = next[origin];
                    if rng.random_ratio(1, 20) {
                        seq += rng.random_range(1..3);
                    }
                    let key = format!("k{}", rng.random_range(0..20));
                    let e = event(origin, seq, &key, &format!("[{step}, \"v\"]"));
                    let (r1, r2) = (mem.append(e.clone()), d.append(e.clone()));
                    assert_eq!(r1.is_ok(), r2.is_ok(), "step {step}: append {}", e.dot());
                    if r1.is_ok() {
                        next.insert(origin, seq + 1);
                    }
                    made.push(e);
                }
                35..65 => {
                    let key = format!("k{}", rng.random_range(0..20));
                    let n = rng.random_range(0..4).min(made.len());
                    let siblings: Siblings = (0..n)
                        .map(|_| made[rng.random_range(0..made.len())].clone())
                        .collect();
                    mem.set_siblings(&key, siblings.clone()).unwrap();
                    d.set_siblings(&key, siblings).unwrap();
                }
                65..75 => {
                    let origin = ORIGINS[rng.random_range(0..4).min(2)];
                    let through = rng.random_range(0..next[origin] + 2);
                    mem.truncate(origin, through).unwrap();
                    d.truncate(origin, through).unwrap();
                }
                75..95 => {
                    let applied: VClock = next.iter().map(|(o, s)| (*o, s - 1)).collect();
                    mem.commit(&applied).unwrap();
                    d.commit(&applied).unwrap();
                    if rng.random_ratio(1, 4) {
                        durable = Some(open_after(durable.take().unwrap(), tmp.path()));
                        reopens += 1;
                    }
                }
                95..97 => {
                    // As a bootstrap does: the log starts again, lower.
                    mem.reset_log().unwrap();
                    d.reset_log().unwrap();
                    for seq in next.values_mut() {
                        *seq = rng.random_range(1..=*seq);
                    }
                }
                _ => {
                    let applied = clock(&[("a", rng.random_range(0..50))]);
                    mem.commit(&applied).unwrap();
                    d.commit(&applied).unwrap();
                }
            }
            check(&mut rng, &mem, durable.as_ref().unwrap(), step);
        }

        let applied: VClock = next.iter().map(|(o, s)| (*o, s - 1)).collect();
        mem.commit(&applied).unwrap();
        durable.as_mut().unwrap().commit(&applied).unwrap();
        let d = open_after(durable.take().unwrap(), tmp.path());
        assert_eq!(d.dump().unwrap(), mem.dump());
        for key in (0..20).map(|i| format!("k{i}")) {
            assert_eq!(d.siblings(&key).unwrap(), mem.siblings(&key).unwrap());
        }
        for origin in ORIGINS {
            assert_eq!(
                d.log_after(origin, 0, usize::MAX).unwrap(),
                mem.log_after(origin, 0, usize::MAX).unwrap()
            );
        }
        assert_eq!(d.log_len(), mem.log_len());
        assert_eq!(d.applied().unwrap(), mem.applied().unwrap());
        assert!(reopens > 0 || steps < 100);
    }

    /// Events appended since the last commit (they stay in memory).
    fn uncommitted(store: &DurableStore) -> usize {
        store.log.values().map(|log| log.unsaved).sum()
    }

    #[test]
    fn behaves_like_memstore() {
        for seed in 0..4 {
            compare_with_memstore(seed, 1500, DEFAULT_LOG_MEMORY_EVENTS);
        }
    }

    #[test]
    fn behaves_like_memstore_with_the_log_mostly_on_disk() {
        for (seed, log_memory) in [(10, 0), (11, 1), (12, 4), (13, 16)] {
            compare_with_memstore(seed, 1500, log_memory);
        }
    }

    #[test]
    fn the_log_in_memory_is_bounded_and_the_rest_read_from_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = open(tmp.path()).with_log_memory_events(10);
        let events: Vec<_> = (1..=50).map(|i| event("a", i, "k", "0")).collect();
        for group in events.chunks(7) {
            for e in group {
                s.append(e.clone()).unwrap();
            }
            // Before the commit, the group is in memory whatever the bound.
            assert!(s.log_in_memory() >= group.len() as u64);
            s.commit(&clock(&[("a", group[group.len() - 1].seq)]))
                .unwrap();
            assert!(s.log_in_memory() <= 10, "{}", s.log_in_memory());
        }
        assert_eq!(s.log_len(), 50);
        assert_eq!(s.log_after("a", 0, usize::MAX).unwrap(), events);
        assert_eq!(s.log_after("a", 12, 5).unwrap(), events[12..17]);
        assert_eq!(s.log_after("a", 38, 4).unwrap(), events[38..42]);
        assert!(s.append(event("a", 52, "k", "0")).is_err(), "a gap");

        s.truncate("a", 20).unwrap();
        assert_eq!(s.log_len(), 30);
        assert_eq!(s.log_after("a", 0, 3).unwrap(), events[20..23]);
        s.commit(&clock(&[("a", 50)])).unwrap();
        drop(s);

        let mut s = open(tmp.path()).with_log_memory_events(10);
        assert_eq!(s.log_len(), 30);
        assert_eq!(s.log_in_memory(), 10);
        assert_eq!(s.log_after("a", 0, usize::MAX).unwrap(), events[20..]);
        s.truncate("a", 45).unwrap();
        assert_eq!(s.log_after("a", 0, usize::MAX).unwrap(), events[45..]);
        assert_eq!(s.log_len(), 5);
        s.append(event("a", 51, "k", "0")).unwrap();
    }

    /// With large values the bound in bytes is reached long before the count:
    /// memory holds what fits, the disk the rest, and the count of bytes
    /// follows every append, eviction and truncation.
    #[test]
    fn the_log_in_memory_is_bounded_in_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let big = format!("\"{}\"", "v".repeat(100 << 10));
        let bound = 450 << 10;
        let mut s = open(tmp.path()).with_log_memory_bytes(bound);
        let events: Vec<_> = (1..=40).map(|i| event("a", i, "k", &big)).collect();
        let size = events[0].size_bytes() as u64;
        for group in events.chunks(3) {
            for e in group {
                s.append(e.clone()).unwrap();
            }
            let held = s.log_in_memory_bytes();
            assert_eq!(held, s.log_in_memory() * size);
            s.commit(&clock(&[("a", group[group.len() - 1].seq)]))
                .unwrap();
            assert!(s.log_in_memory_bytes() <= bound as u64);

            let appended = group[group.len() - 1].seq;
            assert_eq!(s.log_in_memory(), appended.min(4), "as many as fit");
        }
        assert_eq!(s.log_after("a", 0, usize::MAX).unwrap(), events);
        // Reads bounded in bytes stop there, on disk and in memory alike; the
        // first event comes whatever its size.
        let mut mem = MemStore::new();
        for e in &events {
            mem.append(e.clone()).unwrap();
        }
        for (after, limit, bytes, want) in [
            (0, usize::MAX, 3 * size as usize, 0..3),
            (0, 2, usize::MAX, 0..2),
            (5, usize::MAX, 0, 5..6),
            (35, usize::MAX, 4 * size as usize + 1, 35..39),
            (38, usize::MAX, size as usize, 38..39),
            (40, 10, usize::MAX, 40..40),
        ] {
            let read = s.log_after_within("a", after, limit, bytes).unwrap();
            assert_eq!(
                read,
                events[want.clone()],
                "after {after}, {limit}, {bytes}"
            );
            let read = mem.log_after_within("a", after, limit, bytes).unwrap();
            assert_eq!(
                read, events[want],
                "in memory: after {after}, {limit}, {bytes}"
            );
        }
        s.truncate("a", 38).unwrap();
        assert_eq!(s.log_in_memory_bytes(), 2 * size);
        s.commit(&clock(&[("a", 40)])).unwrap();
        drop(s);

        let s = open(tmp.path()).with_log_memory_bytes(size as usize);
        assert_eq!(s.log_in_memory_bytes(), size);
        assert_eq!(s.log_after("a", 0, usize::MAX).unwrap(), events[38..]);
    }

    // The crash test: a child process commits groups in a loop and reports each
    // commit; the parent kills it with SIGKILL at a random moment and checks
    // the reopened store.

    const CHILD_ENV: &str = "KVNODE_CRASH_CHILD";
    const CHILD_DURABILITY_ENV: &str = "KVNODE_CRASH_DURABILITY";
    const CRASH_TEST: &str = "storage::durable::tests::kill_9_loses_no_committed_group";
    /// Events the child keeps in the log (older ones are truncated).
    const KEEP: Seq = 100;
    const KEYS: Seq = 37;

    fn group_size(g: u64) -> u64 {
        [1, 3, 8, 64, 17][(g % 5) as usize]
    }

    /// The group that ends at `seq`, if one does.
    fn group_ending_at(seq: Seq) -> Option<u64> {
        let (mut g, mut end) = (0, 0);
        while end < seq {
            g += 1;
            end += group_size(g);
        }
        (end == seq).then_some(g)
    }

    fn crash_event(seq: Seq) -> Arc<Event> {
        let key = format!("k{}", seq % KEYS);
        event(
            "a",
            seq,
            &key,
            &format!(r#"{{"seq":{seq},"pad":"{}"}}"#, "x".repeat(64)),
        )
    }

    /// Every 11th event deletes its key.
    fn crash_siblings(seq: Seq) -> Siblings {
        if !seq.is_multiple_of(11) {
            vec![crash_event(seq)]
        } else {
            Vec::new()
        }
    }

    fn crash_child(dir: &Path, durability: Durability) {
        // Keeps fewer events in memory than in the log, so that recovery
        // reads some from disk.
        let mut store = DurableStore::open(dir, durability)
            .unwrap()
            .with_log_memory_events(KEEP as usize / 3);
        let mut seq = store.applied().unwrap().get("a");
        let mut g = group_ending_at(seq).expect("applied ends a group");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            g += 1;
            for _ in 0..group_size(g) {
                seq += 1;
                let e = crash_event(seq);
                store.siblings(&e.key).unwrap();
                store.set_siblings(&e.key, crash_siblings(seq)).unwrap();
                store.append(e).unwrap();
            }
            store.truncate("a", seq.saturating_sub(KEEP)).unwrap();
            store.commit(&clock(&[("a", seq)])).unwrap();
            println!("committed {g} {seq}");
        }
    }

    /// Checks that the store holds exactly the state after some whole group
    /// `>= at_least`, and returns that group.
    fn check_crash_state(dir: &Path, at_least: u64) -> u64 {
        let store = open(dir).with_log_memory_events(7);
        let applied = store.applied().unwrap().get("a");
        let g = group_ending_at(applied)
            .unwrap_or_else(|| panic!("applied {applied} is in the middle of a group"));
        assert!(
            g >= at_least,
            "group {at_least} was reported committed, the store has {g}"
        );
        for k in 0..KEYS {
            let key = format!("k{k}");
            let last = (1..=applied).rev().find(|s| s % KEYS == k);
            let want = last.map(crash_siblings).unwrap_or_default();
            assert_eq!(
                store.siblings(&key).unwrap(),
                want,
                "key {key} at applied {applied}"
            );
        }
        let first = applied.saturating_sub(KEEP) + 1;
        let want: Vec<_> = (first..=applied).map(crash_event).collect();
        assert_eq!(store.log_after("a", 0, usize::MAX).unwrap(), want);
        assert_eq!(store.log_len(), want.len() as u64);
        g
    }

    #[test]
    fn kill_9_loses_no_committed_group() {
        if let Ok(dir) = std::env::var(CHILD_ENV) {
            let durability = match std::env::var(CHILD_DURABILITY_ENV).as_deref() {
                Ok("none") => Durability::None,
                _ => Durability::Fsync,
            };
            crash_child(Path::new(&dir), durability);
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = rand::rng();
        let mut last_group = 0;
        for round in 0..8 {
            let durability = if round % 3 == 2 { "none" } else { "fsync" };
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, tmp.path())
                .env(CHILD_DURABILITY_ENV, durability)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                let mut last = None;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix("committed ") {
                        let g: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                        if last.is_none() {
                            let _ = tx.send(());
                        }
                        last = Some(g);
                    }
                }
                last
            });
            if round % 4 == 3 {
                // Kill it at a random moment, maybe while it opens (recovers).
                std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
            } else {
                // Kill it at a random moment once it commits.
                rx.recv_timeout(Duration::from_secs(20))
                    .expect("the child reports commits");
                std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
            }
            child.kill().unwrap();
            child.wait().unwrap();
            let reported = reader.join().unwrap().unwrap_or(last_group);
            let found = check_crash_state(tmp.path(), reported);
            assert!(found >= last_group);
            eprintln!(
                "round {round} ({durability}): last reported group {reported}, recovered group {found}"
            );
            last_group = found;
        }
    }
}
