//! `kvctl check`: a causal-consistency checker that ships with the store.
//!
//! A [`workload`] runs concurrent sessions against a cluster and records a
//! [`History`]; the [`checker`] finds in it everything a causally consistent
//! store must never show, naming the operations involved. A history can be
//! saved and checked again later (`kvctl check --replay FILE`).

pub mod checker;
pub mod history;
pub mod workload;

pub use checker::{check, Report, Violation};
pub use history::{Api, FinalSibling, FinalState, History, Op, OpKind, Outcome};
pub use workload::{finish, run, run_sessions, Workload};
