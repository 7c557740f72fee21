//! Observability: what the node counts and what it records.
//!
//! - [`metrics`]: counters and histograms bumped on the hot path, and their
//!   Prometheus exposition, rendered from a status snapshot.
//! - [`trace`]: a bounded ring (and an optional file) of what the node did,
//!   event by event, served at `/v1/trace` and drawn by the explorer.
//!
//! Nothing here imports the node, the HTTP layer or the replication shell:
//! they feed these modules, not the other way round.

pub mod metrics;
pub mod trace;
