//! `kvctl bench` against a real three-node cluster (built once into
//! target/check-nodes, as the other tests do): every workload for a fixed
//! number of requests, and the lag, checked through the JSON report. Nothing
//! here asserts on speed: only that the counts add up, nothing failed, and the
//! percentiles are ordered.

mod common;

use std::process::Command;

use common::{build_kvnode, start, Cluster};
use kvctl::bench::{BenchReport, Percentiles};

/// Runs `kvctl -o json bench ARGS` against every node of `cluster`.
fn bench(cluster: &Cluster, args: &[&str]) -> BenchReport {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    for url in &cluster.urls {
        command.args(["--node", url]);
    }
    let out = command
        .args(["-o", "json", "--timeout", "30s", "bench"])
        .args(args)
        .env_remove("KVCTL_NODES")
        .env_remove("KVCTL_TOKEN")
        .output()
        .expect("kvctl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "kvctl bench {args:?}: stdout {stdout}, stderr {stderr}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not a report ({e}): {stdout}"))
}

fn assert_ordered(p: &Percentiles, count: u64, what: &str) {
    assert_eq!(p.count, count, "{what}: {p:?}");
    assert!(p.is_ordered(), "{what}: percentiles out of order: {p:?}");
    assert!(p.p50 > 0.0 && p.mean > 0.0, "{what}: {p:?}");
}

/// Checks a load report of exactly `requests` requests, all successful.
fn assert_clean_load(report: &BenchReport, workload: &str, requests: u64) {
    assert_eq!(report.settings.workload, workload);
    assert_eq!(report.settings.requests, Some(requests));
    assert_eq!(report.settings.node_ids, ["node1", "node2", "node3"]);
    let load = report.load.as_ref().expect("a load report");
    assert_eq!(load.errors, 0, "{workload}: {:?}", load.error_samples);
    assert!(load.errors_by_kind.is_empty());
    assert_eq!(load.ok, requests);
    assert_eq!(load.requests, load.ok + load.errors);
    assert!(load.elapsed_s > 0.0 && load.rate > 0.0, "{load:?}");
    // The client's own CPU, in ticks of /proc: present, and per request
    // consistent with the total.
    let (cpu, per) = (
        load.client_cpu_s.unwrap(),
        load.client_cpu_us_per_request.unwrap(),
    );
    assert!((per - cpu * 1e6 / requests as f64).abs() < 1e-6, "{load:?}");
    let latency = load.latency_ms.as_ref().expect("latencies");
    assert_ordered(latency, requests, workload);
    assert!(report.lag.is_none());
}

#[test]
fn every_workload_reports_consistent_figures() {
    let cluster = start(&build_kvnode(&[], "bench"), &[]);

    let report = bench(&cluster, &["health", "-c", "6", "-r", "300"]);
    assert_clean_load(&report, "health", 300);
    assert_eq!(report.settings.connections, 6);

    let report = bench(
        &cluster,
        &[
            "write",
            "-c",
            "6",
            "-r",
            "300",
            "--keys",
            "20",
            "--value-size",
            "50",
        ],
    );
    assert_clean_load(&report, "write", 300);
    assert_eq!(report.load.as_ref().unwrap().populated, 0);

    // Reads write the key space first, then read it.
    let report = bench(&cluster, &["read", "-c", "4", "-r", "200", "--keys", "30"]);
    assert_clean_load(&report, "read", 200);
    assert_eq!(report.load.as_ref().unwrap().populated, 30);

    // Mixed with sessions over two client threads, on both APIs: the reads and
    // writes are reported apart as well, and add up.
    for api in ["compat", "native"] {
        let report = bench(
            &cluster,
            &[
                "mixed",
                "-c",
                "6",
                "-r",
                "400",
                "--keys",
                "30",
                "--read-ratio",
                "0.5",
                "--sessions",
                "--threads",
                "2",
                "--no-populate",
                "--api",
                api,
            ],
        );
        assert_clean_load(&report, "mixed", 400);
        assert_eq!(report.settings.api, api);
        assert!(report.settings.sessions);
        assert_eq!(report.settings.threads, 2);
        assert_eq!(report.settings.read_ratio, Some(0.5));
        let load = report.load.as_ref().unwrap();
        let reads = load.read_latency_ms.expect("read latencies");
        let writes = load.write_latency_ms.expect("write latencies");
        assert_eq!(reads.count + writes.count, 400);
        assert!(reads.count > 0 && writes.count > 0, "{reads:?} {writes:?}");
        assert_ordered(&reads, reads.count, "mixed reads");
        assert_ordered(&writes, writes.count, "mixed writes");
    }

    // Atomic writes and snapshot reads of 3 keys each, with sessions.
    for workload in ["write", "read"] {
        let report = bench(
            &cluster,
            &[
                workload,
                "-r",
                "60",
                "-c",
                "3",
                "--keys",
                "20",
                "--api",
                "native",
                "--txn-keys",
                "3",
                "--sessions",
            ],
        );
        assert_clean_load(&report, workload, 60);
        assert_eq!(
            (report.settings.txn_keys, report.settings.api.as_str()),
            (3, "native")
        );
    }

    // The lag alone: every sample is seen at both other nodes.
    let report = bench(&cluster, &["--lag", "--lag-samples", "12"]);
    assert!(report.load.is_none());
    assert_eq!(report.settings.workload, "lag");
    let lag = report.lag.expect("a lag report");
    assert_eq!(lag.samples, 12);
    assert_eq!(lag.not_visible, 0);
    assert!(lag.errors_by_kind.is_empty(), "{:?}", lag.error_samples);
    assert_eq!(
        lag.per_node_ms.keys().collect::<Vec<_>>(),
        ["node1", "node2", "node3"]
    );
    // Each write is read back at the two nodes it was not written at.
    for p in lag.per_node_ms.values() {
        assert_ordered(p, 8, "lag per node");
    }
    assert_ordered(&lag.all_ms.expect("all"), 24, "lag");
    assert!(lag.mean_polls >= 1.0);
}

#[test]
fn bad_arguments_and_unreachable_nodes_fail_clearly() {
    let kvctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(args)
            .env_remove("KVCTL_NODES")
            .output()
            .expect("kvctl runs")
    };
    let out = kvctl(&["bench", "write", "--read-ratio", "0.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--read-ratio"));

    for (args, says) in [
        (&["bench", "write", "--txn-keys", "2"][..], "--api native"),
        (
            &[
                "bench",
                "read",
                "--api",
                "native",
                "--txn-keys",
                "5",
                "--keys",
                "4",
            ][..],
            "--keys",
        ),
        (&["bench", "read", "--txn-keys", "0"][..], "at least 1"),
    ] {
        let out = kvctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    let out = kvctl(&["-n", "http://127.0.0.1:1", "bench", "--lag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("two nodes"));

    let out = kvctl(&["-n", "http://127.0.0.1:1", "bench", "health", "-r", "5"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://127.0.0.1:1"));
}
