//! Dots, values and events: what one write is.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::clock::{NodeId, Seq, VClock};

/// Names one write uniquely: the `seq`-th write accepted by `origin`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dot {
    /// The node that accepted the write from a client.
    pub origin: NodeId,
    /// Its position among that node's writes, from 1.
    pub seq: Seq,
}

impl Dot {
    /// A dot.
    pub fn new(origin: impl Into<NodeId>, seq: Seq) -> Self {
        Self {
            origin: origin.into(),
            seq,
        }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.origin, self.seq)
    }
}

/// A JSON value exactly as the client sent it.
///
/// The store never looks inside values, so it keeps their text: a number written
/// comes back as the same digits, and replicating or storing a value never
/// re-encodes it. Cloning shares the text.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Value(Arc<RawValue>);

impl Value {
    /// Parses JSON text into a value (it must be one complete JSON value).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Converts any serialisable value.
    pub fn from_serialize<T: Serialize + ?Sized>(v: &T) -> Result<Self, serde_json::Error> {
        let raw = serde_json::value::to_raw_value(v)?;
        Ok(Self(Arc::from(raw)))
    }

    /// The JSON `null`.
    pub fn null() -> Self {
        Self::from_json("null").expect("null is JSON")
    }

    /// The value's JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// Parses the value into a `serde_json::Value` (for clients and tests).
    ///
    /// Fails only when the value is nested deeper than serde_json's recursion
    /// limit (128), which a value received from a peer or stored before a depth
    /// limit was set may be.
    pub fn to_json_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(self.json())
    }

    /// How deeply arrays and objects nest in the value: 0 for a scalar, 1 for
    /// `[1]` or `{}`, 2 for `[[1]]`. Counted on the text, without recursion, so
    /// any value can be measured.
    pub fn depth(&self) -> usize {
        let (mut depth, mut deepest) = (0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &byte in self.json().as_bytes() {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        deepest
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

impl Eq for Value {}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

/// What a write does to its key. On the wire: `{"put": VALUE}` or `"delete"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Set the key to a value.
    Put(Value),
    /// Remove the key (leaves a tombstone sibling until it is stable).
    Delete,
}

impl Op {
    /// The value written, or `None` for a delete.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Op::Put(v) => Some(v),
            Op::Delete => None,
        }
    }
}

/// One write, as it is replicated between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// The node that accepted the write.
    pub origin: NodeId,
    /// Its position among the origin's writes (from 1).
    pub seq: Seq,
    /// The key written.
    pub key: String,
    /// What the write does.
    pub op: Op,
    /// The origin's `applied` clock just before the write: every write this one
    /// may depend on. `deps[origin]` is `seq - 1`.
    pub deps: VClock,
}

impl Event {
    /// About the memory the event takes: its key, its value's JSON text, and
    /// its clock (a name and a counter per entry), plus a fixed overhead. The
    /// measure of the node's limits in bytes.
    pub fn size_bytes(&self) -> usize {
        let deps: usize = self.deps.iter().map(|(node, _)| node.len() + 16).sum();
        128 + self.origin.len()
            + self.key.len()
            + self.op.value().map_or(0, |v| v.json().len())
            + deps
    }

    /// The event's dot, `(origin, seq)`.
    pub fn dot(&self) -> Dot {
        Dot::new(self.origin.clone(), self.seq)
    }

    /// The event's timestamp: `deps` with `timestamp[origin] = seq`. This is what
    /// the prototype's API calls `timestamp`.
    pub fn timestamp(&self) -> VClock {
        let mut ts = self.deps.clone();
        ts.set(&self.origin, self.seq);
        ts
    }

    /// True when this event's writer had seen the write `(origin, seq)`.
    pub fn saw(&self, origin: &str, seq: Seq) -> bool {
        origin == self.origin && seq < self.seq || self.deps.contains(origin, seq)
    }
}

/// Any JSON value.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Value {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::AnyValue)
            .description(Some("Any JSON value, kept exactly as sent"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Value {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_nesting_outside_strings() {
        for (text, depth) in [
            ("1", 0),
            (r#""[{""#, 0),
            (r#""\"[[""#, 0),
            (r#""\\""#, 0),
            ("[]", 1),
            ("{}", 1),
            (r#"{"a":[1,{"b":"]]]"}],"c":[]}"#, 3),
            (r#"[["\\",["x"]],[]]"#, 3),
        ] {
            assert_eq!(Value::from_json(text).unwrap().depth(), depth, "{text}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let deep = Value::from_json(&deep).expect("the node keeps values as text, at any depth");
        assert_eq!(deep.depth(), 100_000);
        assert!(deep.to_json_value().is_err(), "past serde_json's limit");
    }

    #[test]
    fn values_keep_their_text() {
        let v = Value::from_json("12345678901234567890123").unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            "12345678901234567890123"
        );
        let v = Value::from_json(r#"{"a":[1,2.50,"x"]}"#).unwrap();
        assert_eq!(v.json(), r#"{"a":[1,2.50,"x"]}"#);
        assert!(Value::from_json("{").is_err());
        assert_eq!(Value::null().json(), "null");
    }

    #[test]
    fn event_wire_format() {
        let e = Event {
            origin: "node1".into(),
            seq: 2,
            key: "x".into(),
            op: Op::Put(Value::from_json("5").unwrap()),
            deps: [("node1", 1), ("node2", 4)].into_iter().collect(),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"origin":"node1","seq":2,"key":"x","op":{"put":5},"deps":{"node1":1,"node2":4}}"#
        );
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(e.timestamp().get("node1"), 2);
        assert!(e.saw("node2", 4) && e.saw("node1", 1) && !e.saw("node2", 5));

        let del: Event =
            serde_json::from_str(r#"{"origin":"node2","seq":1,"key":"x","op":"delete","deps":{}}"#)
                .unwrap();
        assert_eq!(del.op, Op::Delete);
    }
}
