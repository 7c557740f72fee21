//! The HTTP shell: routes, extractors and their errors. Each handler extracts,
//! makes one call into the node, and answers JSON.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::future::{ready, Ready};

use actix_web::error::{JsonPayloadError, QueryPayloadError};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use vclock_proto::{
    ClockMessage, ContextQuery, EventBatch, FaultsResponse, GetResponse, HealthResponse, Op,
    PutRequest, PutResponse, ReadQuery, ReadResponse, Sibling, VClock, Value, WriteRequest,
    WriteResponse,
};

use crate::config::{Config, Secret};
use crate::error::{Error, Result};
use crate::node::Node;

/// Room for everything in a client body besides the key and the value.
const ENVELOPE_BYTES: usize = 64 * 1024;

/// Registers every route of a node. Shared by `main` and the tests.
pub fn configure(node: Arc<Node>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let config = node.config().clone();
        let client_limit = config.max_key_bytes + config.max_value_bytes + ENVELOPE_BYTES;
        let peer_limit = config.max_batch_bytes.max(client_limit) * 2;
        cfg.app_data(web::Data::from(node))
            .app_data(json_config(client_limit))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| Error::BadRequest(format!("invalid path: {e}")).into()),
            )
            // Compatibility API (the prototype's).
            .service(resource("/health").route(web::get().to(health)))
            .service(resource("/write").route(web::post().to(write)))
            .service(resource("/read").route(web::get().to(read)))
            // Native API.
            .service(
                resource("/v1/kv/{key:.*}")
                    .route(web::get().to(get_key))
                    .route(web::put().to(put_key))
                    .route(web::delete().to(delete_key)),
            )
            // Peer API: replication and clock exchange.
            .service(
                resource("/peer/v1/events")
                    .app_data(json_config(peer_limit))
                    .route(web::post().to(receive_events)),
            )
            .service(resource("/peer/v1/sync").route(web::post().to(sync_clock)))
            // Operations.
            .service(resource("/status").route(web::get().to(status)))
            // Fault hook, off unless configured.
            .service(resource("/admin/v1/links").route(web::get().to(links)))
            .service(resource("/admin/v1/links/{peer}/{action}").route(web::post().to(set_link)))
            .default_service(web::to(not_found));
    }
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |e, _| json_error(e, limit).into())
}

fn json_error(e: JsonPayloadError, limit: usize) -> Error {
    match e {
        JsonPayloadError::ContentType => Error::UnsupportedMediaType(
            "the body must be JSON, sent with Content-Type: application/json".into(),
        ),
        JsonPayloadError::Overflow { .. } => Error::TooLarge(format!(
            "the body is larger than the limit of {limit} bytes"
        )),
        JsonPayloadError::OverflowKnownLength { length, .. } => Error::TooLarge(format!(
            "the body is {length} bytes, larger than the limit of {limit} bytes"
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

async fn not_found(req: HttpRequest) -> Result<HttpResponse> {
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
    HttpResponse::MethodNotAllowed().json(body)
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
        .and_then(|v| v.strip_prefix("Bearer "));
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

async fn health(node: web::Data<Node>) -> web::Json<HealthResponse> {
    web::Json(HealthResponse {
        status: "healthy".into(),
        node: node.id().clone(),
        timestamp: node.applied(),
    })
}

async fn write(
    _auth: ClientAuth,
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
    let event = node.write(key, Op::Put(value), context.as_ref()).await?;
    Ok(web::Json(WriteResponse {
        status: "success".into(),
        timestamp: event.timestamp(),
    }))
}

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

async fn put_key(
    _auth: ClientAuth,
    node: web::Data<Node>,
    key: web::Path<String>,
    body: web::Json<PutRequest>,
) -> Result<web::Json<PutResponse>> {
    let key = key.into_inner();
    check_key(node.config(), &key)?;
    let PutRequest { value, context } = body.into_inner();
    check_value(node.config(), &value)?;
    let event = node.write(key, Op::Put(value), context.as_ref()).await?;
    Ok(web::Json(PutResponse {
        dot: event.dot(),
        timestamp: event.timestamp(),
    }))
}

async fn delete_key(
    _auth: ClientAuth,
    node: web::Data<Node>,
    key: web::Path<String>,
    query: web::Query<ContextQuery>,
) -> Result<web::Json<PutResponse>> {
    let key = key.into_inner();
    check_key(node.config(), &key)?;
    let context = parse_context(&query)?;
    let event = node.write(key, Op::Delete, context.as_ref()).await?;
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

async fn receive_events(
    _auth: PeerAuth,
    node: web::Data<Node>,
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
    let (receipt, applied) = node.receive(events).await?;
    if receipt.refused > 0 {
        return Err(Error::BufferFull(config.max_buffered));
    }
    Ok(web::Json(ClockMessage {
        node: node.id().clone(),
        applied,
    }))
}

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

async fn status(_auth: ClientAuth, node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok().json(node.status())
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

async fn links(_auth: PeerAuth, node: web::Data<Node>) -> Result<web::Json<FaultsResponse>> {
    faults_enabled(&node)?;
    Ok(paused_links(&node))
}

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
