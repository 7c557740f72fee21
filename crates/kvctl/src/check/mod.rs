//! `kvctl check`: a causal-consistency checker that ships with the store.
//!
//! A [`workload`] runs concurrent sessions against a cluster and records a
//! [`History`]; the [`checker`] finds in it everything a causally consistent
//! store must never show, naming the operations involved; with `--txn` the
//! sessions also do snapshot reads, which must each be one causally
//! consistent cut. A history can be
//! saved and checked again later (`kvctl check --replay FILE`). Any program
//! can record its own sessions with a [`Recorder`] and check them the same way.

pub mod checker;
pub mod history;
#[cfg(feature = "tools")]
pub mod workload;

pub use checker::{check, Report, Violation};
pub use history::{
    value_text, Api, FinalSibling, FinalState, History, Invocation, Op, OpKind, Outcome, Recorder,
};
#[cfg(feature = "tools")]
pub use workload::{finish, run, run_sessions, run_sessions_with, run_with, Mix, Workload};
