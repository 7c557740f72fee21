//! Replication: the decisions of the link from this node to one peer.
//!
//! A [`Link`] decides *when* and *what* to send to its peer; the node's async
//! shell only carries out its [`Action`]s (send a batch, exchange clocks, sleep
//! until a deadline) and feeds back the peer's [`Answer`]. Time is an input
//! (the shell's monotonic clock as a [`Duration`] since any fixed start), so the
//! simulation runs the same code on simulated time.
//!
//! **Pushing.** The link keeps two cursors into this node's own writes: the
//! last one the peer acknowledged (its `applied` clock counts it) and `sent`,
//! the last one put on the wire. It sends what lies after `sent` as soon as
//! there is something durable to send, in batches bounded in events and bytes.
//! One request is in flight at a time; its answer carries the peer's `applied`
//! clock, which is the acknowledgement.
//!
//! **Retransmission.** If the peer's acknowledgement does not catch up with
//! `sent` for `retransmit_after` (a lost batch, a batch the peer had to buffer
//! or refuse), the link goes back to the acknowledged cursor and sends again.
//! A failed request does the same at once, after a backoff that doubles from
//! 50 ms to 5 s. Receiving is idempotent, so resending is always safe.
//!
//! **Repair through any replica.** When the peer has lacked the same event of
//! some other origin for `repair_after` while this node holds it, the link
//! sends it and what follows it in the log. So a write reaches every live node
//! even if its origin died right after replicating it to one peer, or the link
//! between two nodes is cut while both stay up.
//!
//! **Clock exchange.** Before it knows the peer's clock, and whenever the link
//! has had no answer for `sync_interval`, it exchanges clocks with the peer:
//! that feeds repair and log collection while there is nothing to send.
//!
//! **Trust.** An acknowledgement is checked before it moves anything: one that
//! counts more of this node's writes than this node has made is a protocol
//! error of the peer (a peer with another history, or a bug). It is refused,
//! reported, and changes no cursor; a cursor never moves past what this node
//! made, so no `+ 1` on a counter from the network can wrap.
//!
//! Left out: pipelining (one request in flight per peer), and repair of the
//! peer's own writes (a peer that lost its data is not given them back).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vclock_proto::{Event, NodeId, Seq, VClock};

use crate::storage::StoreResult;

/// How a link paces itself; from the node's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long `sent` may stay ahead of the acknowledgement before resending.
    pub retransmit_after: Duration,
    /// How long the peer may lack an event of another origin before repair.
    pub repair_after: Duration,
    /// How long without an answer before an idle clock exchange.
    pub sync_interval: Duration,
    /// How long a request may stay unanswered before it counts as failed.
    pub request_timeout: Duration,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// About the most bytes of one batch on the wire (at least one event).
    pub max_batch_bytes: usize,
    /// Deliberate bugs, for the simulation's mutation checks; all off in a node.
    #[doc(hidden)]
    pub mutations: Mutations,
}

/// Deliberate bugs that the simulation must catch. All off by default.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mutations {
    /// Count a batch as sent once it is on the wire and never go back to the
    /// acknowledged cursor: what is lost stays lost.
    pub never_retransmit: bool,
    /// Never repair the writes of other origins.
    pub never_repair: bool,
    /// Take acknowledgements as they come, even beyond what this node made.
    pub trust_acks: bool,
}

/// What the link reads of its node's replica.
pub trait NodeView {
    /// Up to `limit` logged events of `origin` with a seq above `after`, in
    /// order, and no more than `max_bytes` of them (at least one); see
    /// [`crate::storage::Store::log_after_within`].
    fn log_after(
        &self,
        origin: &str,
        after: Seq,
        limit: usize,
        max_bytes: usize,
    ) -> StoreResult<Vec<Arc<Event>>>;

    /// What `peer` is known to have applied, from any of its messages (the
    /// clock log collection counts on).
    fn acked(&self, peer: &str) -> Option<&VClock>;
}

/// Names one request, so that a late answer to an abandoned one is ignored.
pub type RequestId = u64;

/// What the shell must do for the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request to the peer and report its outcome with
    /// [`Link::answered`].
    Send(Request),
    /// Nothing to send before `until`, unless this node makes new writes
    /// (then poll again at once).
    Wait {
        /// When to poll again at the latest.
        until: Duration,
    },
}

/// A request to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id, for [`Link::answered`].
    pub id: RequestId,
    /// What to send.
    pub body: RequestBody,
}

/// The body of a request to the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// `POST /peer/v1/events`: events in seq order per origin.
    Events {
        /// The events.
        events: Vec<Arc<Event>>,
        /// Set when these are another origin's events, sent as repair.
        repair: Option<NodeId>,
    },
    /// `POST /peer/v1/sync` with this node's durable clock.
    Exchange {
        /// This node's durable `applied` clock.
        applied: VClock,
    },
}

/// The outcome of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The peer answered with its `applied` clock.
    Clock(VClock),
    /// The peer is unreachable, timed out, or answered garbage.
    Unreachable(String),
    /// The peer's buffer is full; it asks us to come back later (503).
    Busy(String),
    /// The peer refused the request: a bug or a misconfiguration (4xx).
    Refused(String),
}

/// What happened on the link that the shell should log, count or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The peer acknowledged `clock`: record it for log collection.
    Acknowledged {
        /// The peer's `applied` clock.
        clock: VClock,
        /// True when it answered a batch (false: a clock exchange).
        batch: bool,
        /// True when it covers every durable write of this node.
        caught_up: bool,
    },
    /// The peer answers again after failures (or for the first time).
    Reachable,
    /// A request failed; `first` when the previous one had succeeded.
    Failed {
        /// The answer that made it fail.
        answer: Answer,
        /// True on the first failure after a success.
        first: bool,
    },
    /// The acknowledgement did not catch up for `retransmit_after`: resending
    /// this node's writes after `from`.
    Resending {
        /// The acknowledged cursor sending starts again from.
        from: Seq,
    },
    /// The peer went back (restarted without its data?): resending from `to`.
    WentBack {
        /// What it had acknowledged of this node's writes.
        from: Seq,
        /// What it acknowledges now.
        to: Seq,
    },
    /// The peer needs writes of this node that every node had acknowledged and
    /// that are no longer in the log: it may have lost its data.
    Collected {
        /// The first missing seq.
        from: Seq,
        /// The last missing seq.
        through: Seq,
    },
    /// Sending the peer events of `origin` it has lacked for `repair_after`.
    Repairing {
        /// The origin repaired.
        origin: NodeId,
        /// The first event sent.
        from: Seq,
        /// How many events.
        events: usize,
    },
    /// The peer acknowledged more of this node's writes than this node made:
    /// a protocol error; the acknowledgement was refused.
    Overclaimed {
        /// What it claimed.
        claimed: Seq,
        /// What this node has made.
        made: Seq,
    },
    /// The log could not be read.
    LogUnreadable(String),
}

#[derive(Debug, Clone)]
struct InFlight {
    id: RequestId,
    at: Duration,
    /// For a batch of this node's own writes: its last seq.
    last_own: Option<Seq>,
    batch: bool,
}

/// The link from this node to one peer (see the module's essay).
#[derive(Debug)]
pub struct Link {
    me: NodeId,
    peer: NodeId,
    settings: Settings,
    /// The peer's last acknowledged clock, once known.
    acked: Option<VClock>,
    /// The last of this node's own writes put on the wire.
    sent: Seq,
    /// When the acknowledgement last moved forward, or when we last went back.
    progress_at: Duration,
    /// When the peer last answered.
    answered_at: Duration,
    failures: u32,
    retry_at: Duration,
    in_flight: Option<InFlight>,
    next_id: RequestId,
    /// Per other origin: the first event of it the peer lacks, and since when.
    lacking: BTreeMap<NodeId, (Seq, Duration)>,
    /// The origin of the last repair sent: the next one starts after it.
    repaired: Option<NodeId>,
    notices: Vec<Notice>,
}

impl Link {
    /// The link from node `me` to `peer`, starting at `now` with no knowledge
    /// of the peer (its first request is a clock exchange).
    pub fn new(me: NodeId, peer: NodeId, settings: Settings, now: Duration) -> Self {
        Self {
            me,
            peer,
            settings,
            acked: None,
            sent: 0,
            progress_at: now,
            answered_at: now,
            failures: 0,
            retry_at: now,
            in_flight: None,
            next_id: 1,
            lacking: BTreeMap::new(),
            repaired: None,
            notices: Vec::new(),
        }
    }

    /// The peer.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    /// The peer's last acknowledged clock, once known.
    pub fn acked(&self) -> Option<&VClock> {
        self.acked.as_ref()
    }

    /// The last of this node's own writes put on the wire.
    pub fn sent(&self) -> Seq {
        self.sent
    }

    /// True while a request waits for its answer.
    pub fn is_waiting(&self) -> bool {
        self.in_flight.is_some()
    }

    /// What happened since the last call, oldest first.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// What to do now, given this node's durable clock (only what it covers
    /// is sent) and its log.
    pub fn poll(&mut self, now: Duration, durable: &VClock, log: &impl NodeView) -> Action {
        if let Some(in_flight) = &self.in_flight {
            let deadline = in_flight.at.saturating_add(self.settings.request_timeout);
            if now < deadline {
                return Action::Wait { until: deadline };
            }
            let id = in_flight.id;
            self.answered(
                now,
                id,
                Answer::Unreachable("no answer in time".into()),
                durable,
            );
        }
        if self.failures > 0 && now < self.retry_at {
            return Action::Wait {
                until: self.retry_at,
            };
        }
        let Some(acked) = self.acked.clone() else {
            return self.exchange(now, durable);
        };
        let acked_own = acked.get(&self.me);
        if self.sent > acked_own
            && now.saturating_sub(self.progress_at) >= self.settings.retransmit_after
            && !self.settings.mutations.never_retransmit
        {
            self.notices.push(Notice::Resending { from: acked_own });
            self.sent = acked_own;
            self.progress_at = now;
        }
        if let Some(action) = self.repair(now, &acked, durable, log) {
            return action;
        }
        let own = durable.get(&self.me);
        // The peer may have told this node more in a clock exchange of its
        // own (and log collection counts on it): no need to send that.
        let known = log.acked(&self.peer).map_or(0, |clock| clock.get(&self.me));
        self.sent = self.sent.max(known.min(own));
        let events = if self.sent < own {
            let (limit, bytes) = (
                self.settings.max_batch_events,
                self.settings.max_batch_bytes,
            );
            match log.log_after(&self.me, self.sent, limit, bytes) {
                Ok(mut events) => {
                    events.retain(|e| e.seq <= own);
                    events
                }
                Err(e) => {
                    self.notices.push(Notice::LogUnreadable(e.to_string()));
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            if first.seq != self.sent + 1 {
                self.notices.push(Notice::Collected {
                    from: self.sent + 1,
                    through: first.seq - 1,
                });
            }
            let last_own = Some(last.seq);
            if self.settings.mutations.never_retransmit {
                self.sent = last.seq;
            }
            return self.send(
                now,
                last_own,
                RequestBody::Events {
                    events,
                    repair: None,
                },
            );
        }
        if now.saturating_sub(self.answered_at) >= self.settings.sync_interval {
            return self.exchange(now, durable);
        }
        let mut until = self.answered_at.saturating_add(self.settings.sync_interval);
        if self.sent > acked_own {
            until = until.min(
                self.progress_at
                    .saturating_add(self.settings.retransmit_after),
            );
        }
        for &(_, since) in self.lacking.values() {
            until = until.min(since.saturating_add(self.settings.repair_after));
        }
        Action::Wait {
            until: until.max(now),
        }
    }

    /// The outcome of request `id`, given this node's durable clock now.
    pub fn answered(&mut self, now: Duration, id: RequestId, answer: Answer, durable: &VClock) {
        let Some(in_flight) = self.in_flight.take_if(|f| f.id == id) else {
            return; // An answer to a request given up on: already counted.
        };
        match answer {
            Answer::Clock(clock) => self.acknowledged(now, clock, &in_flight, durable),
            failure => {
                let first = self.failures == 0;
                self.failures = self.failures.saturating_add(1);
                self.retry_at = now.saturating_add(backoff(self.failures));
                if let Some(acked) = &self.acked {
                    if !self.settings.mutations.never_retransmit {
                        self.sent = acked.get(&self.me);
                    }
                }
                self.notices.push(Notice::Failed {
                    answer: failure,
                    first,
                });
            }
        }
    }

    fn acknowledged(&mut self, now: Duration, clock: VClock, request: &InFlight, durable: &VClock) {
        let made = durable.get(&self.me);
        let own = clock.get(&self.me);
        if own > made && !self.settings.mutations.trust_acks {
            // The answer still shows the peer is up; the backoff keeps a
            // confused peer from being hammered.
            self.failures = self.failures.saturating_add(1);
            self.retry_at = now.saturating_add(backoff(self.failures));
            self.notices
                .push(Notice::Overclaimed { claimed: own, made });
            return;
        }
        if self.failures > 0 || self.acked.is_none() {
            self.notices.push(Notice::Reachable);
        }
        self.failures = 0;
        self.answered_at = now;
        if let Some(last) = request.last_own {
            self.sent = self.sent.max(last);
        }
        match &self.acked {
            None => {
                self.sent = own;
                self.progress_at = now;
            }
            Some(before) if own > before.get(&self.me) => self.progress_at = now,
            Some(before) if own < before.get(&self.me) => {
                self.notices.push(Notice::WentBack {
                    from: before.get(&self.me),
                    to: own,
                });
                self.sent = own;
            }
            Some(_) => {}
        }
        // What the peer has (perhaps through repair by a third node) needs no
        // sending; and nothing is ahead of what this node made, whatever was
        // trusted above.
        self.sent = self.sent.max(own).min(made.max(own));
        self.notices.push(Notice::Acknowledged {
            caught_up: own >= made,
            batch: request.batch,
            clock: clock.clone(),
        });
        self.acked = Some(clock);
    }

    /// Events of other origins that the peer has lacked for `repair_after`.
    /// The origins take turns, starting after the last one repaired: a
    /// repair the peer keeps refusing (its buffer full of events that wait
    /// for another origin's writes) must not keep the others waiting, since
    /// they may be what the peer waits for.
    fn repair(
        &mut self,
        now: Duration,
        peer_applied: &VClock,
        durable: &VClock,
        log: &impl NodeView,
    ) -> Option<Action> {
        if self.settings.mutations.never_repair {
            return None;
        }
        let origins: Vec<(&NodeId, Seq)> = durable
            .iter()
            .filter(|(origin, _)| **origin != self.me && **origin != self.peer)
            .map(|(origin, &have)| (origin, have))
            .collect();
        let first = match &self.repaired {
            Some(last) => origins.iter().position(|(o, _)| *o > last).unwrap_or(0),
            None => 0,
        };
        for &(origin, have) in origins[first..].iter().chain(&origins[..first]) {
            let lacks = peer_applied.get(origin).saturating_add(1);
            if lacks > have {
                self.lacking.remove(origin);
                continue;
            }
            let since = match self.lacking.get(origin) {
                Some(&(seq, since)) if seq == lacks => since,
                _ => {
                    self.lacking.insert(origin.clone(), (lacks, now));
                    now
                }
            };
            if now.saturating_sub(since) < self.settings.repair_after {
                continue;
            }
            self.lacking.insert(origin.clone(), (lacks, now));
            let (limit, bytes) = (
                self.settings.max_batch_events,
                self.settings.max_batch_bytes,
            );
            let mut events = match log.log_after(origin, lacks - 1, limit, bytes) {
                Ok(events) => events,
                Err(e) => {
                    self.notices.push(Notice::LogUnreadable(e.to_string()));
                    continue;
                }
            };
            events.retain(|e| e.seq <= have);
            let Some(first) = events.first() else {
                continue;
            };
            self.repaired = Some(origin.clone());
            self.notices.push(Notice::Repairing {
                origin: origin.clone(),
                from: first.seq,
                events: events.len(),
            });
            let body = RequestBody::Events {
                events,
                repair: Some(origin.clone()),
            };
            return Some(self.send(now, None, body));
        }
        None
    }

    fn exchange(&mut self, now: Duration, durable: &VClock) -> Action {
        let body = RequestBody::Exchange {
            applied: durable.clone(),
        };
        self.send(now, None, body)
    }

    fn send(&mut self, now: Duration, last_own: Option<Seq>, body: RequestBody) -> Action {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight = Some(InFlight {
            id,
            at: now,
            last_own,
            batch: matches!(body, RequestBody::Events { .. }),
        });
        Action::Send(Request { id, body })
    }
}

/// How long a link waits after `attempt` failures: 50 ms doubling to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use vclock_proto::{Op, Value};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn settings() -> Settings {
        Settings {
            retransmit_after: 1000 * MS,
            repair_after: 10_000 * MS,
            sync_interval: 1000 * MS,
            request_timeout: 2000 * MS,
            max_batch_events: 3,
            max_batch_bytes: 1 << 20,
            mutations: Mutations::default(),
        }
    }

    /// A log of `origin -> events 1..=n`.
    #[derive(Default)]
    struct TestLog(BTreeMap<String, Vec<Arc<Event>>>);

    impl TestLog {
        fn with(mut self, origin: &str, n: Seq) -> Self {
            let events = (1..=n)
                .map(|seq| {
                    Arc::new(Event::single(
                        origin,
                        seq,
                        "k",
                        Op::Put(Value::from_serialize(&seq).unwrap()),
                        clock(&[(origin, seq - 1)]),
                    ))
                })
                .collect();
            self.0.insert(origin.into(), events);
            self
        }
    }

    impl NodeView for TestLog {
        fn acked(&self, _peer: &str) -> Option<&VClock> {
            None
        }

        fn log_after(
            &self,
            origin: &str,
            after: Seq,
            limit: usize,
            max_bytes: usize,
        ) -> StoreResult<Vec<Arc<Event>>> {
            let mut budget = crate::storage::Budget::new(limit, max_bytes);
            Ok(self
                .0
                .get(origin)
                .map(|events| {
                    events
                        .iter()
                        .filter(|e| e.seq > after)
                        .take_while(|e| budget.take(e))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default())
        }
    }

    fn clock(entries: &[(&str, Seq)]) -> VClock {
        entries.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    fn sent_seqs(action: &Action) -> (RequestId, Vec<Seq>) {
        match action {
            Action::Send(Request {
                id,
                body: RequestBody::Events { events, .. },
            }) => (*id, events.iter().map(|e| e.seq).collect()),
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    /// A link from `a` to `b` that has exchanged clocks with `b` at time 0.
    fn introduced(peer_clock: VClock, durable: &VClock, log: &TestLog) -> Link {
        let mut link = Link::new("a".into(), "b".into(), settings(), Duration::ZERO);
        let Action::Send(request) = link.poll(Duration::ZERO, durable, log) else {
            panic!("the first request is a clock exchange");
        };
        assert!(matches!(request.body, RequestBody::Exchange { .. }));
        link.answered(
            Duration::ZERO,
            request.id,
            Answer::Clock(peer_clock),
            durable,
        );
        link
    }

    #[test]
    fn pushes_durable_writes_in_batches_and_moves_on_with_the_acknowledgements() {
        let log = TestLog::default().with("a", 5);
        let durable = clock(&[("a", 4)]);
        let mut link = introduced(clock(&[("a", 0)]), &durable, &log);
        let (id, seqs) = sent_seqs(&link.poll(MS, &durable, &log));
        assert_eq!(seqs, [1, 2, 3], "max_batch_events bounds a batch");
        link.answered(2 * MS, id, Answer::Clock(clock(&[("a", 3)])), &durable);
        let (_, seqs) = sent_seqs(&link.poll(3 * MS, &durable, &log));
        assert_eq!(seqs, [4], "only what is durable is sent");
        assert!(link.take_notices().iter().any(|n| matches!(
            n,
            Notice::Acknowledged {
                batch: true,
                caught_up: false,
                ..
            }
        )));
    }

    #[test]
    fn a_batch_left_unacknowledged_is_sent_again_after_retransmit_after() {
        let log = TestLog::default().with("a", 2);
        let durable = clock(&[("a", 2)]);
        let mut link = introduced(clock(&[("a", 0)]), &durable, &log);
        let (id, seqs) = sent_seqs(&link.poll(MS, &durable, &log));
        assert_eq!(seqs, [1, 2]);
        // The peer buffered the batch: its clock does not count it.
        link.answered(2 * MS, id, Answer::Clock(clock(&[("a", 0)])), &durable);
        let Action::Wait { until } = link.poll(3 * MS, &durable, &log) else {
            panic!("nothing to send before retransmit_after");
        };
        assert_eq!(
            until,
            1000 * MS,
            "retransmit_after counts from the last progress"
        );
        let (_, seqs) = sent_seqs(&link.poll(until, &durable, &log));
        assert_eq!(seqs, [1, 2]);
        assert!(link.take_notices().contains(&Notice::Resending { from: 0 }));
    }

    #[test]
    fn a_failure_goes_back_to_the_acknowledged_cursor_after_a_backoff() {
        let log = TestLog::default().with("a", 3);
        let durable = clock(&[("a", 3)]);
        let mut link = introduced(clock(&[("a", 1)]), &durable, &log);
        let (id, seqs) = sent_seqs(&link.poll(MS, &durable, &log));
        assert_eq!(seqs, [2, 3]);
        link.answered(MS, id, Answer::Unreachable("refused".into()), &durable);
        assert_eq!(link.sent(), 1);
        assert_eq!(
            link.poll(MS, &durable, &log),
            Action::Wait {
                until: MS + backoff(1)
            }
        );
        let (_, seqs) = sent_seqs(&link.poll(MS + backoff(1), &durable, &log));
        assert_eq!(seqs, [2, 3]);
    }

    #[test]
    fn a_request_without_an_answer_fails_at_the_timeout_and_its_late_answer_is_ignored() {
        let log = TestLog::default().with("a", 1);
        let durable = clock(&[("a", 1)]);
        let mut link = introduced(clock(&[("a", 0)]), &durable, &log);
        let (id, _) = sent_seqs(&link.poll(MS, &durable, &log));
        assert_eq!(
            link.poll(2 * MS, &durable, &log),
            Action::Wait {
                until: MS + 2000 * MS
            }
        );
        let Action::Wait { until } = link.poll(2001 * MS, &durable, &log) else {
            panic!("a timed-out request is followed by a backoff");
        };
        link.answered(until, id, Answer::Clock(clock(&[("a", 1)])), &durable);
        assert_eq!(
            link.acked().unwrap().get("a"),
            0,
            "a late answer moves nothing"
        );
        let (_, seqs) = sent_seqs(&link.poll(until, &durable, &log));
        assert_eq!(seqs, [1]);
    }

    #[test]
    fn an_acknowledgement_beyond_what_this_node_made_is_refused() {
        let log = TestLog::default().with("a", 2);
        let durable = clock(&[("a", 2)]);
        let mut link = introduced(clock(&[("a", 0)]), &durable, &log);
        let (id, _) = sent_seqs(&link.poll(MS, &durable, &log));
        link.answered(MS, id, Answer::Clock(clock(&[("a", u64::MAX)])), &durable);
        assert_eq!(link.acked().unwrap().get("a"), 0);
        assert!(link.take_notices().contains(&Notice::Overclaimed {
            claimed: u64::MAX,
            made: 2
        }));
        // Sent again after the backoff, from what was really acknowledged.
        let (_, seqs) = sent_seqs(&link.poll(MS + backoff(1), &durable, &log));
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn events_of_another_origin_the_peer_lacks_are_repaired_after_repair_after() {
        let log = TestLog::default().with("c", 4);
        let durable = clock(&[("a", 0), ("c", 4)]);
        let mut link = introduced(clock(&[("c", 1)]), &durable, &log);
        // Noticed now; repaired only once it has lasted repair_after.
        let Action::Wait { until } = link.poll(MS, &durable, &log) else {
            panic!("no repair before repair_after");
        };
        assert_eq!(until, 1000 * MS, "an idle exchange comes first");
        let Action::Send(request) = link.poll(until, &durable, &log) else {
            panic!("an idle exchange");
        };
        link.answered(
            until,
            request.id,
            Answer::Clock(clock(&[("c", 1)])),
            &durable,
        );
        let (_, seqs) = sent_seqs(&link.poll(10_001 * MS, &durable, &log));
        assert_eq!(seqs, [2, 3, 4]);
        assert!(link.take_notices().contains(&Notice::Repairing {
            origin: "c".into(),
            from: 2,
            events: 3
        }));
    }

    #[test]
    fn the_peers_own_writes_and_what_it_has_are_never_repaired() {
        let log = TestLog::default().with("b", 4).with("c", 2);
        let durable = clock(&[("b", 4), ("c", 2)]);
        let mut link = introduced(clock(&[("b", 1), ("c", 2)]), &durable, &log);
        let Action::Send(request) = link.poll(60_000 * MS, &durable, &log) else {
            panic!("an idle exchange");
        };
        assert!(matches!(request.body, RequestBody::Exchange { .. }));
    }

    #[test]
    fn origins_take_turns_when_a_repair_keeps_being_refused() {
        let log = TestLog::default().with("c", 2).with("d", 2);
        let durable = clock(&[("a", 0), ("c", 2), ("d", 2)]);
        let peer = clock(&[("c", 0), ("d", 0)]);
        let mut link = introduced(peer.clone(), &durable, &log);
        // The backoff after refusals (up to 5 s) outgrows repair_after, and
        // no idle exchange comes between to reset it: at each attempt both
        // origins are due again.
        link.settings.repair_after = 1000 * MS;
        link.settings.sync_interval = 3_600_000 * MS;
        let mut repaired = Vec::new();
        let mut now = MS;
        while repaired.len() < 16 && now < 600_000 * MS {
            match link.poll(now, &durable, &log) {
                Action::Send(Request { id, body }) => {
                    let answer = match body {
                        // The peer's buffer is full: every repair is refused.
                        RequestBody::Events { repair, .. } => {
                            repaired.push(repair.expect("only repairs are sent"));
                            Answer::Busy("buffer full".into())
                        }
                        RequestBody::Exchange { .. } => Answer::Clock(peer.clone()),
                    };
                    link.answered(now, id, answer, &durable);
                }
                Action::Wait { until } => now = until.max(now + MS),
            }
        }
        assert!(
            repaired.windows(2).all(|w| w[0] != w[1]),
            "each origin waits for the other's turn: {repaired:?}"
        );
    }
}
