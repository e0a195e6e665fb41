//! The one error type the dashboard and the JSON API share.
//!
//! Every failure carries a stable machine-readable `code` and an HTTP `status`; the
//! JSON API renders it as `{"error":{"code","message"}}` and server functions carry it
//! to the browser unchanged, so both surfaces report the same thing for the same rule.

use leptos::server_fn::codec::JsonEncoding;
use leptos::server_fn::error::{FromServerFnError, ServerFnErrorErr};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub status: u16,
    pub code: String,
    pub message: String,
    /// Seconds a throttled client should wait (sent as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

impl AppError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), message: message.into(), retry_after_secs: None }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(422, "validation_failed", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "unauthorized", message)
    }

    /// Used for foreign ids as well as missing ones, so a sponsor cannot probe
    /// which ids exist for other sponsors.
    pub fn not_found(what: &str) -> Self {
        Self::new(404, "not_found", format!("{what} not found"))
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(409, code, message)
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..Self::new(429, "rate_limited", "too many attempts; try again later")
        }
    }

    /// An internal failure: the detail goes to the log, never to the client.
    pub fn internal() -> Self {
        Self::new(500, "internal", "internal error")
    }

    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::new(503, code, message)
    }
}

impl FromServerFnError for AppError {
    type Encoder = JsonEncoding;

    fn from_server_fn_error(value: ServerFnErrorErr) -> Self {
        match value {
            ServerFnErrorErr::Args(m)
            | ServerFnErrorErr::MissingArg(m)
            | ServerFnErrorErr::Deserialization(m) => AppError::bad_request("invalid_request", m),
            ServerFnErrorErr::Request(m) => AppError::new(0, "network", m),
            other => AppError::new(500, "internal", other.to_string()),
        }
    }
}
