//! kvctl: the client of the causally consistent key-value store.
//!
//! [`Client`] talks to one or more nodes over the native `/v1` API and moves on
//! to the next node when one cannot be reached. [`Session`] does the causal
//! bookkeeping of a session (rule 6 of `docs/design.md`): it merges every clock
//! it receives and sends the result as the context of its next operation, so a
//! session reads its own writes and never reads older than it did before,
//! whichever node it talks to.
//!
//! The client runs on an actix runtime (it uses awc); from synchronous code,
//! wrap calls in `actix_rt::System::new().block_on(...)`.
//!
//! Every request goes through a [`Transport`]: the token, the timeout, one
//! decoder of answers and errors.
//!
//! # Features
//!
//! `tools` (default): the `kvctl` command line, `bench`, `trace` and the
//! check's workload. Without it (`default-features = false`) the crate is the
//! client and the causal checker of recorded histories ([`check`]), with fewer
//! dependencies.
//!
//! # What is left out
//!
//! A write goes to the next node only when the previous one could not be
//! connected to: a write that timed out may or may not have been applied, and
//! the caller decides whether to write again. Reads move on after any failure.

use std::time::Duration;

#[cfg(feature = "tools")]
pub mod bench;
pub mod check;
pub mod session_file;
#[cfg(feature = "tools")]
pub mod trace;
pub mod transport;

use serde::de::DeserializeOwned;
use serde::Serialize;
use vclock_proto::{
    AddMemberRequest, GetResponse, MembersMessage, PutRequest, PutResponse, ReplaceMemberRequest,
    StatusResponse, TxnReadRequest, TxnReadResponse, TxnWriteRequest, VClock, Value, Write,
};

pub use transport::{Agent, CallError, Transport};

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No node answered; one entry per node tried: `(url, why)`.
    #[error("no node reachable: {}", .0.iter().map(|(u, e)| format!("{u}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable(Vec<(String, String)>),
    /// A node refused the request; its status and error body.
    #[error("{url} refused the request ({status}): {message}")]
    Refused {
        /// The node.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The error code from the body, e.g. `causal_timeout`.
        code: String,
        /// The error message from the body.
        message: String,
    },
    /// A value could not be encoded.
    #[error("invalid value: {0}")]
    InvalidValue(String),
}

impl Error {
    /// The failure of one request to the node at `url`.
    pub fn at(url: &str, error: CallError) -> Self {
        match error {
            CallError::Refused { status, error } => Error::Refused {
                url: url.to_owned(),
                status,
                code: error.code,
                message: error.message,
            },
            unanswered => Error::Unreachable(vec![(url.to_owned(), unanswered.to_string())]),
        }
    }
}

/// Result of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client of one or more nodes.
#[derive(Clone, Debug)]
pub struct Client {
    nodes: Vec<String>,
    transport: Transport,
}

impl Client {
    /// A client of `nodes` (base URLs such as `http://127.0.0.1:5001`), tried in order.
    pub fn new<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            nodes: nodes
                .into_iter()
                .map(|n| n.into().trim_end_matches('/').to_owned())
                .collect(),
            transport: Transport::new(),
        }
    }

    /// Sets the timeout of each request (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.transport = self.transport.with_timeout(timeout);
        self
    }

    /// Sends `token` as the bearer token of every request (the nodes'
    /// `client_token`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.transport = self.transport.with_token(token);
        self
    }

    /// Uses `transport` (token, timeout) for every request.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The nodes, in the order they are tried.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// How requests are sent.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Reads `key` with all its siblings, after everything `context` counts.
    pub async fn get(&self, key: &str, context: Option<&VClock>) -> Result<GetResponse> {
        let query = context_query(context);
        self.request(awc::http::Method::GET, &kv_path(key, &query), None::<&()>)
            .await
    }

    /// Reads every key of `keys` from one causally consistent cut of a node's
    /// state, after everything `context` counts: no answer shows a write
    /// without the writes it depends on that the others show.
    pub async fn txn_read(
        &self,
        keys: &[String],
        context: Option<&VClock>,
    ) -> Result<TxnReadResponse> {
        let body = TxnReadRequest {
            keys: keys.to_vec(),
            context: context.cloned(),
        };
        self.request(awc::http::Method::POST, "/v1/txn/read", Some(&body))
            .await
    }

    /// Writes every write of `writes` (each to another key) as one atomic
    /// transaction, after everything `context` counts: one dot, applied whole
    /// at every node.
    pub async fn txn_write(
        &self,
        writes: &[Write],
        context: Option<&VClock>,
    ) -> Result<PutResponse> {
        let body = TxnWriteRequest {
            writes: writes.to_vec(),
            context: context.cloned(),
        };
        self.request(awc::http::Method::POST, "/v1/txn/write", Some(&body))
            .await
    }

    /// Writes `value` to `key` after everything `context` counts. The write
    /// replaces every sibling the node has applied.
    pub async fn put(
        &self,
        key: &str,
        value: Value,
        context: Option<&VClock>,
    ) -> Result<PutResponse> {
        let body = PutRequest {
            value,
            context: context.cloned(),
        };
        self.request(awc::http::Method::PUT, &kv_path(key, ""), Some(&body))
            .await
    }

    /// Deletes `key` (writes a tombstone) after everything `context` counts.
    pub async fn delete(&self, key: &str, context: Option<&VClock>) -> Result<PutResponse> {
        let query = context_query(context);
        self.request(
            awc::http::Method::DELETE,
            &kv_path(key, &query),
            None::<&()>,
        )
        .await
    }

    /// The cluster's membership, from the first node that answers (the
    /// routes need the cluster secret as the token, when one is set).
    pub async fn members(&self) -> Result<MembersMessage> {
        self.request(awc::http::Method::GET, "/admin/v1/members", None::<&()>)
            .await
    }

    /// Adds node `id` at `url` to the cluster.
    pub async fn add_member(&self, id: &str, url: &str) -> Result<MembersMessage> {
        let body = AddMemberRequest {
            id: id.to_owned(),
            url: url.to_owned(),
        };
        self.request(awc::http::Method::POST, "/admin/v1/members", Some(&body))
            .await
    }

    /// Removes node `id` from the cluster (ask another node than `id`).
    pub async fn remove_member(&self, id: &str) -> Result<MembersMessage> {
        let path = format!("/admin/v1/members/{}", percent_encode(id));
        self.request(awc::http::Method::DELETE, &path, None::<&()>)
            .await
    }

    /// Moves node `id` to `url` (a replacement machine with the same id).
    pub async fn replace_member(&self, id: &str, url: &str) -> Result<MembersMessage> {
        let path = format!("/admin/v1/members/{}", percent_encode(id));
        let body = ReplaceMemberRequest {
            url: url.to_owned(),
        };
        self.request(awc::http::Method::PUT, &path, Some(&body))
            .await
    }

    /// The status of the node at `url`.
    pub async fn status_of(&self, url: &str) -> Result<StatusResponse> {
        let url = url.trim_end_matches('/');
        self.transport
            .agent()
            .get(&format!("{url}/status"))
            .await
            .map_err(|e| Error::at(url, e))
    }

    /// Sends the request to each node in turn until one answers. A request that
    /// was never sent goes to the next node; one sent without an answer does
    /// too when it is a read, but a write may have been applied and is not
    /// sent twice.
    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let agent = self.transport.agent();
        let mut tried = Vec::new();
        for node in &self.nodes {
            let error = match agent
                .call(method.clone(), &format!("{node}{path}"), body)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(e @ CallError::Refused { .. }) => return Err(Error::at(node, e)),
                Err(e) => e,
            };
            let retry = matches!(error, CallError::NotSent(_)) || method == awc::http::Method::GET;
            tried.push((node.clone(), error.to_string()));
            if !retry {
                return Err(Error::Unreachable(tried));
            }
        }
        Err(Error::Unreachable(tried))
    }
}

/// A causal session: every operation carries the merge of all clocks seen so far.
#[derive(Clone, Debug)]
pub struct Session {
    client: Client,
    context: VClock,
}

impl Session {
    /// A new session with an empty context.
    pub fn new(client: Client) -> Self {
        Self::resume(client, VClock::new())
    }

    /// A session that continues from a saved `context`.
    pub fn resume(client: Client, context: VClock) -> Self {
        Self { client, context }
    }

    /// The session's context: everything it has observed.
    pub fn context(&self) -> &VClock {
        &self.context
    }

    /// Reads `key`; sees at least everything this session has seen.
    pub async fn get(&mut self, key: &str) -> Result<GetResponse> {
        let answer = self.client.get(key, Some(&self.context)).await?;
        self.context.merge(&answer.context);
        Ok(answer)
    }

    /// Reads `keys` from one causal cut; sees at least everything this
    /// session has seen.
    pub async fn txn_read(&mut self, keys: &[String]) -> Result<TxnReadResponse> {
        let answer = self.client.txn_read(keys, Some(&self.context)).await?;
        self.context.merge(&answer.context);
        Ok(answer)
    }

    /// Writes `writes` as one atomic transaction, after everything this
    /// session has seen.
    pub async fn txn_write(&mut self, writes: &[Write]) -> Result<PutResponse> {
        let answer = self.client.txn_write(writes, Some(&self.context)).await?;
        self.context.merge(&answer.timestamp);
        Ok(answer)
    }

    /// Writes `value` to `key`, after everything this session has seen.
    pub async fn put(&mut self, key: &str, value: Value) -> Result<PutResponse> {
        let answer = self.client.put(key, value, Some(&self.context)).await?;
        self.context.merge(&answer.timestamp);
        Ok(answer)
    }

    /// Deletes `key`, after everything this session has seen.
    pub async fn delete(&mut self, key: &str) -> Result<PutResponse> {
        let answer = self.client.delete(key, Some(&self.context)).await?;
        self.context.merge(&answer.timestamp);
        Ok(answer)
    }
}

/// Reads command-line text as a value: JSON if it parses as JSON, else a string.
pub fn parse_value(text: &str) -> Value {
    let trimmed = text.trim();
    Value::from_json(trimmed).unwrap_or_else(|_| {
        Value::from_serialize(text.trim_end_matches('\n')).expect("strings serialise")
    })
}

/// JSON text without its insignificant whitespace. The text is scanned, not
/// parsed, so this works at any depth; strings are kept as they are.
pub(crate) fn compact_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

fn context_query(context: Option<&VClock>) -> String {
    match context {
        Some(c) if !c.is_empty() => {
            let json = serde_json::to_string(c).expect("clocks serialise");
            format!("?context={}", percent_encode(&json))
        }
        _ => String::new(),
    }
}

fn kv_path(key: &str, query: &str) -> String {
    format!("/v1/kv/{}{query}", percent_encode(key).replace("%2F", "/"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_json_or_text() {
        assert_eq!(parse_value("5").json(), "5");
        assert_eq!(parse_value(" {\"a\": 1}\n").json(), "{\"a\": 1}");
        assert_eq!(parse_value("hello world").json(), "\"hello world\"");
        assert_eq!(parse_value("\"quoted\"").json(), "\"quoted\"");
        assert_eq!(parse_value("line\n").json(), "\"line\"");
    }

    #[test]
    fn json_is_compacted_outside_strings() {
        assert_eq!(
            compact_json(" { \"a b\" : [ 1 ,\n\t2.50 ] , \"q\\\" \\\\\" : \"x \" }\r\n"),
            r#"{"a b":[1,2.50],"q\" \\":"x "}"#
        );
        let deep = format!("{} {}", "[ ".repeat(100_000), " ]".repeat(100_000));
        assert_eq!(
            compact_json(&deep),
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))
        );
    }

    #[test]
    fn keys_and_contexts_are_encoded() {
        assert_eq!(kv_path("a b/c", ""), "/v1/kv/a%20b/c");
        let ctx: VClock = [("node1", 2)].into_iter().collect();
        assert_eq!(context_query(Some(&ctx)), "?context=%7B%22node1%22%3A2%7D");
        assert_eq!(context_query(Some(&VClock::new())), "");
    }
}
