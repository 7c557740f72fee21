//! The checks: what a causally consistent store must never show.
//!
//! Every write of a run writes a unique value, so each read tells which write it
//! reads from. Two orders are used:
//!
//! - **The client-observed causal order** (CO), built without trusting the
//!   store: session order (each session's operations, one after another) and
//!   reads-from (a write precedes every read that returns its value), closed
//!   transitively. A cycle in it is a violation by itself.
//! - **The store's timestamps**: each acknowledged write's timestamp and each
//!   read's clock. They say what the node had applied when it answered.
//!
//! Checks, after the bad patterns of Bouajjani et al. ("On verifying causal
//! consistency", POPL 2017) adapted to a store with siblings:
//!
//! - `thin_air`: a read (or a node's final state) shows a value nobody wrote,
//!   or wrote to another key; `failed_write_visible`: a value whose write was
//!   refused.
//! - `cyclic_causality`: CO has a cycle.
//! - `stale_read` (WriteCORead): a read returns a value although a write to the
//!   same key that overwrote it (in CO) is in the read's causal past, next to
//!   a value that is not older than that write (when every value shown is
//!   older, the read is named by the guarantee below that it breaks).
//! - `read_your_writes`, `monotonic_reads`, `causal_read`: a read does not show a
//!   write of its causal past (the session's own, one it read before, or one it
//!   depends on through others): every returned value is strictly older than it,
//!   or the key reads as absent (WriteCOInitRead).
//! - `write_ignores_context` (monotonic writes, writes-follow-reads): an
//!   acknowledged write's timestamp does not cover the context it was sent with;
//!   `read_ignores_context`: a read that was sent a context (native API)
//!   answered with a clock that does not cover it.
//! - `clock_without_value`, `value_without_clock`: a read's clock counts a write
//!   that overwrote the value shown (with the native API, any sibling shown),
//!   or, with the native API, an acknowledged write that the read neither shows
//!   nor shows a write that overwrote; or the read shows a value its clock does
//!   not count.
//! - `overwritten_sibling`: two siblings of one read where one saw the other,
//!   or a node that keeps, after quiescence, a value an acknowledged write
//!   overwrote.
//! - Snapshot reads (`POST /v1/txn/read`, recorded as one read per key,
//!   unordered among themselves): each of their reads is checked as any read,
//!   and together they must form one causally consistent cut.
//!   `snapshot_not_closed`: the snapshot shows for one key a write `wA` and for
//!   another key nothing, or only values older than a write `wB` of that key
//!   that happened before `wA` (in CO or by their timestamps);
//!   `snapshot_clocks_differ`: its reads carry different clocks.
//! - Atomic writes (`POST /v1/txn/write`, recorded as one write per key,
//!   unordered among themselves, sharing one timestamp): reading any of a
//!   transaction's writes puts all of them in the reader's causal past, so
//!   the checks above apply to every key it wrote. `fractured_read`: a read
//!   or a snapshot shows part of a transaction, and for another key it wrote
//!   nothing, or only values older than its write there (a read after one
//!   that showed part of it in the same session, or a snapshot showing part
//!   of it).
//! - After quiescence: `lost_write` (an acknowledged write neither present nor
//!   overwritten on some node), `divergence` (nodes disagree on clocks or
//!   siblings).
//!
//! With the compatibility API reads carry no context, so a node may lag behind
//! a session without breaking any promise. The read checks then apply only to
//! reads whose clock covers the session's context: the node claimed to have
//! applied everything the session had seen. A history may mix the APIs: each
//! operation is checked by the API it went through ([`Op::api_in`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use vclock_proto::{Causality, VClock};

use super::history::{Api, FinalSibling, History, Op, OpKind, Outcome};

/// One violation, with the operations that make it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Its kind, e.g. `stale_read`.
    pub kind: String,
    /// What happened, for people.
    pub message: String,
    /// The operations involved (ids in the history).
    pub ops: Vec<usize>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// What the checker found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Reads the session checks applied to.
    pub reads_checked: usize,
    /// Snapshot reads checked for being one causally consistent cut.
    #[serde(default)]
    pub snapshots_checked: usize,
    /// Atomic writes of several keys in the history, each checked for being
    /// seen whole.
    #[serde(default)]
    pub atomic_writes: usize,
    /// Whether the final states agree (None when there are none).
    pub converged: Option<bool>,
}

/// A set of op ids.
#[derive(Clone, Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn with_len(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn union(&mut self, other: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
}

struct Index<'a> {
    history: &'a History,
    /// value -> the write that wrote it.
    writer: HashMap<&'a str, usize>,
    /// key -> its acknowledged writes (ordered, so that reports are the same
    /// on every replay).
    acked_writes: BTreeMap<&'a str, Vec<usize>>,
    /// A transaction's first write -> all of its writes.
    txns: HashMap<usize, Vec<usize>>,
}

impl<'a> Index<'a> {
    fn new(history: &'a History) -> Self {
        let mut writer = HashMap::new();
        let mut acked_writes: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut txns: HashMap<usize, Vec<usize>> = HashMap::new();
        for op in &history.ops {
            if let OpKind::Write { value, .. } = &op.kind {
                if let Some(first) = op.txn {
                    txns.entry(first).or_default().push(op.id);
                }
                writer.insert(value.as_str(), op.id);
                if op.outcome == Outcome::Ok {
                    acked_writes.entry(op.key.as_str()).or_default().push(op.id);
                }
            }
        }
        Self {
            history,
            writer,
            acked_writes,
            txns,
        }
    }

    /// The writes of `w`'s transaction other than `w` (none for a single write).
    fn txn_mates(&self, w: usize) -> impl Iterator<Item = usize> + '_ {
        let members = self.op(w).txn.and_then(|first| self.txns.get(&first));
        members
            .into_iter()
            .flatten()
            .copied()
            .filter(move |&m| m != w)
    }

    fn op(&self, id: usize) -> &'a Op {
        &self.history.ops[id]
    }

    fn timestamp(&self, id: usize) -> Option<&'a VClock> {
        match &self.op(id).kind {
            OpKind::Write { timestamp, .. } => timestamp.as_ref(),
            OpKind::Read { .. } => None,
        }
    }

    fn value(&self, id: usize) -> &'a str {
        match &self.op(id).kind {
            OpKind::Write { value, .. } => value,
            OpKind::Read { .. } => "",
        }
    }

    /// What a read that showed the values of `sources` showed, for people:
    /// `"v1" (#3), "v2" (#5)`, or `nothing`.
    fn shown(&self, sources: &[usize]) -> String {
        if sources.is_empty() {
            return "nothing".to_owned();
        }
        sources
            .iter()
            .map(|&s| format!("{:?} (#{s})", self.value(s)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True when a read that showed the values of `sources` (none: the key
    /// is absent) shows nothing as new as write `w`: every value is older
    /// than `w`, in CO (`past`) or by the timestamps.
    fn all_older(&self, past: &[Option<Bits>], sources: &[usize], w: usize) -> bool {
        let co_before = |a: usize, b: usize| past[b].as_ref().is_some_and(|p| p.contains(a));
        sources
            .iter()
            .all(|&s| s != w && (co_before(s, w) || self.ts_before(s, w)))
    }

    /// True when write `a` is strictly before write `b` by their timestamps.
    fn ts_before(&self, a: usize, b: usize) -> bool {
        match (self.timestamp(a), self.timestamp(b)) {
            (Some(x), Some(y)) => x.compare(y) == Causality::Before,
            _ => false,
        }
    }
}

/// Checks a history.
pub fn check(history: &History) -> Report {
    let index = Index::new(history);
    let mut report = Report::default();
    let v = &mut report.violations;
    let ops = &history.ops;

    // Reads-from, thin air, refused writes made visible.
    let mut reads_from: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
    for op in ops {
        let OpKind::Read { values, .. } = &op.kind else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        for value in values.iter().flatten() {
            match index.writer.get(value.as_str()) {
                None => v.push(Violation {
                    kind: "thin_air".into(),
                    message: format!(
                        "read #{} of {} at {} returned {value:?}, which nobody wrote",
                        op.id, op.key, op.node
                    ),
                    ops: vec![op.id],
                }),
                Some(&w) if index.op(w).key != op.key => v.push(Violation {
                    kind: "thin_air".into(),
                    message: format!(
                        "read #{} of {} returned {value:?}, written to {} by #{w}",
                        op.id,
                        op.key,
                        index.op(w).key
                    ),
                    ops: vec![w, op.id],
                }),
                Some(&w) => {
                    if index.op(w).outcome == Outcome::Failed {
                        v.push(Violation {
                            kind: "failed_write_visible".into(),
                            message: format!(
                                "read #{} returned {value:?}, whose write #{w} was refused",
                                op.id
                            ),
                            ops: vec![w, op.id],
                        });
                    }
                    reads_from[op.id].push(w);
                }
            }
        }
    }

    // The causal past of every operation (CO), with cycle detection.
    let past = causal_past(&index, &reads_from, v);

    // Writes: the timestamp covers the context.
    for op in ops {
        if let OpKind::Write {
            timestamp: Some(ts),
            value,
        } = &op.kind
        {
            if !ts.covers(&op.context) {
                let missing: Vec<String> = ts.missing(&op.context).map(|m| m.to_string()).collect();
                v.push(Violation {
                    kind: "write_ignores_context".into(),
                    message: format!(
                        "write #{} of {value:?} at {} got timestamp {ts}, which lacks {} of its context",
                        op.id,
                        op.node,
                        missing.join(", ")
                    ),
                    ops: vec![op.id],
                });
            }
        }
    }

    // Reads.
    for op in ops {
        let OpKind::Read { values, clock } = &op.kind else {
            continue;
        };
        if op.outcome != Outcome::Ok {
            continue;
        }
        let sources = &reads_from[op.id];
        let api = op.api_in(history);
        check_read_clock(&index, op, api, sources, clock.as_ref(), v);
        let promised = match api {
            Api::Native => true,
            Api::Compat => clock.as_ref().is_some_and(|c| c.covers(&op.context)),
        };
        if !promised {
            continue;
        }
        report.reads_checked += 1;
        let Some(read_past) = past[op.id].as_ref() else {
            continue;
        };
        let co_before = |a: usize, b: usize| past[b].as_ref().is_some_and(|p| p.contains(a));
        let shows_absent = values.iter().all(Option::is_none);
        for &w in index
            .acked_writes
            .get(op.key.as_str())
            .into_iter()
            .flatten()
        {
            if !read_past.contains(w) || sources.contains(&w) {
                continue;
            }
            // w is in the read's causal past: the read must show w or a value
            // that is not older than w.
            let all_older = !sources.is_empty() && index.all_older(&past, sources, w);
            if shows_absent || all_older {
                // A session guarantee is broken; name it by how w came into
                // the read's past.
                let read_before = |ws: &mut dyn Iterator<Item = usize>| {
                    let ws: Vec<usize> = ws.collect();
                    ops[..op.id].iter().any(|o| {
                        o.session == op.session
                            && (o.snapshot.is_none() || o.snapshot != op.snapshot)
                            && reads_from[o.id].iter().any(|r| ws.contains(r))
                    })
                };
                let kind = if index.op(w).session == op.session {
                    "read_your_writes"
                } else if read_before(&mut std::iter::once(w)) {
                    "monotonic_reads"
                } else if read_before(&mut index.txn_mates(w)) {
                    "fractured_read"
                } else {
                    "causal_read"
                };
                let shown = index.shown(sources);
                let mut involved = vec![w, op.id];
                involved.extend(sources);
                v.push(Violation {
                    kind: kind.into(),
                    message: format!(
                        "read #{} of {} at {} (session {}) showed {shown}, but write #{w} of {:?} is in its causal past",
                        op.id,
                        op.key,
                        op.node,
                        op.session,
                        index.value(w)
                    ),
                    ops: involved,
                });
            } else {
                // Stale read: a returned value was overwritten (in CO) by w,
                // which is in the read's causal past, next to a value that is
                // not older than w. (When every value shown is older, the
                // violation is the session guarantee above: one violation per
                // read and write, not two.)
                for &s in sources {
                    if co_before(s, w) {
                        v.push(Violation {
                            kind: "stale_read".into(),
                            message: format!(
                                "read #{} of {} at {} returned {:?} (#{s}), overwritten by #{w} ({:?}) in the read's causal past",
                                op.id,
                                op.key,
                                op.node,
                                index.value(s),
                                index.value(w)
                            ),
                            ops: vec![s, w, op.id],
                        });
                    }
                }
            }
        }
        // Siblings of one read must be concurrent.
        if api == Api::Native {
            for &a in sources {
                for &b in sources {
                    if a != b && index.ts_before(a, b) {
                        v.push(Violation {
                            kind: "overwritten_sibling".into(),
                            message: format!(
                                "read #{} of {} returned both #{a} and #{b}, which overwrote it",
                                op.id, op.key
                            ),
                            ops: vec![a, b, op.id],
                        });
                    }
                }
            }
        }
    }

    report.snapshots_checked = check_snapshots(&index, &reads_from, &past, v);
    report.atomic_writes = index.txns.len();

    if !history.final_states.is_empty() {
        report.converged = Some(check_final(&index, v));
    }
    dedup(v);
    report
}

/// A read's clock against its context and the values it shows.
fn check_read_clock(
    index: &Index<'_>,
    op: &Op,
    api: Api,
    sources: &[usize],
    clock: Option<&VClock>,
    v: &mut Vec<Violation>,
) {
    let Some(clock) = clock else {
        return;
    };
    // A node waits until it has applied the context it is sent.
    if api == Api::Native && !clock.covers(&op.context) {
        let missing: Vec<String> = clock.missing(&op.context).map(|m| m.to_string()).collect();
        v.push(Violation {
            kind: "read_ignores_context".into(),
            message: format!(
                "read #{} of {} at {} answered with clock {clock}, which lacks {} of its context",
                op.id,
                op.key,
                op.node,
                missing.join(", ")
            ),
            ops: vec![op.id],
        });
    }
    for &s in sources {
        if let Some(ts) = index.timestamp(s) {
            if !clock.covers(ts) {
                v.push(Violation {
                    kind: "value_without_clock".into(),
                    message: format!(
                        "read #{} at {} showed {:?} (#{s}, timestamp {ts}) with clock {clock}, which does not count it",
                        op.id,
                        op.node,
                        index.value(s)
                    ),
                    ops: vec![s, op.id],
                });
            }
        }
    }
    // As in the session checks: a value nobody wrote (thin air, reported on
    // its own) is not an absent key.
    let shows_absent = match &op.kind {
        OpKind::Read { values, .. } => values.iter().all(Option::is_none),
        OpKind::Write { .. } => false,
    };
    // Every value shown is a write of the key with a known timestamp: what
    // the read shows can be compared with every write its clock counts.
    let shown = match &op.kind {
        OpKind::Read { values, .. } => values.iter().flatten().count(),
        OpKind::Write { .. } => 0,
    };
    let all_known = sources.len() == shown && sources.iter().all(|&s| index.timestamp(s).is_some());
    for &w in index
        .acked_writes
        .get(op.key.as_str())
        .into_iter()
        .flatten()
    {
        let Some(ts_w) = index.timestamp(w) else {
            continue;
        };
        if !clock.covers(ts_w) || sources.contains(&w) {
            continue;
        }
        // The node has applied w: a value shown is w or a write that
        // overwrote it. The compatibility API shows one of the siblings, so
        // there a shown value only must not be one that w overwrote; the
        // native API shows them all, so none may be, and w must be covered.
        let covered = sources.iter().any(|&s| index.ts_before(w, s));
        let older = sources.iter().any(|&s| index.ts_before(s, w));
        let hidden = api == Api::Native && all_known;
        if !covered && (shows_absent || older || hidden) {
            let shown = if shows_absent {
                "nothing".to_owned()
            } else {
                let shown = sources
                    .iter()
                    .map(|s| format!("#{s}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                if older {
                    format!("values it overwrote ({shown})")
                } else {
                    format!("neither it nor a write that overwrote it ({shown})")
                }
            };
            v.push(Violation {
                kind: "clock_without_value".into(),
                message: format!(
                    "read #{} of {} at {} has clock {clock}, which counts write #{w} ({:?}, {ts_w}), yet showed {shown}",
                    op.id,
                    op.key,
                    op.node,
                    index.value(w),
                ),
                ops: vec![w, op.id],
            });
        }
    }
}

/// Checks every snapshot read (the answered reads that share an
/// [`Op::snapshot`]) as one cut: its reads carry one clock, and it is causally
/// closed. Returns how many snapshots were checked.
fn check_snapshots(
    index: &Index<'_>,
    reads_from: &[Vec<usize>],
    past: &[Option<Bits>],
    v: &mut Vec<Violation>,
) -> usize {
    let mut snapshots: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in &index.history.ops {
        if let (Some(first), Outcome::Ok, OpKind::Read { .. }) = (op.snapshot, op.outcome, &op.kind)
        {
            snapshots.entry(first).or_default().push(op);
        }
    }
    let precedes = |a: usize, b: usize| {
        past[b].as_ref().is_some_and(|p| p.contains(a)) || index.ts_before(a, b)
    };
    for (&first, reads) in &snapshots {
        let clock = |op: &Op| match &op.kind {
            OpKind::Read { clock, .. } => clock.clone().unwrap_or_default(),
            OpKind::Write { .. } => VClock::new(),
        };
        let first_clock = clock(reads[0]);
        for read in &reads[1..] {
            let other = clock(read);
            if other.compare(&first_clock) != Causality::Equal {
                v.push(Violation {
                    kind: "snapshot_clocks_differ".into(),
                    message: format!(
                        "snapshot #{first} at {}: its read #{} of {} has clock {first_clock}, its read #{} of {} has {other}",
                        reads[0].node, reads[0].id, reads[0].key, read.id, read.key
                    ),
                    ops: vec![reads[0].id, read.id],
                });
            }
        }
        // Causally closed: for every write wA shown, every write wB to
        // another key of the snapshot that happened before wA is shown too,
        // or a value not older than it. (A wB in that read's own causal past
        // is the read's own violation, found above.)
        for a in reads {
            for b in reads {
                if a.key == b.key {
                    continue;
                }
                let shown_b = &reads_from[b.id];
                let in_own_past = |w: usize| past[b.id].as_ref().is_none_or(|p| p.contains(w));
                for &wa in &reads_from[a.id] {
                    for &wb in index.acked_writes.get(b.key.as_str()).into_iter().flatten() {
                        let fractured = index.txn_mates(wa).any(|m| m == wb);
                        if !(fractured || precedes(wb, wa))
                            || shown_b.contains(&wb)
                            || in_own_past(wb)
                            || !index.all_older(past, shown_b, wb)
                        {
                            continue;
                        }
                        let shown = index.shown(shown_b);
                        let stamp = |w: usize| {
                            index
                                .timestamp(w)
                                .map_or_else(|| "no timestamp".to_owned(), |ts| ts.to_string())
                        };
                        let mut involved = vec![wb, wa, a.id, b.id];
                        involved.extend(shown_b);
                        if fractured {
                            v.push(Violation {
                                kind: "fractured_read".into(),
                                message: format!(
                                    "snapshot #{first} at {} showed {:?} (#{wa}) for {} but {shown} for {}, although the same atomic write wrote {:?} (#{wb}) to {}",
                                    a.node,
                                    index.value(wa),
                                    a.key,
                                    b.key,
                                    index.value(wb),
                                    b.key,
                                ),
                                ops: involved,
                            });
                            continue;
                        }
                        v.push(Violation {
                            kind: "snapshot_not_closed".into(),
                            message: format!(
                                "snapshot #{first} at {} showed {:?} (#{wa}, {}) for {} but {shown} for {}, although write #{wb} of {:?} ({}) to {} happened before #{wa}",
                                a.node,
                                index.value(wa),
                                stamp(wa),
                                a.key,
                                b.key,
                                index.value(wb),
                                stamp(wb),
                                b.key,
                            ),
                            ops: involved,
                        });
                    }
                }
            }
        }
    }
    snapshots.len()
}

/// The causal past (CO) of every operation; `None` for operations on a cycle.
fn causal_past(
    index: &Index<'_>,
    reads_from: &[Vec<usize>],
    v: &mut Vec<Violation>,
) -> Vec<Option<Bits>> {
    let ops = &index.history.ops;
    let n = ops.len();
    // Predecessors: the previous answered op of the session, and the writes
    // read from. An op without an answer may take effect at any time, and the
    // session goes on without knowing it did (its next context lacks it): as
    // Jepsen takes such a process as crashed, nothing later in the session
    // follows it, only what came before it. The reads of one snapshot, and
    // the writes of one transaction, are not ordered among themselves: each
    // follows what came before the group, and what comes after follows them
    // all. A read of one write of a transaction follows all of its writes.
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    #[derive(Default)]
    struct Tail {
        /// What the session's next op follows.
        last: Vec<usize>,
        /// What the current snapshot's reads (or transaction's writes)
        /// follow, and its id.
        before: Vec<usize>,
        snapshot: Option<usize>,
    }
    let mut tails: HashMap<usize, Tail> = HashMap::new();
    for op in ops {
        let tail = tails.entry(op.session).or_default();
        let group = op.snapshot.or(op.txn);
        let same_snapshot = group.is_some() && group == tail.snapshot;
        if !same_snapshot {
            tail.before = tail.last.clone();
        }
        tail.snapshot = group;
        preds[op.id].extend(&tail.before);
        if op.outcome != Outcome::Unknown {
            if !same_snapshot {
                tail.last.clear();
            }
            tail.last.push(op.id);
        }
        for &w in &reads_from[op.id] {
            preds[op.id].push(w);
            preds[op.id].extend(index.txn_mates(w));
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        New,
        Open,
        Done,
    }
    let mut state = vec![State::New; n];
    let mut past: Vec<Option<Bits>> = vec![None; n];
    let mut reported_cycle = false;
    for root in 0..n {
        if state[root] != State::New {
            continue;
        }
        // Iterative DFS: (node, next predecessor index).
        let mut stack = vec![(root, 0usize)];
        state[root] = State::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if *next < preds[node].len() {
                let p = preds[node][*next];
                *next += 1;
                match state[p] {
                    State::New => {
                        state[p] = State::Open;
                        stack.push((p, 0));
                    }
                    State::Open => {
                        if !reported_cycle {
                            reported_cycle = true;
                            // The stack goes from an op to its
                            // predecessors: reversed, it is in causal order,
                            // from `node` to p, and p precedes `node`.
                            let mut cycle: Vec<usize> = stack
                                .iter()
                                .map(|&(o, _)| o)
                                .skip_while(|&o| o != p)
                                .collect();
                            cycle.reverse();
                            v.push(Violation {
                                kind: "cyclic_causality".into(),
                                message: format!(
                                    "operations {} each causally precede the next, and the last precedes the first",
                                    cycle.iter().map(|o| format!("#{o}")).collect::<Vec<_>>().join(" -> ")
                                ),
                                ops: cycle,
                            });
                        }
                    }
                    State::Done => {}
                }
            } else {
                stack.pop();
                state[node] = State::Done;
                let mut bits = Bits::with_len(n);
                let mut complete = true;
                for &p in &preds[node] {
                    match &past[p] {
                        Some(pb) => {
                            bits.union(pb);
                            bits.insert(p);
                        }
                        None => complete = false,
                    }
                }
                past[node] = complete.then_some(bits);
            }
        }
    }
    past
}

fn check_final(index: &Index<'_>, v: &mut Vec<Violation>) -> bool {
    let states = &index.history.final_states;
    let mut converged = true;
    let first = &states[0];
    for state in &states[1..] {
        if state.applied != first.applied {
            converged = false;
            v.push(Violation {
                kind: "divergence".into(),
                message: format!(
                    "after quiescence {} has applied {} but {} has {}",
                    first.node, first.applied, state.node, state.applied
                ),
                ops: vec![],
            });
        }
        for key in &index.history.keys {
            let a = sibling_set(first.keys.get(key));
            let b = sibling_set(state.keys.get(key));
            if a != b {
                converged = false;
                v.push(Violation {
                    kind: "divergence".into(),
                    message: format!(
                        "after quiescence {key} has siblings [{}] at {} but [{}] at {}",
                        a.iter().cloned().collect::<Vec<_>>().join(", "),
                        first.node,
                        b.iter().cloned().collect::<Vec<_>>().join(", "),
                        state.node
                    ),
                    ops: vec![],
                });
            }
        }
    }
    for state in states {
        for (key, writes) in &index.acked_writes {
            let siblings = state.keys.get(*key).map(Vec::as_slice).unwrap_or_default();
            for &w in writes {
                let Some(ts_w) = index.timestamp(w) else {
                    continue;
                };
                let value = index.value(w);
                let kept = siblings.iter().any(|s| {
                    s.value.as_deref() == Some(value)
                        || ts_w.compare(&s.timestamp) == Causality::Before
                });
                if !kept {
                    v.push(Violation {
                        kind: "lost_write".into(),
                        message: format!(
                            "acknowledged write #{w} of {value:?} to {key} ({ts_w}) is neither present nor overwritten at {}",
                            state.node
                        ),
                        ops: vec![w],
                    });
                }
            }
        }
        // A value a node keeps must not be one that an acknowledged write,
        // which every node has applied by now, overwrote.
        for (key, writes) in &index.acked_writes {
            let siblings = state.keys.get(*key).map(Vec::as_slice).unwrap_or_default();
            for sibling in siblings {
                let Some(value) = sibling.value.as_deref() else {
                    continue;
                };
                if let Some(&w) = writes.iter().find(|&&w| {
                    index
                        .timestamp(w)
                        .is_some_and(|ts_w| sibling.timestamp.compare(ts_w) == Causality::Before)
                }) {
                    v.push(Violation {
                        kind: "overwritten_sibling".into(),
                        message: format!(
                            "after quiescence {} keeps {value:?} ({}) for {key}, which write #{w} ({:?}) overwrote",
                            state.node,
                            sibling.timestamp,
                            index.value(w)
                        ),
                        ops: vec![w],
                    });
                }
            }
        }
        // What every key holds (not only keys with acknowledged writes), as
        // the reads are checked: values nobody wrote, or wrote to another
        // key, or whose write was refused.
        for (key, siblings) in &state.keys {
            for value in siblings.iter().filter_map(|s| s.value.as_deref()) {
                match index.writer.get(value) {
                    None => v.push(Violation {
                        kind: "thin_air".into(),
                        message: format!(
                            "{} holds {value:?} for {key}, which nobody wrote",
                            state.node
                        ),
                        ops: vec![],
                    }),
                    Some(&w) if index.op(w).key != *key => v.push(Violation {
                        kind: "thin_air".into(),
                        message: format!(
                            "{} holds {value:?} for {key}, written to {} by #{w}",
                            state.node,
                            index.op(w).key
                        ),
                        ops: vec![w],
                    }),
                    Some(&w) if index.op(w).outcome == Outcome::Failed => v.push(Violation {
                        kind: "failed_write_visible".into(),
                        message: format!(
                            "{} holds {value:?} for {key}, whose write #{w} was refused",
                            state.node
                        ),
                        ops: vec![w],
                    }),
                    Some(_) => {}
                }
            }
        }
    }
    converged
}

/// A key's siblings at one node, as comparable text: `"value" {n1:1}`, or
/// `deleted {n1:2}`. Clocks are written without their zero entries, since
/// `{n1:1}` and `{n1:1,n2:0}` are the same clock (and compare equal as
/// applied clocks do); two tombstones stay two.
fn sibling_set(siblings: Option<&Vec<FinalSibling>>) -> BTreeSet<String> {
    siblings
        .into_iter()
        .flatten()
        .map(|s| {
            let ts: Vec<String> = s
                .timestamp
                .iter()
                .filter(|&(_, &seq)| seq > 0)
                .map(|(node, seq)| format!("{node}:{seq}"))
                .collect();
            match &s.value {
                Some(value) => format!("{value:?} {{{}}}", ts.join(",")),
                None => format!("deleted {{{}}}", ts.join(",")),
            }
        })
        .collect()
}

fn dedup(v: &mut Vec<Violation>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert((x.kind.clone(), x.ops.clone(), x.message.clone())));
}

#[cfg(test)]
mod tests {
    //! Hand-made histories: one (at least) for each kind of violation, which
    //! must be found and named, and valid ones, which must pass. Node ids
    //! double as the nodes' URLs.

    use super::*;
    use crate::check::history::FinalState;

    /// A clock from `(node, seq)` entries.
    fn vc(entries: &[(&str, u64)]) -> VClock {
        entries.iter().map(|&(n, s)| (n, s)).collect()
    }

    /// One key of a snapshot: the key, the values shown, the clock.
    type KeyRead<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, u64)]);

    /// Builds a history the way the workload records one: ids follow the
    /// calls, and each op's context is what its session had received before
    /// it (the merge of its acknowledged writes' timestamps and its reads'
    /// clocks). Every final state holds every key, as the workload reads
    /// every key at every node.
    struct HistoryBuilder {
        history: History,
        contexts: HashMap<usize, VClock>,
    }

    impl HistoryBuilder {
        fn native(nodes: &[&str]) -> Self {
            Self::new(Api::Native, nodes)
        }

        fn compat(nodes: &[&str]) -> Self {
            Self::new(Api::Compat, nodes)
        }

        fn new(api: Api, nodes: &[&str]) -> Self {
            Self {
                history: History {
                    api,
                    nodes: nodes.iter().map(|n| n.to_string()).collect(),
                    keys: Vec::new(),
                    ops: Vec::new(),
                    final_states: Vec::new(),
                    quiescent: false,
                },
                contexts: HashMap::new(),
            }
        }

        fn key(&mut self, key: &str) {
            if !self.history.keys.iter().any(|k| k == key) {
                self.history.keys.push(key.to_owned());
            }
        }

        fn op(
            mut self,
            session: usize,
            node: &str,
            key: &str,
            kind: OpKind,
            outcome: Outcome,
        ) -> Self {
            assert!(
                self.history.nodes.iter().any(|n| n == node),
                "unknown node {node}"
            );
            let id = self.history.ops.len();
            let context = self.contexts.entry(session).or_default();
            let sent = context.clone();
            if outcome == Outcome::Ok {
                match &kind {
                    OpKind::Write {
                        timestamp: Some(ts),
                        ..
                    } => context.merge(ts),
                    OpKind::Read {
                        clock: Some(clock), ..
                    } => context.merge(clock),
                    _ => {}
                }
            }
            self.key(key);
            self.history.ops.push(Op {
                id,
                session,
                node: node.to_owned(),
                key: key.to_owned(),
                kind,
                context: sent,
                api: None,
                snapshot: None,
                txn: None,
                outcome,
                invoked_ms: 2.0 * id as f64,
                completed_ms: 2.0 * id as f64 + 1.0,
                error: (outcome != Outcome::Ok).then(|| "made up".to_owned()),
            });
            self
        }

        /// An acknowledged write of `value`, which got timestamp `ts`.
        fn write(
            self,
            session: usize,
            node: &str,
            key: &str,
            value: &str,
            ts: &[(&str, u64)],
        ) -> Self {
            let kind = OpKind::Write {
                value: value.to_owned(),
                timestamp: Some(vc(ts)),
            };
            self.op(session, node, key, kind, Outcome::Ok)
        }

        /// A write the node refused.
        fn failed_write(self, session: usize, node: &str, key: &str, value: &str) -> Self {
            let kind = OpKind::Write {
                value: value.to_owned(),
                timestamp: None,
            };
            self.op(session, node, key, kind, Outcome::Failed)
        }

        /// A write without an answer.
        fn unknown_write(self, session: usize, node: &str, key: &str, value: &str) -> Self {
            let kind = OpKind::Write {
                value: value.to_owned(),
                timestamp: None,
            };
            self.op(session, node, key, kind, Outcome::Unknown)
        }

        /// A read that showed `values` (none: the key is absent; with the
        /// compatibility API at most one, absent is `null`) with `clock`.
        fn read(
            self,
            session: usize,
            node: &str,
            key: &str,
            values: &[&str],
            clock: &[(&str, u64)],
        ) -> Self {
            let mut values: Vec<Option<String>> =
                values.iter().map(|v| Some(v.to_string())).collect();
            if self.history.api == Api::Compat {
                assert!(values.len() <= 1, "a compat read shows one value");
                values.resize(1, None);
            }
            let kind = OpKind::Read {
                values,
                clock: Some(vc(clock)),
            };
            self.op(session, node, key, kind, Outcome::Ok)
        }

        /// A snapshot read at `node`, sent with the session's context: per
        /// key, the values shown and the clock that key's answer carried.
        fn snapshot(mut self, session: usize, node: &str, reads: &[KeyRead<'_>]) -> Self {
            let first = self.history.ops.len();
            let sent = self.contexts.entry(session).or_default().clone();
            for &(key, values, clock) in reads {
                self = self.read(session, node, key, values, clock);
                let op = self.history.ops.last_mut().expect("just pushed");
                op.snapshot = Some(first);
                op.context = sent.clone();
            }
            self
        }

        /// An acknowledged atomic write of `writes` (key, value) at `node`,
        /// sent with the session's context, which got timestamp `ts`.
        fn txn(
            mut self,
            session: usize,
            node: &str,
            writes: &[(&str, &str)],
            ts: &[(&str, u64)],
        ) -> Self {
            let first = self.history.ops.len();
            let sent = self.contexts.entry(session).or_default().clone();
            for &(key, value) in writes {
                self = self.write(session, node, key, value, ts);
                let op = self.history.ops.last_mut().expect("just pushed");
                op.txn = Some(first);
                op.context = sent.clone();
            }
            self
        }

        /// `node`'s state after quiescence: its applied clock (then `holds`).
        fn final_state(mut self, node: &str, applied: &[(&str, u64)]) -> Self {
            self.history.quiescent = true;
            self.history.final_states.push(FinalState {
                node: node.to_owned(),
                applied: vc(applied),
                keys: BTreeMap::new(),
            });
            self
        }

        /// In `node`'s final state, `key` has a sibling `value` stamped `ts`.
        fn holds(mut self, node: &str, key: &str, value: &str, ts: &[(&str, u64)]) -> Self {
            self.key(key);
            let state = self
                .history
                .final_states
                .iter_mut()
                .find(|s| s.node == node)
                .expect("final_state first");
            state
                .keys
                .entry(key.to_owned())
                .or_default()
                .push(FinalSibling {
                    value: Some(value.to_owned()),
                    timestamp: vc(ts),
                });
            self
        }

        fn build(mut self) -> History {
            for state in &mut self.history.final_states {
                for key in &self.history.keys {
                    state.keys.entry(key.clone()).or_default();
                }
            }
            self.history
        }

        fn check(self) -> Report {
            check(&self.build())
        }
    }

    /// Asserts that the report has `count` violations, all of `kind`, and
    /// returns them.
    #[track_caller]
    fn only<'r>(report: &'r Report, kind: &str, count: usize) -> Vec<&'r Violation> {
        let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(kinds, vec![kind; count], "{report:#?}");
        report.violations.iter().collect()
    }

    /// As [`only`], for native reads at a node that lagged behind the
    /// session: each read of the `kind` violations also answered without
    /// the context it was sent, which is reported on its own.
    #[track_caller]
    fn only_lagging<'r>(report: &'r Report, kind: &str, count: usize) -> Vec<&'r Violation> {
        let (ignored, rest): (Vec<&Violation>, Vec<&Violation>) = report
            .violations
            .iter()
            .partition(|v| v.kind == "read_ignores_context");
        let kinds: Vec<&str> = rest.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(kinds, vec![kind; count], "{report:#?}");
        let lagging: Vec<usize> = ignored.iter().map(|v| v.ops[0]).collect();
        assert!(!lagging.is_empty(), "{report:#?}");
        for read in &lagging {
            assert!(rest.iter().any(|v| v.ops.contains(read)), "{report:#?}");
        }
        for v in &rest {
            assert!(v.ops.iter().any(|o| lagging.contains(o)), "{report:#?}");
        }
        rest
    }

    #[track_caller]
    fn assert_valid(report: &Report) {
        assert!(report.violations.is_empty(), "{report:#?}");
        assert_ne!(report.converged, Some(false), "{report:#?}");
    }

    /// True when `a` directly precedes `b` in CO: session order, or `b` read
    /// the value `a` wrote.
    fn precedes(history: &History, a: usize, b: usize) -> bool {
        let (x, y) = (&history.ops[a], &history.ops[b]);
        let session_order = x.session == y.session && a < b;
        let reads_from = match (&x.kind, &y.kind) {
            (OpKind::Write { value, .. }, OpKind::Read { values, .. }) => {
                values.iter().flatten().any(|v| v == value)
            }
            _ => false,
        };
        session_order || reads_from
    }

    // ---- Each kind of violation ---------------------------------------------

    #[test]
    fn thin_air_value_nobody_wrote() {
        // The node has applied "a" (its clock counts it) but shows a value
        // nobody wrote: thin air, and nothing else (it did not show
        // "nothing", so this is no clock_without_value).
        let report = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .read(1, "n1", "k", &["ghost"], &[("n1", 1)])
            .check();
        let v = only(&report, "thin_air", 1);
        assert_eq!(v[0].ops, vec![1]);
        assert!(v[0].message.contains("\"ghost\""), "{}", v[0].message);
    }

    #[test]
    fn thin_air_value_of_another_key() {
        let report = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "k1", "a", &[("n1", 1)])
            .read(1, "n1", "k2", &["a"], &[("n1", 1)])
            .check();
        let v = only(&report, "thin_air", 1);
        assert_eq!(v[0].ops, vec![0, 1]);
    }

    #[test]
    fn thin_air_in_a_final_state() {
        // k2 has no acknowledged write at all: its final values are checked
        // all the same.
        let report = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "k1", "a", &[("n1", 1)])
            .final_state("n1", &[("n1", 2)])
            .holds("n1", "k1", "a", &[("n1", 1)])
            .holds("n1", "k2", "ghost", &[("n1", 2)])
            .check();
        let v = only(&report, "thin_air", 1);
        assert!(
            v[0].message.contains("\"ghost\" for k2"),
            "{}",
            v[0].message
        );
        assert_eq!(report.converged, Some(true));
    }

    #[test]
    fn failed_write_visible_in_a_read() {
        let report = HistoryBuilder::native(&["n1", "n2"])
            .failed_write(0, "n1", "k", "a")
            .read(1, "n2", "k", &["a"], &[])
            .check();
        let v = only(&report, "failed_write_visible", 1);
        assert_eq!(v[0].ops, vec![0, 1]);
    }

    #[test]
    fn failed_write_visible_in_a_final_state() {
        let report = HistoryBuilder::native(&["n1"])
            .failed_write(0, "n1", "k", "a")
            .final_state("n1", &[("n1", 1)])
            .holds("n1", "k", "a", &[("n1", 1)])
            .check();
        let v = only(&report, "failed_write_visible", 1);
        assert_eq!(v[0].ops, vec![0]);
    }

    #[test]
    fn cyclic_causality() {
        // Each session reads the value the other writes after its read:
        // #0 -> #2 (session 0), #2 -> #1 (read "a"), #1 -> #3 (session 1),
        // #3 -> #0 (read "b"). The clocks are consistent with one another, so
        // the cycle is the only finding.
        let both = [("n1", 1), ("n2", 1)];
        let history = HistoryBuilder::native(&["n1", "n2"])
            .read(0, "n2", "k2", &["b"], &both)
            .read(1, "n1", "k1", &["a"], &both)
            .write(0, "n1", "k1", "a", &both)
            .write(1, "n2", "k2", "b", &both)
            .build();
        let report = check(&history);
        let v = only(&report, "cyclic_causality", 1);
        let cycle = &v[0].ops;
        let mut sorted = cycle.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2, 3]);
        // Listed in causal order: each precedes the next, the last the first.
        for (i, &a) in cycle.iter().enumerate() {
            let b = cycle[(i + 1) % cycle.len()];
            assert!(
                precedes(&history, a, b),
                "#{a} does not precede #{b}: {}",
                v[0].message
            );
        }
    }

    #[test]
    fn stale_read() {
        // Session 0 overwrites "a" with "b", then reads "a" again next to a
        // concurrent "c": "c" is as new as "b", so no session guarantee is
        // broken as a whole, but "a" should have been overwritten.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .write(1, "n2", "k", "c", &[("n2", 1)])
            .read(0, "n2", "k", &["a", "c"], &[("n1", 1), ("n2", 1)])
            .check();
        let v = only_lagging(&report, "stale_read", 1);
        assert_eq!(v[0].ops, vec![0, 1, 3]);
    }

    #[test]
    fn read_your_writes_absent() {
        // With the native API the read carries the session's context: a node
        // that has not applied the session's write must not answer.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .read(0, "n2", "k", &[], &[])
            .check();
        let v = only_lagging(&report, "read_your_writes", 1);
        assert_eq!(v[0].ops, vec![0, 1]);
        assert_eq!(report.reads_checked, 1);
    }

    #[test]
    fn read_your_writes_older_value() {
        // Session 0 wrote "a" then "b" and reads "a": one violation, named
        // by the guarantee, not also reported as a stale read.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .read(0, "n2", "k", &["a"], &[("n1", 1)])
            .check();
        let v = only_lagging(&report, "read_your_writes", 1);
        assert_eq!(v[0].ops, vec![1, 2, 0]);
    }

    #[test]
    fn monotonic_reads_absent() {
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .read(1, "n1", "k", &["a"], &[("n1", 1)])
            .read(1, "n2", "k", &[], &[])
            .check();
        let v = only_lagging(&report, "monotonic_reads", 1);
        assert_eq!(v[0].ops, vec![0, 2]);
    }

    #[test]
    fn monotonic_reads_older_value() {
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .read(1, "n1", "k", &["b"], &[("n1", 2)])
            .read(1, "n2", "k", &["a"], &[("n1", 1)])
            .check();
        let v = only_lagging(&report, "monotonic_reads", 1);
        assert_eq!(v[0].ops, vec![1, 3, 0]);
    }

    #[test]
    fn causal_read() {
        // Session 0 writes x then y; session 1 reads y, so x is in its causal
        // past, then reads x as absent at a node that lags.
        let report = HistoryBuilder::native(&["n1", "n2", "n3"])
            .write(0, "n1", "x", "a", &[("n1", 1)])
            .write(0, "n1", "y", "b", &[("n1", 2)])
            .read(1, "n2", "y", &["b"], &[("n1", 2)])
            .read(1, "n3", "x", &[], &[])
            .check();
        let v = only_lagging(&report, "causal_read", 1);
        assert_eq!(v[0].ops, vec![0, 3]);
    }

    #[test]
    fn write_ignores_context_monotonic_writes() {
        // The second write was sent with the first's timestamp as context,
        // yet its timestamp does not count the first.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n2", "k", "b", &[("n2", 1)])
            .check();
        let v = only(&report, "write_ignores_context", 1);
        assert_eq!(v[0].ops, vec![1]);
        assert!(
            v[0].message.contains("n1 (have 0, need 1)"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn write_ignores_context_writes_follow_reads() {
        let report = HistoryBuilder::compat(&["n1", "n2"])
            .write(0, "n1", "x", "a", &[("n1", 1)])
            .read(1, "n1", "x", &["a"], &[("n1", 1)])
            .write(1, "n2", "y", "b", &[("n2", 1)])
            .check();
        let v = only(&report, "write_ignores_context", 1);
        assert_eq!(v[0].ops, vec![2]);
    }

    #[test]
    fn clock_without_value_absent() {
        // The read's session knows nothing, but the node's clock counts "a".
        let report = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .read(1, "n1", "k", &[], &[("n1", 1)])
            .check();
        let v = only(&report, "clock_without_value", 1);
        assert_eq!(v[0].ops, vec![0, 1]);
    }

    #[test]
    fn clock_without_value_overwritten() {
        let report = HistoryBuilder::compat(&["n1"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .read(1, "n1", "k", &["a"], &[("n1", 2)])
            .check();
        let v = only(&report, "clock_without_value", 1);
        assert_eq!(v[0].ops, vec![1, 2]);
    }

    #[test]
    fn value_without_clock() {
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .read(1, "n2", "k", &["a"], &[])
            .check();
        let v = only(&report, "value_without_clock", 1);
        assert_eq!(v[0].ops, vec![0, 1]);
    }

    #[test]
    fn overwritten_sibling() {
        let report = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .read(1, "n1", "k", &["a", "b"], &[("n1", 2)])
            .check();
        let v = only(&report, "overwritten_sibling", 1);
        assert_eq!(v[0].ops, vec![0, 1, 2]);
    }

    #[test]
    fn lost_write() {
        let report = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .final_state("n1", &[("n1", 1)])
            .check();
        let v = only(&report, "lost_write", 1);
        assert_eq!(v[0].ops, vec![0]);
        assert_eq!(report.converged, Some(true));
    }

    #[test]
    fn lost_write_replaced_by_a_concurrent_one() {
        // "b" is concurrent with "a": it does not overwrite it. Both nodes
        // agree, and both lost "a".
        let both = [("n1", 1), ("n2", 1)];
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(1, "n2", "k", "b", &[("n2", 1)])
            .final_state("n1", &both)
            .holds("n1", "k", "b", &[("n2", 1)])
            .final_state("n2", &both)
            .holds("n2", "k", "b", &[("n2", 1)])
            .check();
        let v = only(&report, "lost_write", 2);
        assert!(v.iter().all(|v| v.ops == [0]));
    }

    #[test]
    fn divergence_of_clocks() {
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .final_state("n1", &[("n1", 1)])
            .holds("n1", "k", "a", &[("n1", 1)])
            .final_state("n2", &[("n1", 1), ("n2", 1)])
            .holds("n2", "k", "a", &[("n1", 1)])
            .check();
        only(&report, "divergence", 1);
        assert_eq!(report.converged, Some(false));
    }

    #[test]
    fn divergence_of_siblings() {
        // Same clocks, but n2 still holds "a" next to "b", which overwrote it:
        // the nodes disagree, and n2 keeps an overwritten value.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .final_state("n1", &[("n1", 2)])
            .holds("n1", "k", "b", &[("n1", 2)])
            .final_state("n2", &[("n1", 2)])
            .holds("n2", "k", "a", &[("n1", 1)])
            .holds("n2", "k", "b", &[("n1", 2)])
            .check();
        let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(kinds, ["divergence", "overwritten_sibling"], "{report:#?}");
        let v = &report.violations;
        assert!(v[0].message.contains("k has siblings"), "{}", v[0].message);
        assert!(v[1].message.contains("n2 keeps \"a\""), "{}", v[1].message);
        assert_eq!(v[1].ops, vec![1]);
        assert_eq!(report.converged, Some(false));
    }

    #[test]
    fn read_ignores_context() {
        // Session 0 read "a" at n1, so n1:1 is in its context; n2 answers
        // its next read (of another key, with nothing to show) without it.
        let history = || {
            HistoryBuilder::native(&["n1", "n2"])
                .write(1, "n1", "x", "a", &[("n1", 1)])
                .read(0, "n1", "x", &["a"], &[("n1", 1)])
                .read(0, "n2", "k", &[], &[])
        };
        let report = history().check();
        let v = only(&report, "read_ignores_context", 1);
        assert_eq!(v[0].ops, vec![2]);
        assert!(
            v[0].message.contains("n1 (have 0, need 1)"),
            "{}",
            v[0].message
        );

        // Through the compatibility API the read carries no context.
        let mut compat = history().build();
        compat.ops[2].api = Some(Api::Compat);
        let report = check(&compat);
        assert_valid(&report);
        assert_eq!(report.reads_checked, 1);
    }

    #[test]
    fn clock_without_value_hidden_sibling() {
        // n3 has applied both concurrent writes but shows only one: with the
        // native API every sibling must show. The compatibility API shows
        // one, so there the same answer is valid.
        let both = [("n1", 1), ("n2", 1)];
        let history = |api| {
            HistoryBuilder::new(api, &["n1", "n2", "n3"])
                .write(0, "n1", "k", "a", &[("n1", 1)])
                .write(1, "n2", "k", "b", &[("n2", 1)])
                .read(2, "n3", "k", &["a"], &both)
                .check()
        };
        let report = history(Api::Native);
        let v = only(&report, "clock_without_value", 1);
        assert_eq!(v[0].ops, vec![1, 2]);
        assert!(
            v[0].message
                .contains("neither it nor a write that overwrote it"),
            "{}",
            v[0].message
        );
        assert_valid(&history(Api::Compat));
    }

    #[test]
    fn clock_without_value_overwritten_next_to_a_concurrent_value() {
        // n3 has applied "b", which overwrote "a", yet shows "a" next to the
        // concurrent "c".
        let report = HistoryBuilder::native(&["n1", "n2", "n3"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .write(1, "n2", "k", "c", &[("n2", 1)])
            .read(2, "n3", "k", &["a", "c"], &[("n1", 2), ("n2", 1)])
            .check();
        let v = only(&report, "clock_without_value", 1);
        assert_eq!(v[0].ops, vec![1, 3]);
        assert!(
            v[0].message.contains("values it overwrote"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn overwritten_sibling_kept_after_quiescence() {
        // Both nodes agree, but both keep "a", which "b" overwrote.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(0, "n1", "k", "b", &[("n1", 2)])
            .final_state("n1", &[("n1", 2)])
            .holds("n1", "k", "a", &[("n1", 1)])
            .holds("n1", "k", "b", &[("n1", 2)])
            .final_state("n2", &[("n1", 2)])
            .holds("n2", "k", "a", &[("n1", 1)])
            .holds("n2", "k", "b", &[("n1", 2)])
            .check();
        let v = only(&report, "overwritten_sibling", 2);
        assert!(v.iter().all(|v| v.ops == [1]), "{report:#?}");
        assert_eq!(report.converged, Some(true));
    }

    // ---- Valid histories -----------------------------------------------------

    #[test]
    fn concurrent_writes_shown_as_siblings() {
        let both = [("n1", 1), ("n2", 1)];
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(1, "n2", "k", "b", &[("n2", 1)])
            .read(0, "n2", "k", &["a", "b"], &both)
            .read(1, "n1", "k", &["b", "a"], &both)
            .final_state("n1", &both)
            .holds("n1", "k", "a", &[("n1", 1)])
            .holds("n1", "k", "b", &[("n2", 1)])
            .final_state("n2", &both)
            .holds("n2", "k", "b", &[("n2", 1)])
            .holds("n2", "k", "a", &[("n1", 1)])
            .check();
        assert_valid(&report);
        assert_eq!(report.reads_checked, 2);
        assert_eq!(report.converged, Some(true));
    }

    #[test]
    fn concurrent_writes_in_compat_show_the_winner() {
        // Each session sees only the winner, "b": session 0 does not see its
        // own "a", which "b" did not overwrite but is not older than.
        let both = [("n1", 1), ("n2", 1)];
        let report = HistoryBuilder::compat(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(1, "n2", "k", "b", &[("n2", 1)])
            .read(0, "n2", "k", &["b"], &both)
            .read(1, "n1", "k", &["b"], &both)
            .check();
        assert_valid(&report);
        assert_eq!(report.reads_checked, 2);
    }

    #[test]
    fn compat_read_at_a_lagging_node_promises_nothing() {
        // The node's clock does not cover the session's context: it has not
        // claimed to have applied the session's write, so the null it shows
        // breaks no promise. Once it has caught up, its read is checked.
        let compat = HistoryBuilder::compat(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .read(0, "n2", "k", &[], &[])
            .read(0, "n2", "k", &["a"], &[("n1", 1)])
            .check();
        assert_valid(&compat);
        assert_eq!(compat.reads_checked, 1);

        // The same answers with the native API, whose reads carry the
        // context, break read-your-writes.
        let native = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .read(0, "n2", "k", &[], &[])
            .read(0, "n2", "k", &["a"], &[("n1", 1)])
            .check();
        let v = only_lagging(&native, "read_your_writes", 1);
        assert_eq!(v[0].ops, vec![0, 1]);
    }

    #[test]
    fn read_shows_a_newer_value_than_the_session_wrote() {
        // Session 1 overwrites session 0's "a" (its node had applied it);
        // session 0 then reads "b", which is newer than its own write.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .write(1, "n1", "k", "b", &[("n1", 2)])
            .read(0, "n2", "k", &["b"], &[("n1", 2)])
            .final_state("n1", &[("n1", 2)])
            .holds("n1", "k", "b", &[("n1", 2)])
            .final_state("n2", &[("n1", 2)])
            .holds("n2", "k", "b", &[("n1", 2)])
            .check();
        assert_valid(&report);
        assert_eq!(report.reads_checked, 1);
    }

    #[test]
    fn failed_and_unknown_writes_need_not_appear() {
        let report = HistoryBuilder::native(&["n1", "n2"])
            .failed_write(0, "n1", "k", "a")
            .unknown_write(0, "n2", "k", "b")
            .read(0, "n1", "k", &[], &[])
            .final_state("n1", &[])
            .final_state("n2", &[])
            .check();
        assert_valid(&report);
        assert_eq!(report.converged, Some(true));
    }

    #[test]
    fn an_unknown_write_may_have_happened() {
        let report = HistoryBuilder::native(&["n1"])
            .unknown_write(0, "n1", "k", "a")
            .read(1, "n1", "k", &["a"], &[("n1", 1)])
            .final_state("n1", &[("n1", 1)])
            .holds("n1", "k", "a", &[("n1", 1)])
            .check();
        assert_valid(&report);
    }

    #[test]
    fn what_a_session_does_after_an_unanswered_write_does_not_follow_it() {
        // "a" took effect at n1, whose answer was lost (n1 was killed): the
        // session's next write, sent to n2 without a's dot in its context, is
        // concurrent with it, and a read may show both.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .unknown_write(0, "n1", "k", "a")
            .write(0, "n2", "k", "b", &[("n2", 1)])
            .read(1, "n2", "k", &["b"], &[("n2", 1)])
            .write(1, "n2", "k", "c", &[("n2", 2)])
            .read(1, "n1", "k", &["a", "c"], &[("n1", 1), ("n2", 2)])
            .check();
        assert_valid(&report);
    }

    #[test]
    fn session_order_goes_on_past_an_unanswered_write() {
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .unknown_write(0, "n2", "x", "x")
            .read(0, "n2", "k", &[], &[])
            .check();
        only_lagging(&report, "read_your_writes", 1);
    }

    #[test]
    fn zero_entries_do_not_make_siblings_differ() {
        // `{n1:1}` and `{n1:1,n2:0}` are the same clock, however a node
        // writes it.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k", "a", &[("n1", 1)])
            .final_state("n1", &[("n1", 1)])
            .holds("n1", "k", "a", &[("n1", 1)])
            .final_state("n2", &[("n1", 1), ("n2", 0)])
            .holds("n2", "k", "a", &[("n1", 1), ("n2", 0)])
            .check();
        assert_valid(&report);
        assert_eq!(report.converged, Some(true));
    }

    // ---- Snapshot reads ------------------------------------------------------

    #[test]
    fn closed_snapshots_pass() {
        // Session 0 writes x then y. One snapshot shows both, another only
        // x (y came after it), a third neither.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "x", "a", &[("n1", 1)])
            .write(0, "n1", "y", "b", &[("n1", 2)])
            .snapshot(
                1,
                "n2",
                &[("y", &["b"], &[("n1", 2)]), ("x", &["a"], &[("n1", 2)])],
            )
            .snapshot(
                2,
                "n2",
                &[("x", &["a"], &[("n1", 1)]), ("y", &[], &[("n1", 1)])],
            )
            .snapshot(3, "n1", &[("x", &[], &[]), ("y", &[], &[("n2", 0)])])
            .check();
        assert_valid(&report);
        assert_eq!((report.reads_checked, report.snapshots_checked), (6, 3));
    }

    #[test]
    fn snapshot_not_closed() {
        // Session 0 writes x twice, then y. The snapshot (y read first) shows
        // y's "b" but x's first value: x's "a1", which happened before "b",
        // is missing. Read key by key, the reads also carry different clocks.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "x", "a0", &[("n1", 1)])
            .write(0, "n1", "x", "a1", &[("n1", 2)])
            .write(0, "n1", "y", "b", &[("n1", 3)])
            .snapshot(
                1,
                "n2",
                &[("y", &["b"], &[("n1", 3)]), ("x", &["a0"], &[("n1", 1)])],
            )
            .check();
        let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["snapshot_clocks_differ", "snapshot_not_closed"],
            "{report:#?}"
        );
        let v = &report.violations[1];
        assert_eq!(v.ops, vec![1, 2, 3, 4, 0]);
        assert!(
            v.message
                .contains("\"b\" (#2, {n1:3}) for y but \"a0\" (#0) for x")
                && v.message.contains("write #1 of \"a1\""),
            "{}",
            v.message
        );
        assert_eq!(report.snapshots_checked, 1);

        // The same snapshot showing nothing for x is not closed either; with
        // x's "a1" it is.
        let history = |x: &[&str]| {
            HistoryBuilder::native(&["n1", "n2"])
                .write(0, "n1", "x", "a0", &[("n1", 1)])
                .write(0, "n1", "x", "a1", &[("n1", 2)])
                .write(0, "n1", "y", "b", &[("n1", 3)])
                .snapshot(
                    1,
                    "n2",
                    &[("y", &["b"], &[("n1", 3)]), ("x", x, &[("n1", 3)])],
                )
                .check()
        };
        let report = history(&[]);
        let kinds: BTreeSet<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
        assert!(kinds.contains("snapshot_not_closed"), "{report:#?}");
        assert_valid(&history(&["a1"]));
    }

    #[test]
    fn a_snapshot_read_breaks_read_your_writes() {
        // Session 0 wrote x twice; its snapshot at a lagging node shows the
        // first value: the read of x is checked as any read.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "x", "a", &[("n1", 1)])
            .write(0, "n1", "x", "b", &[("n1", 2)])
            .snapshot(
                0,
                "n2",
                &[("y", &[], &[("n1", 1)]), ("x", &["a"], &[("n1", 1)])],
            )
            .check();
        let (ignored, rest): (Vec<&Violation>, Vec<&Violation>) = report
            .violations
            .iter()
            .partition(|v| v.kind == "read_ignores_context");
        assert_eq!(ignored.len(), 2, "both reads lack n1:2: {report:#?}");
        let kinds: Vec<&str> = rest.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(kinds, ["read_your_writes"], "{report:#?}");
        assert_eq!(rest[0].ops, vec![1, 3, 0]);
    }

    #[test]
    fn a_transaction_seen_whole_is_valid() {
        // Session 0 writes y, then x and y atomically; every later read,
        // alone or in a snapshot, shows all of the transaction or none.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "y", "b0", &[("n1", 1)])
            .txn(0, "n1", &[("x", "a"), ("y", "b1")], &[("n1", 2)])
            .snapshot(
                1,
                "n2",
                &[("x", &[], &[("n1", 1)]), ("y", &["b0"], &[("n1", 1)])],
            )
            .snapshot(
                1,
                "n2",
                &[("y", &["b1"], &[("n1", 2)]), ("x", &["a"], &[("n1", 2)])],
            )
            .read(2, "n2", "x", &["a"], &[("n1", 2)])
            .read(2, "n1", "y", &["b1"], &[("n1", 2)])
            .read(0, "n2", "y", &["b1"], &[("n1", 2)])
            .final_state("n1", &[("n1", 2)])
            .holds("n1", "x", "a", &[("n1", 2)])
            .holds("n1", "y", "b1", &[("n1", 2)])
            .final_state("n2", &[("n1", 2)])
            .holds("n2", "x", "a", &[("n1", 2)])
            .holds("n2", "y", "b1", &[("n1", 2)])
            .check();
        assert_valid(&report);
        assert_eq!(report.snapshots_checked, 2);
    }

    #[test]
    fn fractured_snapshot() {
        // The snapshot shows the transaction's x but y from before it; its
        // clock counts the transaction, so y's answer also lacks a write its
        // clock counts.
        let report = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "y", "b0", &[("n1", 1)])
            .txn(0, "n1", &[("x", "a"), ("y", "b1")], &[("n1", 2)])
            .snapshot(
                1,
                "n2",
                &[("x", &["a"], &[("n1", 2)]), ("y", &["b0"], &[("n1", 2)])],
            )
            .check();
        let kinds: BTreeSet<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(
            kinds,
            BTreeSet::from(["fractured_read", "clock_without_value"]),
            "{report:#?}"
        );
        let v = report
            .violations
            .iter()
            .find(|v| v.kind == "fractured_read")
            .unwrap();
        assert_eq!(v.ops, vec![2, 1, 3, 4, 0]);
        assert!(
            v.message
                .contains("showed \"a\" (#1) for x but \"b0\" (#0) for y")
                && v.message.contains("wrote \"b1\" (#2) to y"),
            "{}",
            v.message
        );
    }

    #[test]
    fn fractured_read_across_reads() {
        // Session 1 reads the transaction's x, then y at a node that shows
        // y from before the transaction.
        let report = HistoryBuilder::native(&["n1", "n2", "n3"])
            .write(0, "n1", "y", "b0", &[("n1", 1)])
            .txn(0, "n1", &[("x", "a"), ("y", "b1")], &[("n1", 2)])
            .read(1, "n2", "x", &["a"], &[("n1", 2)])
            .read(1, "n3", "y", &["b0"], &[("n1", 1)])
            .check();
        let v = only_lagging(&report, "fractured_read", 1);
        assert_eq!(v[0].ops, vec![2, 4, 0]);
        assert!(
            v[0].message.contains("write #2 of \"b1\""),
            "{}",
            v[0].message
        );

        // Without the transaction (two single writes), the same reads break
        // causality, under the name for it.
        let report = HistoryBuilder::native(&["n1", "n2", "n3"])
            .write(0, "n1", "y", "b0", &[("n1", 1)])
            .write(0, "n1", "y", "b1", &[("n1", 2)])
            .write(0, "n1", "x", "a", &[("n1", 3)])
            .read(1, "n2", "x", &["a"], &[("n1", 3)])
            .read(1, "n3", "y", &["b0"], &[("n1", 1)])
            .check();
        only_lagging(&report, "causal_read", 1);
    }

    #[test]
    fn snapshot_clocks_differ() {
        let report = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "x", "a", &[("n1", 1)])
            .write(1, "n1", "z", "c", &[("n1", 2)])
            .snapshot(
                2,
                "n1",
                &[("x", &["a"], &[("n1", 1)]), ("y", &[], &[("n1", 2)])],
            )
            .check();
        let v = only(&report, "snapshot_clocks_differ", 1);
        assert_eq!(v[0].ops, vec![2, 3]);
        assert!(
            v[0].message.contains("{n1:1}") && v[0].message.contains("{n1:2}"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn snapshots_round_trip_and_old_histories_load() {
        let history = HistoryBuilder::native(&["n1"])
            .write(0, "n1", "x", "a", &[("n1", 1)])
            .snapshot(
                1,
                "n1",
                &[("x", &["a"], &[("n1", 1)]), ("y", &[], &[("n1", 1)])],
            )
            .build();
        let text = serde_json::to_string(&history).unwrap();
        assert_eq!(text.matches("\"snapshot\":1").count(), 2, "{text}");
        let replayed: History = serde_json::from_str(&text).unwrap();
        assert_eq!(replayed, history);
        assert_eq!(check(&replayed).snapshots_checked, 1);

        // A history and a report from before snapshot reads.
        let old = r#"{"api": "native", "nodes": ["n1"], "keys": ["k"], "ops": [
            {"id": 0, "session": 0, "node": "n1", "key": "k", "kind": "write",
             "value": "v", "timestamp": {"n1": 1}, "context": {}, "outcome": "ok",
             "invoked_ms": 0.0, "completed_ms": 1.0},
            {"id": 1, "session": 1, "node": "n1", "key": "k", "kind": "read",
             "values": ["v"], "clock": {"n1": 1}, "context": {}, "outcome": "ok",
             "invoked_ms": 2.0, "completed_ms": 3.0}]}"#;
        let old: History = serde_json::from_str(old).unwrap();
        assert!(old.ops.iter().all(|o| o.snapshot.is_none()));
        let report = check(&old);
        assert_valid(&report);
        assert_eq!((report.reads_checked, report.snapshots_checked), (1, 0));
        let old_report: Report =
            serde_json::from_str(r#"{"violations": [], "reads_checked": 3, "converged": null}"#)
                .unwrap();
        assert_eq!(old_report.snapshots_checked, 0);
    }

    // ---- Replay --------------------------------------------------------------

    #[test]
    fn history_round_trips_through_json() {
        let history = HistoryBuilder::native(&["n1", "n2"])
            .write(0, "n1", "k1", "a", &[("n1", 1)])
            .failed_write(1, "n2", "k1", "x")
            .unknown_write(1, "n2", "k2", "y")
            .read(0, "n2", "k1", &[], &[])
            .write(1, "n2", "k2", "b", &[("n2", 1)])
            .read(1, "n2", "k2", &["b", "y"], &[("n2", 2)])
            .final_state("n1", &[("n1", 1), ("n2", 2)])
            .holds("n1", "k2", "b", &[("n2", 1)])
            .final_state("n2", &[("n1", 1), ("n2", 2)])
            .holds("n2", "k1", "a", &[("n1", 1)])
            .holds("n2", "k2", "b", &[("n2", 1)])
            .build();
        let text = serde_json::to_string_pretty(&history).unwrap();
        let replayed: History = serde_json::from_str(&text).unwrap();
        assert_eq!(replayed, history);
        let report = check(&history);
        assert_eq!(check(&replayed), report);
        let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "read_ignores_context",
                "read_your_writes",
                "divergence",
                "lost_write"
            ],
            "{report:#?}"
        );
        let report_text = serde_json::to_string(&report).unwrap();
        assert_eq!(
            serde_json::from_str::<Report>(&report_text).unwrap(),
            report
        );
    }

    #[test]
    fn replays_a_saved_history() {
        // As `kvctl check --history` writes it (clocks name every node, as
        // the nodes' do); the final state is optional.
        let text = r#"{
          "api": "native",
          "nodes": ["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
          "keys": ["check-1-0"],
          "ops": [
            {"id": 0, "session": 0, "node": "http://127.0.0.1:8001", "key": "check-1-0",
             "kind": "write", "value": "1-s0-1", "timestamp": {"node1": 1, "node2": 0},
             "context": {}, "outcome": "ok", "invoked_ms": 0.1, "completed_ms": 1.2},
            {"id": 1, "session": 0, "node": "http://127.0.0.1:8002", "key": "check-1-0",
             "kind": "read", "values": [], "clock": {"node1": 0, "node2": 0},
             "context": {"node1": 1, "node2": 0}, "outcome": "ok",
             "invoked_ms": 1.3, "completed_ms": 2.0}
          ]
        }"#;
        let history: History = serde_json::from_str(text).unwrap();
        assert!(history.final_states.is_empty() && !history.quiescent);
        let report = check(&history);
        let v = only_lagging(&report, "read_your_writes", 1);
        assert_eq!(v[0].ops, vec![0, 1]);
        assert_eq!(report.converged, None);
    }
}
