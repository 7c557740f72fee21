//! `kvctl check` against real nodes: a correct build passes, a build that
//! delivers events without checking their dependencies is caught, and so are
//! one whose snapshot reads read key by key and one that applies atomic writes
//! key by key (`kvctl check --txn`).
//!
//! The test builds kvnode twice into its own target directory (once as shipped,
//! once with the test-only `broken-causality` feature, whose faults are each
//! turned on by naming them in `BROKEN_CAUSALITY`), starts three nodes of each,
//! cuts the link node1 -> node3 with the fault hook so that node3 receives
//! node2's writes before the node1 writes they depend on, and runs the checker's
//! sessions through the prototype API (and, against the correct build, through
//! the native API too). Then it resumes the link and lets the nodes converge.

mod common;

use std::time::Duration;

use common::{build_kvnode, set_link, start, Cluster};
use kvctl::check::{self, Api, Mix, Workload};

/// Six sessions of `ops` operations each on three keys, half of them writes.
fn workload(cluster: &Cluster, api: Api, ops: usize, seed: u64) -> Workload {
    Workload {
        nodes: cluster.urls.clone(),
        api,
        sessions: 6,
        ops_per_session: ops,
        keys: 3,
        write_ratio: 0.5,
        timeout: Duration::from_secs(5),
        quiesce_timeout: Duration::from_secs(20),
        seed,
        token: None,
    }
}

/// Runs the checker's sessions with node1 -> node3 cut, then resumes the link
/// and checks the whole history.
fn check_with_cut_link(cluster: &Cluster, api: Api) -> check::Report {
    let workload = workload(cluster, api, 80, 7);
    set_link(cluster, 1, 3, "pause");
    let system = actix_rt::System::new();
    let mut history = system.block_on(check::run_sessions(&workload));
    set_link(cluster, 1, 3, "resume");
    system.block_on(check::finish(&workload, &mut history));
    assert!(history.quiescent, "the nodes did not reach the same clock");
    check::check(&history)
}

#[test]
fn the_checker_passes_a_correct_build_and_catches_a_broken_one() {
    let correct = build_kvnode(&[], "correct");
    let broken = broken_build();

    let cluster = start(&correct, &[]);
    for api in [Api::Compat, Api::Native] {
        let report = check_with_cut_link(&cluster, api);
        assert!(
            report.violations.is_empty(),
            "a correct build must pass ({api:?}): {:#?}",
            &report.violations[..report.violations.len().min(5)]
        );
        assert_eq!(report.converged, Some(true));
        assert!(report.reads_checked > 0, "{api:?}: {report:?}");
    }

    let report = check_with_cut_link(
        &start(&broken, &[("BROKEN_CAUSALITY", "skip-deps")]),
        Api::Compat,
    );
    let kinds: std::collections::BTreeSet<&str> =
        report.violations.iter().map(|v| v.kind.as_str()).collect();
    assert!(
        !report.violations.is_empty(),
        "delivering without the dependency check must be caught"
    );
    println!("violations found in the broken build: {kinds:?}");
}

/// Builds the test-only broken kvnode (`broken-causality`), whose faults are
/// each on when named in `BROKEN_CAUSALITY`. One binary for every test, so
/// that it is built once.
fn broken_build() -> std::path::PathBuf {
    build_kvnode(&["broken-causality"], "broken")
}

/// Runs the checker's sessions with snapshot reads and atomic writes
/// (`kvctl check --txn`) against `cluster` and checks the whole history.
fn check_with_snapshots(cluster: &Cluster, seed: u64) -> check::Report {
    let workload = workload(cluster, Api::Native, 100, seed);
    let history = actix_rt::System::new().block_on(check::run_with(&workload, Mix::txn()));
    assert!(history.quiescent, "the nodes did not reach the same clock");
    check::check(&history)
}

/// Runs [`check_with_snapshots`] with seeds 1 to 5 until a violation of
/// `wanted` is found; the kinds of every violation found.
fn kinds_found_until(cluster: &Cluster, wanted: &str) -> std::collections::BTreeSet<String> {
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=5 {
        let report = check_with_snapshots(cluster, seed);
        assert!(report.snapshots_checked > 0, "{report:?}");
        if let Some(v) = report.violations.iter().find(|v| v.kind == wanted) {
            println!("run {seed}: {v}");
        }
        kinds.extend(report.violations.into_iter().map(|v| v.kind));
        if kinds.contains(wanted) {
            break;
        }
    }
    kinds
}

#[test]
fn snapshot_reads_pass_a_correct_build_and_a_fractured_one_is_caught() {
    let correct = build_kvnode(&[], "correct");
    let fractured = broken_build();

    let report = check_with_snapshots(&start(&correct, &[]), 11);
    assert!(
        report.violations.is_empty(),
        "a correct build must pass: {:#?}",
        &report.violations[..report.violations.len().min(5)]
    );
    assert_eq!(report.converged, Some(true));
    assert!(report.snapshots_checked > 0, "{report:?}");
    assert!(report.atomic_writes > 0, "{report:?}");

    // Reading key by key, a pause apart, a snapshot shows a write without
    // one it depends on whenever both arrive in the pause: it takes some
    // luck, so a few runs at most.
    let cluster = start(&fractured, &[("BROKEN_CAUSALITY", "fractured-snapshots")]);
    let kinds = kinds_found_until(&cluster, "snapshot_not_closed");
    println!("violations found in the fractured build: {kinds:?}");
    assert!(
        kinds.contains("snapshot_not_closed") && kinds.contains("snapshot_clocks_differ"),
        "fractured snapshots must be caught: {kinds:?}"
    );
}

#[test]
fn atomic_writes_applied_key_by_key_are_caught() {
    let torn = broken_build();
    // A transaction's other writes wait for the node's next step: a read in
    // between sees part of it. It takes some luck, so a few runs at most.
    let cluster = start(&torn, &[("BROKEN_CAUSALITY", "torn-txns")]);
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 1..=5 {
        let report = check_with_snapshots(&cluster, seed);
        if let Some(v) = report
            .violations
            .iter()
            .find(|v| v.kind == "fractured_read")
        {
            println!("run {seed}: {v}");
        }
        kinds.extend(report.violations.into_iter().map(|v| v.kind));
        if kinds.contains("fractured_read") {
            break;
        }
    }
    println!("violations found in the torn build: {kinds:?}");
    assert!(
        kinds.contains("fractured_read"),
        "atomic writes applied key by key must be caught: {kinds:?}"
    );
}
