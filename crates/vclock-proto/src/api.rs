//! Every message of the three HTTP APIs.
//!
//! - The **compatibility API** (`/health`, `/write`, `/read`) is the prototype's,
//!   field for field.
//! - The **native API** (`/v1/kv/{key}`) shows siblings, supports deletes and
//!   takes causal contexts.
//! - The **peer API** (`/peer/v1/...`) carries replication and clock exchange.
//!
//! Errors on every API have one shape, [`ErrorResponse`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::{Missing, NodeId, Seq, VClock};
use crate::event::{Dot, Event, Value, Write};

// ---- Compatibility API -------------------------------------------------------

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// Always `"healthy"` when the node answers.
    pub status: String,
    /// The node's id.
    pub node: NodeId,
    /// The node's `applied` clock.
    pub timestamp: VClock,
}

/// `POST /write`. Unknown fields are ignored, as the prototype did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteRequest {
    /// The key; a non-empty string.
    pub key: String,
    /// Any JSON value.
    pub value: Value,
    /// The causal context: the node applies the write only after everything
    /// this clock counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<VClock>,
}

/// Answer to `POST /write`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WriteResponse {
    /// Always `"success"`.
    pub status: String,
    /// The write's timestamp (its dependencies plus itself).
    pub timestamp: VClock,
}

/// Query of `GET /read`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadQuery {
    /// The key to read.
    pub key: String,
}

/// Answer to `GET /read`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReadResponse {
    /// The winning sibling's value, or `null` when the key is absent or deleted.
    pub value: Value,
    /// The node's `applied` clock when the value was read: use it as a context.
    pub timestamp: VClock,
}

// ---- Native API --------------------------------------------------------------

/// Query of `GET /v1/kv/{key}` and `DELETE /v1/kv/{key}`: an optional context as
/// JSON text, e.g. `?context={"node1":3}` (URL-encoded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ContextQuery {
    /// The causal context, as JSON text.
    #[serde(default)]
    pub context: Option<String>,
}

/// One of a key's concurrent writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sibling {
    /// The write that produced it.
    pub dot: Dot,
    /// The write's timestamp.
    pub timestamp: VClock,
    /// True for a delete (a tombstone); then `value` is `null`.
    pub deleted: bool,
    /// The value written (`null` for a delete).
    pub value: Value,
}

/// Answer to `GET /v1/kv/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GetResponse {
    /// The key read.
    pub key: String,
    /// True when the key has a value (the winning sibling is not a delete).
    pub found: bool,
    /// The deterministic winner's value (what `/read` returns), or `null`.
    pub value: Value,
    /// Every concurrent write of the key, in a deterministic order (winner last).
    pub siblings: Vec<Sibling>,
    /// The node's `applied` clock, read together with the siblings. Send it as
    /// the context of a put to replace all of them.
    pub context: VClock,
}

/// Body of `POST /v1/txn/read`: keys to read from one causally consistent cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TxnReadRequest {
    /// The keys, each listed once (at most `max_txn_keys` of them).
    pub keys: Vec<String>,
    /// The causal context to wait for first, as for a single read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<VClock>,
}

/// Answer to `POST /v1/txn/read`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TxnReadResponse {
    /// One answer per key, in the order asked, all read at the same moment:
    /// each one's `context` is the cut's clock.
    pub reads: Vec<GetResponse>,
    /// The clock of the cut: every write it counts, and no other, is
    /// reflected in the answers.
    pub context: VClock,
}

/// Body of `POST /v1/txn/write`: an atomic transaction of writes to distinct
/// keys, e.g. `{"writes":[{"key":"a","op":{"put":1}},{"key":"b","op":"delete"}]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TxnWriteRequest {
    /// The writes, each to another key (at most `max_txn_keys` of them, and
    /// `max_txn_bytes` of keys and values together).
    pub writes: Vec<Write>,
    /// The causal context to wait for first, as for a single write; each
    /// write replaces the siblings of its key that the context covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<VClock>,
}

/// Body of `PUT /v1/kv/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    /// Any JSON value.
    pub value: Value,
    /// The causal context, usually the `context` of a previous answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<VClock>,
}

/// Body of `DELETE /v1/kv/{key}` (optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// The causal context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<VClock>,
}

/// Answer to `PUT` and `DELETE` on `/v1/kv/{key}`, and to `POST /v1/txn/write`
/// (then the one dot of every write of the transaction).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PutResponse {
    /// The write's dot.
    pub dot: Dot,
    /// The write's timestamp; also a context that covers the write.
    pub timestamp: VClock,
}

impl From<&Event> for PutResponse {
    fn from(event: &Event) -> Self {
        Self {
            dot: event.dot(),
            timestamp: event.timestamp(),
        }
    }
}

// ---- Errors ------------------------------------------------------------------

/// The body of every error answer: `{"error":{"code":...,"message":...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// A stable machine-readable code, such as `bad_request` or `causal_timeout`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// For `causal_timeout` and `unknown_history`: the context entries this node
    /// lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
}

/// An answer's body, decoded by its HTTP status: the expected message on a 2xx,
/// else the node's error. The one decoder of every client of a node (the CLI,
/// the checker, the tracer and the nodes' own replication).
pub fn decode_answer<T: serde::de::DeserializeOwned>(
    status: u16,
    body: &[u8],
) -> Result<T, ErrorBody> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body).map_err(|e| ErrorBody {
            code: "bad_answer".into(),
            message: format!("unexpected answer: {e}"),
            missing: Vec::new(),
        });
    }
    Err(match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(answer) => answer.error,
        // Not one of our nodes' errors (a proxy's page, say): keep its text.
        Err(_) => ErrorBody {
            code: format!("http_{status}"),
            message: String::from_utf8_lossy(body).trim().to_owned(),
            missing: Vec::new(),
        },
    })
}

// ---- Peer API ----------------------------------------------------------------

/// `POST /peer/v1/events`: a batch of events, each origin's in seq order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// The sending node.
    pub from: NodeId,
    /// The events.
    pub events: Vec<Event>,
}

/// `POST /peer/v1/snapshot`: a bootstrapping node asks a peer for the next
/// chunk of its state. Its `applied` clock is recorded as what it holds, so
/// that the peer keeps in its log every event the snapshot may miss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The asking node.
    pub node: NodeId,
    /// What it has applied (durably).
    pub applied: VClock,
    /// The last key of the previous chunk; absent for the first chunk.
    #[serde(default)]
    pub after: Option<String>,
    /// Most keys in the chunk (the peer bounds it, in keys and bytes).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// Answer to [`SnapshotRequest`]: the next keys in key order with their
/// siblings, and the clock they were read at. Every key shows at least the
/// writes that clock counts of it (it may show later ones too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotChunk {
    /// The answering node.
    pub node: NodeId,
    /// Its `applied` clock when it read the chunk.
    pub applied: VClock,
    /// The keys after the request's `after`, in order.
    pub keys: Vec<SnapshotKey>,
    /// True when keys remain after the last one of this chunk.
    pub more: bool,
}

/// One key of a [`SnapshotChunk`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotKey {
    /// The key.
    pub key: String,
    /// Its siblings, winner last.
    pub siblings: Vec<Event>,
}

/// Whether a node serves reads and writes yet (see `docs/design.md`,
/// "Recovery").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryStatus {
    /// `checking` (comparing its history with its peers'; writes refused),
    /// `bootstrapping` (copying a peer's state; reads and writes refused) or
    /// `live`.
    pub phase: String,
    /// Why the node is not live yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Keys copied by the current or last bootstrap.
    #[serde(default)]
    pub keys_copied: u64,
}

/// Answer to a batch and to a clock exchange: the receiver's `applied` clock,
/// which acknowledges every event it counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClockMessage {
    /// The node whose clock this is.
    pub node: NodeId,
    /// Its `applied` clock.
    pub applied: VClock,
}

/// Query of `POST /peer/v1/sync`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams, utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
pub struct SyncQuery {
    /// A question, not an exchange: the sender asks which writes this node
    /// has made (to check a client's context) and its clock, empty, tells
    /// nothing. A node that is recovering its own history answers 503.
    #[serde(default)]
    pub question: bool,
}

// ---- Operations --------------------------------------------------------------

/// `GET /status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusResponse {
    /// The node's id.
    pub node: NodeId,
    /// The node's `applied` clock.
    pub applied: VClock,
    /// Events received but not yet deliverable, per origin.
    pub buffered: BTreeMap<NodeId, u64>,
    /// Total of `buffered`.
    pub buffered_total: u64,
    /// Bytes of the buffered events (keys, values, clocks), bounded by
    /// `max_buffered_bytes`.
    #[serde(default)]
    pub buffered_bytes: u64,
    /// The buffered events' dots and what each waits for (at most 100 listed).
    pub buffered_events: Vec<BufferedEvent>,
    /// Events kept in the log until every node has applied them.
    pub log_len: u64,
    /// How many of them are held in memory; the older ones are read from disk
    /// when a peer needs them.
    #[serde(default)]
    pub log_in_memory: u64,
    /// Their bytes (keys, values, clocks), bounded by `log_memory_bytes`.
    #[serde(default)]
    pub log_in_memory_bytes: u64,
    /// Bytes of writes and peer batches handed to the writer and not yet
    /// answered, bounded by `max_queued_bytes`.
    #[serde(default)]
    pub queued_bytes: u64,
    /// Bytes of the trace records held in memory, bounded by
    /// `trace_buffer_bytes`.
    #[serde(default)]
    pub trace_bytes: u64,
    /// Writes applied by every node (pointwise minimum of acknowledged clocks).
    pub stable: VClock,
    /// Storage syncs (fsync) since the node started; with group commit many
    /// writes share one.
    #[serde(default)]
    pub fsyncs: u64,
    /// Events refused since the node started because it held a different event
    /// with the same dot: two histories for one origin (a forged event, or a
    /// node that reused its dots). Anything but 0 needs an operator.
    #[serde(default)]
    pub conflicts: u64,
    /// One entry per peer, in id order.
    pub peers: Vec<PeerStatus>,
    /// Whether the node serves reads and writes yet.
    #[serde(default)]
    pub recovery: RecoveryStatus,
    /// The cluster's membership as this node holds it: every node it knows
    /// of, removed ones included, in id order.
    #[serde(default)]
    pub members: Vec<MemberEntry>,
    /// The highest version of `members`.
    #[serde(default)]
    pub members_version: u64,
}

/// One node of the cluster's membership, as every node converges on it.
///
/// Entries merge one by one: a removed entry wins over a present one, and of
/// two present ones the higher `(version, by, url)` wins. A removed id is
/// never reused: its writes are kept, and clocks keep its entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    /// The node's id.
    pub id: NodeId,
    /// Its base URL, without a trailing slash.
    pub url: String,
    /// True once the node was removed: it takes no client writes, no node
    /// sends to it, and it no longer holds back log collection.
    #[serde(default)]
    pub removed: bool,
    /// The membership version of the change that made this entry (0 for
    /// an entry from the configured seed list).
    #[serde(default)]
    pub version: u64,
    /// The node that made the change (empty for the seed list).
    #[serde(default)]
    pub by: NodeId,
}

/// The membership a node holds, sent to its peers (`POST
/// /peer/v1/members`) and answered with theirs, merged; also the answer of
/// the admin routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembersMessage {
    /// The node that sends or answers.
    pub node: NodeId,
    /// The highest version of its entries.
    #[serde(default)]
    pub version: u64,
    /// Every node it knows of, removed ones included, in id order.
    pub members: Vec<MemberEntry>,
}

/// Body of `POST /admin/v1/members`: a node to add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// The new node's id, never used before in this cluster.
    pub id: NodeId,
    /// Its base URL, as the other nodes reach it.
    pub url: String,
}

/// Body of `PUT /admin/v1/members/{id}`: a node replaced by one at a new
/// address (same id: it recovers the node's history from its peers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplaceMemberRequest {
    /// Its base URL, as the other nodes reach it.
    pub url: String,
}

/// A buffered event and the first dependency it waits for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BufferedEvent {
    /// The event.
    pub dot: Dot,
    /// Its key (a transaction's first key).
    pub key: String,
    /// A transaction's other keys (absent for a single write).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// What this node lacks to deliver it.
    pub waiting_for: Vec<Missing>,
}

/// Replication state of one peer, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PeerStatus {
    /// The peer's id.
    pub node: NodeId,
    /// Its URL.
    pub url: String,
    /// The last `applied` clock it acknowledged.
    pub acked: VClock,
    /// How many of this node's own writes it has not acknowledged.
    pub lag: Seq,
    /// True when the fault hook has paused the link to it.
    pub paused: bool,
    /// True when the last request to it succeeded.
    pub reachable: bool,
    /// The last error talking to it, if the last request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Body of a fault-hook request: an empty JSON object.
///
/// The body (sent as `application/json`) is required so that a web page on
/// another site cannot pause a link: a browser sends such a request only after a
/// CORS preflight, which the node never grants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {}

/// Answer of the fault hook: the links from this node that are paused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FaultsResponse {
    /// The node's id.
    pub node: NodeId,
    /// Peers to which replication from this node is paused.
    pub paused: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_decodes_as_the_expected_message() {
        let body = br#"{"node":"n1","applied":{"n1":2}}"#;
        let answer: ClockMessage = decode_answer(200, body).unwrap();
        assert_eq!(answer.node, "n1");
        assert_eq!(answer.applied.get("n1"), 2);
        let garbage = decode_answer::<ClockMessage>(200, b"<html>").unwrap_err();
        assert_eq!(garbage.code, "bad_answer");
    }

    #[test]
    fn an_error_keeps_the_nodes_code_or_the_raw_text() {
        let body = br#"{"error":{"code":"causal_timeout","message":"waited","missing":[{"node":"n2","have":0,"want":1}]}}"#;
        let error = decode_answer::<ClockMessage>(503, body).unwrap_err();
        assert_eq!(error.code, "causal_timeout");
        assert_eq!(error.missing.len(), 1);
        let error = decode_answer::<ClockMessage>(502, b"Bad Gateway\n").unwrap_err();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("http_502", "Bad Gateway")
        );
    }
}
