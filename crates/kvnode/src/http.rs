//! The HTTP shell: routes, extractors and their errors. Each handler extracts,
//! makes one call into the node, and answers JSON.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::http::Method;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, Route};
use vclock_proto::{
    ClockMessage, ContextQuery, ErrorResponse, EventBatch, FaultsResponse, GetResponse,
    HealthResponse, Op, PutRequest, PutResponse, ReadQuery, ReadResponse, Sibling, StatusResponse,
    TraceEvent, TraceQuery, TraceResponse, VClock, Value, WriteRequest, WriteResponse,
    TRACE_CAUSE_HEADER,
};

use crate::config::{Config, Secret};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics, RouteId};
use crate::node::Node;

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
    // Peer API: replication and clock exchange.
    endpoint(Method::POST, "/peer/v1/events", "/peer/v1/events", |r| {
        r.to(receive_events)
    }),
    endpoint(Method::POST, "/peer/v1/sync", "/peer/v1/sync", |r| {
        r.to(sync_clock)
    }),
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
        let client_limit = config.max_key_bytes + config.max_value_bytes + ENVELOPE_BYTES;
        let peer_limit = config.max_batch_bytes.max(client_limit) * 2;
        let metrics = node.metrics().clone();
        cfg.app_data(web::Data::from(node))
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
        crate::ui::configure(cfg);
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

// ---- request metrics and timeout -------------------------------------------------

/// Middleware of every route: counts the request in flight, answers 408 when it
/// takes longer than `request_timeout` (head to answer: body upload and causal
/// wait included), and records its route, method, status and latency.
///
/// A write handed to the writer ([`Submitted::mark`]) is past the point of
/// refusal: it will be applied even if nobody waits for it, and a 4xx must not
/// say otherwise. Such a request gets its real answer, however late.
#[derive(Clone, Debug)]
struct Observe {
    route: RouteId,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<std::result::Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService {
            service: Rc::new(service),
            observe: self.clone(),
        }))
    }
}

#[derive(Debug)]
struct ObserveService<S> {
    service: Rc<S>,
    observe: Observe,
}

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalFuture<std::result::Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let request = req.request().clone();
        let method = req.method().clone();
        let observe = self.observe.clone();
        let answer = self.service.call(req);
        Box::pin(async move {
            let in_flight = observe.metrics.request_started();
            let mut answer = std::pin::pin!(answer);
            let answer = match tokio::time::timeout(observe.timeout, &mut answer).await {
                Ok(answer) => Some(answer),
                Err(_) if Submitted::is_marked(&request) => Some(answer.await),
                Err(_) => None,
            };
            let response = match answer {
                Some(Ok(response)) => response.map_into_boxed_body(),
                Some(Err(e)) => ServiceResponse::from_err(e, request),
                None => {
                    let error = Error::RequestTimeout(format!(
                        "the request took longer than the limit of {:?} (request_timeout)",
                        observe.timeout
                    ));
                    ServiceResponse::new(request, error.error_response())
                }
            };
            drop(in_flight);
            observe
                .metrics
                .request(observe.route, &method, response.status(), started.elapsed());
            Ok(response)
        })
    }
}

/// Put in a request's extensions once its write is handed to the writer (see
/// [`Observe`], which holds a clone of the request: clones share extensions).
#[derive(Clone, Copy, Debug)]
struct Submitted;

impl Submitted {
    /// Marks `req`'s write as handed to the writer.
    fn mark(req: &HttpRequest) {
        req.extensions_mut().insert(Submitted);
    }

    fn is_marked(req: &HttpRequest) -> bool {
        req.extensions().contains::<Submitted>()
    }
}

/// Waits for `context`, then hands the write to the writer and waits for it.
async fn submit_write(
    req: &HttpRequest,
    node: &Node,
    key: String,
    op: Op,
    context: Option<&VClock>,
) -> Result<Arc<vclock_proto::Event>> {
    if let Some(context) = context {
        node.wait_for(context).await?;
    }
    Submitted::mark(req);
    node.write(key, op).await
}

// ---- authentication --------------------------------------------------------------

/// A request that carried the cluster secret, if one is configured. Peer and
/// admin routes take it.
#[derive(Debug)]
pub struct PeerAuth;

/// A request that carried the client token, if one is configured. Client
/// routes (all but `/health`) take it.
#[derive(Debug)]
pub struct ClientAuth;

fn bearer_matches(req: &HttpRequest, secret: Option<&Secret>, what: &str) -> Result<()> {
    let Some(secret) = secret else {
        return Ok(());
    };
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 7235).
        .and_then(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer").then_some(token));
    match presented {
        Some(token) if secret.matches(token.trim()) => Ok(()),
        Some(_) => Err(Error::Unauthorized(format!("wrong {what}"))),
        None => Err(Error::Unauthorized(format!(
            "this route requires the {what}: send Authorization: Bearer <token>"
        ))),
    }
}

fn node_of(req: &HttpRequest) -> &Node {
    req.app_data::<web::Data<Node>>()
        .expect("configure() registers the node")
}

impl FromRequest for PeerAuth {
    type Error = Error;
    type Future = Ready<Result<Self>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let secret = node_of(req).config().cluster_secret.as_ref();
        ready(bearer_matches(req, secret, "cluster secret").map(|()| PeerAuth))
    }
}

impl FromRequest for ClientAuth {
    type Error = Error;
    type Future = Ready<Result<Self>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let token = node_of(req).config().client_token.as_ref();
        ready(bearer_matches(req, token, "client token").map(|()| ClientAuth))
    }
}

// ---- validation ----------------------------------------------------------------

fn check_key(config: &Config, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::BadRequest("the key must not be empty".into()));
    }
    if key.len() > config.max_key_bytes {
        return Err(Error::TooLarge(format!(
            "the key is {} bytes, larger than the limit of {} bytes (max_key_bytes)",
            key.len(),
            config.max_key_bytes
        )));
    }
    Ok(())
}

fn check_value(config: &Config, value: &Value) -> Result<()> {
    let len = value.json().len();
    if len > config.max_value_bytes {
        return Err(Error::TooLarge(format!(
            "the value is {len} bytes of JSON, larger than the limit of {} bytes (max_value_bytes)",
            config.max_value_bytes
        )));
    }
    Ok(())
}

fn parse_context(query: &ContextQuery) -> Result<Option<VClock>> {
    query
        .context
        .as_deref()
        .map(|text| {
            serde_json::from_str(text).map_err(|e| {
                Error::BadRequest(format!(
                    "context must be a JSON object of node ids to non-negative integers: {e}"
                ))
            })
        })
        .transpose()
}

// ---- compatibility API -----------------------------------------------------------

/// Liveness and the node's clock (the prototype's). Never needs a token.
#[utoipa::path(get, path = "/health", tag = "compatibility",
    responses((status = 200, description = "The node is up", body = HealthResponse)))]
async fn health(node: web::Data<Node>) -> web::Json<HealthResponse> {
    web::Json(HealthResponse {
        status: "healthy".into(),
        node: node.id().clone(),
        timestamp: node.applied(),
    })
}

/// Writes a key (the prototype's). With a `context`, the node first waits
/// until it has applied everything the context counts.
#[utoipa::path(post, path = "/write", tag = "compatibility", request_body = WriteRequest,
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Written and committed", body = WriteResponse),
        (status = 400, description = "Malformed body, empty key, invalid context or a context naming an unknown node", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 409, description = "The context counts writes that were never made", body = ErrorResponse),
        (status = 413, description = "The key, the value or the body is over its limit", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "The context was not satisfied within causal_wait, or the node is stopping", body = ErrorResponse),
    ))]
async fn write(
    _auth: ClientAuth,
    req: HttpRequest,
    node: web::Data<Node>,
    body: web::Json<WriteRequest>,
) -> Result<web::Json<WriteResponse>> {
    let WriteRequest {
        key,
        value,
        context,
    } = body.into_inner();
    check_key(node.config(), &key)?;
    check_value(node.config(), &value)?;
    let event = submit_write(&req, &node, key, Op::Put(value), context.as_ref()).await?;
    Ok(web::Json(WriteResponse {
        status: "success".into(),
        timestamp: event.timestamp(),
    }))
}

/// Reads a key's winning value (the prototype's); `null` when absent.
#[utoipa::path(get, path = "/read", tag = "compatibility",
    params(("key" = String, Query, description = "The key to read")),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "The value and the node's clock", body = ReadResponse),
        (status = 400, description = "No key, or an empty key", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 413, description = "The key is over max_key_bytes", body = ErrorResponse),
    ))]
async fn read(
    _auth: ClientAuth,
    node: web::Data<Node>,
    query: web::Query<ReadQuery>,
) -> Result<web::Json<ReadResponse>> {
    check_key(node.config(), &query.key)?;
    let result = node.read(&query.key, None).await?;
    Ok(web::Json(ReadResponse {
        value: result.winner().cloned().unwrap_or_else(Value::null),
        timestamp: result.applied,
    }))
}

// ---- native API ------------------------------------------------------------------

/// Reads a key with every sibling, after an optional causal context.
#[utoipa::path(get, path = "/v1/kv/{key}", tag = "native",
    params(
        ("key" = String, Path, description = "The key (may contain /)"),
        ("context" = Option<String>, Query, description = "A clock as JSON text, e.g. {\"node1\":3}"),
    ),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "The siblings, the winner and the node's clock", body = GetResponse),
        (status = 400, description = "Empty key, or an invalid context", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 409, description = "The context counts writes that were never made", body = ErrorResponse),
        (status = 413, description = "The key is over max_key_bytes", body = ErrorResponse),
        (status = 503, description = "The context was not satisfied within causal_wait", body = ErrorResponse),
    ))]
async fn get_key(
    _auth: ClientAuth,
    node: web::Data<Node>,
    key: web::Path<String>,
    query: web::Query<ContextQuery>,
) -> Result<web::Json<GetResponse>> {
    let key = key.into_inner();
    check_key(node.config(), &key)?;
    let context = parse_context(&query)?;
    let result = node.read(&key, context.as_ref()).await?;
    let winner = result.winner().cloned();
    let siblings = result
        .siblings
        .iter()
        .map(|e| Sibling {
            dot: e.dot(),
            timestamp: e.timestamp(),
            deleted: e.op.value().is_none(),
            value: e.op.value().cloned().unwrap_or_else(Value::null),
        })
        .collect();
    Ok(web::Json(GetResponse {
        key,
        found: winner.is_some(),
        value: winner.unwrap_or_else(Value::null),
        siblings,
        context: result.applied,
    }))
}

/// Writes a key; with a context, replaces every sibling the context covers.
#[utoipa::path(put, path = "/v1/kv/{key}", tag = "native", request_body = PutRequest,
    params(("key" = String, Path, description = "The key (may contain /)")),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Written and committed", body = PutResponse),
        (status = 400, description = "Malformed body, empty key or an invalid context", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 409, description = "The context counts writes that were never made", body = ErrorResponse),
        (status = 413, description = "The key, the value or the body is over its limit", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "The context was not satisfied within causal_wait, or the node is stopping", body = ErrorResponse),
    ))]
async fn put_key(
    _auth: ClientAuth,
    req: HttpRequest,
    node: web::Data<Node>,
    key: web::Path<String>,
    body: web::Json<PutRequest>,
) -> Result<web::Json<PutResponse>> {
    let key = key.into_inner();
    check_key(node.config(), &key)?;
    let PutRequest { value, context } = body.into_inner();
    check_value(node.config(), &value)?;
    let event = submit_write(&req, &node, key, Op::Put(value), context.as_ref()).await?;
    Ok(web::Json(PutResponse {
        dot: event.dot(),
        timestamp: event.timestamp(),
    }))
}

/// Deletes a key (a tombstone sibling), after an optional causal context.
#[utoipa::path(delete, path = "/v1/kv/{key}", tag = "native",
    params(
        ("key" = String, Path, description = "The key (may contain /)"),
        ("context" = Option<String>, Query, description = "A clock as JSON text, e.g. {\"node1\":3}"),
    ),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Deleted and committed", body = PutResponse),
        (status = 400, description = "Empty key, or an invalid context", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 409, description = "The context counts writes that were never made", body = ErrorResponse),
        (status = 413, description = "The key is over max_key_bytes", body = ErrorResponse),
        (status = 503, description = "The context was not satisfied within causal_wait, or the node is stopping", body = ErrorResponse),
    ))]
async fn delete_key(
    _auth: ClientAuth,
    req: HttpRequest,
    node: web::Data<Node>,
    key: web::Path<String>,
    query: web::Query<ContextQuery>,
) -> Result<web::Json<PutResponse>> {
    let key = key.into_inner();
    check_key(node.config(), &key)?;
    let context = parse_context(&query)?;
    let event = submit_write(&req, &node, key, Op::Delete, context.as_ref()).await?;
    Ok(web::Json(PutResponse {
        dot: event.dot(),
        timestamp: event.timestamp(),
    }))
}

// ---- peer API --------------------------------------------------------------------

fn check_peer(node: &Node, from: &str) -> Result<()> {
    if from == node.id() || !node.links().iter().any(|l| l.member.id == from) {
        return Err(Error::BadRequest(format!(
            "{from:?} is not a peer of {}",
            node.id()
        )));
    }
    Ok(())
}

/// A batch of events from a peer; the answer acknowledges what it applied.
#[utoipa::path(post, path = "/peer/v1/events", tag = "peer", request_body = EventBatch,
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The receiver's applied clock", body = ClockMessage),
        (status = 400, description = "Malformed batch, a sender that is not a peer, or an invalid event", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 413, description = "More than max_batch_events events, or a key, value or body over its limit", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "The buffer of undeliverable events is full (max_buffered): send again later", body = ErrorResponse),
    ))]
async fn receive_events(
    _auth: PeerAuth,
    node: web::Data<Node>,
    request: HttpRequest,
    body: web::Json<EventBatch>,
) -> Result<web::Json<ClockMessage>> {
    let EventBatch { from, events } = body.into_inner();
    check_peer(&node, &from)?;
    let config = node.config();
    if events.len() > config.max_batch_events {
        return Err(Error::TooLarge(format!(
            "the batch has {} events, more than the limit of {} (max_batch_events)",
            events.len(),
            config.max_batch_events
        )));
    }
    for event in &events {
        check_key(config, &event.key)?;
        if let Some(value) = event.op.value() {
            check_value(config, value)?;
        }
    }
    let cause = request
        .headers()
        .get(TRACE_CAUSE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::trace::parse_cause);
    let (receipt, applied) = node.receive(from, cause, events).await?;
    if receipt.refused > 0 {
        return Err(Error::BufferFull(config.max_buffered));
    }
    Ok(web::Json(ClockMessage {
        node: node.id().clone(),
        applied,
    }))
}

/// Clock exchange with a peer: records its clock, answers with this node's.
#[utoipa::path(post, path = "/peer/v1/sync", tag = "peer", request_body = ClockMessage,
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "This node's applied clock", body = ClockMessage),
        (status = 400, description = "Malformed body, a sender that is not a peer, or a clock naming an unknown node", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
    ))]
async fn sync_clock(
    _auth: PeerAuth,
    node: web::Data<Node>,
    body: web::Json<ClockMessage>,
) -> Result<web::Json<ClockMessage>> {
    let ClockMessage {
        node: from,
        applied,
    } = body.into_inner();
    check_peer(&node, &from)?;
    if let Some(unknown) = applied
        .nodes()
        .find(|n| !node.config().members.iter().any(|m| &m.id == *n))
    {
        return Err(Error::UnknownNode(
            unknown.clone(),
            node.config().node_ids().join(", "),
        ));
    }
    node.record_ack(&from, applied).await?;
    Ok(web::Json(ClockMessage {
        node: node.id().clone(),
        applied: node.applied(),
    }))
}

// ---- operations and the fault hook -----------------------------------------------

/// The node's replication state: clock, buffer, log, peers.
#[utoipa::path(get, path = "/status", tag = "operations",
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "The node's state", body = StatusResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
    ))]
async fn status(_auth: ClientAuth, node: web::Data<Node>) -> web::Json<StatusResponse> {
    web::Json(node.status())
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Every metric", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
    ))]
async fn metrics_text(_auth: ClientAuth, node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render(&node))
}

/// This OpenAPI document, narrowed to this cluster's nodes and limits. Never
/// needs a token.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route", body = Object)))]
async fn openapi_json(node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document_for(node.config()))
}

/// The trace records this node holds in memory (`trace_buffer`), oldest first.
#[utoipa::path(get, path = "/v1/trace", tag = "operations",
    params(TraceQuery),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "The records held; `enabled` is false when the node keeps no trace in memory", body = TraceResponse),
        (status = 400, description = "Malformed query", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
    ))]
async fn trace(
    _auth: ClientAuth,
    node: web::Data<Node>,
    query: web::Query<TraceQuery>,
) -> web::Json<TraceResponse> {
    web::Json(node.tracer().since(query.after.unwrap_or(0)))
}

/// The trace records held in memory, then every new one as it is made, as
/// server-sent events (`id:` the record's id, `data:` the record as JSON). A
/// comment line is sent every 15 s while nothing happens.
#[utoipa::path(get, path = "/v1/trace/stream", tag = "operations",
    params(TraceQuery),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "A stream of trace records", body = TraceEvent, content_type = "text/event-stream"),
        (status = 400, description = "Malformed query", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 404, description = "The node keeps no trace in memory (trace_buffer is 0)", body = ErrorResponse),
    ))]
async fn trace_stream(
    _auth: ClientAuth,
    node: web::Data<Node>,
    query: web::Query<TraceQuery>,
) -> Result<HttpResponse> {
    use futures_util::stream;
    use tokio::sync::broadcast::error::RecvError;

    if !node.tracer().in_memory() {
        return Err(Error::NotFound(
            "this node keeps no trace; start it with trace_buffer > 0 (KVNODE_TRACE_BUFFER=10000)"
                .into(),
        ));
    }
    let (backlog, live) = node.tracer().follow(query.after.unwrap_or(0));
    let stopping = node.tracer().closing();
    let state = (
        std::collections::VecDeque::from(backlog),
        live,
        stopping,
        query.after.unwrap_or(0),
    );
    let events = stream::unfold(
        state,
        |(mut backlog, mut live, mut stopping, mut last)| async move {
            let sse = |e: &TraceEvent| {
                let json = serde_json::to_string(e).unwrap_or_default();
                web::Bytes::from(format!("id: {}\ndata: {json}\n\n", e.id))
            };
            loop {
                if let Some(e) = backlog.pop_front() {
                    last = e.id;
                    let chunk = sse(&e);
                    return Some((
                        Ok::<_, actix_web::Error>(chunk),
                        (backlog, live, stopping, last),
                    ));
                }
                if *stopping.borrow() {
                    return None;
                }
                let chunk = tokio::select! {
                    received = live.recv() => match received {
                        Ok(e) if e.id <= last => continue,
                        Ok(e) => {
                            last = e.id;
                            sse(&e)
                        }
                        Err(RecvError::Lagged(skipped)) => web::Bytes::from(format!(
                            ": this stream fell behind and skipped {skipped} records\n\n"
                        )),
                        Err(RecvError::Closed) => return None,
                    },
                    _ = stopping.changed() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(15)) => web::Bytes::from_static(b": idle\n\n"),
                };
                return Some((Ok(chunk), (backlog, live, stopping, last)));
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(events))
}

fn faults_enabled(node: &Node) -> Result<()> {
    if node.config().faults {
        Ok(())
    } else {
        Err(Error::NotFound(
            "the fault hook is disabled; start the node with faults = true (KVNODE_FAULTS=true)"
                .into(),
        ))
    }
}

fn paused_links(node: &Node) -> web::Json<FaultsResponse> {
    web::Json(FaultsResponse {
        node: node.id().clone(),
        paused: node
            .links()
            .iter()
            .filter(|l| l.is_paused())
            .map(|l| l.member.id.clone())
            .collect(),
    })
}

/// Which links from this node the fault hook has paused (needs `faults = true`).
#[utoipa::path(get, path = "/admin/v1/links", tag = "faults",
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The paused links", body = FaultsResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 404, description = "The fault hook is disabled", body = ErrorResponse),
    ))]
async fn links(_auth: PeerAuth, node: web::Data<Node>) -> Result<web::Json<FaultsResponse>> {
    faults_enabled(&node)?;
    Ok(paused_links(&node))
}

/// Pauses or resumes replication from this node to a peer (needs `faults = true`).
#[utoipa::path(post, path = "/admin/v1/links/{peer}/{action}", tag = "faults",
    params(
        ("peer" = String, Path, description = "A peer's id"),
        ("action" = String, Path, description = "pause or resume"),
    ),
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The paused links", body = FaultsResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 404, description = "The fault hook is disabled, the peer is unknown or the action is not pause or resume", body = ErrorResponse),
    ))]
async fn set_link(
    _auth: PeerAuth,
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
) -> Result<web::Json<FaultsResponse>> {
    faults_enabled(&node)?;
    let (peer, action) = path.into_inner();
    let link = node
        .links()
        .iter()
        .find(|l| l.member.id == peer)
        .ok_or_else(|| Error::NotFound(format!("{peer:?} is not a peer of {}", node.id())))?;
    let pause = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => {
            return Err(Error::NotFound(format!(
                "unknown link action {other:?}; use pause or resume"
            )))
        }
    };
    link.paused.store(pause, Ordering::Release);
    link.wake.notify_one();
    log::info!(
        "fault hook: replication to {peer} {}",
        if pause { "paused" } else { "resumed" }
    );
    Ok(paused_links(&node))
}

#[cfg(test)]
mod tests {
    use actix_web::http::StatusCode;
    use actix_web::test::{self, TestRequest};
    use actix_web::App;
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::node::test_node;

    const SECRET: &str = "cluster-secret-0123456789";
    const TOKEN: &str = "client-token-0123456789";

    fn event(origin: &str, seq: u64) -> Json {
        json!({"origin": origin, "seq": seq, "key": "k", "op": {"put": seq}, "deps": {origin: seq - 1}})
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
            node.applied().get("n2"),
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
        assert_eq!(node.applied().get("n2"), 1);
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
        assert_eq!(node.applied().get("n1"), 0);
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
        assert_eq!(node.applied().get("n1"), 3);
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
        assert_eq!(node.applied(), VClock::new());
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
        assert_eq!(node.applied().get("n1"), 1);
    }
}
