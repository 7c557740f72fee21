//! The causality explorer: a page served at `/ui` that draws the cluster's
//! traces as a live space-time diagram, with controls to write, read, and
//! pause or resume replication links.
//!
//! The page is three static files (`crates/kvnode/ui/`: HTML, a plain ES
//! module, CSS) embedded in the binary: no build step and nothing fetched from
//! elsewhere (its Content-Security-Policy allows this node only).
//!
//! A browser often cannot reach the other nodes (in docker compose their URLs
//! are `http://node2:5000`), so the page talks only to the node that served it,
//! through a narrow proxy: `/ui/api/{node}/{path}` forwards to member `{node}`'s
//! URL the client calls the page makes ([`forwarded`]) and nothing else: never
//! the peer API. The request's `Authorization` header goes along as it is; the
//! proxy never adds the cluster secret, so the page can do no more than its
//! user could with curl.
//!
//! These routes are registered by [`configure`], outside `http::ENDPOINTS`:
//! they are not part of the node's API, so they are neither in the OpenAPI
//! document nor labelled in the request metrics.

use actix_web::http::header::{self, HeaderName};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Serialize;
use vclock_proto::NodeId;

use crate::error::{Error, Result};
use crate::node::Node;

/// One embedded file of the page.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: u64,
}

const fn asset(name: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        name,
        content_type,
        body,
        etag: fnv1a(body),
    }
}

/// FNV-1a, for the assets' ETags (computed at compile time).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

const INDEX: &str = "index.html";

const ASSETS: &[Asset] = &[
    asset(
        INDEX,
        "text/html; charset=utf-8",
        include_bytes!("../../ui/index.html"),
    ),
    asset(
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../ui/app.js"),
    ),
    asset(
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../ui/style.css"),
    ),
];

/// This node only: scripts, styles, and the proxy's answers. Inline styles set
/// through the DOM (`element.style`) are not affected.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Registers the page and its proxy. Called by `http::configure`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource(["/ui", "/ui/"])
            .route(web::get().to(index))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/ui/api/cluster")
            .route(web::get().to(cluster))
            .default_service(web::to(method_not_allowed)),
    )
    .service(web::resource("/ui/api/{node}/{path:.*}").to(proxy))
    .service(
        web::resource("/ui/{file}")
            .route(web::get().to(file))
            .default_service(web::to(method_not_allowed)),
    );
}

// ---- the page ---------------------------------------------------------------------

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, INDEX).unwrap_or_else(|| HttpResponse::InternalServerError().finish())
}

async fn file(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse> {
    serve(&req, &name).ok_or_else(|| {
        Error::NotFound(format!(
            "the explorer has no file {:?}; open /ui",
            name.as_str()
        ))
    })
}

/// Answers an embedded file, or 304 when the browser's copy is current. The
/// browser revalidates every time (`no-cache`), so a new binary's page is
/// never hidden behind a stale copy.
fn serve(req: &HttpRequest, name: &str) -> Option<HttpResponse> {
    let asset = ASSETS.iter().find(|a| a.name == name)?;
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    Some(if fresh {
        response.finish()
    } else {
        response.content_type(asset.content_type).body(asset.body)
    })
}

/// What the page needs to know first: which node served it and the cluster's
/// members (ids only: their URLs are of no use to the browser).
#[derive(Debug, Serialize)]
struct ClusterResponse {
    node: NodeId,
    nodes: Vec<NodeId>,
}

async fn cluster(node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(ClusterResponse {
            node: node.id().clone(),
            nodes: node.members().active().map(|m| m.id.clone()).collect(),
        })
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    let mut body = Error::BadRequest(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.path()
    ))
    .body();
    body.error.code = "method_not_allowed".into();
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "GET"))
        .json(body)
}

// ---- the proxy ----------------------------------------------------------------------

/// True for the client calls the page makes, the only ones the proxy
/// forwards. `path` is the raw (still percent-encoded) path after
/// `/ui/api/{node}/`, without the query.
pub fn forwarded(method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').collect();
    // No dot segments, plain or encoded, that a server might resolve to
    // another route.
    if segments.iter().any(|s| {
        let s = s.replace("%2e", ".").replace("%2E", ".");
        s == "." || s == ".."
    }) {
        return false;
    }
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["health" | "status" | "read"])
        | ("GET", ["v1", "trace"])
        | ("GET", ["v1", "trace", "stream"])
        | ("GET", ["admin", "v1", "links"])
        | ("POST", ["write"]) => true,
        ("GET" | "PUT" | "DELETE", ["v1", "kv", key @ ..]) => !key.concat().is_empty(),
        ("POST", ["admin", "v1", "links", peer, "pause" | "resume"]) => !peer.is_empty(),
        _ => false,
    }
}

/// Request headers passed on to the member, and answer headers passed back.
const REQUEST_HEADERS: &[HeaderName] =
    &[header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT];
const RESPONSE_HEADERS: &[HeaderName] = &[
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::WWW_AUTHENTICATE,
    header::ALLOW,
    header::RETRY_AFTER,
];

async fn proxy(
    req: HttpRequest,
    node: web::Data<Node>,
    body: web::Payload,
) -> Result<HttpResponse> {
    let target = req.match_info().get("node").unwrap_or_default().to_owned();
    let config = node.config();
    let members = node.members();
    let member = members.active().find(|m| m.id == target).ok_or_else(|| {
        Error::NotFound(format!(
            "unknown node {target:?}: the cluster's nodes are {}",
            members
                .active()
                .map(|m| m.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    // The raw path after /ui/api/{node}/: forwarded exactly as the page
    // encoded it (a key may hold an encoded "/" or "?").
    let path = req
        .uri()
        .path()
        .strip_prefix("/ui/api/")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(_, path)| path);
    if !forwarded(req.method(), path) {
        return Err(Error::NotFound(format!(
            "the explorer does not forward {} /{path}; it forwards the client calls health, \
             status, read, write, v1/kv/{{key}}, v1/trace, v1/trace/stream and the fault hook \
             admin/v1/links",
            req.method()
        )));
    }
    let mut url = format!("{}/{path}", member.url);
    if !req.query_string().is_empty() {
        url.push('?');
        url.push_str(req.query_string());
    }
    let stream = path == "v1/trace/stream";
    // A proxied stream holds a connection here as well as at the member.
    let slot = stream.then(|| node.stream_slot()).transpose()?;
    // A stream stays open: only its head must come within peer_timeout. Other
    // calls may wait up to request_timeout (a causal wait), as at the member.
    let timeout = if stream {
        config.peer_timeout
    } else {
        config.request_timeout
    };
    // Never with the cluster secret: the page may do what its user may.
    let client = crate::tls::peer_client(timeout, None, node.peer_tls());
    let mut request = client.request(req.method().clone(), &url);
    for name in REQUEST_HEADERS {
        if let Some(value) = req.headers().get(name) {
            request = request.insert_header((name.clone(), value.clone()));
        }
    }
    let sent = if matches!(*req.method(), Method::POST | Method::PUT) {
        request.send_stream(body).await
    } else {
        request.send().await
    };
    let answer = sent
        .map_err(|e| Error::Unavailable(format!("cannot reach {target} at {}: {e}", member.url)))?;
    let status = StatusCode::from_u16(answer.status().as_u16())
        .map_err(|e| Error::Internal(format!("{target} answered a bad status: {e}")))?;
    let mut response = HttpResponse::build(status);
    for name in RESPONSE_HEADERS {
        if let Some(value) = answer.headers().get(name) {
            response.insert_header((name.clone(), value.clone()));
        }
    }
    if stream {
        // Ends with this node's shutdown, which would otherwise wait for a
        // stream from another node that goes on.
        let mut closing = node.tracer().closing();
        let stop = async move {
            let _ = closing.wait_for(|closing| *closing).await;
        };
        Ok(
            response.streaming(answer.take_until(stop).map(move |chunk| {
                let _held = &slot;
                chunk
            })),
        )
    } else {
        // Passed on as it comes (a trace can be large), within the timeout.
        Ok(response.streaming(answer.timeout(timeout)))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::{self, TestRequest};
    use actix_web::App;
    use serde_json::Value as Json;

    use super::*;
    use crate::node::test_node;

    #[test]
    fn only_the_client_calls_of_the_page_are_forwarded() {
        let get = Method::GET;
        let post = Method::POST;
        for (method, path) in [
            (&get, "health"),
            (&get, "status"),
            (&get, "read"),
            (&post, "write"),
            (&get, "v1/trace"),
            (&get, "v1/trace/stream"),
            (&get, "v1/kv/x"),
            (&get, "v1/kv/a/b"),
            (&Method::PUT, "v1/kv/x%2Fy"),
            (&Method::DELETE, "v1/kv/x"),
            (&get, "admin/v1/links"),
            (&post, "admin/v1/links/node3/pause"),
            (&post, "admin/v1/links/node3/resume"),
        ] {
            assert!(forwarded(method, path), "{method} {path}");
        }
        for (method, path) in [
            (&post, "peer/v1/events"),
            (&post, "peer/v1/sync"),
            (&get, "metrics"),
            (&get, "openapi.json"),
            (&post, "read"),
            (&get, "write"),
            (&get, "v1/kv/"),
            (&Method::PATCH, "v1/kv/x"),
            (&post, "v1/trace"),
            (&get, "admin/v1/links/node3/pause"),
            (&post, "admin/v1/links/node3/explode"),
            (&post, "admin/v1/links//pause"),
            (&get, "v1/kv/../../peer/v1/events"),
            (&get, "v1/kv/%2e%2E/metrics"),
            (&get, ""),
        ] {
            assert!(!forwarded(method, path), "{method} {path}");
        }
    }

    #[actix_web::test]
    async fn the_page_is_served_with_its_type_and_cache_headers() {
        let app =
            test::init_service(App::new().configure(crate::http::configure(test_node(&[])))).await;
        for (path, content_type) in [
            ("/ui", "text/html; charset=utf-8"),
            ("/ui/", "text/html; charset=utf-8"),
            ("/ui/app.js", "text/javascript; charset=utf-8"),
            ("/ui/style.css", "text/css; charset=utf-8"),
        ] {
            let res = test::call_service(&app, TestRequest::get().uri(path).to_request()).await;
            assert_eq!(res.status(), StatusCode::OK, "{path}");
            assert_eq!(
                res.headers().get(header::CONTENT_TYPE).unwrap(),
                content_type,
                "{path}"
            );
            assert_eq!(
                res.headers().get(header::CACHE_CONTROL).unwrap(),
                "no-cache",
                "{path}"
            );
            let etag = res.headers().get(header::ETAG).unwrap().clone();
            let again = TestRequest::get()
                .uri(path)
                .insert_header((header::IF_NONE_MATCH, etag))
                .to_request();
            let res = test::call_service(&app, again).await;
            assert_eq!(res.status(), StatusCode::NOT_MODIFIED, "{path}");
        }
        let res = test::call_service(&app, TestRequest::get().uri("/ui/").to_request()).await;
        let html = String::from_utf8(test::read_body(res).await.to_vec()).unwrap();
        assert!(html.contains("/ui/app.js"), "{html}");
        for asset in ASSETS {
            let text = std::str::from_utf8(asset.body).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{} names an external URL",
                asset.name
            );
        }
    }

    #[actix_web::test]
    async fn unknown_files_nodes_and_calls_get_json_errors() {
        let app =
            test::init_service(App::new().configure(crate::http::configure(test_node(&[])))).await;
        for (method, path, status) in [
            (Method::GET, "/ui/nope.js", StatusCode::NOT_FOUND),
            (Method::GET, "/ui/api/node9/health", StatusCode::NOT_FOUND),
            (
                Method::POST,
                "/ui/api/n1/peer/v1/events",
                StatusCode::NOT_FOUND,
            ),
            (Method::GET, "/ui/api/n1/metrics", StatusCode::NOT_FOUND),
            (Method::POST, "/ui", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let req = TestRequest::default().method(method.clone()).uri(path);
            let res = test::call_service(&app, req.to_request()).await;
            assert_eq!(res.status(), status, "{method} {path}");
            let body: Json = test::read_body_json(res).await;
            assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
        }
        let res =
            test::call_service(&app, TestRequest::get().uri("/ui/api/cluster").to_request()).await;
        let body: Json = test::read_body_json(res).await;
        assert_eq!(body["node"], "n1");
        assert!(body["nodes"].as_array().unwrap().contains(&"n1".into()));
    }
}
