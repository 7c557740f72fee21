//! `kvctl check` against real nodes: a correct build passes, and a build that
//! delivers events without checking their dependencies is caught.
//!
//! The test builds kvnode twice into its own target directory (once as shipped,
//! once with the test-only `broken-causality` feature), starts three nodes of
//! each, cuts the link node1 -> node3 with the fault hook so that node3 receives
//! node2's writes before the node1 writes they depend on, and runs the checker's
//! sessions through the prototype API (and, against the correct build, through
//! the native API too). Then it resumes the link and lets the nodes converge.

mod common;

use std::time::Duration;

use common::{build_kvnode, set_link, start, Cluster};
use kvctl::check::{self, Api, Workload};

/// Runs the checker's sessions with node1 -> node3 cut, then resumes the link
/// and checks the whole history.
fn check_with_cut_link(cluster: &Cluster, api: Api) -> check::Report {
    let workload = Workload {
        nodes: cluster.urls.clone(),
        api,
        sessions: 6,
        ops_per_session: 80,
        keys: 3,
        write_ratio: 0.5,
        timeout: Duration::from_secs(5),
        quiesce_timeout: Duration::from_secs(20),
        seed: 7,
        token: None,
    };
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
    let broken = build_kvnode(&["broken-causality"], "broken");

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
