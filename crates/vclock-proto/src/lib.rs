//! Vector clocks and every message of the causal key-value store.
//!
//! This crate is pure data: no IO, no runtime. The server (`kvnode`) and the
//! client (`kvctl`) share these types, so the wire format is defined once.
//!
//! # The model
//!
//! - A [`VClock`] maps node ids to counters; a missing entry is 0. On the wire it
//!   is the JSON object `{"node1":2,"node2":1,"node3":0}`, as in the prototype this
//!   store replaces.
//! - A write is an [`Event`]: its origin node, its `seq` among that node's writes,
//!   the key, the [`Op`] (or, for an atomic transaction, several keys and
//!   their writes), and `deps`, the origin's `applied` clock just before the
//!   write. `(origin, seq)` is its [`Dot`]; `deps` with `[origin] = seq` is its
//!   timestamp.
//! - Values are kept as the JSON text the client sent ([`Value`]), so they come
//!   back unchanged.
//!
//! Clock comparison ([`VClock::compare`]) is a partial order, and
//! [`VClock::merge`] is its least upper bound; property tests check the laws.
//!
//! # What is left out
//!
//! Clocks are sparse ordered maps keyed by node name: simple and exact, but each
//! clock costs a few allocations. Membership is static, so a clock's size is the
//! cluster's size; a dense, index-based clock would be faster and is not needed yet.

mod api;
mod clock;
mod event;
mod trace;

pub use api::*;
pub use clock::{Causality, Missing, NodeId, Seq, VClock};
pub use event::{Dot, Event, Op, Value, Write};
pub use trace::{TraceEvent, TraceKind, TraceQuery, TraceRef, TraceResponse, TRACE_CAUSE_HEADER};
