//! The test kit's two kinds of nodes, against this build.
//!
//! - [`in_process`]: nodes on threads of the test process, each served by
//!   `kvnode::server::run` (the binary's own entry point) on a 127.0.0.1:0
//!   listener and stopped by completing its shutdown future: they replicate,
//!   stop in order, and a durable node finds its writes again when it is
//!   started over the same data directory.
//! - [`processes`]: a node process paused with SIGSTOP answers nothing and
//!   holds nobody up; after SIGCONT it catches up.

mod common;

mod in_process {
    use std::time::Duration;

    use kv_testkit::{probe_health, Cluster};
    use serde_json::json;

    use super::common::{get, post, wait_for, EVENTUALLY};

    fn start(n: usize, env: &[(&str, &str)]) -> Cluster {
        Cluster::in_process(n)
            .envs(env.iter().copied())
            .start()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn three_nodes_replicate_and_stop_on_their_shutdown_signal() {
        let mut cluster = start(3, &[("KVNODE_MEMORY", "true")]);
        let (status, answer) = post(
            &format!("{}/write", cluster.url(1)),
            &json!({"key": "x", "value": "in process"}),
        );
        assert_eq!(status, 200, "{answer}");
        for n in [2, 3] {
            let read = format!("{}/read?key=x", cluster.url(n));
            wait_for(EVENTUALLY, format!("node{n} to read x"), || {
                match get(&read) {
                    (200, answer) if answer["value"] == json!("in process") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
        }

        for n in cluster.numbers() {
            let status = cluster.stop(n).unwrap_or_else(|e| panic!("{e}"));
            assert!(status.success(), "node{n} ended with {status}");
            assert!(!cluster.is_running(n));
            let address = cluster.address(n);
            assert!(
                probe_health(&address, Duration::from_secs(1)).is_err(),
                "node{n} still answers after its stop"
            );
        }
    }

    #[test]
    fn a_durable_node_keeps_its_writes_across_a_restart() {
        let mut cluster = start(1, &[]);
        let (status, answer) = post(
            &format!("{}/write", cluster.url(1)),
            &json!({"key": "kept", "value": 7}),
        );
        assert_eq!(status, 200, "{answer}");
        assert!(cluster.stop(1).unwrap().success());

        cluster.restart(1).unwrap_or_else(|e| panic!("{e}"));
        let (status, answer) = get(&format!("{}/read?key=kept", cluster.url(1)));
        assert_eq!((status, &answer["value"]), (200, &json!(7)), "{answer}");
        assert_eq!(answer["timestamp"], json!({"node1": 1}));
    }

    #[test]
    fn a_node_that_cannot_start_is_an_error_naming_the_setting() {
        let err = Cluster::in_process(1)
            .env("KVNODE_TLS_CERT", "/nonexistent/cert.pem")
            .start()
            .expect_err("a node without its key started");
        assert!(err.to_string().contains("tls_key"), "{err}");
    }
}

mod processes {
    use std::time::Duration;

    use kv_testkit::probe_health;
    use serde_json::json;

    use super::common::TestCluster;

    #[test]
    fn a_frozen_node_holds_nobody_up_and_catches_up_when_thawed() {
        let mut cluster = TestCluster::start_with(2, &[("KVNODE_MEMORY", "true")]);
        cluster.freeze(2).unwrap();
        let address = cluster.address(2);
        assert!(
            probe_health(&address, Duration::from_millis(300)).is_err(),
            "a stopped process answered"
        );

        let written = cluster.write(1, "k", json!("while frozen"), None);
        assert_eq!(cluster.read(1, "k").0, json!("while frozen"));

        cluster.thaw(2).unwrap();
        cluster.wait_converged(&written);
        assert_eq!(cluster.read(2, "k").0, json!("while frozen"));
        assert!(cluster.is_running(2));
    }
}
