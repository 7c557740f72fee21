//! The peer client: requests to other nodes' peer API, with the cluster
//! secret and `tls_ca` (see [`super::Node::peer_client`]), and their answers
//! as the core's replication protocol takes them.

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
    let mut request = client.post(url);
    if let Some(cause) = cause {
        request = request.insert_header((vclock_proto::TRACE_CAUSE_HEADER, cause));
    }
    let mut response = match request.send_json(body).await {
        Ok(response) => response,
        Err(e) => return Answer::Unreachable(format!("{url}: {e}")),
    };
    let status = response.status().as_u16();
    let bytes = match response.body().limit(1 << 20).await {
        Ok(bytes) => bytes,
        Err(e) => return Answer::Unreachable(format!("{url}: reading the answer: {e}")),
    };
    match vclock_proto::decode_answer::<ClockMessage>(status, &bytes) {
        Ok(answer) => Answer::Clock(answer.applied),
        Err(error) if (200..300).contains(&status) => {
            Answer::Unreachable(format!("{url}: {}", error.message))
        }
        Err(error) => {
            let message = format!("{url}: {status}: {}", error.message);
            if status == 503 {
                Answer::Busy(message)
            } else {
                Answer::Refused(message)
            }
        }
    }
}

/// Asks the node at `url` for its `applied` clock with `client` (see
/// [`super::Node::peer_client`]): a clock exchange that tells it nothing.
pub async fn ask_clock(client: &awc::Client, url: &str, me: &str) -> Result<VClock, String> {
    let message = ClockMessage {
        node: me.to_owned(),
        applied: VClock::default(),
    };
    match post(client, &format!("{url}/peer/v1/sync"), &message, None).await {
        Answer::Clock(clock) => Ok(clock),
        Answer::Unreachable(m) | Answer::Busy(m) | Answer::Refused(m) => Err(m),
    }
}
