//! A recorded history: every operation of a checking run, and the final state.

use serde::{Deserialize, Serialize};
use vclock_proto::VClock;

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
