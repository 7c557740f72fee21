//! Process-level tests of security and operations: real `kvnode` processes on
//! loopback ports.
//!
//! - [`auth`]: the peer API and the fault hook need the cluster secret, the
//!   client API the client token; refused requests change nothing, and
//!   replication works with the secret; a client token without a cluster
//!   secret stops the node at start.
//! - [`limits`]: a slow client cannot hold the node: an unfinished request head
//!   is closed after `header_timeout`, an unfinished body gets a 408 JSON error
//!   after `request_timeout`, and other clients are served meanwhile; idle
//!   trace streams cannot take the connections peers need; with large values
//!   and a peer cut off, the log in memory stays within `log_memory_bytes`.
//! - [`shutdown`]: on SIGTERM a node lets its in-flight request finish, keeps
//!   what it acknowledged, logs each step and exits 0, within
//!   `shutdown_timeout` even when a client holds a connection open.
//! - [`tls`]: peers replicate over HTTPS verified with the cluster's CA, with
//!   certificates made at run time (rcgen); clients that do not trust the CA,
//!   and plain HTTP, are refused; bad certificate settings stop the node at
//!   start, named.

mod common;

use serde_json::Value;

/// Starts one in-memory node with `vars` and waits for it to exit, as a node
/// with a bad setting does at start: its exit status and its log.
fn refused_start<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> (std::process::ExitStatus, String)
where
    K: Into<String>,
    V: Into<String>,
{
    let mut node = common::nodes(1)
        .no_wait()
        .env("KVNODE_MEMORY", "true")
        .envs(vars)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let status = common::wait_for(common::EVENTUALLY, "kvnode to exit", || {
        node.exit_status(1)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_owned())
    });
    let log = node.log(1);
    (status, log)
}

/// An agent for requests with headers of our own (the harness sends none).
fn agent() -> ureq::Agent {
    kv_testkit::http::agent().clone()
}

/// Sends a request with an optional bearer token and JSON body; any status is
/// `Ok`, transport failures are `Err`.
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let mut request = agent.request(method, url);
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    let response = match result {
        Ok(response) | Err(ureq::Error::Status(_, response)) => response,
        Err(e) => return Err(format!("{method} {url}: {e}")),
    };
    let status = response.status();
    let text = response.into_string().map_err(|e| e.to_string())?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, body))
}

mod auth {
    use serde_json::json;

    use super::common::{get, vclock, wait_for, TestCluster, EVENTUALLY};
    use super::{agent, send};

    const SECRET: &str = "cluster-secret-for-tests-0123456789";
    const TOKEN: &str = "client-token-for-tests-0123456789";

    #[test]
    fn peer_api_needs_the_cluster_secret_and_client_api_the_token() {
        let cluster = TestCluster::start_with(
            2,
            &[
                ("KVNODE_CLUSTER_SECRET", SECRET),
                ("KVNODE_CLIENT_TOKEN", TOKEN),
            ],
        );
        let agent = agent();
        let url = |n: usize, path: &str| format!("{}{path}", cluster.url(n));
        let before = cluster.clock(2);

        // A forged batch, a clock exchange and the fault hook, without the
        // secret, with a wrong one, and with the client token: 401, nothing changes.
        let forged = json!({"from": "node1", "events": [{
            "origin": "node1", "seq": 1, "key": "k", "op": {"put": "forged"},
            "deps": {"node1": 0, "node2": 0}
        }]});
        let sync = json!({"node": "node1", "applied": {"node1": 0, "node2": 0}});
        for token in [None, Some("wrong-secret-0123456789abc"), Some(TOKEN)] {
            for (method, path, body) in [
                ("POST", "/peer/v1/events", Some(&forged)),
                ("POST", "/peer/v1/sync", Some(&sync)),
                ("GET", "/admin/v1/links", None),
                ("POST", "/admin/v1/links/node1/pause", Some(&json!({}))),
            ] {
                let (status, answer) = send(&agent, method, &url(2, path), token, body).unwrap();
                assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
                assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
            }
        }
        assert_eq!(
            cluster.clock(2),
            before,
            "a refused batch changed the clock"
        );
        let (status, links) = send(
            &agent,
            "GET",
            &url(2, "/admin/v1/links"),
            Some(SECRET),
            None,
        )
        .unwrap();
        assert_eq!((status, &links["paused"]), (200, &json!([])), "{links}");

        // Client routes need the client token; the cluster secret does not open them.
        let client_routes = [
            ("POST", "/write", Some(json!({"key": "k", "value": 1}))),
            ("GET", "/read?key=k", None),
            ("GET", "/v1/kv/k", None),
            ("PUT", "/v1/kv/k", Some(json!({"value": 1}))),
            ("DELETE", "/v1/kv/k", None),
            ("GET", "/status", None),
            ("GET", "/metrics", None),
        ];
        for (method, path, body) in &client_routes {
            for token in [None, Some(SECRET)] {
                let (status, answer) =
                    send(&agent, method, &url(1, path), token, body.as_ref()).unwrap();
                assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            }
        }
        assert_eq!(cluster.clock(1), before);
        for path in ["/health", "/openapi.json"] {
            assert_eq!(get(&url(1, path)).0, 200, "{path} needs no token");
        }

        // With the token, a write is accepted; with the secret, it replicates.
        let (status, answer) = send(
            &agent,
            "POST",
            &url(1, "/write"),
            Some(TOKEN),
            Some(&json!({"key": "k", "value": "real"})),
        )
        .unwrap();
        assert_eq!(status, 200, "{answer}");
        cluster.wait_converged(&vclock(&[("node1", 1)]));
        let value = wait_for(EVENTUALLY, "node2 to read the write", || {
            let (status, answer) = send(&agent, "GET", &url(2, "/read?key=k"), Some(TOKEN), None)?;
            match (status, &answer["value"]) {
                (200, v) if *v == json!("real") => Ok(v.clone()),
                _ => Err(format!("{status} {answer}")),
            }
        });
        assert_eq!(value, json!("real"));

        // Neither secret ever reaches a log.
        for n in cluster.numbers() {
            let log = std::fs::read_to_string(cluster.log_path(n)).unwrap();
            assert!(
                !log.contains(SECRET) && !log.contains(TOKEN),
                "node{n}'s log shows a secret"
            );
        }
    }

    /// A client token without a cluster secret would leave the peer API open
    /// while clients believe the cluster is protected: the node refuses to
    /// start, exits 2 and names both settings.
    #[test]
    fn a_client_token_without_a_cluster_secret_stops_the_node() {
        let (status, log) = super::refused_start([("KVNODE_CLIENT_TOKEN", TOKEN)]);
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(
            log.contains("client_token") && log.contains("cluster_secret"),
            "the refusal should name both settings: {log}"
        );
        assert!(!log.contains(TOKEN), "the log shows the token: {log}");
    }
}

mod limits {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use serde_json::{json, Value};

    use super::common::TestCluster;

    fn connect(cluster: &TestCluster, n: usize) -> TcpStream {
        let address = cluster.url(n).trim_start_matches("http://").to_owned();
        let stream = TcpStream::connect(address).expect("a connection");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Reads until the server closes the connection (or the read timeout).
    fn read_all(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn a_slow_client_cannot_hold_the_node() {
        let cluster = TestCluster::start_with(
            1,
            &[
                ("KVNODE_WORKERS", "1"),
                ("KVNODE_HEADER_TIMEOUT", "1s"),
                ("KVNODE_CAUSAL_WAIT", "500ms"),
                ("KVNODE_REQUEST_TIMEOUT", "2s"),
            ],
        );
        let before = cluster.clock(1);

        // A head that never ends, and a body that never ends.
        let mut slow_head = connect(&cluster, 1);
        slow_head
            .write_all(b"GET /health HTTP/1.1\r\nHost: slow\r\n")
            .unwrap();
        let mut slow_body = connect(&cluster, 1);
        let started = Instant::now();
        slow_body
            .write_all(
                b"POST /write HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{\"key\":\"k\",",
            )
            .unwrap();

        // The one worker serves everybody else meanwhile.
        for _ in 0..20 {
            assert_eq!(cluster.get(1, "/health").0, 200);
        }

        let answer = read_all(&mut slow_head);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "the unfinished head got {answer:?}"
        );
        let answer = read_all(&mut slow_body);
        let elapsed = started.elapsed();
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "the unfinished body got {answer:?}"
        );
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
            "answered after {elapsed:?}"
        );
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"]["code"], json!("request_timeout"), "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("request_timeout"),
            "{body}"
        );
        assert_eq!(cluster.clock(1), before);
    }

    /// Idle trace streams cannot lock peers out: with as many streams asked
    /// for as the node takes connections, only `max_trace_streams` are
    /// served, the others get 503 naming the limit, and replication and
    /// clients go on.
    #[test]
    fn trace_streams_cannot_take_the_connections_peers_need() {
        let cluster = TestCluster::start_with(
            2,
            &[
                ("KVNODE_WORKERS", "1"),
                ("KVNODE_MAX_CONNECTIONS", "8"),
                ("KVNODE_MAX_TRACE_STREAMS", "4"),
                ("KVNODE_TRACE_BUFFER", "100"),
            ],
        );
        // A record in the trace, so that a served stream answers at once.
        cluster.write(1, "before", json!(1), None);
        let mut served = Vec::new();
        let mut refused = 0;
        for _ in 0..8 {
            let mut stream = connect(&cluster, 1);
            stream
                .write_all(b"GET /v1/trace/stream?after=0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut head = [0u8; 512];
            let n = stream.read(&mut head).unwrap();
            let head = String::from_utf8_lossy(&head[..n]).into_owned();
            if head.starts_with("HTTP/1.1 200") {
                served.push(stream);
            } else {
                assert!(head.starts_with("HTTP/1.1 503"), "{head}");
                let answer = head + &read_all(&mut stream);
                assert!(answer.contains("max_trace_streams"), "{answer}");
                refused += 1;
            }
        }
        assert_eq!((served.len(), refused), (4, 4));

        // node2's writes still reach node1, and node1 still serves clients.
        let written = cluster.write(2, "during", json!("streams open"), None);
        cluster.wait_converged(&written);
        assert_eq!(cluster.read(1, "during").0, json!("streams open"));
        drop(served);
    }

    /// With large values and a peer cut off, the log held in memory stays
    /// within `log_memory_bytes`; the rest waits on disk and reaches the peer
    /// once it is back.
    #[test]
    fn the_log_in_memory_stays_within_its_bytes_with_large_values() {
        let cluster = TestCluster::start_with(2, &[("KVNODE_LOG_MEMORY_BYTES", "3000000")]);
        cluster.pause(1, 2);
        let value = json!("v".repeat(900_000));
        let mut last = None;
        for i in 0..12 {
            last = Some(cluster.write(1, &format!("k{i}"), value.clone(), None));
        }
        let status: Value = cluster.status(1);
        assert_eq!(status["log_len"], json!(12), "{}", status["log_len"]);
        let held = status["log_in_memory_bytes"].as_u64().unwrap();
        assert!(
            (900_000..=3_000_000).contains(&held),
            "log_in_memory_bytes = {held}"
        );
        assert!(status["log_in_memory"].as_u64().unwrap() <= 3);

        cluster.resume(1, 2);
        cluster.wait_converged(&last.unwrap());
        assert_eq!(cluster.read(2, "k0").0, value, "read back from disk");
    }
}

mod shutdown {
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::common::{encode, get, try_request, wait_until, TestCluster, EVENTUALLY};

    /// `kvnode_http_requests_in_flight` of node `n` (this scrape included).
    fn in_flight(cluster: &TestCluster, n: usize) -> u64 {
        let (status, body) = get(&format!("{}/metrics", cluster.url(n)));
        assert_eq!(status, 200);
        body.as_str()
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("kvnode_http_requests_in_flight "))
            .and_then(|v| v.parse().ok())
            .expect("the in-flight gauge")
    }

    #[test]
    fn sigterm_lets_the_in_flight_request_finish_keeps_writes_and_exits_0() {
        let mut cluster = TestCluster::start_with(2, &[("KVNODE_CAUSAL_WAIT", "3s")]);
        let kept = cluster.write(1, "kept", json!("acknowledged"), None);
        cluster.wait_converged(&kept);

        // node1 waits for a write of node2 that cannot reach it.
        cluster.pause(2, 1);
        let ts = cluster.write(2, "k", json!("v"), None);
        let url = format!(
            "{}/v1/kv/k?context={}",
            cluster.url(1),
            encode(&json!(ts).to_string())
        );
        let waiting = std::thread::spawn(move || try_request("GET", &url, None));
        wait_until(EVENTUALLY, "the read to be in flight", || {
            in_flight(&cluster, 1) >= 2
        });

        let started = Instant::now();
        let status = cluster.stop(1);
        let took = started.elapsed();
        assert!(status.success(), "node1 exited with {status}");
        let (code, answer) = waiting
            .join()
            .unwrap()
            .expect("the in-flight request got an answer, not a reset");
        assert_eq!(code, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "causal_timeout", "{answer}");
        assert!(took < Duration::from_secs(8), "stopping took {took:?}");

        let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
        for step in [
            "SIGTERM: shutting down",
            "the HTTP server has stopped",
            "replication senders stopped",
            "the writer committed its last group",
            "stopped: applied",
        ] {
            assert!(log.contains(step), "the log lacks {step:?}:\n{log}");
        }

        // What it acknowledged is there after a restart.
        cluster.restart(1);
        assert_eq!(cluster.read(1, "kept").0, json!("acknowledged"));
        cluster.resume(2, 1);
        cluster.wait_converged(&ts);
    }

    #[test]
    fn sigterm_does_not_wait_for_a_silent_client_beyond_shutdown_timeout() {
        let mut cluster = TestCluster::start_with(
            1,
            &[
                ("KVNODE_SHUTDOWN_TIMEOUT", "2s"),
                ("KVNODE_HEADER_TIMEOUT", "60s"),
            ],
        );
        let address = cluster.url(1).trim_start_matches("http://").to_owned();
        let mut silent = TcpStream::connect(address).unwrap();
        silent.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
        // Let the node take the connection before the signal.
        assert_eq!(cluster.get(1, "/health").0, 200);
        let started = Instant::now();
        let status = cluster.stop(1);
        let took = started.elapsed();
        assert!(status.success(), "exited with {status}");
        assert!(took < Duration::from_secs(6), "stopping took {took:?}");
        drop(silent);
    }
}

mod tls {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use serde_json::json;

    use super::common::{nodes, try_request, wait_for, EVENTUALLY};
    use super::send;

    const SECRET: &str = "cluster-secret-for-tests-0123456789";

    /// A CA that signs certificates for 127.0.0.1 and localhost.
    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new(name: &str) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).unwrap();
            Self { cert, key }
        }

        /// Writes `ca.pem`, `node.pem` and `node.key` into `dir`.
        fn issue(&self, dir: &Path) -> [PathBuf; 3] {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                    .unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            let files = [
                dir.join("ca.pem"),
                dir.join("node.pem"),
                dir.join("node.key"),
            ];
            std::fs::write(&files[0], self.cert.pem()).unwrap();
            std::fs::write(&files[1], cert.pem()).unwrap();
            std::fs::write(&files[2], key.serialize_pem()).unwrap();
            files
        }

        /// An agent that trusts this CA only.
        fn agent(&self) -> ureq::Agent {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.cert.der().clone()).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            ureq::AgentBuilder::new()
                .tls_config(Arc::new(config))
                .timeout(Duration::from_secs(10))
                .build()
        }
    }

    #[test]
    fn peers_replicate_over_https_verified_with_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("kvnode test CA");
        let [ca_pem, cert, key] = ca.issue(dir.path());
        let cluster = nodes(2)
            .https()
            .env("KVNODE_MEMORY", "true")
            .env("KVNODE_CLUSTER_SECRET", SECRET)
            .env("KVNODE_TLS_CERT", cert.display().to_string())
            .env("KVNODE_TLS_KEY", key.display().to_string())
            .env("KVNODE_TLS_CA", ca_pem.display().to_string())
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let urls = cluster.urls();
        let agent = ca.agent();
        for url in &urls {
            wait_for(
                EVENTUALLY,
                format!("{url}/health over HTTPS"),
                || match send(&agent, "GET", &format!("{url}/health"), None, None)? {
                    (200, _) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
        }

        let (status, answer) = send(
            &agent,
            "POST",
            &format!("{}/write", urls[0]),
            None,
            Some(&json!({"key": "k", "value": "over tls"})),
        )
        .unwrap();
        assert_eq!(status, 200, "{answer}");
        wait_for(
            EVENTUALLY,
            "node2 to apply node1's write over HTTPS",
            || {
                let (_, answer) = send(
                    &agent,
                    "GET",
                    &format!("{}/read?key=k", urls[1]),
                    None,
                    None,
                )?;
                if answer["value"] == json!("over tls") {
                    Ok(())
                } else {
                    Err(answer.to_string())
                }
            },
        );

        // A client that trusts another CA, and plain HTTP, get nowhere.
        let stranger = Ca::new("another CA").agent();
        let refused = send(&stranger, "GET", &format!("{}/health", urls[0]), None, None);
        assert!(
            refused.is_err(),
            "an untrusted certificate was accepted: {refused:?}"
        );
        let plain = try_request(
            "GET",
            &format!("http://{}/health", cluster.address(1)),
            None,
        );
        assert!(
            !matches!(plain, Ok((200, _))),
            "plain HTTP was served: {plain:?}"
        );
    }

    #[test]
    fn bad_certificate_settings_stop_the_node_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let [ca_pem, cert, key] = Ca::new("kvnode test CA").issue(dir.path());
        let [_, other_cert, _] = {
            let other = dir.path().join("other");
            std::fs::create_dir(&other).unwrap();
            Ca::new("another CA").issue(&other)
        };
        let missing = dir.path().join("missing.pem");
        let text = |p: &PathBuf| p.display().to_string();
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (vec![("KVNODE_TLS_CERT", text(&cert))], "tls_key"),
            (
                vec![
                    ("KVNODE_TLS_CERT", text(&missing)),
                    ("KVNODE_TLS_KEY", text(&key)),
                ],
                "tls_cert",
            ),
            (
                vec![
                    ("KVNODE_TLS_CERT", text(&cert)),
                    ("KVNODE_TLS_KEY", text(&cert)),
                ],
                "tls_key",
            ),
            (
                vec![
                    ("KVNODE_TLS_CERT", text(&other_cert)),
                    ("KVNODE_TLS_KEY", text(&key)),
                ],
                "tls_cert and tls_key",
            ),
            (vec![("KVNODE_TLS_CA", text(&key))], "tls_ca"),
            (
                vec![
                    ("KVNODE_TLS_CA", text(&ca_pem)),
                    ("KVNODE_REQUEST_TIMEOUT", "1s".to_owned()),
                ],
                "request_timeout",
            ),
        ];
        for (vars, setting) in cases {
            let (status, log) = super::refused_start(vars.iter().cloned());
            assert_eq!(status.code(), Some(2), "{vars:?}: {log}");
            assert!(
                log.contains(setting),
                "{vars:?} should name {setting}: {log}"
            );
        }
    }
}
