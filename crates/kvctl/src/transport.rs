//! The one way kvctl talks to a node over HTTP.
//!
//! A [`Transport`] holds what every request needs: the bearer token (the
//! nodes' `client_token`), the timeout, and how much of an answer to read. It
//! is plain data, cheap to clone and to send to another thread. On an actix
//! runtime it opens an [`Agent`] (an awc client and its connection pool),
//! which sends requests and reads their answers.
//!
//! Every answer body and error body is read in one place and decoded by
//! [`vclock_proto::decode_answer`]: the expected message on a 2xx, else the
//! node's `{"error":{...}}`. Every failure says whether the
//! request went out ([`CallError`]): one that was never sent did not happen and
//! may go to another node; one sent without an answer may have been applied.

use std::time::Duration;

use awc::error::{ConnectError, PayloadError, SendRequestError};
use awc::http::Method;
use bytes::Bytes;
use futures_util::stream::{LocalBoxStream, StreamExt};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;
use vclock_proto::{ErrorBody, HealthResponse};

/// Timeout of a request by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest answer read by default (a value is at most 1 MiB; a key's siblings
/// may be several).
pub const DEFAULT_BODY_LIMIT: usize = 64 << 20;

/// How kvctl reaches nodes: token, timeout and answer size limit.
#[derive(Clone)]
pub struct Transport {
    timeout: Duration,
    token: Option<String>,
    body_limit: usize,
}

impl Default for Transport {
    fn default() -> Self {
        Self::new()
    }
}

// The token stays out of debug output (and so out of logs and panics).
impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("body_limit", &self.body_limit)
            .finish()
    }
}

impl Transport {
    /// No token, a timeout of [`DEFAULT_TIMEOUT`], answers up to [`DEFAULT_BODY_LIMIT`].
    pub fn new() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            token: None,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Sets the timeout of each request: until the answer's head arrives, and
    /// again for reading its body.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request (the nodes'
    /// `client_token`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the token when there is one (see [`with_token`](Self::with_token)).
    pub fn with_optional_token(self, token: Option<impl Into<String>>) -> Self {
        match token {
            Some(token) => self.with_token(token),
            None => self,
        }
    }

    /// Sets the largest answer body read, in bytes.
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The timeout of each request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// An agent that sends requests this way. Must be called on an actix
    /// runtime, and the agent used there.
    pub fn agent(&self) -> Agent {
        let builder = awc::Client::builder().timeout(self.timeout);
        let http = match &self.token {
            Some(token) => builder.bearer_auth(token).finish(),
            None => builder.finish(),
        };
        Agent {
            http,
            body_limit: self.body_limit,
        }
    }
}

/// Why a request got no answer it could use.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Never sent: no connection to the node could be made. The request did
    /// not happen, and another node may take it.
    #[error("{0}")]
    NotSent(String),
    /// Sent, but no whole answer came back (a timeout, a connection closed):
    /// the request may have been applied and must not be sent again blindly.
    #[error("{0}")]
    NoAnswer(String),
    /// The node answered with an error, or (with a 2xx `status` and the code
    /// `bad_answer`) with a body that is not the expected message.
    #[error("{status} {}: {}", .error.code, .error.message)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The node's error, decoded by [`vclock_proto::decode_answer`].
        error: ErrorBody,
    },
}

impl CallError {
    /// Classifies a failure to send: [`NotSent`](Self::NotSent) when no
    /// connection was made, else [`NoAnswer`](Self::NoAnswer).
    pub fn from_send(error: &SendRequestError) -> Self {
        if never_sent(error) {
            CallError::NotSent(error.to_string())
        } else {
            CallError::NoAnswer(error.to_string())
        }
    }

    /// Whether the request may have taken effect at the node: it went out
    /// without an answer, or was answered with success in a body that could
    /// not be read.
    pub fn may_have_happened(&self) -> bool {
        match self {
            CallError::NotSent(_) => false,
            CallError::NoAnswer(_) => true,
            CallError::Refused { status, .. } => (200..300).contains(status),
        }
    }
}

/// True when a request failed before it was sent: no connection was made, so
/// another node may take it. awc also reports `ConnectError::Disconnected` when
/// the connection closes after the request went out and before an answer: that
/// request may have been applied.
pub(crate) fn never_sent(error: &SendRequestError) -> bool {
    matches!(error, SendRequestError::Connect(e) if !matches!(e, ConnectError::Disconnected))
}

/// Reads a whole answer: its status and body, at most `limit` bytes.
pub(crate) async fn read_whole<S>(
    mut response: awc::ClientResponse<S>,
    limit: usize,
) -> Result<(u16, Bytes), CallError>
where
    S: futures_util::Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let status = response.status().as_u16();
    let body = response
        .body()
        .limit(limit)
        .await
        .map_err(|e| CallError::NoAnswer(format!("reading the answer: {e}")))?;
    Ok((status, body))
}

/// Decodes an answer read by [`read_whole`] with [`vclock_proto::decode_answer`].
pub(crate) fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, CallError> {
    vclock_proto::decode_answer(status, body).map_err(|error| CallError::Refused { status, error })
}

/// Sends requests to nodes and reads their answers (see [`Transport::agent`]).
#[derive(Clone)]
pub struct Agent {
    http: awc::Client,
    body_limit: usize,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Sends `method url`, with `body` as JSON when given, and decodes the answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<&B>,
    ) -> Result<T, CallError> {
        let request = self.http.request(method, url);
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let response = sent.map_err(|e| CallError::from_send(&e))?;
        let (status, bytes) = read_whole(response, self.body_limit).await?;
        decode(status, &bytes)
    }

    /// `GET url`, its answer decoded.
    pub async fn get<T: DeserializeOwned>(&self, url: &str) -> Result<T, CallError> {
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `GET {base}/health`: whether the node at `base` is up, its id and its
    /// applied clock. It needs no token.
    pub async fn health(&self, base: &str) -> Result<HealthResponse, CallError> {
        self.get(&format!("{}/health", base.trim_end_matches('/')))
            .await
    }

    /// `GET url` of a streamed answer (server-sent events): its body as it
    /// comes. Not subject to the timeout once the answer's head has arrived.
    pub async fn stream(
        &self,
        url: &str,
    ) -> Result<LocalBoxStream<'static, Result<Bytes, PayloadError>>, CallError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| CallError::from_send(&e))?;
        if response.status().is_success() {
            return Ok(response.boxed_local());
        }
        let (status, bytes) = read_whole(response, self.body_limit).await?;
        // Not a 2xx: the decoder gives the node's error.
        match decode::<IgnoredAny>(status, &bytes) {
            Err(refused) => Err(refused),
            Ok(_) => Err(CallError::NoAnswer(format!(
                "the stream answered {status} without a body to stream"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_never_left_count_as_not_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let not_sent = [
            SendRequestError::Connect(ConnectError::Timeout),
            SendRequestError::Connect(ConnectError::Io(refused)),
        ];
        for e in &not_sent {
            assert!(never_sent(e), "{e}");
            assert!(matches!(CallError::from_send(e), CallError::NotSent(_)));
            assert!(!CallError::from_send(e).may_have_happened());
        }
        // Closed after the request was written, or timed out: it may have been applied.
        let sent = [
            SendRequestError::Connect(ConnectError::Disconnected),
            SendRequestError::Timeout,
        ];
        for e in &sent {
            assert!(!never_sent(e), "{e}");
            assert!(matches!(CallError::from_send(e), CallError::NoAnswer(_)));
            assert!(CallError::from_send(e).may_have_happened());
        }
    }

    #[test]
    fn answers_and_errors_are_decoded_by_status() {
        let ok: HealthResponse = decode(
            200,
            br#"{"status":"healthy","node":"node1","timestamp":{"node1":1}}"#,
        )
        .unwrap();
        assert_eq!(ok.node, "node1");

        let refused = decode::<HealthResponse>(
            401,
            br#"{"error":{"code":"unauthorized","message":"a bearer token is needed"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "401 unauthorized: a bearer token is needed"
        );
        assert!(!refused.may_have_happened());

        // A proxy's page keeps its text; a 2xx that is not the message may
        // have been applied.
        let proxy = decode::<HealthResponse>(502, b"Bad Gateway\n").unwrap_err();
        assert_eq!(proxy.to_string(), "502 http_502: Bad Gateway");
        let garbled = decode::<HealthResponse>(200, b"{").unwrap_err();
        assert!(
            matches!(&garbled, CallError::Refused { status: 200, error } if error.code == "bad_answer"),
            "{garbled:?}"
        );
        assert!(garbled.may_have_happened());
    }

    #[test]
    fn the_token_is_not_shown() {
        let transport = Transport::new().with_token("s3cret-token");
        assert_eq!(transport.token(), Some("s3cret-token"));
        let shown = format!("{transport:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }
}
