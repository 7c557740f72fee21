//! One benchmark connection: an awc client of one node with its own pool, so
//! that it keeps one keep-alive connection, and the requests the workloads send.

use std::fmt::Write as _;
use std::time::Duration;

use awc::http::header::{HeaderValue, CONTENT_TYPE};
use awc::http::Method;
use awc::FrozenClientRequest;
use bytes::Bytes;
use serde::de::IgnoredAny;
use serde::Deserialize;
use vclock_proto::VClock;

use crate::check::Api;
use crate::percent_encode;
use crate::transport::{decode, never_sent, read_whole, Transport};

/// Largest answer body read (the nodes' answers are small; a value is at most 1 MiB).
const BODY_LIMIT: usize = 8 << 20;

/// Why a request failed.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    /// `http_<status>`, `timeout`, `connect`, `io` or `bad_answer`.
    pub kind: String,
    /// What happened, for people.
    pub message: String,
}

impl Failure {
    fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
        }
    }

    pub fn bad_answer(message: impl Into<String>) -> Self {
        Self::new("bad_answer", message)
    }
}

/// A connection to one node.
pub(crate) struct Conn {
    client: awc::Client,
    base: String,
    api: Api,
    health: FrozenClientRequest,
    write: FrozenClientRequest,
    /// Reused to build request paths.
    path: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("base", &self.base).finish()
    }
}

impl Conn {
    /// A connection to the node at `base` (e.g. `http://127.0.0.1:5001`). Must be
    /// called on an actix runtime; connects on the first request.
    pub fn new(base: &str, api: Api, transport: &Transport) -> Result<Self, Failure> {
        let base = base.trim_end_matches('/').to_owned();
        // A worker has one request in flight, so its client's pool holds one
        // connection, kept open between requests for the whole run.
        let connector = awc::Connector::new()
            .limit(4)
            .conn_keep_alive(Duration::from_secs(3600))
            .conn_lifetime(Duration::from_secs(24 * 3600));
        let builder = awc::Client::builder()
            .connector(connector)
            .timeout(transport.timeout())
            .no_default_headers()
            .disable_redirects();
        let client = match transport.token() {
            Some(token) => builder.bearer_auth(token).finish(),
            None => builder.finish(),
        };
        let freeze = |request: awc::ClientRequest| {
            request
                .freeze()
                .map_err(|e| Failure::new("connect", format!("{base}: invalid URL: {e}")))
        };
        let health = freeze(client.get(format!("{base}/health")))?;
        let write = freeze(
            client
                .post(format!("{base}/write"))
                .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json"))),
        )?;
        Ok(Self {
            client,
            base,
            api,
            health,
            write,
            path: String::with_capacity(128),
        })
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /health`.
    pub async fn health(&mut self) -> Result<Bytes, Failure> {
        answer(self.health.send().await).await
    }

    /// Writes the JSON text `value` to `key`: `POST /write` or `PUT /v1/kv/{key}`,
    /// with `context` when given.
    pub async fn write(
        &mut self,
        key: &str,
        value: &str,
        context: Option<&VClock>,
    ) -> Result<Bytes, Failure> {
        let mut body = Vec::with_capacity(key.len() + value.len() + 64);
        body.push(b'{');
        if self.api == Api::Compat {
            body.extend_from_slice(b"\"key\":");
            serde_json::to_writer(&mut body, key).expect("strings serialise");
            body.push(b',');
        }
        body.extend_from_slice(b"\"value\":");
        body.extend_from_slice(value.as_bytes());
        self.context_and_end(&mut body, context);
        let sent = match self.api {
            Api::Compat => self.write.send_body(body).await,
            Api::Native => {
                self.path.clear();
                let _ = write!(self.path, "{}/v1/kv/{}", self.base, encode_key(key));
                self.client
                    .request(Method::PUT, self.path.as_str())
                    .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
                    .send_body(body)
                    .await
            }
        };
        answer(sent).await
    }

    /// Writes the JSON text `value` to every key of `keys` in one atomic
    /// write (`POST /v1/txn/write`), with `context` when given.
    pub async fn txn_write(
        &mut self,
        keys: &[String],
        value: &str,
        context: Option<&VClock>,
    ) -> Result<Bytes, Failure> {
        let mut body = Vec::with_capacity(keys.len() * (value.len() + 48) + 64);
        body.extend_from_slice(b"{\"writes\":[");
        for (i, key) in keys.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"key\":");
            serde_json::to_writer(&mut body, key).expect("strings serialise");
            body.extend_from_slice(b",\"op\":{\"put\":");
            body.extend_from_slice(value.as_bytes());
            body.extend_from_slice(b"}}");
        }
        body.push(b']');
        self.context_and_end(&mut body, context);
        self.post("/v1/txn/write", body).await
    }

    /// Reads `keys` in one snapshot read (`POST /v1/txn/read`), with
    /// `context` when given.
    pub async fn txn_read(
        &mut self,
        keys: &[String],
        context: Option<&VClock>,
    ) -> Result<Bytes, Failure> {
        let mut body = Vec::with_capacity(keys.len() * 24 + 64);
        body.extend_from_slice(b"{\"keys\":");
        serde_json::to_writer(&mut body, keys).expect("strings serialise");
        self.context_and_end(&mut body, context);
        self.post("/v1/txn/read", body).await
    }

    /// Ends a JSON object's `body` with `context`, when given and not empty.
    fn context_and_end(&self, body: &mut Vec<u8>, context: Option<&VClock>) {
        if let Some(context) = context.filter(|c| !c.is_empty()) {
            body.extend_from_slice(b",\"context\":");
            serde_json::to_writer(&mut *body, context).expect("clocks serialise");
        }
        body.push(b'}');
    }

    /// `POST` of the JSON `body` to `path`.
    async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<Bytes, Failure> {
        self.path.clear();
        let _ = write!(self.path, "{}{path}", self.base);
        let sent = self
            .client
            .post(self.path.as_str())
            .insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")))
            .send_body(body)
            .await;
        answer(sent).await
    }

    /// Reads `key`: `GET /read?key=` (which takes no context) or
    /// `GET /v1/kv/{key}` with `context` when given.
    pub async fn read(&mut self, key: &str, context: Option<&VClock>) -> Result<Bytes, Failure> {
        self.path.clear();
        match self.api {
            Api::Compat => {
                let _ = write!(self.path, "{}/read?key={}", self.base, percent_encode(key));
            }
            Api::Native => {
                let _ = write!(self.path, "{}/v1/kv/{}", self.base, encode_key(key));
                if let Some(context) = context.filter(|c| !c.is_empty()) {
                    let json = serde_json::to_string(context).expect("clocks serialise");
                    let _ = write!(self.path, "?context={}", percent_encode(&json));
                }
            }
        }
        answer(self.client.get(self.path.as_str()).send().await).await
    }
}

/// Keys as a path: percent-encoded, `/` kept.
fn encode_key(key: &str) -> String {
    percent_encode(key).replace("%2F", "/")
}

/// Reads the whole answer (so that the connection can be reused) and maps
/// failures to their kind. A success's body is handed back as it is, to be
/// read only as far as the workload needs; an error's is decoded.
async fn answer<S>(sent: Result<awc::ClientResponse<S>, SendError>) -> Result<Bytes, Failure>
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    let (status, body) = read_whole(sent.map_err(classify)?, BODY_LIMIT)
        .await
        .map_err(|e| Failure::new("io", e.to_string()))?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    let refused = decode::<IgnoredAny>(status, &body)
        .err()
        .map_or_else(String::new, |e| e.to_string());
    Err(Failure::new(format!("http_{status}"), refused))
}

type SendError = awc::error::SendRequestError;

fn classify(error: SendError) -> Failure {
    let kind = match &error {
        SendError::Timeout => "timeout",
        SendError::Connect(awc::error::ConnectError::Timeout) => "timeout",
        // A connection closed after the request went out is not a connect error.
        e if never_sent(e) => "connect",
        _ => "io",
    };
    Failure::new(kind, error.to_string())
}

/// The clock of an answer: `timestamp` (`/write`, `/read`, `PUT /v1/kv`) or
/// `context` (`GET /v1/kv`).
pub(crate) fn clock_of(body: &[u8]) -> Result<VClock, Failure> {
    #[derive(Deserialize)]
    struct Clocked {
        #[serde(alias = "context")]
        timestamp: VClock,
    }
    serde_json::from_slice::<Clocked>(body)
        .map(|c| c.timestamp)
        .map_err(|e| Failure::bad_answer(format!("an answer without a clock: {e}")))
}

/// Whether a read's answer shows a value: a non-null `value` (`/read`) or
/// `found: true` (`GET /v1/kv`).
pub(crate) fn shows_value(body: &[u8]) -> Result<bool, Failure> {
    #[derive(Deserialize)]
    struct Shown {
        #[serde(default)]
        found: Option<bool>,
        #[serde(default)]
        value: Option<serde::de::IgnoredAny>,
    }
    // `value: null` deserialises as None, any other value as Some.
    let shown: Shown = serde_json::from_slice(body)
        .map_err(|e| Failure::bad_answer(format!("unexpected read answer: {e}")))?;
    Ok(shown.found.unwrap_or(shown.value.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_come_from_timestamp_or_context() {
        let w = br#"{"status":"success","timestamp":{"node1":2,"node2":0}}"#;
        assert_eq!(clock_of(w).unwrap().get("node1"), 2);
        let g = br#"{"key":"k","found":true,"value":1,"siblings":[{"timestamp":{"node1":1}}],"context":{"node1":3}}"#;
        assert_eq!(clock_of(g).unwrap().get("node1"), 3);
        assert_eq!(clock_of(b"{}").unwrap_err().kind, "bad_answer");
    }

    #[test]
    fn errors_are_counted_by_kind() {
        use awc::error::ConnectError;
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let kind = |e: SendError| classify(e).kind;
        assert_eq!(
            kind(SendError::Connect(ConnectError::Io(refused))),
            "connect"
        );
        assert_eq!(kind(SendError::Connect(ConnectError::Timeout)), "timeout");
        assert_eq!(kind(SendError::Timeout), "timeout");
        // Cut off after the request was sent.
        assert_eq!(kind(SendError::Connect(ConnectError::Disconnected)), "io");
    }

    #[test]
    fn values_show_when_not_null_or_found() {
        assert!(!shows_value(br#"{"value":null,"timestamp":{}}"#).unwrap());
        assert!(shows_value(br#"{"value":0,"timestamp":{}}"#).unwrap());
        assert!(shows_value(br#"{"value":{"a":[1]},"timestamp":{}}"#).unwrap());
        assert!(!shows_value(br#"{"found":false,"value":null}"#).unwrap());
        assert!(shows_value(br#"{"found":true,"value":null}"#).unwrap());
        assert!(shows_value(b"not json").is_err());
    }
}
