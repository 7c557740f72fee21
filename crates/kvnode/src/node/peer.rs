//! The peer client: requests to other nodes' peer API, with the cluster
//! secret and `tls_ca` (see [`super::Node::peer_client`]), and their answers
//! as the core's replication protocol takes them.

use serde::de::DeserializeOwned;
use serde::Serialize;
use vclock_proto::{ClockMessage, VClock};

use crate::core::replication::Answer;

/// Posts `body` to `url` and classifies the outcome for the link.
pub async fn post<T: Serialize>(
    client: &awc::Client,
    url: &str,
    body: &T,
    cause: Option<String>,
) -> Answer {
    match request::<T, ClockMessage>(client, url, body, cause, 1 << 20).await {
        Ok(answer) => Answer::Clock(answer.applied),
        Err(Failure::Unreachable(message)) => Answer::Unreachable(message),
        Err(Failure::Answered(503, message)) => Answer::Busy(message),
        Err(Failure::Answered(_, message)) => Answer::Refused(message),
    }
}

/// Why a request to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer, or one that is not what the route answers.
    Unreachable(String),
    /// The peer answered with this error status.
    Answered(u16, String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(m) | Failure::Answered(_, m) => f.write_str(m),
        }
    }
}

/// Posts `body` to `url` and decodes the answer, of at most `limit` bytes.
pub async fn request<T: Serialize, R: DeserializeOwned>(
    client: &awc::Client,
    url: &str,
    body: &T,
    cause: Option<String>,
    limit: usize,
) -> Result<R, Failure> {
    let mut request = client.post(url);
    if let Some(cause) = cause {
        request = request.insert_header((vclock_proto::TRACE_CAUSE_HEADER, cause));
    }
    let mut response = request
        .send_json(body)
        .await
        .map_err(|e| Failure::Unreachable(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let bytes = response
        .body()
        .limit(limit)
        .await
        .map_err(|e| Failure::Unreachable(format!("{url}: reading the answer: {e}")))?;
    vclock_proto::decode_answer::<R>(status, &bytes).map_err(|error| {
        if (200..300).contains(&status) {
            Failure::Unreachable(format!("{url}: {}", error.message))
        } else {
            Failure::Answered(status, format!("{url}: {status}: {}", error.message))
        }
    })
}

/// Asks the node at `url` for its `applied` clock with `client` (see
/// [`super::Node::peer_client`]): a question, which tells it nothing.
pub async fn ask_clock(client: &awc::Client, url: &str, me: &str) -> Result<VClock, String> {
    let message = ClockMessage {
        node: me.to_owned(),
        applied: VClock::default(),
    };
    match post(
        client,
        &format!("{url}/peer/v1/sync?question=true"),
        &message,
        None,
    )
    .await
    {
        Answer::Clock(clock) => Ok(clock),
        Answer::Unreachable(m) | Answer::Busy(m) | Answer::Refused(m) => Err(m),
    }
}
