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
//! # The design, layer by layer
//!
//! Each layer is a folder (or a file) and imports only the layers listed
//! below it; no two modules import each other.
//!
//! | layer | what it is | may import |
//! |---|---|---|
//! | [`storage`] | the core's synchronous storage trait; the in-memory store; the fjall store (one atomic batch per group of commands) and its journal | nothing of the crate |
//! | [`core`] | the rules, free of IO: delivery with its buffer, the multi-value register, log collection ([`core::delivery`]); the replication protocol per peer ([`core::replication`]); the wait for a client's context ([`core::context`]). Time is an input. | `storage` |
//! | [`observe`] | counters and histograms, their Prometheus exposition rendered from a status snapshot; the trace of what the node does | `core` (the trace records its steps) |
//! | [`config`] | settings from defaults, a TOML file and the environment | `storage` (durability modes) |
//! | [`tls`] | certificates of HTTPS and of requests to peers (rustls) | `config` |
//! | [`error`] | the node's errors, each with its HTTP status | `core` |
//! | [`node`] | the shell around the core: one writer thread that groups commands into one commit, the committed clock, context waits; its replication tasks ([`node::replication`]) and peer client ([`node::peer`]) carry out the core's decisions | all of the above |
//! | [`http`] | the route table, the three APIs (the prototype's, the native `/v1`, the peer API), operations, the fault hook, the OpenAPI document and the explorer at `/ui` | all of the above |
//! | [`server`] | a node from its configuration on a listening socket until a shutdown future completes, stopped in order: what the binary runs, and what tests start in-process | all of the above |
//!
//! The simulation tests drive [`core`] and [`storage`] directly, on simulated
//! time; `docs/design.md` states the rules they check.
//!
//! # Security and operations
//!
//! With a `cluster_secret`, peer and fault-hook requests must carry it as a
//! bearer token (compared in constant time); with a `client_token`, so must
//! client requests (all but `/health` and `/openapi.json`). Every input has a
//! limit that a 4xx JSON error names: body, key and value sizes, events per
//! batch, the time to send a request head (`header_timeout`) and a whole
//! request (`request_timeout`), open connections. On SIGTERM or SIGINT the
//! node stops accepting, finishes in-flight requests (at most
//! `shutdown_timeout`), lets the replication senders finish the batch they are
//! sending, commits what the writer holds, and exits 0.
//!
//! # What is left out
//!
//! Membership is static (the configured node list). The buffer of
//! undeliverable events lives in memory:
//! after a restart, peers resend what it held. Peers' acknowledged clocks are
//! not stored, so after a restart the log is collected only once every peer has
//! answered again. A value is stored twice while its event is in the log.

pub mod config;
pub mod core;
pub mod error;
pub mod http;
pub mod node;
pub mod observe;
pub mod server;
pub mod storage;
pub mod tls;

mod probe;

#[cfg(feature = "broken-causality")]
pub(crate) mod broken;
pub use probe::probe_health;
