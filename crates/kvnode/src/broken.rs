//! Deliberately broken behaviours, to prove that the consistency checker
//! catches each of them (`kvctl check`'s tests). Only in debug builds with the
//! test-only `broken-causality` feature, and each only when named in the
//! comma-separated `BROKEN_CAUSALITY` variable:
//!
//! - `skip-deps`: events are delivered without checking their dependencies;
//! - `fractured-snapshots`: a snapshot read reads each key under its own lock
//!   acquisition, a pause apart, each answer with its own clock;
//! - `torn-txns`: a transaction's first write is applied with it, and its
//!   other writes only at the core's next step (a peer's batch, an
//!   acknowledgement, a client write), as if applied key by key with a yield
//!   in between.

#[cfg(not(debug_assertions))]
compile_error!(
    "the broken-causality feature is for tests only and cannot be built in release mode"
);

/// True when `BROKEN_CAUSALITY` names `fault`.
pub fn on(fault: &str) -> bool {
    static FAULTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let faults = FAULTS.get_or_init(|| {
        let text = std::env::var("BROKEN_CAUSALITY").unwrap_or_default();
        text.split(',').map(|f| f.trim().to_owned()).collect()
    });
    faults.iter().any(|f| f == fault)
}
