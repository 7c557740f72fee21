//! The handlers, by group: the compatibility API (the prototype's), the
//! native API, the peer API, operations and the fault hook; with the
//! authentication and validation they share.

use std::future::{ready, Ready};
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use futures_util::future::LocalBoxFuture;
use futures_util::{stream, StreamExt};
use vclock_proto::{
    AddMemberRequest, ClockMessage, ContextQuery, DeleteRequest, ErrorResponse, EventBatch,
    FaultsResponse, GetResponse, HealthResponse, LinkRequest, MembersMessage, PutRequest,
    PutResponse, ReadQuery, ReadResponse, ReplaceMemberRequest, Sibling, SnapshotChunk,
    SnapshotRequest, StatusResponse, SyncQuery, TraceEvent, TraceQuery, TraceResponse,
    TxnReadRequest, TxnReadResponse, TxnWriteRequest, VClock, Value, Write, WriteRequest,
    WriteResponse, TRACE_CAUSE_HEADER,
};

use super::middleware::submit_write;
use crate::config::{Config, Secret};
use crate::core::{Membership, ReadResult};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::observe::metrics;

/// The OpenAPI document, rendered once when the routes are registered.
#[derive(Debug)]
pub struct ApiDocument(pub String);

// ---- authentication --------------------------------------------------------------

/// A request that carried the cluster secret, if one is configured. Peer and
/// admin routes take it.
#[derive(Debug)]
pub struct PeerAuth;

/// A request that carried the client token, if one is configured. Client
/// routes (all but `/health`) take it.
#[derive(Debug)]
pub struct ClientAuth;

pub(crate) fn bearer_matches(req: &HttpRequest, secret: Option<&Secret>, what: &str) -> Result<()> {
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

pub(crate) fn node_of(req: &HttpRequest) -> &Node {
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

pub(crate) fn check_key(config: &Config, key: &str) -> Result<()> {
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

pub(crate) fn check_value(config: &Config, value: &Value) -> Result<()> {
    let len = value.json().len();
    if len > config.max_value_bytes {
        return Err(Error::TooLarge(format!(
            "the value is {len} bytes of JSON, larger than the limit of {} bytes (max_value_bytes)",
            config.max_value_bytes
        )));
    }
    let depth = value.depth();
    if depth > config.max_value_depth {
        return Err(Error::BadRequest(format!(
            "the value nests arrays and objects {depth} deep, deeper than the limit of {} \
             (max_value_depth)",
            config.max_value_depth
        )));
    }
    Ok(())
}

pub(crate) fn parse_context(query: &ContextQuery) -> Result<Option<VClock>> {
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
    responses(
        (status = 200, description = "The node is up and serves reads and writes", body = HealthResponse),
        (status = 503, description = "The node is recovering: checking with its peers that none holds more of its writes, or bootstrapping from one (code `recovering`)", body = ErrorResponse),
    ))]
pub async fn health(node: web::Data<Node>) -> Result<web::Json<HealthResponse>> {
    if let Some(why) = node.not_live() {
        return Err(Error::Recovering(why));
    }
    Ok(web::Json(HealthResponse {
        status: "healthy".into(),
        node: node.id().clone(),
        timestamp: node.committed(),
    }))
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
        (status = 503, description = "The context was not satisfied within causal_wait, the writer's queue is full (max_queued_bytes), or the node is stopping", body = ErrorResponse),
    ))]
pub async fn write(
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
    let event = submit_write(&req, &node, vec![Write::put(key, value)], context.as_ref()).await?;
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
pub async fn read(
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
pub async fn get_key(
    _auth: ClientAuth,
    node: web::Data<Node>,
    key: web::Path<String>,
    query: web::Query<ContextQuery>,
) -> Result<web::Json<GetResponse>> {
    let key = key.into_inner();
    check_key(node.config(), &key)?;
    let context = parse_context(&query)?;
    let result = node.read(&key, context.as_ref()).await?;
    Ok(web::Json(get_response(key, result)))
}

/// The native answer for one key.
fn get_response(key: String, result: ReadResult) -> GetResponse {
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
    GetResponse {
        key,
        found: winner.is_some(),
        value: winner.unwrap_or_else(Value::null),
        siblings,
        context: result.applied,
    }
}

/// Reads several keys from one causally consistent cut of this node's state,
/// after an optional causal context.
#[utoipa::path(post, path = "/v1/txn/read", tag = "native", request_body = TxnReadRequest,
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Every key's siblings and winner, and the cut's clock", body = TxnReadResponse),
        (status = 400, description = "Malformed body, no keys, an empty or repeated key, or an invalid context", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 409, description = "The context counts writes that were never made", body = ErrorResponse),
        (status = 413, description = "A key is over max_key_bytes, more keys than max_txn_keys, or the body is over its limit", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "The context was not satisfied within causal_wait", body = ErrorResponse),
    ))]
pub async fn txn_read(
    _auth: ClientAuth,
    node: web::Data<Node>,
    body: web::Json<TxnReadRequest>,
) -> Result<web::Json<TxnReadResponse>> {
    let TxnReadRequest { keys, context } = body.into_inner();
    check_txn_keys(node.config(), keys.iter().map(String::as_str))?;
    let names: Vec<&str> = keys.iter().map(String::as_str).collect();
    let results = node.read_keys(&names, context.as_ref()).await?;
    let context = results
        .first()
        .map(|r| r.applied.clone())
        .unwrap_or_default();
    let reads = keys
        .into_iter()
        .zip(results)
        .map(|(k, r)| get_response(k, r));
    Ok(web::Json(TxnReadResponse {
        reads: reads.collect(),
        context,
    }))
}

/// Writes several keys in one atomic transaction, after an optional causal
/// context: one event with one dot, which every replica applies as a whole.
#[utoipa::path(post, path = "/v1/txn/write", tag = "native", request_body = TxnWriteRequest,
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Every write applied and committed under one dot", body = PutResponse),
        (status = 400, description = "Malformed body, no writes, an empty or repeated key, a value nested too deep, or an invalid context", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 409, description = "The context counts writes that were never made", body = ErrorResponse),
        (status = 413, description = "A key or value is over its limit, more writes than max_txn_keys, more bytes than max_txn_bytes, or the body is over its limit", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "The context was not satisfied within causal_wait, the writer's queue is full (max_queued_bytes), or the node is stopping", body = ErrorResponse),
    ))]
pub async fn txn_write(
    _auth: ClientAuth,
    req: HttpRequest,
    node: web::Data<Node>,
    body: web::Json<TxnWriteRequest>,
) -> Result<web::Json<PutResponse>> {
    let TxnWriteRequest { writes, context } = body.into_inner();
    let config = node.config();
    if writes.is_empty() {
        return Err(Error::BadRequest(
            "writes is empty: list at least one write".into(),
        ));
    }
    check_txn_keys(config, writes.iter().map(|w| w.key.as_str()))?;
    let mut bytes = 0usize;
    for w in &writes {
        if let Some(value) = w.op.value() {
            check_value(config, value)?;
        }
        bytes += w.key.len() + w.op.value().map_or(0, |v| v.json().len());
    }
    if bytes > config.max_txn_bytes {
        return Err(Error::TooLarge(format!(
            "the transaction writes {bytes} bytes of keys and values, more than the limit of {} \
             bytes (max_txn_bytes)",
            config.max_txn_bytes
        )));
    }
    let event = submit_write(&req, &node, writes, context.as_ref()).await?;
    Ok(web::Json(PutResponse::from(&*event)))
}

/// The keys of a transaction: at least one, at most `max_txn_keys`, each
/// valid and listed once.
pub(crate) fn check_txn_keys<'k>(
    config: &Config,
    keys: impl ExactSizeIterator<Item = &'k str>,
) -> Result<()> {
    let count = keys.len();
    if count == 0 {
        return Err(Error::BadRequest(
            "keys is empty: list at least one key".into(),
        ));
    }
    if count > config.max_txn_keys {
        return Err(Error::TooLarge(format!(
            "{count} keys, more than the limit of {} (max_txn_keys)",
            config.max_txn_keys
        )));
    }
    let mut seen = std::collections::HashSet::with_capacity(count);
    for key in keys {
        check_key(config, key)?;
        if !seen.insert(key) {
            return Err(Error::BadRequest(format!(
                "the key {key:?} is listed twice"
            )));
        }
    }
    Ok(())
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
        (status = 503, description = "The context was not satisfied within causal_wait, the writer's queue is full (max_queued_bytes), or the node is stopping", body = ErrorResponse),
    ))]
pub async fn put_key(
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
    let event = submit_write(&req, &node, vec![Write::put(key, value)], context.as_ref()).await?;
    Ok(web::Json(PutResponse::from(&*event)))
}

/// The optional body of a delete ([`DeleteRequest`]): `None` when the request
/// has no body, an empty one or `null`; otherwise read like the body of a put
/// (JSON content type, size limit, the same errors).
#[derive(Debug)]
pub struct DeleteBody(pub Option<DeleteRequest>);

impl FromRequest for DeleteBody {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, std::result::Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let mut body = payload.take();
        Box::pin(async move {
            let first = loop {
                match body.next().await {
                    None => return Ok(DeleteBody(None)),
                    Some(Ok(chunk)) if chunk.is_empty() => continue,
                    Some(Ok(chunk)) => break chunk,
                    Some(Err(e)) => {
                        return Err(Error::BadRequest(format!("cannot read the body: {e}")).into())
                    }
                }
            };
            let rest: std::pin::Pin<
                Box<dyn futures_util::Stream<Item = std::result::Result<web::Bytes, PayloadError>>>,
            > = Box::pin(stream::once(ready(Ok(first))).chain(body));
            let mut payload = Payload::from(rest);
            let request =
                web::Json::<Option<DeleteRequest>>::from_request(&req, &mut payload).await?;
            Ok(DeleteBody(request.into_inner()))
        })
    }
}

/// Deletes a key (a tombstone sibling). With a context (in the body, in the
/// query, or both: then their merge), the node first waits until it has
/// applied everything the context counts, as for a put.
#[utoipa::path(delete, path = "/v1/kv/{key}", tag = "native",
    request_body(content = Option<DeleteRequest>, description = "Optional: the causal context", content_type = "application/json"),
    params(
        ("key" = String, Path, description = "The key (may contain /)"),
        ("context" = Option<String>, Query, description = "A clock as JSON text, e.g. {\"node1\":3}; merged with the body's context if both are given"),
    ),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Deleted and committed", body = PutResponse),
        (status = 400, description = "Malformed body, empty key, an invalid context or a context naming an unknown node", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 408, description = "The request took longer than request_timeout", body = ErrorResponse),
        (status = 409, description = "The context counts writes that were never made", body = ErrorResponse),
        (status = 413, description = "The key or the body is over its limit", body = ErrorResponse),
        (status = 415, description = "A body not sent as application/json", body = ErrorResponse),
        (status = 503, description = "The context was not satisfied within causal_wait, the writer's queue is full (max_queued_bytes), or the node is stopping", body = ErrorResponse),
    ))]
pub async fn delete_key(
    _auth: ClientAuth,
    req: HttpRequest,
    node: web::Data<Node>,
    key: web::Path<String>,
    query: web::Query<ContextQuery>,
    body: DeleteBody,
) -> Result<web::Json<PutResponse>> {
    let key = key.into_inner();
    check_key(node.config(), &key)?;
    let context = match (parse_context(&query)?, body.0.and_then(|b| b.context)) {
        (Some(mut query), Some(body)) => {
            query.merge(&body);
            Some(query)
        }
        (query, body) => query.or(body),
    };
    let event = submit_write(&req, &node, vec![Write::delete(key)], context.as_ref()).await?;
    Ok(web::Json(PutResponse::from(&*event)))
}

// ---- peer API --------------------------------------------------------------------

pub(crate) fn check_peer(node: &Node, from: &str) -> Result<()> {
    // A removed node is still a sender: its last writes drain to the others.
    if from == node.id() || !node.is_known(from) {
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
        (status = 413, description = "More than max_batch_events events, or a body over its limit (keys and values are not held to this node's client limits)", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "The buffer of undeliverable events is full (max_buffered or max_buffered_bytes), or the writer's queue is (max_queued_bytes): send again later", body = ErrorResponse),
    ))]
pub async fn receive_events(
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
    // The events were accepted by their origin under its own limits: they are
    // history now, whatever this node's `max_key_bytes` and `max_value_bytes`
    // (which bound client requests only). The core still checks that each one
    // is a well-formed event of the cluster.
    let cause = request
        .headers()
        .get(TRACE_CAUSE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::observe::trace::parse_cause);
    let (receipt, applied) = node.receive(from, cause, events).await?;
    if receipt.refused > 0 {
        let limit = match receipt.refused_by {
            Some("max_buffered_bytes") => {
                format!("max_buffered_bytes = {}", config.max_buffered_bytes)
            }
            _ => format!("max_buffered = {} events", config.max_buffered),
        };
        return Err(Error::BufferFull(limit));
    }
    Ok(web::Json(ClockMessage {
        node: node.id().clone(),
        applied,
    }))
}

/// Clock exchange with a peer: records its clock, answers with this node's.
/// With `?question=true`, a peer asks which writes this node made, to check
/// a client's context: the empty clock it sends is not recorded.
#[utoipa::path(post, path = "/peer/v1/sync", tag = "peer", request_body = ClockMessage,
    params(SyncQuery),
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "This node's applied clock", body = ClockMessage),
        (status = 400, description = "Malformed body or query, a sender that is not a peer, or a clock naming an unknown node", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "A question to a node that is recovering its own history", body = ErrorResponse),
    ))]
pub async fn sync_clock(
    _auth: PeerAuth,
    node: web::Data<Node>,
    query: web::Query<SyncQuery>,
    body: web::Json<ClockMessage>,
) -> Result<web::Json<ClockMessage>> {
    let ClockMessage {
        node: from,
        applied,
    } = body.into_inner();
    check_peer(&node, &from)?;
    check_clock_nodes(&node, &applied)?;
    if query.question {
        // Until it is live, this node may lack writes it made: its clock
        // would make the asker refuse a context that counts them.
        if let Some(why) = node.not_live() {
            return Err(Error::Recovering(format!(
                "this node cannot say yet which writes it made: {why}"
            )));
        }
        return Ok(web::Json(ClockMessage {
            node: node.id().clone(),
            applied: node.committed(),
        }));
    }
    node.peer_clock(&from, &applied);
    let answer = web::Json(ClockMessage {
        node: node.id().clone(),
        applied: node.shown(node.committed()),
    });
    if let Err(e) = check_claim(&node, &from, &applied) {
        if node.not_live().is_some() {
            // Expected while recovering: the peer holds writes this node lost.
            return Ok(answer);
        }
        return Err(e);
    }
    // An empty clock asks for this node's clock and tells nothing (a question
    // from a node that does not say so); any other is what the peer holds.
    if applied.nodes().next().is_some() {
        node.record_ack(&from, applied).await?;
    }
    Ok(answer)
}

/// A peer's clock may not count more of this node's writes than it made.
fn check_claim(node: &Node, from: &str, applied: &VClock) -> Result<()> {
    let (claimed, made) = (applied.get(node.id()), node.committed().get(node.id()));
    if claimed > made {
        return Err(Error::BadRequest(format!(
            "the clock of {from} counts {claimed} writes of {}, which has made only {made}",
            node.id()
        )));
    }
    Ok(())
}

/// A clock may count writes only of nodes that are or were members.
fn check_clock_nodes(node: &Node, clock: &VClock) -> Result<()> {
    let ids = node.node_ids();
    match crate::core::context::unknown_node(clock, &ids) {
        Some(unknown) => Err(Error::UnknownNode(unknown.clone(), ids.join(", "))),
        None => Ok(()),
    }
}

/// A peer's membership: merged into this node's, which is the answer.
#[utoipa::path(post, path = "/peer/v1/members", tag = "peer", request_body = MembersMessage,
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "This node's membership, with the sender's merged in", body = MembersMessage),
        (status = 400, description = "Malformed body, a sender that is not a member, or a malformed entry", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
    ))]
pub async fn peer_members(
    _auth: PeerAuth,
    node: web::Data<Node>,
    body: web::Json<MembersMessage>,
) -> Result<web::Json<MembersMessage>> {
    let MembersMessage {
        node: from,
        members,
        ..
    } = body.into_inner();
    check_peer(&node, &from)?;
    let theirs = Membership::from_entries(members)
        .map_err(|e| Error::BadRequest(format!("the membership of {from}: {e}")))?;
    node.clone().into_inner().merge_members(&theirs).await?;
    Ok(web::Json(node.members_message()))
}

// ---- membership changes --------------------------------------------------------

/// The cluster's membership as this node holds it.
#[utoipa::path(get, path = "/admin/v1/members", tag = "membership",
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "Every node this node knows of, removed ones included", body = MembersMessage),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
    ))]
pub async fn members(_auth: PeerAuth, node: web::Data<Node>) -> web::Json<MembersMessage> {
    web::Json(node.members_message())
}

/// Adds a node to the cluster. Start the new node with the cluster's nodes
/// (itself included) as its node list: it copies a snapshot from a peer,
/// catches up, and then serves.
#[utoipa::path(post, path = "/admin/v1/members", tag = "membership", request_body = AddMemberRequest,
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The membership with the node added (unchanged if it was already there at that URL)", body = MembersMessage),
        (status = 400, description = "Malformed body, an invalid id or URL", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 409, description = "The id is a member at another URL, or was removed (ids are never reused)", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
    ))]
pub async fn add_member(
    _auth: PeerAuth,
    node: web::Data<Node>,
    body: web::Json<AddMemberRequest>,
) -> Result<web::Json<MembersMessage>> {
    let AddMemberRequest { id, url } = body.into_inner();
    let node = node.into_inner();
    let answer = node.change_members(|m, by| m.add(by, &id, &url)).await?;
    Ok(web::Json(answer))
}

/// Removes a node from the cluster: no node sends to it any more, it takes
/// no client writes, and it no longer holds back log collection. Its writes
/// are kept; the ones it has not sent yet still drain to the others.
#[utoipa::path(delete, path = "/admin/v1/members/{id}", tag = "membership",
    params(("id" = String, Path, description = "The node to remove")),
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The membership with the node removed (unchanged if it already was)", body = MembersMessage),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 404, description = "No such node", body = ErrorResponse),
        (status = 409, description = "The node is the one asked (ask another member), or the cluster's last member", body = ErrorResponse),
    ))]
pub async fn remove_member(
    _auth: PeerAuth,
    node: web::Data<Node>,
    path: web::Path<String>,
) -> Result<web::Json<MembersMessage>> {
    let id = path.into_inner();
    let node = node.into_inner();
    let answer = node.change_members(|m, by| m.remove(by, &id)).await?;
    Ok(web::Json(answer))
}

/// Moves a node to a new address (a replacement machine with the same id):
/// the node there recovers its history from its peers before it serves.
#[utoipa::path(put, path = "/admin/v1/members/{id}", tag = "membership", request_body = ReplaceMemberRequest,
    params(("id" = String, Path, description = "The node to replace")),
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The membership with the node's new URL (unchanged if it was already there)", body = MembersMessage),
        (status = 400, description = "Malformed body or an invalid URL", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 404, description = "No such node", body = ErrorResponse),
        (status = 409, description = "The node was removed", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
    ))]
pub async fn replace_member(
    _auth: PeerAuth,
    node: web::Data<Node>,
    path: web::Path<String>,
    body: web::Json<ReplaceMemberRequest>,
) -> Result<web::Json<MembersMessage>> {
    let id = path.into_inner();
    let ReplaceMemberRequest { url } = body.into_inner();
    let node = node.into_inner();
    let answer = node
        .change_members(|m, by| m.replace(by, &id, &url))
        .await?;
    Ok(web::Json(answer))
}

/// The next chunk of this node's state, for a bootstrapping peer.
#[utoipa::path(post, path = "/peer/v1/snapshot", tag = "peer", request_body = SnapshotRequest,
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The next keys in key order with their siblings, and the clock they were read at", body = SnapshotChunk),
        (status = 400, description = "Malformed body, a sender that is not a peer, a clock naming an unknown node, or one that counts writes this node never made", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
        (status = 503, description = "This node is not live itself (it is recovering)", body = ErrorResponse),
    ))]
pub async fn snapshot(
    _auth: PeerAuth,
    node: web::Data<Node>,
    body: web::Json<SnapshotRequest>,
) -> Result<web::Json<SnapshotChunk>> {
    let SnapshotRequest {
        node: from,
        applied,
        after,
        limit,
    } = body.into_inner();
    check_peer(&node, &from)?;
    check_clock_nodes(&node, &applied)?;
    if let Some(why) = node.not_live() {
        return Err(Error::Recovering(format!(
            "this node cannot give a snapshot: {why}"
        )));
    }
    check_claim(&node, &from, &applied)?;
    // Recorded first: from now on the log keeps every event beyond what the
    // asking node holds, which the chunks may not show.
    node.record_ack(&from, applied).await?;
    let most = crate::config::limits::MAX_BOOTSTRAP_CHUNK_KEYS as u64;
    let limit = limit.unwrap_or(1000).clamp(1, most) as usize;
    Ok(web::Json(
        node.snapshot_chunk(after.as_deref(), limit).await?,
    ))
}

// ---- operations and the fault hook -----------------------------------------------

/// The node's replication state: clock, buffer, log, peers.
#[utoipa::path(get, path = "/status", tag = "operations",
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "The node's state", body = StatusResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
    ))]
pub async fn status(_auth: ClientAuth, node: web::Data<Node>) -> web::Json<StatusResponse> {
    web::Json(node.status())
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "Every metric", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
    ))]
pub async fn metrics_text(_auth: ClientAuth, node: web::Data<Node>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(metrics::CONTENT_TYPE)
        .body(metrics::render(
            node.metrics(),
            &node.status(),
            node.links().iter().map(|l| &l.metrics),
        ))
}

/// This OpenAPI document, narrowed to this cluster's nodes and limits. Never
/// needs a token.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route", body = Object)))]
pub async fn openapi_json(document: web::Data<ApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
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
pub async fn trace(
    _auth: ClientAuth,
    node: web::Data<Node>,
    query: web::Query<TraceQuery>,
) -> web::Json<TraceResponse> {
    web::Json(node.tracer().since(query.after.unwrap_or(0)))
}

/// How often an idle trace stream sends a comment line.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The state of one trace stream.
struct Follow {
    backlog: std::collections::VecDeque<std::sync::Arc<TraceEvent>>,
    live: tokio::sync::broadcast::Receiver<std::sync::Arc<TraceEvent>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    last: u64,
    /// When the stream ends if no record comes.
    quiet_until: tokio::time::Instant,
    ended: bool,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// The trace records held in memory, then every new one as it is made, as
/// server-sent events (`id:` the record's id, `data:` the record as JSON). A
/// comment line is sent every 15 s while nothing happens; after
/// `trace_stream_idle` without a record the stream ends (the client reconnects
/// with `after`). Each stream holds one of `max_trace_streams` slots.
#[utoipa::path(get, path = "/v1/trace/stream", tag = "operations",
    params(TraceQuery),
    security((), ("client_token" = [])),
    responses(
        (status = 200, description = "A stream of trace records", body = TraceEvent, content_type = "text/event-stream"),
        (status = 400, description = "Malformed query", body = ErrorResponse),
        (status = 401, description = "The client token is missing or wrong", body = ErrorResponse),
        (status = 404, description = "The node keeps no trace in memory (trace_buffer is 0)", body = ErrorResponse),
        (status = 503, description = "Every trace stream slot is taken (max_trace_streams)", body = ErrorResponse),
    ))]
pub async fn trace_stream(
    _auth: ClientAuth,
    node: web::Data<Node>,
    query: web::Query<TraceQuery>,
) -> Result<HttpResponse> {
    use tokio::sync::broadcast::error::RecvError;

    if !node.tracer().in_memory() {
        return Err(Error::NotFound(
            "this node keeps no trace; start it with trace_buffer > 0 (KVNODE_TRACE_BUFFER=10000)"
                .into(),
        ));
    }
    let slot = node.stream_slot()?;
    let (backlog, live) = node.tracer().follow(query.after.unwrap_or(0));
    let idle = node.config().trace_stream_idle;
    let state = Follow {
        backlog: std::collections::VecDeque::from(backlog),
        live,
        stopping: node.tracer().closing(),
        last: query.after.unwrap_or(0),
        quiet_until: tokio::time::Instant::now() + idle,
        ended: false,
        _slot: slot,
    };
    let events = stream::unfold(state, move |mut f| async move {
        let sse = |e: &TraceEvent| {
            let json = serde_json::to_string(e).unwrap_or_default();
            web::Bytes::from(format!("id: {}\ndata: {json}\n\n", e.id))
        };
        if f.ended {
            return None;
        }
        loop {
            if let Some(e) = f.backlog.pop_front() {
                f.last = e.id;
                f.quiet_until = tokio::time::Instant::now() + idle;
                let chunk = sse(&e);
                return Some((Ok::<_, actix_web::Error>(chunk), f));
            }
            if *f.stopping.borrow() {
                return None;
            }
            let heartbeat = tokio::time::Instant::now() + HEARTBEAT;
            let chunk = tokio::select! {
                received = f.live.recv() => match received {
                    Ok(e) if e.id <= f.last => continue,
                    Ok(e) => {
                        f.last = e.id;
                        f.quiet_until = tokio::time::Instant::now() + idle;
                        sse(&e)
                    }
                    Err(RecvError::Lagged(skipped)) => web::Bytes::from(format!(
                        ": this stream fell behind and skipped {skipped} records\n\n"
                    )),
                    Err(RecvError::Closed) => return None,
                },
                _ = f.stopping.changed() => return None,
                _ = tokio::time::sleep_until(heartbeat.min(f.quiet_until)) => {
                    if tokio::time::Instant::now() >= f.quiet_until {
                        // Frees the slot of a stream nobody may be reading.
                        f.ended = true;
                        web::Bytes::from(format!(
                            ": no record for {idle:?} (trace_stream_idle); closing: reconnect \
                             with after={}\n\n",
                            f.last
                        ))
                    } else {
                        web::Bytes::from_static(b": idle\n\n")
                    }
                }
            };
            return Some((Ok(chunk), f));
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(events))
}

pub(crate) fn faults_enabled(node: &Node) -> Result<()> {
    if node.config().faults {
        Ok(())
    } else {
        Err(Error::NotFound(
            "the fault hook is disabled; start the node with faults = true (KVNODE_FAULTS=true)"
                .into(),
        ))
    }
}

pub(crate) fn paused_links(node: &Node) -> web::Json<FaultsResponse> {
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
pub async fn links(_auth: PeerAuth, node: web::Data<Node>) -> Result<web::Json<FaultsResponse>> {
    faults_enabled(&node)?;
    Ok(paused_links(&node))
}

/// Pauses or resumes replication from this node to a peer (needs `faults = true`).
#[utoipa::path(post, path = "/admin/v1/links/{peer}/{action}", tag = "faults",
    params(
        ("peer" = String, Path, description = "A peer's id"),
        ("action" = String, Path, description = "pause or resume"),
    ),
    request_body(content = LinkRequest, content_type = "application/json",
        description = "An empty JSON object; required, so that no cross-site form can send this request"),
    security((), ("cluster_secret" = [])),
    responses(
        (status = 200, description = "The paused links", body = FaultsResponse),
        (status = 400, description = "The body is not an empty JSON object", body = ErrorResponse),
        (status = 401, description = "The cluster secret is missing or wrong", body = ErrorResponse),
        (status = 404, description = "The fault hook is disabled, the peer is unknown or the action is not pause or resume", body = ErrorResponse),
        (status = 415, description = "The body is not sent as application/json", body = ErrorResponse),
    ))]
pub async fn set_link(
    _auth: PeerAuth,
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
    _body: web::Json<LinkRequest>,
) -> Result<web::Json<FaultsResponse>> {
    faults_enabled(&node)?;
    let (peer, action) = path.into_inner();
    let links = node.links();
    let link = links
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
