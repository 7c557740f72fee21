//! The node's errors, and the one place where they become HTTP answers.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use vclock_proto::{ErrorBody, ErrorResponse, Missing};

use crate::core::CoreError;

/// Everything a request can fail with. Each variant says what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: fix it.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than a limit: send less.
    #[error("{0}")]
    TooLarge(String),
    /// The body is not JSON: send `Content-Type: application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A clock names a node outside the cluster.
    #[error("unknown node {0:?}: the cluster's nodes are {1}")]
    UnknownNode(String, String),
    /// A context counts writes that their origin says it never made.
    #[error("the context counts writes that were never made: {}", list(.0))]
    UnknownHistory(Vec<Missing>),
    /// The context's writes did not arrive within `causal_wait`: retry later or elsewhere.
    #[error("timed out after {waited_ms} ms waiting for writes this node has not applied yet: {}", list(.missing))]
    CausalTimeout {
        /// The entries still missing.
        missing: Vec<Missing>,
        /// How long the request waited.
        waited_ms: u128,
    },
    /// The buffer of undeliverable events is full: the sender retries later.
    #[error("the buffer of undeliverable events is full ({0}); retry later")]
    BufferFull(String),
    /// The request took longer than `request_timeout`: send it faster, or retry.
    #[error("{0}")]
    RequestTimeout(String),
    /// The request lacks the bearer token this route requires.
    #[error("{0}")]
    Unauthorized(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the state it would change (a membership
    /// change that is not allowed).
    #[error("{0}")]
    Conflict(String),
    /// The node is stopping or cannot accept work now.
    #[error("{0}")]
    Unavailable(String),
    /// The node is not live yet: it is checking with its peers, or copying
    /// its state from one of them. Retry later, or at another node.
    #[error("recovering: {0}")]
    Recovering(String),
    /// A bug or a storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

fn list(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Error {
    /// The stable code in the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::TooLarge(_) => "too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::UnknownNode(..) => "unknown_node",
            Error::UnknownHistory(_) => "unknown_history",
            Error::CausalTimeout { .. } => "causal_timeout",
            Error::BufferFull(_) => "buffer_full",
            Error::RequestTimeout(_) => "request_timeout",
            Error::Unauthorized(_) => "unauthorized",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Unavailable(_) => "unavailable",
            Error::Recovering(_) => "recovering",
            Error::Internal(_) => "internal",
        }
    }

    /// The error body.
    pub fn body(&self) -> ErrorResponse {
        let missing = match self {
            Error::UnknownHistory(m) | Error::CausalTimeout { missing: m, .. } => m.clone(),
            _ => Vec::new(),
        };
        ErrorResponse {
            error: ErrorBody {
                code: self.code().into(),
                message: self.to_string(),
                missing,
            },
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::UnknownNode(..) => StatusCode::BAD_REQUEST,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::UnknownHistory(_) | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::CausalTimeout { .. }
            | Error::BufferFull(_)
            | Error::Unavailable(_)
            | Error::Recovering(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Error::Unauthorized(_) = self {
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Error::RequestTimeout(_) = self {
            response.force_close();
        }
        response.json(self.body())
    }
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidEvent { .. } | CoreError::Overclaimed { .. } => {
                Error::BadRequest(e.to_string())
            }
            CoreError::Store(e) => Error::Internal(e.to_string()),
        }
    }
}

/// Result of node operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
