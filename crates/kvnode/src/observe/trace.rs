//! The node's trace: what it did, with its vector clock at each step.
//!
//! Off by default. `trace_buffer = N` keeps the last N records in memory, served
//! at `GET /v1/trace` and streamed at `GET /v1/trace/stream`; `trace_file`
//! appends every record to a file as JSON lines. When both are off, every hook
//! is one branch on a boolean and builds nothing.
//!
//! Records get their id under the tracer's lock, in the order they are made.
//! Each record's clock is the core's clock at its step, captured under the
//! core's lock. The writer records deliveries at once, and a group's own writes
//! once the group is durable: a crash before the sync gives a traced dot to no
//! other write. A read is recorded once its answer may be shown, so after the
//! records of the writes it shows.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{LineWriter, Write};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use log::error;
use tokio::sync::broadcast;
use vclock_proto::{Event, NodeId, TraceEvent, TraceKind, TraceRef, TraceResponse, VClock};

use crate::core::{Applied, Step};

/// Records that a live stream may fall behind by before it skips ahead.
const STREAM_BACKLOG: usize = 4096;

/// A node's trace.
#[derive(Debug)]
pub struct Tracer {
    node: NodeId,
    on: bool,
    capacity: usize,
    capacity_bytes: usize,
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<TraceEvent>>,
    closing: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
struct Inner {
    last_id: u64,
    ring: VecDeque<Arc<TraceEvent>>,
    /// The ring's size, as [`record_bytes`] counts it.
    bytes: usize,
    file: Option<LineWriter<File>>,
}

/// About the memory a record takes: its value's JSON text, its key, a
/// transaction's writes, its clock and dots, plus a fixed overhead.
fn record_bytes(e: &TraceEvent) -> usize {
    let names = |n: usize| n * 24;
    let writes: usize = e
        .writes
        .iter()
        .map(|w| 32 + w.key.len() + w.op.value().map_or(0, |v| v.json().len()))
        .sum();
    256 + e.key.as_ref().map_or(0, String::len)
        + e.value.as_ref().map_or(0, |v| v.json().len())
        + writes
        + names(e.clock.iter().count() + e.dots.len() + e.missing.len())
}

/// A transaction's writes, for its records (none for a single write).
fn txn_writes(event: &Event) -> Vec<vclock_proto::Write> {
    if event.is_txn() {
        event.to_writes()
    } else {
        Vec::new()
    }
}

impl Tracer {
    /// A tracer keeping the last `capacity` records in memory, at most
    /// `capacity_bytes` of them as [`record_bytes`] counts them (the newest
    /// record is always kept), and appending them to `file` if given; off when
    /// both are off.
    pub fn new(
        node: NodeId,
        capacity: usize,
        capacity_bytes: usize,
        file: Option<&std::path::Path>,
    ) -> std::io::Result<Self> {
        let file = match file {
            Some(path) => Some(LineWriter::new(
                OpenOptions::new().create(true).append(true).open(path)?,
            )),
            None => None,
        };
        Ok(Self {
            node,
            on: capacity > 0 || file.is_some(),
            capacity,
            capacity_bytes,
            inner: Mutex::new(Inner {
                last_id: 0,
                ring: VecDeque::with_capacity(capacity.min(65_536)),
                bytes: 0,
                file,
            }),
            live: broadcast::channel(STREAM_BACKLOG).0,
            closing: tokio::sync::watch::channel(false).0,
        })
    }

    /// A tracer that records nothing.
    pub fn off(node: NodeId) -> Self {
        Self::new(node, 0, 0, None).expect("no file to open")
    }

    /// True when records are kept somewhere. Hooks check this first.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// True when records are kept in memory (served at `/v1/trace`).
    pub fn in_memory(&self) -> bool {
        self.capacity > 0
    }

    /// Records one event of `kind` at clock `clock`; `fill` sets its other
    /// fields. Returns the record's id (0 when tracing is off).
    pub fn record(
        &self,
        kind: TraceKind,
        clock: &VClock,
        fill: impl FnOnce(&mut TraceEvent),
    ) -> u64 {
        if !self.on {
            return 0;
        }
        let time_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.last_id += 1;
        let mut event = TraceEvent::new(
            self.node.clone(),
            inner.last_id,
            time_us,
            kind,
            clock.clone(),
        );
        fill(&mut event);
        if let Some(file) = inner.file.as_mut() {
            let written = serde_json::to_writer(&mut *file, &event)
                .map_err(std::io::Error::from)
                .and_then(|()| file.write_all(b"\n"));
            if let Err(e) = written {
                error!("trace file: {e}; no more records go to it");
                inner.file = None;
            }
        }
        let event = Arc::new(event);
        if self.capacity > 0 {
            inner.bytes += record_bytes(&event);
            inner.ring.push_back(event.clone());
            while inner.ring.len() > self.capacity
                || (inner.bytes > self.capacity_bytes && inner.ring.len() > 1)
            {
                let Some(oldest) = inner.ring.pop_front() else {
                    break;
                };
                inner.bytes -= record_bytes(&oldest);
            }
            // Sent under the lock, so that streams see records in id order.
            let _ = self.live.send(event);
        }
        inner.last_id
    }

    /// Bytes of the records held in memory, as [`record_bytes`] counts them.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// The records held in memory with an id above `after`.
    pub fn since(&self, after: u64) -> TraceResponse {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        TraceResponse {
            node: self.node.clone(),
            enabled: self.capacity > 0,
            last_id: inner.last_id,
            events: inner
                .ring
                .iter()
                .filter(|e| e.id > after)
                .map(|e| (**e).clone())
                .collect(),
        }
    }

    /// The records held in memory with an id above `after`, and the live
    /// records that follow them, without a gap or a repeat.
    pub fn follow(
        &self,
        after: u64,
    ) -> (Vec<Arc<TraceEvent>>, broadcast::Receiver<Arc<TraceEvent>>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let backlog = inner
            .ring
            .iter()
            .filter(|e| e.id > after)
            .cloned()
            .collect();
        (backlog, self.live.subscribe())
    }

    /// Ends every live stream (the node is shutting down).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Watches for [`Self::close_streams`].
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Records a client write, and the siblings it left.
    pub fn write(&self, applied: &Applied, clock: &VClock) {
        if self.on {
            self.applied(TraceKind::Write, applied, clock);
        }
    }

    /// Records a batch received from `peer` (its `send` record is `cause`), and
    /// what happened to each event. `before` is the clock before the batch.
    pub fn receive(
        &self,
        peer: &str,
        cause: Option<TraceRef>,
        events: &[vclock_proto::Dot],
        steps: &[Step],
        before: &VClock,
    ) {
        if !self.on {
            return;
        }
        self.record(TraceKind::Receive, before, |e| {
            e.peer = Some(peer.to_owned());
            e.cause = cause;
            e.dots = events.to_vec();
        });
        let mut clock = before.clone();
        for step in steps {
            match step {
                Step::Applied(applied) => {
                    clock.set(&applied.event.origin, applied.event.seq);
                    let kind = if applied.from_buffer {
                        TraceKind::DeliverFromBuffer
                    } else {
                        TraceKind::Deliver
                    };
                    self.applied(kind, applied, &clock);
                }
                Step::Buffered(event, missing) => {
                    self.record(TraceKind::Buffered, &clock, |e| {
                        e.key = Some(event.key.clone());
                        e.dot = Some(event.dot());
                        e.missing = missing.clone();
                        e.writes = txn_writes(event);
                    });
                }
            }
        }
    }

    fn applied(&self, kind: TraceKind, applied: &Applied, clock: &VClock) {
        let event = &applied.event;
        let first = applied.siblings.first().map(|count| count.after as u64);
        self.record(kind, clock, |e| {
            e.key = Some(event.key.clone());
            e.dot = Some(event.dot());
            e.value = event.op.value().cloned();
            e.siblings = first;
            e.writes = txn_writes(event);
        });
        for ((key, _), count) in event.writes().zip(&applied.siblings) {
            let conflict = if count.after > 1 {
                TraceKind::Siblings
            } else if count.before > 1 {
                TraceKind::Resolved
            } else {
                continue;
            };
            self.record(conflict, clock, |e| {
                e.key = Some(key.to_owned());
                e.dot = Some(event.dot());
                e.siblings = Some(count.after as u64);
            });
        }
    }
}

/// Parses the value of the [`vclock_proto::TRACE_CAUSE_HEADER`] header,
/// `node/id`.
pub fn parse_cause(text: &str) -> Option<TraceRef> {
    let (node, id) = text.rsplit_once('/')?;
    Some(TraceRef {
        node: node.to_owned(),
        id: id.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::SiblingCount;
    use vclock_proto::{Dot, Event, Op, Value};

    fn applied(origin: &str, seq: u64, from_buffer: bool, before: usize, after: usize) -> Applied {
        let mut deps = VClock::default();
        deps.set(origin, seq - 1);
        Applied {
            event: Arc::new(Event::single(origin, seq, "x", Op::Delete, deps)),
            from_buffer,
            siblings: vec![SiblingCount { before, after }],
        }
    }

    #[test]
    fn off_records_nothing() {
        let t = Tracer::off("n1".into());
        assert!(!t.is_on());
        assert_eq!(t.record(TraceKind::Read, &VClock::default(), |_| {}), 0);
        assert!(t.since(0).events.is_empty());
    }

    #[test]
    fn ring_keeps_the_last_records_in_order() {
        let t = Tracer::new("n1".into(), 3, usize::MAX, None).unwrap();
        for _ in 0..5 {
            t.record(TraceKind::Read, &VClock::default(), |_| {});
        }
        let r = t.since(0);
        assert_eq!(r.last_id, 5);
        assert_eq!(r.events.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(t.since(4).events.len(), 1);
    }

    /// With large values the ring's bound in bytes is reached first: it keeps
    /// as many of the newest records as fit, and always the newest one.
    #[test]
    fn the_ring_is_bounded_in_bytes() {
        let t = Tracer::new("n1".into(), 1000, 10 << 10, None).unwrap();
        let value = |bytes: usize| Value::from_serialize(&"v".repeat(bytes)).unwrap();
        for _ in 0..100 {
            t.record(TraceKind::Write, &VClock::default(), |e| {
                e.value = Some(value(1000))
            });
        }
        let held = t.since(0).events;
        assert!((5..10).contains(&held.len()), "{}", held.len());
        assert_eq!(held.last().unwrap().id, 100);
        assert!(t.bytes() <= 10 << 10, "{}", t.bytes());
        assert_eq!(t.bytes(), held.iter().map(record_bytes).sum::<usize>());

        t.record(TraceKind::Write, &VClock::default(), |e| {
            e.value = Some(value(100 << 10))
        });
        let held = t.since(0).events;
        assert_eq!(held.iter().map(|e| e.id).collect::<Vec<_>>(), [101]);
    }

    /// A transaction is one record, listing every key it writes; a key it
    /// left with siblings gets its own record.
    #[test]
    fn a_transaction_is_one_record_of_several_keys() {
        let t = Tracer::new("n1".into(), 100, usize::MAX, None).unwrap();
        let writes = vec![
            vclock_proto::Write::put("a", Value::from_serialize(&1).unwrap()),
            vclock_proto::Write::delete("b"),
        ];
        let event = Event::of_writes("n1", 1, writes.clone(), VClock::default()).unwrap();
        let applied = Applied {
            event: Arc::new(event),
            from_buffer: false,
            siblings: vec![
                SiblingCount {
                    before: 0,
                    after: 1,
                },
                SiblingCount {
                    before: 1,
                    after: 2,
                },
            ],
        };
        t.write(&applied, &VClock::default());
        let events = t.since(0).events;
        let kinds: Vec<(&str, Option<&str>)> = events
            .iter()
            .map(|e| (e.kind.as_str(), e.key.as_deref()))
            .collect();
        assert_eq!(kinds, [("write", Some("a")), ("siblings", Some("b"))]);
        assert_eq!(events[0].writes, writes);
        assert_eq!(events[0].dot, Some(Dot::new("n1", 1)));
        assert!(events[1].writes.is_empty());
        assert!(record_bytes(&events[0]) > record_bytes(&events[1]));

        // A single write lists none.
        t.write(
            &super::tests::applied("n1", 2, false, 0, 1),
            &VClock::default(),
        );
        assert!(t.since(2).events[0].writes.is_empty());
    }

    #[test]
    fn a_batch_is_traced_step_by_step_with_the_clock_of_each_step() {
        let t = Tracer::new("n3".into(), 100, usize::MAX, None).unwrap();
        let waiting = applied("n2", 1, false, 0, 1).event;
        let missing = vec![vclock_proto::Missing {
            node: "n1".into(),
            have: 0,
            want: 1,
        }];
        t.receive(
            "n2",
            parse_cause("n2/7"),
            &[Dot::new("n2", 1)],
            &[Step::Buffered(waiting, missing.clone())],
            &VClock::default(),
        );
        t.receive(
            "n1",
            None,
            &[Dot::new("n1", 1)],
            &[
                Step::Applied(applied("n1", 1, false, 0, 1)),
                Step::Applied(applied("n2", 1, true, 1, 2)),
            ],
            &VClock::default(),
        );
        let events = t.since(0).events;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "receive",
                "buffered",
                "receive",
                "deliver",
                "deliver_from_buffer",
                "siblings"
            ]
        );
        assert_eq!(
            events[0].cause,
            Some(TraceRef {
                node: "n2".into(),
                id: 7
            })
        );
        assert_eq!(events[1].missing, missing);
        assert_eq!(events[3].clock.get("n1"), 1);
        assert_eq!(events[4].clock.get("n2"), 1);
        assert_eq!(events[5].siblings, Some(2));
    }

    #[test]
    fn the_file_gets_one_json_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let t = Tracer::new("n1".into(), 0, 0, Some(&path)).unwrap();
        assert!(t.is_on() && !t.in_memory());
        t.write(&applied("n1", 1, false, 2, 1), &VClock::default());
        let text = std::fs::read_to_string(&path).unwrap();
        let kinds: Vec<TraceKind> = text
            .lines()
            .map(|l| serde_json::from_str::<TraceEvent>(l).unwrap().kind)
            .collect();
        assert_eq!(kinds, [TraceKind::Write, TraceKind::Resolved]);
    }

    #[test]
    fn causes_parse_only_when_well_formed() {
        assert_eq!(parse_cause("node-1/12").unwrap().id, 12);
        assert!(parse_cause("node1").is_none());
        assert!(parse_cause("node1/x").is_none());
    }
}
