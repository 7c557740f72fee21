//! A recorded history: every operation of a checking run, and the final state.
//!
//! The workload records one with a [`Recorder`]; so can any program that talks
//! to a cluster its own way, to have its operations checked by
//! [`check`](super::check):
//!
//! ```
//! use kvctl::check::{self, Api, FinalState, Recorder};
//! use vclock_proto::VClock;
//!
//! let recorder = Recorder::new(Api::Native, ["http://n1"]);
//! let context = VClock::new();
//! let call = recorder.invoke_write(0, "http://n1", "k", "v1", &context);
//! // ... send it; the node acknowledged it with this timestamp:
//! let timestamp: VClock = [("n1", 1)].into_iter().collect();
//! recorder.written(call, timestamp.clone());
//! let call = recorder.invoke_read(0, "http://n1", "k", &timestamp);
//! recorder.read(call, vec![Some("v1".into())], timestamp.clone());
//!
//! let mut history = recorder.into_history();
//! let mut state = FinalState::new("http://n1", timestamp.clone());
//! state.keys.insert("k".into(), vec![check::FinalSibling { value: Some("v1".into()), timestamp }]);
//! history.finish(vec![state]);
//! assert!(check::check(&history).violations.is_empty());
//! ```

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vclock_proto::{GetResponse, ReadResponse, TxnReadResponse, VClock, Value};

/// Which API the workload used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `/write` and `/read` (the prototype's): reads carry no context.
    Compat,
    /// `/v1/kv/{key}`: reads and writes carry the session's context.
    Native,
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The node answered with success.
    Ok,
    /// The node refused it; it did not happen.
    Failed,
    /// No answer (timeout, connection lost): it may or may not have happened.
    Unknown,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OpKind {
    /// Wrote the unique string `value`.
    Write {
        /// The value written.
        value: String,
        /// The write's timestamp, when acknowledged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<VClock>,
    },
    /// Read the key.
    Read {
        /// The values seen: one for the compatibility API (`None` = null), every
        /// sibling's for the native one (deleted siblings left out).
        #[serde(default)]
        values: Vec<Option<String>>,
        /// The clock the node answered with (its `applied` clock).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clock: Option<VClock>,
    },
}

/// One operation of one session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Its index in the history.
    pub id: usize,
    /// The session that did it.
    pub session: usize,
    /// The node (URL) it went to.
    pub node: String,
    /// The key.
    pub key: String,
    /// What it did.
    #[serde(flatten)]
    pub kind: OpKind,
    /// The session's context when it was invoked: sent with it, except for
    /// reads of the compatibility API, which take no context.
    #[serde(default)]
    pub context: VClock,
    /// The API it went through, when not the history's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    /// For a read that is part of a snapshot read (`POST /v1/txn/read`): the
    /// id of the snapshot's first read. A snapshot is recorded as one read
    /// per key, one after another in its session, all sent at once with the
    /// same context; they are not ordered among themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<usize>,
    /// For a write that is part of an atomic write (`POST /v1/txn/write`):
    /// the id of the transaction's first write. A transaction is recorded as
    /// one write per key, one after another in its session, unordered among
    /// themselves and all acknowledged with the transaction's one timestamp;
    /// reading any of them puts all of them in the reader's causal past.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<usize>,
    /// How it ended.
    pub outcome: Outcome,
    /// When it was sent, in ms since the start of the run.
    pub invoked_ms: f64,
    /// When it ended, in ms since the start of the run.
    pub completed_ms: f64,
    /// The error, when it failed or its outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// The API this operation went through: its own, else the history's.
    pub fn api_in(&self, history: &History) -> Api {
        self.api.unwrap_or(history.api)
    }
}

/// A value as the history records it: a string as itself, `null` as `None`,
/// anything else as its compact JSON text. (The checker needs every written
/// value to be unique.) A value serde_json cannot parse into a tree (nested
/// deeper than its recursion limit, or a string with a lone surrogate) keeps
/// the node's text, without insignificant whitespace.
pub fn value_text(value: &Value) -> Option<String> {
    let json = value.json();
    if json.trim() == "null" {
        return None;
    }
    if let Ok(text) = serde_json::from_str::<String>(json) {
        return Some(text);
    }
    Some(
        serde_json::from_str::<serde_json::Value>(json)
            .map(|tree| tree.to_string())
            .unwrap_or_else(|_| crate::compact_json(json)),
    )
}

/// The values of a read's siblings that are not deleted, as recorded.
fn live_values(answer: &GetResponse) -> Vec<Option<String>> {
    answer
        .siblings
        .iter()
        .filter(|s| !s.deleted)
        .map(|s| value_text(&s.value))
        .collect()
}

/// One sibling seen in the final reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalSibling {
    /// Its value (`None` for a delete or a non-string value).
    pub value: Option<String>,
    /// Its timestamp.
    pub timestamp: VClock,
}

/// What one node held at the end, after quiescence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    /// The node.
    pub node: String,
    /// Its applied clock.
    pub applied: VClock,
    /// Per key, its siblings.
    pub keys: std::collections::BTreeMap<String, Vec<FinalSibling>>,
}

impl FinalSibling {
    /// Every sibling of a read's answer, tombstones included.
    pub fn all_of(answer: &GetResponse) -> Vec<FinalSibling> {
        answer
            .siblings
            .iter()
            .map(|s| FinalSibling {
                value: if s.deleted {
                    None
                } else {
                    value_text(&s.value)
                },
                timestamp: s.timestamp.clone(),
            })
            .collect()
    }
}

impl FinalState {
    /// The state of `node`, with `applied` as its clock and no key yet.
    pub fn new(node: impl Into<String>, applied: VClock) -> Self {
        Self {
            node: node.into(),
            applied,
            keys: Default::default(),
        }
    }

    /// Adds what a read of `key` (`GET /v1/kv/{key}`, no context) answered.
    pub fn insert(&mut self, key: impl Into<String>, answer: &GetResponse) {
        self.keys.insert(key.into(), FinalSibling::all_of(answer));
    }
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The API the sessions used.
    pub api: Api,
    /// The nodes.
    pub nodes: Vec<String>,
    /// The keys used.
    pub keys: Vec<String>,
    /// Every operation, in invocation order.
    pub ops: Vec<Op>,
    /// Each node's final state; empty when quiescence was not reached.
    #[serde(default)]
    pub final_states: Vec<FinalState>,
    /// Whether every node reached the same applied clock at the end.
    #[serde(default)]
    pub quiescent: bool,
}

impl History {
    /// Adds the nodes' final states, read once they reached the same applied
    /// clock (the history is then quiescent).
    pub fn finish(&mut self, final_states: Vec<FinalState>) {
        self.final_states = final_states;
        self.quiescent = true;
    }
}

/// Records the operations of concurrent sessions as a [`History`], in the
/// order they are invoked. Shared by reference between the sessions, whether
/// they are tasks or threads.
///
/// Each operation is recorded when it is sent ([`invoke_write`](Self::invoke_write),
/// [`invoke_read`](Self::invoke_read)) and completed with what came back. One
/// that is never completed stays with an unknown outcome: sent, it may have
/// taken effect.
#[derive(Debug)]
pub struct Recorder {
    api: Api,
    nodes: Vec<String>,
    started: Instant,
    ops: Mutex<Vec<Op>>,
}

/// How the operations of one call are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    /// One operation.
    None,
    /// A snapshot's reads.
    Snapshot,
    /// A transaction's writes.
    Txn,
}

/// An operation sent and not answered yet; complete it with the [`Recorder`]
/// that made it.
#[derive(Debug)]
#[must_use = "an invocation is completed with Recorder::written, read or failed"]
pub struct Invocation {
    id: usize,
    /// How many operations it is: one, a snapshot's reads or a transaction's
    /// writes.
    len: usize,
    api: Option<Api>,
}

impl Invocation {
    /// The operation goes through `api` rather than the history's: a history
    /// may mix reads of both APIs.
    pub fn via(mut self, api: Api) -> Self {
        self.api = Some(api);
        self
    }
}

impl Recorder {
    /// A recorder of operations through `api` against `nodes`.
    pub fn new<I, S>(api: Api, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            api,
            nodes: nodes.into_iter().map(Into::into).collect(),
            started: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    fn ops(&self) -> std::sync::MutexGuard<'_, Vec<Op>> {
        // An op is written whole under the lock: a panic elsewhere leaves
        // nothing half done.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn invoke(
        &self,
        session: usize,
        node: &str,
        key: &str,
        kind: OpKind,
        context: &VClock,
    ) -> Invocation {
        self.invoke_group(
            session,
            node,
            vec![(key.to_owned(), kind)],
            context,
            Group::None,
        )
    }

    /// Records `ops` (key and kind) sent together to `node` as one call:
    /// marked as one snapshot or one transaction when `group` says so.
    fn invoke_group(
        &self,
        session: usize,
        node: &str,
        ops_sent: Vec<(String, OpKind)>,
        context: &VClock,
        group: Group,
    ) -> Invocation {
        let invoked_ms = self.now_ms();
        let mut ops = self.ops();
        let first = ops.len();
        let len = ops_sent.len();
        for (key, kind) in ops_sent {
            let id = ops.len();
            ops.push(Op {
                id,
                session,
                node: node.to_owned(),
                key,
                kind,
                context: context.clone(),
                api: None,
                snapshot: (group == Group::Snapshot).then_some(first),
                txn: (group == Group::Txn).then_some(first),
                outcome: Outcome::Unknown,
                invoked_ms,
                completed_ms: invoked_ms,
                error: None,
            });
        }
        Invocation {
            id: first,
            len,
            api: None,
        }
    }

    /// Session `session` sends a write of the unique `value` to `key` at
    /// `node`, with its `context`.
    pub fn invoke_write(
        &self,
        session: usize,
        node: &str,
        key: &str,
        value: impl Into<String>,
        context: &VClock,
    ) -> Invocation {
        let kind = OpKind::Write {
            value: value.into(),
            timestamp: None,
        };
        self.invoke(session, node, key, kind, context)
    }

    /// Session `session` sends a read of `key` to `node`; `context` is its
    /// context (sent with it, except by the compatibility API).
    pub fn invoke_read(
        &self,
        session: usize,
        node: &str,
        key: &str,
        context: &VClock,
    ) -> Invocation {
        let kind = OpKind::Read {
            values: Vec::new(),
            clock: None,
        };
        self.invoke(session, node, key, kind, context)
    }

    /// Session `session` sends a snapshot read of `keys` (`POST
    /// /v1/txn/read`) to `node` with its `context`: recorded as one read per
    /// key, marked as one snapshot.
    pub fn invoke_snapshot(
        &self,
        session: usize,
        node: &str,
        keys: &[String],
        context: &VClock,
    ) -> Invocation {
        let reads = keys.iter().map(|key| {
            let kind = OpKind::Read {
                values: Vec::new(),
                clock: None,
            };
            (key.clone(), kind)
        });
        self.invoke_group(session, node, reads.collect(), context, Group::Snapshot)
    }

    /// Session `session` sends an atomic write (`POST /v1/txn/write`) of
    /// `writes`, each a key and the unique value written to it, to `node`
    /// with its `context`: recorded as one write per key, marked as one
    /// transaction. Complete it with [`Self::written`] and the transaction's
    /// timestamp.
    pub fn invoke_txn_write(
        &self,
        session: usize,
        node: &str,
        writes: &[(String, String)],
        context: &VClock,
    ) -> Invocation {
        let writes = writes.iter().map(|(key, value)| {
            let kind = OpKind::Write {
                value: value.clone(),
                timestamp: None,
            };
            (key.clone(), kind)
        });
        self.invoke_group(session, node, writes.collect(), context, Group::Txn)
    }

    /// Completes every operation of `call` (one, or a snapshot's reads):
    /// `fill` gets each with its index in the call.
    fn complete(&self, call: Invocation, outcome: Outcome, mut fill: impl FnMut(usize, &mut Op)) {
        let completed_ms = self.now_ms();
        let mut ops = self.ops();
        for (i, op) in ops[call.id..call.id + call.len].iter_mut().enumerate() {
            op.api = call.api.filter(|&api| api != self.api);
            op.outcome = outcome;
            op.completed_ms = completed_ms;
            fill(i, op);
        }
    }

    /// The write (every write of a transaction) was acknowledged with
    /// `timestamp`.
    pub fn written(&self, call: Invocation, timestamp: VClock) {
        self.complete(call, Outcome::Ok, |_, op| {
            if let OpKind::Write { timestamp: ts, .. } = &mut op.kind {
                *ts = Some(timestamp.clone());
            }
        });
    }

    /// The read answered `values` (see [`OpKind::Read`]) with `clock`, the
    /// node's applied clock.
    pub fn read(&self, call: Invocation, values: Vec<Option<String>>, clock: VClock) {
        self.complete(call, Outcome::Ok, |_, op| {
            op.kind = OpKind::Read {
                values: values.clone(),
                clock: Some(clock.clone()),
            };
        });
    }

    /// The snapshot read answered `answer`: per key, every sibling that is
    /// not deleted and the clock that key's answer carries.
    pub fn snapshot(&self, call: Invocation, answer: &TxnReadResponse) {
        self.complete(call, Outcome::Ok, |i, op| {
            op.kind = match answer.reads.get(i) {
                Some(read) => OpKind::Read {
                    values: live_values(read),
                    clock: Some(read.context.clone()),
                },
                // An answer without this key: it shows nothing, with the
                // snapshot's clock.
                None => OpKind::Read {
                    values: Vec::new(),
                    clock: Some(answer.context.clone()),
                },
            };
        });
    }

    /// The read (`GET /v1/kv/{key}`) answered `answer`: every sibling that is
    /// not deleted, and the node's clock.
    pub fn read_siblings(&self, call: Invocation, answer: &GetResponse) {
        self.read(call, live_values(answer), answer.context.clone());
    }

    /// The read (`GET /read?key=`, the compatibility API) answered `answer`.
    pub fn read_value(&self, call: Invocation, answer: &ReadResponse) {
        self.read(
            call,
            vec![value_text(&answer.value)],
            answer.timestamp.clone(),
        );
    }

    /// The operation got no usable answer: `outcome` says whether it did not
    /// happen ([`Outcome::Failed`]) or may have ([`Outcome::Unknown`]).
    pub fn failed(&self, call: Invocation, outcome: Outcome, error: impl Into<String>) {
        debug_assert_ne!(outcome, Outcome::Ok, "a failure has no answer to record");
        let error = error.into();
        self.complete(call, outcome, |_, op| op.error = Some(error.clone()));
    }

    /// The history so far: every operation in invocation order, the keys they
    /// used, no final state yet (see [`History::finish`]).
    pub fn into_history(self) -> History {
        let ops = self.ops.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<String> = ops.iter().map(|o| o.key.clone()).collect();
        keys.sort();
        keys.dedup();
        History {
            api: self.api,
            nodes: self.nodes,
            keys,
            ops,
            final_states: Vec::new(),
            quiescent: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(entries: &[(&str, u64)]) -> VClock {
        entries.iter().map(|&(n, s)| (n, s)).collect()
    }

    #[test]
    fn a_recorder_keeps_invocation_order_and_what_each_call_got() {
        let recorder = Recorder::new(Api::Native, ["n1", "n2"]);
        let first = recorder.invoke_write(0, "n1", "k", "a", &VClock::new());
        let second = recorder
            .invoke_read(1, "n2", "k", &VClock::new())
            .via(Api::Compat);
        let third = recorder.invoke_write(1, "n2", "j", "b", &VClock::new());
        // Never completed: sent, so it may have happened.
        let _fourth = recorder.invoke_write(0, "n2", "k", "c", &vc(&[("n1", 1)]));
        // Completed out of order.
        recorder.failed(third, Outcome::Failed, "401 unauthorized: no token");
        recorder.read(second, vec![None], VClock::new());
        recorder.written(first, vc(&[("n1", 1)]));

        let history = recorder.into_history();
        assert_eq!(history.keys, ["j", "k"]);
        let ids: Vec<usize> = history.ops.iter().map(|o| o.id).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        let ops = &history.ops;
        assert_eq!(
            (ops[0].outcome, &ops[0].kind),
            (
                Outcome::Ok,
                &OpKind::Write {
                    value: "a".into(),
                    timestamp: Some(vc(&[("n1", 1)]))
                }
            )
        );
        assert_eq!(
            (ops[1].api, ops[1].api_in(&history)),
            (Some(Api::Compat), Api::Compat)
        );
        assert_eq!(ops[0].api_in(&history), Api::Native);
        assert_eq!(ops[2].outcome, Outcome::Failed);
        assert_eq!(ops[2].error.as_deref(), Some("401 unauthorized: no token"));
        assert_eq!((ops[3].outcome, ops[3].session), (Outcome::Unknown, 0));
        assert_eq!(ops[3].context, vc(&[("n1", 1)]));
        assert!(ops.iter().all(|o| o.completed_ms >= o.invoked_ms));

        // The per-operation API survives a round trip, and is left out when
        // it is the history's. (Times as whole numbers: JSON's decimal text
        // need not give back the same float.)
        let mut history = history;
        for op in &mut history.ops {
            (op.invoked_ms, op.completed_ms) = (op.id as f64, op.id as f64 + 1.0);
        }
        let text = serde_json::to_string(&history).unwrap();
        assert_eq!(text.matches("\"api\"").count(), 2, "{text}");
        assert_eq!(serde_json::from_str::<History>(&text).unwrap(), history);
    }

    #[test]
    fn sessions_on_threads_share_a_recorder() {
        let recorder = Recorder::new(Api::Native, ["n1"]);
        std::thread::scope(|scope| {
            for session in 0..4 {
                let recorder = &recorder;
                scope.spawn(move || {
                    for i in 0..50 {
                        let value = format!("s{session}-{i}");
                        let call = recorder.invoke_write(session, "n1", "k", value, &VClock::new());
                        recorder.written(call, vc(&[("n1", 1)]));
                    }
                });
            }
        });
        let history = recorder.into_history();
        assert_eq!(history.ops.len(), 200);
        assert!(history.ops.iter().enumerate().all(|(i, o)| o.id == i));
        for session in 0..4 {
            let values: Vec<&str> = history
                .ops
                .iter()
                .filter(|o| o.session == session)
                .map(|o| match &o.kind {
                    OpKind::Write { value, .. } => value.as_str(),
                    OpKind::Read { .. } => unreachable!("only writes"),
                })
                .collect();
            let expected: Vec<String> = (0..50).map(|i| format!("s{session}-{i}")).collect();
            assert_eq!(values, expected, "each session's ops in its own order");
        }
    }

    #[test]
    fn recorded_answers_are_checked() {
        use vclock_proto::{Dot, Sibling};

        let answer = |values: &[(&str, u64)], context: &[(&str, u64)]| GetResponse {
            key: "k".into(),
            found: !values.is_empty(),
            value: Value::from_serialize(&values.last().map(|v| v.0)).unwrap(),
            siblings: values
                .iter()
                .map(|&(value, seq)| Sibling {
                    dot: Dot {
                        origin: "n1".into(),
                        seq,
                    },
                    timestamp: vc(&[("n1", seq)]),
                    deleted: false,
                    value: Value::from_serialize(&value).unwrap(),
                })
                .collect(),
            context: vc(context),
        };
        // Session 0 writes "a" at n1, then reads at n2: n2 shows "a", or
        // (lagging, and ignoring the context) nothing.
        let run = |shown: &[(&str, u64)], clock: &[(&str, u64)]| {
            let recorder = Recorder::new(Api::Native, ["n1", "n2"]);
            let call = recorder.invoke_write(0, "n1", "k", "a", &VClock::new());
            recorder.written(call, vc(&[("n1", 1)]));
            let call = recorder.invoke_read(0, "n2", "k", &vc(&[("n1", 1)]));
            recorder.read_siblings(call, &answer(shown, clock));
            super::super::check(&recorder.into_history())
        };
        let report = run(&[("a", 1)], &[("n1", 1)]);
        assert!(report.violations.is_empty(), "{report:#?}");
        assert_eq!(report.reads_checked, 1);
        let report = run(&[], &[]);
        let kinds: Vec<&str> = report.violations.iter().map(|v| v.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["read_ignores_context", "read_your_writes"],
            "{report:#?}"
        );
    }

    #[test]
    fn a_snapshot_is_recorded_as_one_read_per_key() {
        use vclock_proto::{Dot, Sibling};

        let get = |key: &str, value: Option<&str>, clock: &VClock| GetResponse {
            key: key.into(),
            found: value.is_some(),
            value: Value::from_serialize(&value).unwrap(),
            siblings: value
                .map(|v| Sibling {
                    dot: Dot {
                        origin: "n1".into(),
                        seq: 1,
                    },
                    timestamp: vc(&[("n1", 1)]),
                    deleted: false,
                    value: Value::from_serialize(&v).unwrap(),
                })
                .into_iter()
                .collect(),
            context: clock.clone(),
        };
        let recorder = Recorder::new(Api::Compat, ["n1"]);
        let call = recorder.invoke_write(0, "n1", "x", "a", &VClock::new());
        recorder.written(call, vc(&[("n1", 1)]));
        let keys = ["x".to_owned(), "y".to_owned()];
        let sent = vc(&[("n1", 1)]);
        let call = recorder
            .invoke_snapshot(0, "n1", &keys, &sent)
            .via(Api::Native);
        let unanswered = recorder.invoke_snapshot(1, "n1", &keys, &VClock::new());
        let clock = vc(&[("n1", 1)]);
        recorder.snapshot(
            call,
            &TxnReadResponse {
                reads: vec![get("x", Some("a"), &clock), get("y", None, &clock)],
                context: clock.clone(),
            },
        );
        recorder.failed(unanswered, Outcome::Unknown, "timed out");

        let history = recorder.into_history();
        let ops = &history.ops;
        assert_eq!(ops.len(), 5);
        for (op, key) in ops[1..3].iter().zip(&keys) {
            assert_eq!(
                (&op.key, op.snapshot, op.outcome, op.api, &op.context),
                (key, Some(1), Outcome::Ok, Some(Api::Native), &sent)
            );
        }
        assert_eq!(
            ops[1].kind,
            OpKind::Read {
                values: vec![Some("a".into())],
                clock: Some(clock.clone())
            }
        );
        assert_eq!(
            ops[2].kind,
            OpKind::Read {
                values: vec![],
                clock: Some(clock)
            }
        );
        for op in &ops[3..] {
            assert_eq!((op.snapshot, op.outcome), (Some(3), Outcome::Unknown));
            assert_eq!(op.error.as_deref(), Some("timed out"));
        }
        let report = super::super::check(&history);
        assert!(report.violations.is_empty(), "{report:#?}");
        assert_eq!(report.snapshots_checked, 1);
    }

    #[test]
    fn values_are_recorded_as_text() {
        let text = |json: &str| value_text(&Value::from_json(json).unwrap());
        assert_eq!(text("\"s1-2\""), Some("s1-2".into()));
        assert_eq!(text("null"), None);
        let object = text(r#"{"session": 1, "op": 2}"#).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&object).unwrap(),
            serde_json::json!({"session": 1, "op": 2})
        );
        assert_eq!(text("5"), Some("5".into()));
        // Deeper than serde_json's recursion limit, or not a Rust string: the
        // node's text, compacted.
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(text(&deep), Some(deep.clone()));
        let spaced = format!(
            "{{ \"a\" : {} \"x y\" {} }}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let compact = format!("{{\"a\":{}\"x y\"{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(text(&spaced), Some(compact));
        assert_eq!(text(r#""\ud800""#), Some(r#""\ud800""#.into()));
    }
}
