//! kvnode: one node of a causally consistent key-value store.
//!
//! # The guarantee
//!
//! Causal+ consistency. Every node applies a write only after every write that
//! causally precedes it, and nodes that have applied the same writes hold the
//! same state. Any node accepts writes without coordinating with the others, so
//! the store stays writable when nodes are cut off; writes replicate in the
//! background.
//!
//! # The design
//!
//! - [`core`] is the causal core, free of IO: vector clocks, the delivery rule
//!   with its buffer, the multi-value register per key, log collection. The
//!   simulation tests drive it directly.
//! - [`store`] is the core's synchronous storage trait and its in-memory store.
//! - [`node`] runs the core behind one writer thread that groups commands into
//!   one commit, and waits for clients' causal contexts.
//! - [`replication`] pushes each node's writes to every peer, batched, retrying
//!   until acknowledged.
//! - [`http`] maps the three APIs (the prototype's, the native `/v1`, the peer
//!   API) and the fault hook onto the node; [`error`] maps failures to statuses.
//! - [`config`] loads settings from defaults, a TOML file and the environment.
//!
//! # What is left out
//!
//! Membership is static. Storage is in memory: a restarted node starts empty.
//! Only a write's origin sends it to peers, so a write whose origin dies before
//! reaching every peer stays where it reached. Stable tombstones are not
//! collected yet.

pub mod config;
pub mod core;
pub mod error;
pub mod http;
pub mod node;
pub mod replication;
pub mod store;
