//! The causal core: the rules of the store and of its replication protocol,
//! with no IO.
//!
//! Everything here takes commands and answers with what happened or what to
//! do. Nothing touches a socket, reads a clock or needs a runtime: time is an
//! input (a [`std::time::Duration`] since any fixed start, on the caller's
//! clock), storage is the synchronous [`crate::storage::Store`] trait, and
//! messages are values the caller sends. The node's async shell carries out
//! the outputs; the simulation tests drive the very same code on simulated
//! time, with a network that loses, duplicates and delays.
//!
//! - [`delivery`]: one replica's state ([`Core`]): local writes, the delivery
//!   rule with its buffer, the multi-value register per key, reads, log
//!   collection once events are stable.
//! - [`replication`]: the link from this node to one peer ([`Link`]): what to
//!   push and when, retransmission, repair through any replica, the idle
//!   clock exchange, and the checks on what a peer acknowledges.
//! - [`recovery`]: whether a starting node may accept writes, or must first
//!   bootstrap its own history back from a peer ([`Recovery`]).
//! - [`membership`]: which nodes make up the cluster ([`Membership`]), as
//!   replicated state that merges entry by entry.
//! - [`context`]: how a client's causal context relates to a replica's
//!   history, and the bounded wait for it ([`ContextWait`]), which asks an
//!   origin whether writes a context counts exist at all.
//!
//! Inside the core, `context` depends on nothing, `delivery` on `context` and
//! the store, `replication` on the store's results only.

pub mod context;
pub mod delivery;
pub mod membership;
pub mod recovery;
pub mod replication;

pub use context::{check_context, ContextCheck, ContextError, ContextWait, WaitStep};
pub use delivery::*;
pub use membership::{Membership, MembershipError};
pub use recovery::{Decision, Phase, Recovery, Trust};
pub use replication::Link;
