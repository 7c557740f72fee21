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

/// One write to one key: a key and what is done to it. On the wire:
/// `{"key":"x","op":{"put":1}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Write {
    /// The key written.
    pub key: String,
    /// What the write does.
    pub op: Op,
}

impl Write {
    /// Sets `key` to `value`.
    pub fn put(key: impl Into<String>, value: Value) -> Self {
        Self {
            key: key.into(),
            op: Op::Put(value),
        }
    }

    /// Deletes `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            op: Op::Delete,
        }
    }
}

/// One event, as it is replicated between nodes: one write, or an atomic
/// transaction of writes to several distinct keys, under one dot.
///
/// The first (or only) write is `key` and `op`; a transaction's other writes
/// are in `also`, which is empty for a single write. A replica applies all of an
/// event's writes in one step, so no reader ever sees part of a transaction.
///
/// On the wire a single write is
/// `{"origin":..,"seq":..,"key":..,"op":..,"deps":..}`, as it always was, and a
/// transaction is `{"origin":..,"seq":..,"writes":[{"key":..,"op":..},..],"deps":..}`.
/// A transaction has no top-level `key`, so a node that predates transactions
/// refuses the whole batch (and shows the error on the link) instead of
/// applying only its first write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The node that accepted the write.
    pub origin: NodeId,
    /// Its position among the origin's writes (from 1).
    pub seq: Seq,
    /// The key of the first (or only) write.
    pub key: String,
    /// What the first (or only) write does.
    pub op: Op,
    /// A transaction's other writes, each to another key; empty for a single
    /// write.
    pub also: Vec<Write>,
    /// The origin's `applied` clock just before the write: every write this one
    /// may depend on. `deps[origin]` is `seq - 1`.
    pub deps: VClock,
}

impl Event {
    /// A single write to `key`.
    pub fn single(
        origin: impl Into<NodeId>,
        seq: Seq,
        key: impl Into<String>,
        op: Op,
        deps: VClock,
    ) -> Self {
        Self {
            origin: origin.into(),
            seq,
            key: key.into(),
            op,
            also: Vec::new(),
            deps,
        }
    }

    /// An event of one or more writes (a transaction when more than one);
    /// `None` when `writes` is empty.
    pub fn of_writes(
        origin: impl Into<NodeId>,
        seq: Seq,
        writes: Vec<Write>,
        deps: VClock,
    ) -> Option<Self> {
        let mut writes = writes.into_iter();
        let first = writes.next()?;
        Some(Self {
            origin: origin.into(),
            seq,
            key: first.key,
            op: first.op,
            also: writes.collect(),
            deps,
        })
    }

    /// Every write of the event, the first one first.
    pub fn writes(&self) -> impl Iterator<Item = (&str, &Op)> + '_ {
        std::iter::once((self.key.as_str(), &self.op))
            .chain(self.also.iter().map(|w| (w.key.as_str(), &w.op)))
    }

    /// Every write of the event as [`Write`]s, the first one first.
    pub fn to_writes(&self) -> Vec<Write> {
        let first = Write {
            key: self.key.clone(),
            op: self.op.clone(),
        };
        std::iter::once(first)
            .chain(self.also.iter().cloned())
            .collect()
    }

    /// Number of keys the event writes.
    pub fn key_count(&self) -> usize {
        1 + self.also.len()
    }

    /// True when the event is a transaction of several writes.
    pub fn is_txn(&self) -> bool {
        !self.also.is_empty()
    }

    /// What the event does to `key`, if it writes it.
    pub fn op_for(&self, key: &str) -> Option<&Op> {
        self.writes().find(|(k, _)| *k == key).map(|(_, op)| op)
    }

    /// The event's write to `key` alone, under the same dot and deps: what a
    /// key's siblings hold. `None` when the event does not write `key`.
    pub fn for_key(&self, key: &str) -> Option<Event> {
        let op = self.op_for(key)?.clone();
        Some(Self::single(
            self.origin.clone(),
            self.seq,
            key,
            op,
            self.deps.clone(),
        ))
    }

    /// About the memory the event takes: its keys, its values' JSON text, and
    /// its clock (a name and a counter per entry), plus a fixed overhead (and a
    /// smaller one per extra write). The measure of the node's limits in bytes.
    pub fn size_bytes(&self) -> usize {
        let deps = self.deps.iter().map(|(node, _)| node.as_str());
        Self::size_of(&self.origin, self.writes(), deps)
    }

    /// What [`Self::size_bytes`] says of an event with these parts: its
    /// origin, its writes and the names in its `deps`, for measuring one
    /// before it exists.
    pub fn size_of<'a>(
        origin: &str,
        writes: impl IntoIterator<Item = (&'a str, &'a Op)>,
        deps: impl IntoIterator<Item = &'a str>,
    ) -> usize {
        let (mut bytes, mut count) = (0usize, 0usize);
        for (key, op) in writes {
            bytes += key.len() + op.value().map_or(0, |v| v.json().len());
            count += 1;
        }
        let deps: usize = deps.into_iter().map(|node| node.len() + 16).sum();
        128 + 32 * count.saturating_sub(1) + origin.len() + bytes + deps
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

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        /// A write borrowed for the wire.
        #[derive(Serialize)]
        struct WriteRef<'a> {
            key: &'a str,
            op: &'a Op,
        }

        let fields = if self.is_txn() { 4 } else { 5 };
        let mut s = serializer.serialize_struct("Event", fields)?;
        s.serialize_field("origin", &self.origin)?;
        s.serialize_field("seq", &self.seq)?;
        if self.is_txn() {
            let writes: Vec<WriteRef<'_>> = self
                .writes()
                .map(|(key, op)| WriteRef { key, op })
                .collect();
            s.serialize_field("writes", &writes)?;
        } else {
            s.serialize_field("key", &self.key)?;
            s.serialize_field("op", &self.op)?;
        }
        s.serialize_field("deps", &self.deps)?;
        s.end()
    }
}

/// One event on the wire: a single write (`key` and `op`) or a transaction
/// (`writes`, two or more, to distinct keys), never both.
#[derive(Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
struct WireEvent {
    /// The node that accepted the write.
    origin: NodeId,
    /// Its position among the origin's writes (from 1).
    seq: Seq,
    /// The key of a single write.
    key: Option<String>,
    /// What a single write does.
    op: Option<Op>,
    /// A transaction's writes.
    writes: Option<Vec<Write>>,
    /// The origin's `applied` clock just before the write.
    deps: VClock,
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Event {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        WireEvent::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Event {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        WireEvent::schemas(schemas);
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        let w = WireEvent::deserialize(deserializer)?;
        match (w.key, w.op, w.writes) {
            (Some(key), Some(op), None) => Ok(Event::single(w.origin, w.seq, key, op, w.deps)),
            (None, None, Some(writes)) if writes.len() >= 2 => {
                Ok(Event::of_writes(w.origin, w.seq, writes, w.deps).expect("two writes or more"))
            }
            (None, None, Some(_)) => Err(D::Error::custom(
                "an event's `writes` holds two writes or more (a single write uses `key` and `op`)",
            )),
            _ => Err(D::Error::custom(
                "an event has either `key` and `op`, or `writes`",
            )),
        }
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
        let e = Event::single(
            "node1",
            2,
            "x",
            Op::Put(Value::from_json("5").unwrap()),
            [("node1", 1), ("node2", 4)].into_iter().collect(),
        );
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

    #[test]
    fn a_transaction_is_one_event_with_its_writes_listed() {
        let put = |v: &str| Op::Put(Value::from_json(v).unwrap());
        let writes = vec![
            Write {
                key: "a".into(),
                op: put("1"),
            },
            Write {
                key: "b".into(),
                op: Op::Delete,
            },
        ];
        let deps: VClock = [("node2", 3)].into_iter().collect();
        let e = Event::of_writes("node1", 4, writes, deps).unwrap();
        assert!(e.is_txn());
        assert_eq!(e.key_count(), 2);
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"origin":"node1","seq":4,"writes":[{"key":"a","op":{"put":1}},{"key":"b","op":"delete"}],"deps":{"node2":3}}"#
        );
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);

        assert_eq!(e.op_for("b"), Some(&Op::Delete));
        assert_eq!(e.op_for("c"), None);
        let b = e.for_key("b").unwrap();
        assert!(!b.is_txn());
        assert_eq!((b.dot(), b.key.as_str(), &b.deps), (e.dot(), "b", &e.deps));
        assert!(e.size_bytes() > b.size_bytes());

        // A node that predates transactions reads events with this shape; it
        // must refuse a transaction rather than apply only its first write.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OlderEvent {
            origin: String,
            seq: u64,
            key: String,
            op: Op,
            deps: VClock,
        }
        assert!(serde_json::from_str::<OlderEvent>(&text).is_err());
    }

    #[test]
    fn malformed_event_shapes_are_refused() {
        for text in [
            r#"{"origin":"n","seq":1,"key":"a","deps":{}}"#,
            r#"{"origin":"n","seq":1,"op":"delete","deps":{}}"#,
            r#"{"origin":"n","seq":1,"writes":[{"key":"a","op":"delete"}],"deps":{}}"#,
            r#"{"origin":"n","seq":1,"writes":[],"deps":{}}"#,
            r#"{"origin":"n","seq":1,"key":"a","op":"delete","writes":[{"key":"b","op":"delete"},{"key":"c","op":"delete"}],"deps":{}}"#,
        ] {
            let err = serde_json::from_str::<Event>(text).unwrap_err().to_string();
            assert!(
                err.contains("`key`") || err.contains("`writes`"),
                "{text}: {err}"
            );
        }
    }
}
