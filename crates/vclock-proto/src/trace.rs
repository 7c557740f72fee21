//! Trace records: what a node did, with its vector clock at that moment.
//!
//! A node with tracing on records every local write, batch sent and received,
//! event buffered or delivered, and read, and serves them at `GET /v1/trace`
//! (a [`TraceResponse`]) and as server-sent events at `GET /v1/trace/stream`
//! (one [`TraceEvent`] per `data:` line).
//!
//! Each record has an `id` that numbers the node's records from 1 (since the
//! node started). A `receive` names the `send` it came from in `cause`, so the
//! records of all nodes form one happens-before graph: the space-time diagram,
//! or a ShiViz log (`kvctl trace`).

use serde::{Deserialize, Serialize};

use crate::clock::{Missing, NodeId, VClock};
use crate::event::{Dot, Value, Write};

/// What a trace record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A client write accepted here (`dot`, `key`, `value` unless a delete).
    Write,
    /// A batch of events sent to `peer` (`dots`).
    Send,
    /// A batch received from `peer` (`dots`; `cause` is the sender's `send`).
    Receive,
    /// A received event that cannot be applied yet (`dot`, `key`); `missing`
    /// names what it waits for.
    Buffered,
    /// A received event applied on arrival (`dot`, `key`).
    Deliver,
    /// A buffered event applied once what it waited for arrived (`dot`, `key`).
    DeliverFromBuffer,
    /// A client read (`key`, `value` of the single-value view, `siblings`).
    Read,
    /// A write or delivery left `key` with concurrent values (`siblings` > 1).
    Siblings,
    /// A write or delivery replaced the concurrent values of `key` with one.
    Resolved,
}

impl TraceKind {
    /// The name used on the wire and in ShiViz logs (`deliver_from_buffer`).
    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::Write => "write",
            TraceKind::Send => "send",
            TraceKind::Receive => "receive",
            TraceKind::Buffered => "buffered",
            TraceKind::Deliver => "deliver",
            TraceKind::DeliverFromBuffer => "deliver_from_buffer",
            TraceKind::Read => "read",
            TraceKind::Siblings => "siblings",
            TraceKind::Resolved => "resolved",
        }
    }
}

impl std::fmt::Display for TraceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reference to one trace record of one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceRef {
    /// The node that recorded it.
    pub node: NodeId,
    /// Its id in that node's trace.
    pub id: u64,
}

/// One trace record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceEvent {
    /// The node that recorded it.
    pub node: NodeId,
    /// Numbers the node's records from 1, in the order they happened.
    pub id: u64,
    /// Wall-clock time, microseconds since the Unix epoch.
    pub time_us: u64,
    /// What happened.
    pub kind: TraceKind,
    /// The node's `applied` clock just after it happened.
    pub clock: VClock,
    /// The key concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The write concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dot: Option<Dot>,
    /// The value written, or read (absent for a delete or a missing key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: Option<Value>,
    /// The other end of a `send` or `receive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<NodeId>,
    /// For a `receive`: the sender's `send` record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<TraceRef>,
    /// The writes of a batch (`send`, `receive`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dots: Vec<Dot>,
    /// What a `buffered` event waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    /// How many siblings the key has after the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub siblings: Option<u64>,
    /// For a transaction (`write`, `deliver`, `deliver_from_buffer`,
    /// `buffered`): every key it writes, and what it does to each; `key` and
    /// `value` are then those of its first write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writes: Vec<Write>,
}

impl TraceEvent {
    /// A record with only the required fields set.
    pub fn new(node: NodeId, id: u64, time_us: u64, kind: TraceKind, clock: VClock) -> Self {
        Self {
            node,
            id,
            time_us,
            kind,
            clock,
            key: None,
            dot: None,
            value: None,
            peer: None,
            cause: None,
            dots: Vec::new(),
            missing: Vec::new(),
            siblings: None,
            writes: Vec::new(),
        }
    }
}

/// Query of `GET /v1/trace` and `GET /v1/trace/stream`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams, utoipa::ToSchema))]
pub struct TraceQuery {
    /// Only records with an id above this one.
    #[serde(default)]
    pub after: Option<u64>,
}

/// Answer to `GET /v1/trace`: the records the node still holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceResponse {
    /// The node.
    pub node: NodeId,
    /// True when the node keeps a trace in memory (`trace_buffer` > 0).
    pub enabled: bool,
    /// The id of the last record made so far (0 if none).
    pub last_id: u64,
    /// Records, oldest first. The node keeps the last `trace_buffer` records;
    /// older ones are gone.
    pub events: Vec<TraceEvent>,
}

/// The HTTP header that carries a replication batch's `send` record to the
/// receiver, as `node/id` (for example `node1/12`).
pub const TRACE_CAUSE_HEADER: &str = "kv-trace-cause";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_fields_are_left_out_and_read_back() {
        let mut e = TraceEvent::new(
            "n3".into(),
            4,
            1_700_000_000_000_000,
            TraceKind::Buffered,
            VClock::zeroed(["n1".to_string(), "n3".to_string()]),
        );
        e.key = Some("x".into());
        e.dot = Some(Dot::new("n2", 1));
        e.missing = vec![Missing {
            node: "n1".into(),
            have: 0,
            want: 1,
        }];
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains(r#""kind":"buffered""#), "{json}");
        assert!(!json.contains("cause") && !json.contains("dots"), "{json}");
        let back: TraceEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
        let kind: TraceKind = serde_json::from_str(r#""deliver_from_buffer""#).unwrap();
        assert_eq!(kind.as_str(), "deliver_from_buffer");
    }
}
