//! Plain HTTP requests to nodes, for tests: any status is an answer, the body
//! is read as JSON.

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

/// The agent of these functions: 20 s timeout, no redirects, no TLS. Clone it
/// for requests with headers of their own.
pub fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(20))
            .redirects(0)
            .build()
    })
}

/// Sends a request; `Err` only for transport failures (connection refused,
/// timeout). Any status, 4xx and 5xx included, is `Ok((status, body))`; the
/// body is parsed as JSON, or kept as a JSON string when it is not JSON, or
/// `null` when empty.
pub fn try_request(
    method: &str,
    url: &str,
    body: Option<(Option<&str>, &[u8])>,
) -> Result<(u16, Value), String> {
    let mut request = agent().request(method, url);
    let result = match body {
        None => request.call(),
        Some((content_type, bytes)) => {
            if let Some(content_type) = content_type {
                request = request.set("Content-Type", content_type);
            }
            request.send_bytes(bytes)
        }
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => return Err(format!("{method} {url}: {e}")),
    };
    let status = response.status();
    let text = response
        .into_string()
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}

/// Sends a request; panics on a transport failure.
pub fn request(method: &str, url: &str, body: Option<(Option<&str>, &[u8])>) -> (u16, Value) {
    try_request(method, url, body).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET url`.
pub fn get(url: &str) -> (u16, Value) {
    request("GET", url, None)
}

/// `POST url` with a JSON body.
pub fn post(url: &str, body: &Value) -> (u16, Value) {
    send_json("POST", url, body)
}

/// `PUT url` with a JSON body.
pub fn put(url: &str, body: &Value) -> (u16, Value) {
    send_json("PUT", url, body)
}

fn send_json(method: &str, url: &str, body: &Value) -> (u16, Value) {
    let bytes = body.to_string();
    request(
        method,
        url,
        Some((Some("application/json"), bytes.as_bytes())),
    )
}

/// `DELETE url`, without a body.
pub fn delete(url: &str) -> (u16, Value) {
    request("DELETE", url, None)
}

/// Percent-encodes a query parameter or path segment.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_only_unreserved_bytes() {
        assert_eq!(encode("a-Z_0.~"), "a-Z_0.~");
        assert_eq!(encode("{\"n\":1} /é"), "%7B%22n%22%3A1%7D%20%2F%C3%A9");
    }

    #[test]
    fn a_refused_connection_is_an_err() {
        let port = crate::free_ports(1).unwrap()[0];
        let err = try_request("GET", &format!("http://127.0.0.1:{port}/health"), None);
        assert!(err.is_err(), "{err:?}");
    }
}
