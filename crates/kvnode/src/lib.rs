//! kvnode: one node of a causally consistent key-value store.

pub mod core;
pub mod store;
