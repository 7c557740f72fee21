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
//! - [`store`] is the core's synchronous storage trait and its in-memory store;
//!   [`durable`] is the production store on fjall: one atomic batch per group
//!   of commands, synced before any of them is acknowledged.
//! - [`node`] runs the core behind one writer thread that groups commands into
//!   one commit, and waits for clients' causal contexts.
//! - [`replication`] pushes each node's writes to every peer, batched, retrying
//!   until acknowledged.
//! - [`http`] maps the three APIs (the prototype's, the native `/v1`, the peer
//!   API) and the fault hook onto the node; [`error`] maps failures to statuses.
//! - [`config`] loads settings from defaults, a TOML file and the environment.
//! - [`server`] runs a node from its configuration on a listening socket until a
//!   shutdown future completes, then stops it in order: what the binary runs.
//! - [`metrics`] counts with atomics and serves the Prometheus text format;
//!   [`openapi`] is the OpenAPI document of every route; [`tls`] loads the
//!   certificates of HTTPS (rustls, no OpenSSL).
//! - [`ui`] serves the causality explorer at `/ui`: a live space-time diagram
//!   of the nodes' traces, with controls to write, read and pause links.
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
//! Membership is static. The buffer of undeliverable events lives in memory:
//! after a restart, peers resend what it held. Peers' acknowledged clocks are
//! not stored, so after a restart the log is collected only once every peer has
//! answered again. A value is stored twice while its event is in the log.

pub mod config;
pub mod core;
pub mod durable;
pub mod error;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod replication;
pub mod server;
pub mod store;
pub mod tls;
pub mod trace;
pub mod ui;

mod probe;
pub use probe::probe_health;
