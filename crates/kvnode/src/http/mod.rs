//! The HTTP shell: the route table, its registration, and the route groups.
//!
//! One table ([`ENDPOINTS`]) drives the routes, the OpenAPI document and the
//! metric labels. Handlers live in [`routes`]: each extracts, makes one call
//! into the node, and answers JSON. [`middleware`] counts and bounds every
//! request; [`openapi`] describes the table; [`ui`] serves the explorer.
//!
//! Within this folder, `mod.rs` imports the others; `openapi` imports
//! `routes`; `routes` imports `middleware`; nothing imports `mod.rs`.

pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse, Route};

use self::middleware::Observe;
use self::routes::*;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::observe::metrics;

/// Room for everything in a client body besides the key and the value.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// One route of the node.
#[derive(Debug)]
pub struct Endpoint {
    /// Its method.
    pub method: Method,
    /// Its actix path pattern.
    pub pattern: &'static str,
    /// Its path as in the OpenAPI document and the `route` label of metrics.
    pub path: &'static str,
    route: fn(Route) -> Route,
}

const fn endpoint(
    method: Method,
    pattern: &'static str,
    path: &'static str,
    route: fn(Route) -> Route,
) -> Endpoint {
    Endpoint {
        method,
        pattern,
        path,
        route,
    }
}

/// Every route of the node, by group. `configure` registers exactly these, the
/// OpenAPI document describes them (a test checks it), and metrics label
/// requests with their `path`.
pub const ENDPOINTS: &[Endpoint] = &[
    // Compatibility API (the prototype's).
    endpoint(Method::GET, "/health", "/health", |r| r.to(health)),
    endpoint(Method::POST, "/write", "/write", |r| r.to(write)),
    endpoint(Method::GET, "/read", "/read", |r| r.to(read)),
    // Native API.
    endpoint(Method::GET, "/v1/kv/{key:.*}", "/v1/kv/{key}", |r| {
        r.to(get_key)
    }),
    endpoint(Method::PUT, "/v1/kv/{key:.*}", "/v1/kv/{key}", |r| {
        r.to(put_key)
    }),
    endpoint(Method::DELETE, "/v1/kv/{key:.*}", "/v1/kv/{key}", |r| {
        r.to(delete_key)
    }),
    endpoint(Method::POST, "/v1/txn/read", "/v1/txn/read", |r| {
        r.to(txn_read)
    }),
    endpoint(Method::POST, "/v1/txn/write", "/v1/txn/write", |r| {
        r.to(txn_write)
    }),
    // Peer API: replication and clock exchange.
    endpoint(Method::POST, "/peer/v1/events", "/peer/v1/events", |r| {
        r.to(receive_events)
    }),
    endpoint(Method::POST, "/peer/v1/sync", "/peer/v1/sync", |r| {
        r.to(sync_clock)
    }),
    endpoint(
        Method::POST,
        "/peer/v1/snapshot",
        "/peer/v1/snapshot",
        |r| r.to(snapshot),
    ),
    endpoint(Method::POST, "/peer/v1/members", "/peer/v1/members", |r| {
        r.to(peer_members)
    }),
    // Membership changes.
    endpoint(Method::GET, "/admin/v1/members", "/admin/v1/members", |r| {
        r.to(members)
    }),
    endpoint(
        Method::POST,
        "/admin/v1/members",
        "/admin/v1/members",
        |r| r.to(add_member),
    ),
    endpoint(
        Method::DELETE,
        "/admin/v1/members/{id}",
        "/admin/v1/members/{id}",
        |r| r.to(remove_member),
    ),
    endpoint(
        Method::PUT,
        "/admin/v1/members/{id}",
        "/admin/v1/members/{id}",
        |r| r.to(replace_member),
    ),
    // Operations.
    endpoint(Method::GET, "/status", "/status", |r| r.to(status)),
    endpoint(Method::GET, "/metrics", "/metrics", |r| r.to(metrics_text)),
    endpoint(Method::GET, "/v1/trace", "/v1/trace", |r| r.to(trace)),
    endpoint(Method::GET, "/v1/trace/stream", "/v1/trace/stream", |r| {
        r.to(trace_stream)
    }),
    endpoint(Method::GET, "/openapi.json", "/openapi.json", |r| {
        r.to(openapi_json)
    }),
    // Fault hook, off unless configured.
    endpoint(Method::GET, "/admin/v1/links", "/admin/v1/links", |r| {
        r.to(links)
    }),
    endpoint(
        Method::POST,
        "/admin/v1/links/{peer}/{action}",
        "/admin/v1/links/{peer}/{action}",
        |r| r.to(set_link),
    ),
];

/// The `route` labels of request metrics, one per endpoint.
pub fn route_labels() -> impl Iterator<Item = &'static str> {
    ENDPOINTS.iter().map(|e| e.path)
}

/// Registers every route of a node, each wrapped in the request metrics and
/// `request_timeout`. Shared by `main` and the tests.
pub fn configure(node: Arc<Node>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let config = node.config().clone();
        let client_limit = config
            .max_key_bytes
            .saturating_add(config.max_value_bytes)
            .saturating_add(ENVELOPE_BYTES);
        // A transaction's body: its keys and values, plus room for the JSON
        // around each write and around the whole.
        let txn_limit = config
            .max_txn_bytes
            .max(config.max_txn_keys.saturating_mul(config.max_key_bytes))
            .saturating_add(config.max_txn_keys.saturating_mul(64))
            .saturating_add(ENVELOPE_BYTES)
            .max(client_limit);
        let peer_limit = config
            .max_batch_bytes
            .max(client_limit)
            .max(txn_limit)
            .saturating_mul(2);
        let metrics = node.metrics().clone();
        metrics.register_routes(route_labels());
        let document = ApiDocument(openapi::document_for(&config).to_string());
        cfg.app_data(web::Data::from(node))
            .app_data(web::Data::new(document))
            .app_data(json_config(
                client_limit,
                "max_key_bytes + max_value_bytes + 64 KiB",
            ))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| Error::BadRequest(format!("invalid path: {e}")).into()),
            );
        let mut patterns: Vec<&str> = Vec::new();
        for e in ENDPOINTS {
            if !patterns.contains(&e.pattern) {
                patterns.push(e.pattern);
            }
        }
        for pattern in patterns {
            let mut resource = web::resource(pattern).default_service(web::to(method_not_allowed));
            if pattern == "/peer/v1/events" {
                resource = resource.app_data(json_config(peer_limit, "2 x max_batch_bytes"));
            }
            if pattern.starts_with("/v1/txn/") {
                let setting = "max_txn_bytes + 64 bytes per write + 64 KiB";
                resource = resource.app_data(json_config(txn_limit, setting));
            }
            let mut label = pattern;
            for e in ENDPOINTS.iter().filter(|e| e.pattern == pattern) {
                resource = resource.route((e.route)(web::method(e.method.clone())));
                label = e.path;
            }
            cfg.service(resource.wrap(Observe {
                route: metrics.route(label),
                metrics: metrics.clone(),
                timeout: config.request_timeout,
            }));
        }
        // The explorer page and its proxy: not part of the node's API, so
        // outside ENDPOINTS (neither in the OpenAPI document nor in metrics).
        ui::configure(cfg);
        cfg.default_service(web::to(not_found));
    }
}

fn json_config(limit: usize, setting: &'static str) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |e, _| json_error(e, limit, setting).into())
}

fn json_error(e: JsonPayloadError, limit: usize, setting: &str) -> Error {
    match e {
        JsonPayloadError::ContentType => Error::UnsupportedMediaType(
            "the body must be JSON, sent with Content-Type: application/json".into(),
        ),
        JsonPayloadError::Overflow { .. } => Error::TooLarge(format!(
            "the body is larger than the limit of {limit} bytes ({setting})"
        )),
        JsonPayloadError::OverflowKnownLength { length, .. } => Error::TooLarge(format!(
            "the body is {length} bytes, larger than the limit of {limit} bytes ({setting})"
        )),
        JsonPayloadError::Deserialize(e) if e.is_eof() && e.line() == 1 && e.column() == 0 => {
            Error::BadRequest("the body is empty; expected a JSON object".into())
        }
        JsonPayloadError::Deserialize(e) => Error::BadRequest(format!("invalid JSON body: {e}")),
        other => Error::BadRequest(format!("cannot read the body: {other}")),
    }
}

fn query_error(e: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    let QueryPayloadError::Deserialize(e) = e else {
        return Error::BadRequest(format!("invalid query string: {e}")).into();
    };
    Error::BadRequest(format!("invalid query string: {e}")).into()
}

async fn not_found(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse> {
    let metrics = node.metrics();
    metrics.request(
        metrics.route(metrics::UNMATCHED),
        req.method(),
        actix_web::http::StatusCode::NOT_FOUND,
        Duration::ZERO,
    );
    Err(Error::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let error = Error::BadRequest(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.path()
    ));
    let mut body = error.body();
    body.error.code = "method_not_allowed".into();
    let pattern = req.match_pattern();
    let allow: Vec<&str> = ENDPOINTS
        .iter()
        .filter(|e| Some(e.pattern) == pattern.as_deref())
        .map(|e| e.method.as_str())
        .collect();
    HttpResponse::MethodNotAllowed()
        .insert_header((actix_web::http::header::ALLOW, allow.join(", ")))
        .json(body)
}

#[cfg(test)]
mod tests {
    use actix_web::http::StatusCode;
    use actix_web::test::{self, TestRequest};
    use actix_web::App;
    use serde_json::{json, Value as Json};

    use vclock_proto::{Op, VClock};

    use crate::observe::metrics::NAMES;

    use super::*;
    use crate::node::test_node;

    const SECRET: &str = "cluster-secret-0123456789";
    const TOKEN: &str = "client-token-0123456789";

    fn event(origin: &str, seq: u64) -> Json {
        json!({"origin": origin, "seq": seq, "key": "k", "op": {"put": seq}, "deps": {origin: seq - 1}})
    }

    #[actix_web::test]
    async fn a_buffer_full_in_bytes_answers_503_naming_the_limit() {
        let node = test_node(&[("KVNODE_MAX_BUFFERED_BYTES", "1000")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        // n2:2 waits for n2:1; with its 2000-byte value it does not fit.
        let big = "v".repeat(2000);
        let batch = json!({"from": "n2", "events": [
            {"origin": "n2", "seq": 2, "key": "k", "op": {"put": big}, "deps": {"n2": 1}}
        ]});
        let res = test::call_service(
            &app,
            TestRequest::post()
                .uri("/peer/v1/events")
                .set_json(&batch)
                .to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Json = test::read_body_json(res).await;
        assert_eq!(body["error"]["code"], "buffer_full");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("max_buffered_bytes = 1000"), "{message}");
        let status = node.status();
        assert_eq!((status.buffered_total, status.buffered_bytes), (0, 0));
    }

    #[actix_web::test]
    async fn a_recovering_node_answers_no_question_and_does_not_take_one_as_an_exchange() {
        let node = test_node(&[("KVNODE_FORCE_NEW_HISTORY", "false")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let ask = |uri: &str, applied: Json| {
            TestRequest::post()
                .uri(uri)
                .set_json(json!({"node": "n2", "applied": applied}))
                .to_request()
        };
        let res = test::call_service(&app, ask("/peer/v1/sync?question=true", json!({}))).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Json = test::read_body_json(res).await;
        assert_eq!(body["error"]["code"], "recovering");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("which writes it made"), "{message}");
        assert!(
            node.not_live().unwrap().contains("waiting for n2, n3"),
            "a question says nothing of what n2 holds"
        );
        // An exchange counts: n2 holds none of n1's writes.
        let res = test::call_service(&app, ask("/peer/v1/sync", json!({"n1": 0}))).await;
        assert_eq!(res.status(), StatusCode::OK);
        let waiting = node.not_live().unwrap();
        assert!(
            waiting.contains("waiting for n3") && !waiting.contains("n2"),
            "{waiting}"
        );
        let res = test::call_service(&app, ask("/peer/v1/sync?question=maybe", json!({}))).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    }

    #[actix_web::test]
    async fn a_live_node_answers_a_question_with_its_clock() {
        let node = test_node(&[]);
        node.write(
            "k".into(),
            Op::Put(vclock_proto::Value::from_serialize(&1).unwrap()),
        )
        .await
        .unwrap();
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let req = TestRequest::post()
            .uri("/peer/v1/sync?question=true")
            .set_json(json!({"node": "n2", "applied": {}}))
            .to_request();
        let answer: Json = test::call_and_read_body_json(&app, req).await;
        assert_eq!(answer["applied"]["n1"], 1);
    }

    #[actix_web::test]
    async fn a_clock_exchange_claiming_writes_never_made_is_refused() {
        let node = test_node(&[]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let sync = json!({"node": "n2", "applied": {"n1": 5, "n2": 0}});
        let res = test::call_service(
            &app,
            TestRequest::post()
                .uri("/peer/v1/sync")
                .set_json(&sync)
                .to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: Json = test::read_body_json(res).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("counts 5 writes of n1, which has made only 0"),
            "{message}"
        );
        let n2 = node
            .status()
            .peers
            .into_iter()
            .find(|p| p.node == "n2")
            .unwrap();
        assert_eq!(n2.acked.get("n1"), 0, "nothing recorded");
    }

    #[actix_web::test]
    async fn membership_changes_refuse_bad_input_and_change_nothing() {
        let node = test_node(&[("KVNODE_MEMORY", "true")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let before = node.members();
        for (method, path, body, status, code) in [
            (
                Method::POST,
                "/admin/v1/members",
                Some(json!({"id": "../x", "url": "http://x:1"})),
                400,
                "bad_request",
            ),
            (
                Method::POST,
                "/admin/v1/members",
                Some(json!({"id": "n4", "url": "x:1"})),
                400,
                "bad_request",
            ),
            (
                Method::POST,
                "/admin/v1/members",
                Some(json!({"id": "n4"})),
                400,
                "bad_request",
            ),
            (
                Method::POST,
                "/admin/v1/members",
                Some(json!({"id": "n2", "url": "http://elsewhere:1"})),
                409,
                "conflict",
            ),
            (
                Method::DELETE,
                "/admin/v1/members/n1",
                None,
                409,
                "conflict",
            ),
            (
                Method::DELETE,
                "/admin/v1/members/n9",
                None,
                404,
                "not_found",
            ),
            (
                Method::PUT,
                "/admin/v1/members/n9",
                Some(json!({"url": "http://x:1"})),
                404,
                "not_found",
            ),
            (
                Method::PUT,
                "/admin/v1/members/n2",
                Some(json!({"url": ""})),
                400,
                "bad_request",
            ),
        ] {
            let mut req = TestRequest::default().method(method.clone()).uri(path);
            if let Some(body) = &body {
                req = req.set_json(body);
            }
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), status, "{method} {path} {body:?}");
            let answer: serde_json::Value = test::read_body_json(res).await;
            assert_eq!(answer["error"]["code"], code, "{method} {path}: {answer}");
        }
        assert_eq!(node.members(), before, "nothing changed");

        let add = TestRequest::post()
            .uri("/admin/v1/members")
            .set_json(json!({"id": "n4", "url": "http://127.0.0.1:9/"}));
        let res = test::call_service(&app, add.to_request()).await;
        assert_eq!(res.status(), 200);
        let answer: serde_json::Value = test::read_body_json(res).await;
        assert_eq!(answer["version"], 1, "{answer}");
        assert_eq!(node.links().len(), 3, "a link to n4 started");
        let moved = TestRequest::put()
            .uri("/admin/v1/members/n2")
            .set_json(json!({"url": "http://127.0.0.1:10"}));
        let res = test::call_service(&app, moved.to_request()).await;
        assert_eq!(res.status(), 200);
        let links = node.links();
        let n2 = links.iter().find(|l| l.member.id == "n2").unwrap();
        assert_eq!(n2.member.url, "http://127.0.0.1:10", "the link to n2 moved");
        assert_eq!(node.members().version(), 2);
        let remove = TestRequest::delete().uri("/admin/v1/members/n4");
        let res = test::call_service(&app, remove.to_request()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(node.links().len(), 2, "the link to n4 stopped");
        let again = TestRequest::post()
            .uri("/admin/v1/members")
            .set_json(json!({"id": "n4", "url": "http://127.0.0.1:9"}));
        let res = test::call_service(&app, again.to_request()).await;
        assert_eq!(res.status(), 409, "a removed id is never reused");
        assert_eq!(node.status().members_version, 3);
    }

    #[actix_web::test]
    async fn peer_and_admin_routes_need_the_cluster_secret() {
        let node = test_node(&[("KVNODE_CLUSTER_SECRET", SECRET), ("KVNODE_FAULTS", "true")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let batch = json!({"from": "n2", "events": [event("n2", 1)]});
        let sync = json!({"node": "n2", "applied": {"n2": 0}});
        for auth in [None, Some("wrong-secret-0123456789"), Some("")] {
            for (method, path, body) in [
                (Method::POST, "/peer/v1/events", Some(&batch)),
                (Method::POST, "/peer/v1/sync", Some(&sync)),
                (Method::GET, "/admin/v1/links", None),
                (Method::POST, "/admin/v1/links/n2/pause", Some(&json!({}))),
                (Method::GET, "/admin/v1/members", None),
                (Method::DELETE, "/admin/v1/members/n3", None),
            ] {
                let mut req = TestRequest::default().method(method.clone()).uri(path);
                if let Some(body) = body {
                    req = req.set_json(body);
                }
                if let Some(token) = auth {
                    req = req.insert_header(("Authorization", format!("Bearer {token}")));
                }
                let res = test::call_service(&app, req.to_request()).await;
                assert_eq!(
                    res.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} {auth:?}"
                );
                assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
                let body: Json = test::read_body_json(res).await;
                assert_eq!(body["error"]["code"], "unauthorized", "{body}");
                assert!(!body.to_string().contains(SECRET));
            }
        }
        assert_eq!(
            node.committed().get("n2"),
            0,
            "a refused batch changed nothing"
        );
        assert!(node.links().iter().all(|l| !l.is_paused()));

        let req = TestRequest::post()
            .uri("/peer/v1/events")
            .insert_header(("Authorization", format!("Bearer {SECRET}")))
            .set_json(&batch)
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(node.committed().get("n2"), 1);
        let req = TestRequest::post()
            .uri("/peer/v1/sync")
            .insert_header(("Authorization", format!("bearer {SECRET}")))
            .set_json(&sync)
            .to_request();
        let res = test::call_service(&app, req).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "the scheme is case-insensitive"
        );
        // Client routes stay open: no client_token is configured.
        let res =
            test::call_service(&app, TestRequest::get().uri("/read?key=k").to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// A cross-site form can send a bodyless or `text/plain` POST without the
    /// node's consent; the fault hook answers neither.
    #[actix_web::test]
    async fn the_fault_hook_needs_a_json_body() {
        let node = test_node(&[("KVNODE_FAULTS", "true")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let path = "/admin/v1/links/n2/pause";
        for (content_type, body, status) in [
            (None, "", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (Some("text/plain"), "{}", StatusCode::UNSUPPORTED_MEDIA_TYPE),
            (
                Some("application/x-www-form-urlencoded"),
                "a=b",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (Some("application/json"), "", StatusCode::BAD_REQUEST),
            (
                Some("application/json"),
                r#"{"pause":true}"#,
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let mut req = TestRequest::post().uri(path).set_payload(body);
            if let Some(content_type) = content_type {
                req = req.insert_header(("Content-Type", content_type));
            }
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), status, "{content_type:?} {body:?}");
            let answer: Json = test::read_body_json(res).await;
            assert!(answer["error"]["message"].is_string(), "{answer}");
            assert!(node.links().iter().all(|l| !l.is_paused()), "{body:?}");
        }
        let req = TestRequest::post().uri(path).set_json(json!({}));
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(node.links().iter().any(|l| l.is_paused()));
    }

    #[actix_web::test]
    async fn client_routes_need_the_client_token_but_health_and_the_document_do_not() {
        let node = test_node(&[
            ("KVNODE_CLIENT_TOKEN", TOKEN),
            ("KVNODE_CLUSTER_SECRET", SECRET),
        ]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let client_routes = [
            (
                Method::POST,
                "/write",
                Some(json!({"key": "k", "value": 1})),
            ),
            (Method::GET, "/read?key=k", None),
            (Method::GET, "/v1/kv/k", None),
            (Method::PUT, "/v1/kv/k", Some(json!({"value": 2}))),
            (Method::DELETE, "/v1/kv/k", None),
            (Method::GET, "/status", None),
            (Method::GET, "/metrics", None),
        ];
        for (method, path, body) in &client_routes {
            for auth in [None, Some(SECRET)] {
                let mut req = TestRequest::default().method(method.clone()).uri(path);
                if let Some(body) = body {
                    req = req.set_json(body);
                }
                if let Some(token) = auth {
                    req = req.insert_header(("Authorization", format!("Bearer {token}")));
                }
                let res = test::call_service(&app, req.to_request()).await;
                assert_eq!(
                    res.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} {auth:?}"
                );
            }
        }
        assert_eq!(node.committed().get("n1"), 0);
        for (method, path, body) in &client_routes {
            let mut req = TestRequest::default()
                .method(method.clone())
                .uri(path)
                .insert_header(("Authorization", format!("Bearer {TOKEN}")));
            if let Some(body) = body {
                req = req.set_json(body);
            }
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), StatusCode::OK, "{method} {path}");
        }
        assert_eq!(node.committed().get("n1"), 3);
        // The client token does not open the peer API.
        let req = TestRequest::post()
            .uri("/peer/v1/sync")
            .insert_header(("Authorization", format!("Bearer {TOKEN}")))
            .set_json(json!({"node": "n2", "applied": {}}))
            .to_request();
        assert_eq!(
            test::call_service(&app, req).await.status(),
            StatusCode::UNAUTHORIZED
        );
        for path in ["/health", "/openapi.json"] {
            let res = test::call_service(&app, TestRequest::get().uri(path).to_request()).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
        }
    }

    #[actix_web::test]
    async fn the_openapi_document_is_served() {
        let app = test::init_service(App::new().configure(configure(test_node(&[])))).await;
        let res =
            test::call_service(&app, TestRequest::get().uri("/openapi.json").to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let document: Json = test::read_body_json(res).await;
        assert!(document["openapi"].as_str().unwrap().starts_with("3."));
        for e in ENDPOINTS {
            let method = e.method.as_str().to_lowercase();
            assert!(
                document["paths"][e.path][&method].is_object(),
                "{} {} is not in the served document",
                e.method,
                e.path
            );
        }
    }

    #[actix_web::test]
    async fn a_wrong_method_gets_405_with_the_allowed_ones() {
        let app = test::init_service(App::new().configure(configure(test_node(&[])))).await;
        for (method, path, allow) in [
            (Method::TRACE, "/write", "POST"),
            (Method::POST, "/v1/kv/a/b", "GET, PUT, DELETE"),
            (Method::GET, "/peer/v1/events", "POST"),
        ] {
            let req = TestRequest::default().method(method.clone()).uri(path);
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(
                res.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            assert_eq!(
                res.headers().get("allow").unwrap(),
                allow,
                "{method} {path}"
            );
            let body: Json = test::read_body_json(res).await;
            assert_eq!(body["error"]["code"], "method_not_allowed");
        }
    }

    #[actix_web::test]
    async fn refusals_name_the_limit() {
        let node = test_node(&[
            ("KVNODE_MAX_KEY_BYTES", "8"),
            ("KVNODE_MAX_VALUE_BYTES", "16"),
            ("KVNODE_MAX_BATCH_EVENTS", "2"),
        ]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let big = "x".repeat(200 * 1024);
        let cases = [
            (TestRequest::post().uri("/write").set_json(json!({"key": "k".repeat(9), "value": 1})), "max_key_bytes"),
            (TestRequest::post().uri("/write").set_json(json!({"key": "k", "value": "v".repeat(20)})), "max_value_bytes"),
            (TestRequest::post().uri("/write").set_json(json!({"key": "k", "value": big})), "max_key_bytes + max_value_bytes"),
            (TestRequest::get().uri(&format!("/v1/kv/{}", "k".repeat(9))), "max_key_bytes"),
            (
                TestRequest::post().uri("/peer/v1/events").set_json(json!({"from": "n2", "events": [event("n2", 1), event("n2", 2), event("n2", 3)]})),
                "max_batch_events",
            ),
        ];
        for (req, limit) in cases {
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE, "{limit}");
            let body: Json = test::read_body_json(res).await;
            assert_eq!(body["error"]["code"], "too_large");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(limit), "{message} should name {limit}");
        }
        assert_eq!(node.committed(), VClock::new());
    }

    /// Trace streams have slots of their own, `max_trace_streams` of them, so
    /// that idle streams cannot take the connections peers need; a stream with
    /// no record for `trace_stream_idle` ends and gives its slot back.
    #[actix_web::test]
    async fn trace_streams_are_limited_and_end_when_idle() {
        let node = test_node(&[
            ("KVNODE_TRACE_BUFFER", "10"),
            ("KVNODE_MAX_TRACE_STREAMS", "2"),
            ("KVNODE_TRACE_STREAM_IDLE", "200ms"),
        ]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let open = || TestRequest::get().uri("/v1/trace/stream").to_request();
        let first = test::call_service(&app, open()).await;
        let second = test::call_service(&app, open()).await;
        assert_eq!(
            (first.status(), second.status()),
            (StatusCode::OK, StatusCode::OK)
        );

        let third = test::call_service(&app, open()).await;
        assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Json = test::read_body_json(third).await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("max_trace_streams"), "{message}");

        // Nothing happens on this node: the stream ends by itself.
        let text = test::read_body(first).await;
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("trace_stream_idle"), "{text}");
        let again = test::call_service(&app, open()).await;
        assert_eq!(again.status(), StatusCode::OK, "the slot was given back");
        drop(second);
    }

    /// A snapshot read is one cut: while `x` then `y` are written in turns
    /// (each `y = i` after `x = i`), no read of both shows `y` ahead of `x`,
    /// and every answer carries the cut's clock.
    #[actix_web::test]
    async fn a_snapshot_read_is_one_causal_cut() {
        let node = test_node(&[]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let writer = actix_web::rt::spawn({
            let node = node.clone();
            async move {
                for i in 1..=200 {
                    for key in ["x", "y"] {
                        let op =
                            vclock_proto::Op::Put(vclock_proto::Value::from_serialize(&i).unwrap());
                        node.write(key.into(), op).await.unwrap();
                    }
                }
            }
        });
        let mut reads = 0;
        let mut last_y = 0;
        while last_y < 200 {
            let req = TestRequest::post()
                .uri("/v1/txn/read")
                .set_json(json!({"keys": ["x", "y"]}));
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), StatusCode::OK);
            let body: Json = test::read_body_json(res).await;
            // x first: a read that took the keys one at a time would see y
            // ahead of x whenever a write came in between.
            let (x, y) = (&body["reads"][0], &body["reads"][1]);
            assert_eq!((&x["key"], &y["key"]), (&json!("x"), &json!("y")));
            let (y, x) = (
                y["value"].as_u64().unwrap_or(0),
                x["value"].as_u64().unwrap_or(0),
            );
            assert!(x >= y && x <= y + 1, "a cut shows x = {x} with y = {y}");
            assert_eq!(body["context"]["n1"], json!(x + y), "{body}");
            assert_eq!(body["reads"][0]["context"], body["context"]);
            last_y = y;
            reads += 1;
            // One thread runs both tasks: let the writer go on.
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        assert!(reads > 1);
    }

    #[actix_web::test]
    async fn a_snapshot_read_names_what_is_wrong_with_its_keys() {
        let node = test_node(&[("KVNODE_MAX_TXN_KEYS", "3"), ("KVNODE_MAX_KEY_BYTES", "8")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        for (body, status, says) in [
            (
                json!({"keys": []}),
                StatusCode::BAD_REQUEST,
                "keys is empty",
            ),
            (
                json!({"keys": ["a", "b", "a"]}),
                StatusCode::BAD_REQUEST,
                "listed twice",
            ),
            (
                json!({"keys": ["a", ""]}),
                StatusCode::BAD_REQUEST,
                "must not be empty",
            ),
            (
                json!({"keys": ["a", "b", "c", "d"]}),
                StatusCode::PAYLOAD_TOO_LARGE,
                "max_txn_keys",
            ),
            (
                json!({"keys": ["k".repeat(9)]}),
                StatusCode::PAYLOAD_TOO_LARGE,
                "max_key_bytes",
            ),
            (
                json!({"keys": ["a"], "context": {"n1": 5}}),
                StatusCode::CONFLICT,
                "n1",
            ),
            (
                json!({"keys": "a"}),
                StatusCode::BAD_REQUEST,
                "invalid JSON body",
            ),
            (
                json!({"keys": ["a"], "snapshot": true}),
                StatusCode::BAD_REQUEST,
                "snapshot",
            ),
        ] {
            let req = TestRequest::post().uri("/v1/txn/read").set_json(&body);
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), status, "{body}");
            let answer: Json = test::read_body_json(res).await;
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{body}: {message}");
        }
    }

    /// An atomic write is one event: every key it writes shows its one dot,
    /// and no snapshot read taken while transactions keep rewriting the same
    /// keys shows the keys from different transactions.
    #[actix_web::test]
    async fn a_transaction_is_written_under_one_dot_and_seen_whole() {
        let node = test_node(&[]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let txn = |i: u64| {
            json!({"writes": [
                {"key": "a", "op": {"put": i}},
                {"key": "b", "op": {"put": i}},
                {"key": "c", "op": if i.is_multiple_of(2) { json!("delete") } else { json!({"put": i}) }},
            ]})
        };
        let req = TestRequest::post().uri("/v1/txn/write").set_json(txn(1));
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let answer: Json = test::read_body_json(res).await;
        assert_eq!(answer["dot"], json!({"origin": "n1", "seq": 1}), "{answer}");
        assert_eq!(answer["timestamp"], json!({"n1": 1, "n2": 0, "n3": 0}));
        for key in ["a", "b", "c"] {
            let req = TestRequest::get().uri(&format!("/v1/kv/{key}"));
            let body: Json = test::call_and_read_body_json(&app, req.to_request()).await;
            assert_eq!(body["siblings"][0]["dot"], answer["dot"], "{body}");
            assert_eq!(body["value"], json!(1));
        }

        let writer = actix_web::rt::spawn({
            let app_node = node.clone();
            async move {
                for i in 2..=100u64 {
                    let writes = txn(i)["writes"].clone();
                    let writes = serde_json::from_value(writes).unwrap();
                    app_node.write_all(writes).await.unwrap();
                }
            }
        });
        let mut last = 0;
        while last < 100 {
            let req = TestRequest::post()
                .uri("/v1/txn/read")
                .set_json(json!({"keys": ["a", "b", "c"]}));
            let body: Json = test::call_and_read_body_json(&app, req.to_request()).await;
            let dots: Vec<&Json> = (0..3)
                .map(|i| &body["reads"][i]["siblings"][0]["dot"])
                .collect();
            assert!(
                dots[0] == dots[1] && dots[1] == dots[2],
                "a torn transaction: {body}"
            );
            last = body["reads"][0]["value"].as_u64().unwrap();
            let deleted = body["reads"][2]["siblings"][0]["deleted"]
                .as_bool()
                .unwrap();
            assert_eq!(deleted, last.is_multiple_of(2), "{body}");
            assert_eq!(body["context"]["n1"], json!(last));
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        let req = TestRequest::get().uri("/metrics").to_request();
        let metrics = test::call_and_read_body(&app, req).await;
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(
            metrics.contains("kvnode_writes_total{op=\"txn\"} 100"),
            "{metrics}"
        );
    }

    /// A peer's transaction waits in the buffer whole, shown in `/status`
    /// with all of its keys, and is applied whole once what it waits for
    /// arrives.
    #[actix_web::test]
    async fn a_peer_transaction_is_buffered_and_applied_whole() {
        let node = test_node(&[]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let send = |batch: Json| {
            let req = TestRequest::post().uri("/peer/v1/events").set_json(batch);
            test::call_service(&app, req.to_request())
        };
        let txn = json!({"from": "n2", "events": [{"origin": "n2", "seq": 1, "writes": [
            {"key": "a", "op": {"put": 1}}, {"key": "b", "op": {"put": 2}}, {"key": "c", "op": "delete"},
        ], "deps": {"n2": 0, "n3": 1}}]});
        assert_eq!(send(txn).await.status(), StatusCode::OK);
        let status = node.status();
        let buffered = &status.buffered_events[0];
        assert_eq!(
            (buffered.key.as_str(), &buffered.also[..]),
            ("a", &["b".to_owned(), "c".to_owned()][..])
        );
        let text = serde_json::to_value(&status).unwrap();
        assert_eq!(text["buffered_events"][0]["also"], json!(["b", "c"]));
        for key in ["a", "b"] {
            assert!(
                node.read(key, None).await.unwrap().siblings.is_empty(),
                "{key}"
            );
        }

        let dep = json!({"from": "n3", "events": [
            {"origin": "n3", "seq": 1, "key": "b", "op": {"put": 0}, "deps": {}},
        ]});
        assert_eq!(send(dep).await.status(), StatusCode::OK);
        let reads = node.read_keys(&["a", "b", "c"], None).await.unwrap();
        let dots: Vec<String> = reads
            .iter()
            .map(|r| r.siblings[0].dot().to_string())
            .collect();
        assert_eq!(dots, ["n2:1", "n2:1", "n2:1"]);
        assert_eq!(
            reads[1].winner().map(|v| v.json().to_owned()),
            Some("2".into())
        );
        assert!(node.status().buffered_events.is_empty());
    }

    /// Each bad transaction is refused with a message naming what is wrong,
    /// and writes nothing.
    #[actix_web::test]
    async fn a_bad_transaction_is_refused_and_writes_nothing() {
        let node = test_node(&[
            ("KVNODE_MAX_TXN_KEYS", "3"),
            ("KVNODE_MAX_KEY_BYTES", "8"),
            ("KVNODE_MAX_TXN_BYTES", "20"),
            ("KVNODE_MAX_VALUE_DEPTH", "2"),
        ]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let put = |key: &str, value: Json| json!({"key": key, "op": {"put": value}});
        for (body, status, says) in [
            (
                json!({"writes": []}),
                StatusCode::BAD_REQUEST,
                "writes is empty",
            ),
            (
                json!({"writes": [put("a", json!(1)), put("a", json!(2))]}),
                StatusCode::BAD_REQUEST,
                "listed twice",
            ),
            (
                json!({"writes": [put("a", json!(1)), put("", json!(2))]}),
                StatusCode::BAD_REQUEST,
                "must not be empty",
            ),
            (
                json!({"writes": [put("a", json!(1)), put("b", json!(1)), put("c", json!(1)), put("d", json!(1))]}),
                StatusCode::PAYLOAD_TOO_LARGE,
                "max_txn_keys",
            ),
            (
                json!({"writes": [put("a", json!("x".repeat(10))), put("b", json!("y".repeat(10)))]}),
                StatusCode::PAYLOAD_TOO_LARGE,
                "max_txn_bytes",
            ),
            (
                json!({"writes": [put(&"k".repeat(9), json!(1))]}),
                StatusCode::PAYLOAD_TOO_LARGE,
                "max_key_bytes",
            ),
            (
                json!({"writes": [put("a", json!([[[1]]]))]}),
                StatusCode::BAD_REQUEST,
                "max_value_depth",
            ),
            (
                json!({"writes": [{"key": "a", "op": "put"}]}),
                StatusCode::BAD_REQUEST,
                "invalid JSON body",
            ),
            (
                json!({"writes": [{"key": "a", "op": "delete", "value": 1}]}),
                StatusCode::BAD_REQUEST,
                "value",
            ),
            (
                json!({"writes": [put("a", json!(1))], "context": {"n1": 5}}),
                StatusCode::CONFLICT,
                "n1",
            ),
            (
                json!({"writes": [put("a", json!(1))], "atomic": true}),
                StatusCode::BAD_REQUEST,
                "atomic",
            ),
        ] {
            let req = TestRequest::post().uri("/v1/txn/write").set_json(&body);
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), status, "{body}");
            let answer: Json = test::read_body_json(res).await;
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{body}: {message}");
        }
        assert_eq!(
            node.status().applied,
            VClock::default(),
            "nothing was written"
        );
    }

    /// Values nested deeper than `max_value_depth` are refused on both client
    /// APIs (most JSON parsers, serde_json's included, give up at some depth,
    /// and every client must be able to read what it is given); values at the
    /// limit are stored.
    #[actix_web::test]
    async fn values_deeper_than_the_limit_are_refused() {
        let node = test_node(&[("KVNODE_MAX_VALUE_DEPTH", "3")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let nested = |depth: usize| {
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            serde_json::from_str::<Json>(&text).unwrap()
        };
        let deep_object = json!({"a": {"b": [{"c": 1}]}});
        for req in [
            TestRequest::post()
                .uri("/write")
                .set_json(json!({"key": "k", "value": nested(4)})),
            TestRequest::put()
                .uri("/v1/kv/k")
                .set_json(json!({"value": deep_object})),
        ] {
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), StatusCode::BAD_REQUEST);
            let body: Json = test::read_body_json(res).await;
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("4 deep"), "{message}");
            assert!(message.contains("max_value_depth"), "{message}");
        }
        assert_eq!(node.committed(), VClock::new(), "nothing was written");
        let req = TestRequest::post()
            .uri("/write")
            .set_json(json!({"key": "k", "value": [nested(2), {"s": "[[[[[["}]}));
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[actix_web::test]
    async fn a_write_handed_to_the_writer_gets_its_answer_past_request_timeout() {
        use std::sync::{Condvar, Mutex};
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let node = crate::node::tests::gated_node(
            &gate,
            &[
                ("KVNODE_CAUSAL_WAIT", "20ms"),
                ("KVNODE_REQUEST_TIMEOUT", "50ms"),
            ],
        );
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        // The write's sync is held for ten times request_timeout.
        let opener = std::thread::spawn({
            let gate = gate.clone();
            move || {
                std::thread::sleep(Duration::from_millis(500));
                *gate.0.lock().unwrap() = true;
                gate.1.notify_all();
            }
        });
        let req = TestRequest::post()
            .uri("/write")
            .set_json(json!({"key": "k", "value": 1}));
        let res = test::call_service(&app, req.to_request()).await;
        opener.join().unwrap();
        // The write was applied: a 408 would tell the client it was not.
        assert_eq!(res.status(), StatusCode::OK);
        let body: Json = test::read_body_json(res).await;
        assert_eq!(body["timestamp"]["n1"], 1, "{body}");
        assert_eq!(node.committed().get("n1"), 1);
    }

    #[test]
    fn the_document_covers_every_route_and_nothing_else() {
        let document = openapi::document();
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in &document.paths.paths {
            for (method, operation) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
            ] {
                if let Some(operation) = operation {
                    documented.insert((method.to_owned(), path.clone()));
                    let responses = &operation.responses.responses;
                    assert!(
                        responses.contains_key("200"),
                        "{method} {path}: no 200 answer documented"
                    );
                }
            }
        }
        let registered: std::collections::BTreeSet<(String, String)> = ENDPOINTS
            .iter()
            .map(|e| (e.method.to_string(), e.path.to_owned()))
            .collect();
        assert_eq!(
            documented, registered,
            "the OpenAPI document and http::ENDPOINTS disagree"
        );
    }

    /// Scrapes `/metrics` of an in-process node after some traffic.
    async fn scrape() -> String {
        use actix_web::test::{self, TestRequest};
        use actix_web::App;

        let node = crate::node::test_node(&[]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        for req in [
            TestRequest::post()
                .uri("/write")
                .set_json(serde_json::json!({"key": "k", "value": 1})),
            TestRequest::get().uri("/read?key=k"),
            TestRequest::get().uri("/nowhere"),
        ] {
            test::call_service(&app, req.to_request()).await;
        }
        let res = test::call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers().get("content-type").unwrap(),
            metrics::CONTENT_TYPE
        );
        String::from_utf8(test::read_body(res).await.to_vec()).unwrap()
    }

    /// The series names (before `{` or the value) of an exposition.
    fn series_names(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
            .collect()
    }

    #[actix_web::test]
    async fn the_exposition_has_every_family_and_only_those() {
        let text = scrape().await;
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert_eq!(types, NAMES, "families in the output and NAMES differ");
        for name in series_names(&text) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| NAMES.contains(f)))
                .unwrap_or(&name);
            assert!(NAMES.contains(&family), "{name} is not a known family");
        }
        assert!(text.contains(
            "kvnode_http_requests_total{route=\"/write\",method=\"POST\",status=\"200\"} 1"
        ));
        assert!(text.contains(
            "kvnode_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1"
        ));
        assert!(text.contains("kvnode_writes_total{op=\"put\"} 1"));
        assert!(text.contains("kvnode_reads_total 1"));
        assert!(text.contains("kvnode_applied{origin=\"n1\"} 1"));
        assert!(text.contains("kvnode_peer_lag_events{peer=\"n2\"} 1"));
        assert!(text.contains("kvnode_members{state=\"active\"} 3"));
        assert!(text.contains("kvnode_members{state=\"removed\"} 0"));
        assert!(text.contains("kvnode_membership_version 0"));
    }

    #[actix_web::test]
    async fn every_metric_the_dashboard_queries_exists() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/grafana/kvnode.json");
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut exprs = Vec::new();
        fn collect(value: &serde_json::Value, exprs: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    for (key, value) in map {
                        match (key.as_str(), value) {
                            ("expr" | "definition", serde_json::Value::String(e)) => {
                                exprs.push(e.clone())
                            }
                            ("query", serde_json::Value::String(e)) => exprs.push(e.clone()),
                            _ => collect(value, exprs),
                        }
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, exprs)),
                _ => {}
            }
        }
        collect(&dashboard, &mut exprs);
        assert!(exprs.len() > 10, "found only {exprs:?}");
        let exported = series_names(&scrape().await);
        let mut queried = std::collections::BTreeSet::new();
        for expr in &exprs {
            let mut rest = expr.as_str();
            while let Some(at) = rest.find("kvnode_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
        let missing: Vec<_> = queried.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "the dashboard queries metrics that /metrics lacks: {missing:?}"
        );
        let unused: Vec<_> = NAMES
            .iter()
            .filter(|n| !queried.iter().any(|q| q.starts_with(*n)))
            .collect();
        assert!(unused.is_empty(), "families no panel shows: {unused:?}");
    }

    #[actix_web::test]
    async fn a_peer_event_over_this_nodes_client_limits_is_applied() {
        // n2 accepted these under its own limits: they are history here too.
        let node = test_node(&[
            ("KVNODE_MAX_KEY_BYTES", "8"),
            ("KVNODE_MAX_VALUE_BYTES", "100"),
        ]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let key = "a-key-longer-than-8-bytes";
        let value = "v".repeat(1000);
        let batch = json!({"from": "n2", "events": [
            {"origin": "n2", "seq": 1, "key": "k", "op": {"put": value}, "deps": {"n2": 0}},
            {"origin": "n2", "seq": 2, "key": key, "op": {"put": 2}, "deps": {"n2": 1}},
        ]});
        let req = TestRequest::post().uri("/peer/v1/events").set_json(&batch);
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Json = test::read_body_json(res).await;
        assert_eq!(body["applied"]["n2"], 2, "{body}");
        assert_eq!(node.committed().get("n2"), 2);
        let read = node.read("k", None).await.unwrap();
        assert_eq!(
            read.winner().map(|v| v.json().to_owned()),
            Some(format!("\"{value}\""))
        );
        let read = node.read(key, None).await.unwrap();
        assert_eq!(read.winner().map(|v| v.json().to_owned()), Some("2".into()));
        // Clients stay bound by the limits.
        let req = TestRequest::put()
            .uri("/v1/kv/k")
            .set_json(json!({ "value": value }));
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // And the core still refuses an event that is not well-formed.
        let batch = json!({"from": "n2", "events": [
            {"origin": "n2", "seq": 3, "key": "", "op": {"put": 3}, "deps": {"n2": 2}},
        ]});
        let req = TestRequest::post().uri("/peer/v1/events").set_json(&batch);
        let res = test::call_service(&app, req.to_request()).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(node.committed().get("n2"), 2);
    }

    /// Sends `$req` (a `TestRequest`, with `$body` as JSON if it is
    /// `Some`) to `$app`: the status and the JSON answer.
    macro_rules! call {
        ($app:expr, $req:expr, $body:expr) => {{
            let req: TestRequest = $req;
            let body: Option<&Json> = $body;
            let req = match body {
                Some(body) => req.set_json(body),
                None => req,
            };
            let res = test::call_service($app, req.to_request()).await;
            let status = res.status();
            let answer: Json = test::read_body_json(res).await;
            (status, answer)
        }};
    }

    /// `/v1/kv/k?context=` with `context` URL-encoded.
    fn with_query(context: &str) -> String {
        let encoded: String = context.bytes().map(|b| format!("%{b:02X}")).collect();
        format!("/v1/kv/k?context={encoded}")
    }

    #[actix_web::test]
    async fn a_delete_waits_for_its_context_like_a_put() {
        let node = test_node(&[("KVNODE_CAUSAL_WAIT", "100ms")]);
        let app = test::init_service(App::new().configure(configure(node.clone()))).await;
        let put = TestRequest::put().uri("/v1/kv/k");
        let (status, _) = call!(&app, put, Some(&json!({"value": 1})));
        assert_eq!(status, StatusCode::OK);
        let value_of_k = || async {
            let read = node.read("k", None).await.unwrap();
            read.winner().map(|v| v.json().to_owned())
        };
        // Writes of this node it never made: 409. Writes of n2, which cannot
        // be asked (unreachable) and never arrive: 503 after causal_wait.
        for (context, expected, code) in [
            (json!({"n1": 5}), StatusCode::CONFLICT, "unknown_history"),
            (
                json!({"n2": 3}),
                StatusCode::SERVICE_UNAVAILABLE,
                "causal_timeout",
            ),
        ] {
            let put = TestRequest::put().uri("/v1/kv/k");
            let body = json!({"value": 2, "context": context});
            let (status, put_answer) = call!(&app, put, Some(&body));
            assert_eq!(status, expected, "{put_answer}");
            let in_body = Some(json!({ "context": context }));
            for (what, uri, body) in [
                ("body", "/v1/kv/k".to_owned(), in_body.clone()),
                ("query", with_query(&context.to_string()), None),
                ("body and query", with_query(r#"{"n1":1}"#), in_body),
            ] {
                let delete = TestRequest::delete().uri(&uri);
                let (status, answer) = call!(&app, delete, body.as_ref());
                assert_eq!(status, expected, "{context} in the {what}: {answer}");
                assert_eq!(answer["error"]["code"], code, "{answer}");
                assert_eq!(answer["error"], put_answer["error"], "as for a put");
            }
            assert_eq!(node.committed().get("n1"), 1, "nothing was deleted");
            assert_eq!(value_of_k().await, Some("1".into()));
        }

        // Bodies a put would refuse are refused.
        let delete = || TestRequest::delete().uri("/v1/kv/k");
        for (req, expected) in [
            (
                delete()
                    .insert_header(("content-type", "application/json"))
                    .set_payload(r#"{"context": "#),
                StatusCode::BAD_REQUEST,
            ),
            (
                delete()
                    .insert_header(("content-type", "text/plain"))
                    .set_payload(r#"{"context": {}}"#),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                delete().set_json(json!({"context": {"n9": 1}})),
                StatusCode::BAD_REQUEST,
            ),
            (
                delete().set_json(json!({"contxt": {"n1": 1}})),
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let (status, answer) = call!(&app, req, None);
            assert_eq!(status, expected, "{answer}");
        }
        assert_eq!(value_of_k().await, Some("1".into()));

        // A satisfied context, in the body or in the query, or none at all.
        let context = json!({"context": {"n1": 1}});
        let (status, answer) = call!(&app, delete(), Some(&context));
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["timestamp"]["n1"], 2, "{answer}");
        assert_eq!(value_of_k().await, None);
        let req = TestRequest::delete().uri(&with_query(r#"{"n1":2}"#));
        let (status, answer) = call!(&app, req, None);
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, answer) = call!(&app, delete(), None);
        assert_eq!(status, StatusCode::OK, "{answer}");
        let (status, answer) = call!(&app, delete(), Some(&Json::Null));
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(node.committed().get("n1"), 5);

        // The document offers the body, and does not require it.
        let document = openapi::document_for(node.config());
        let body = &document["paths"]["/v1/kv/{key}"]["delete"]["requestBody"];
        assert_ne!(body["required"], json!(true), "{body}");
        assert!(
            body.to_string()
                .contains("#/components/schemas/DeleteRequest"),
            "{body}"
        );
    }
}
