//! Typed errors of the shared layer, and the small `Copy` code that travels on the wire so a
//! client can branch on what went wrong.

use serde::{Deserialize, Serialize};

/// Why a payload could not be turned into a value or back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes for this subject")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid MessagePack: {0}")]
    MsgPackDecode(#[source] rmp_serde::decode::Error),
    #[error("could not encode MessagePack: {0}")]
    MsgPackEncode(#[source] rmp_serde::encode::Error),
}

/// The error of the shared layer (the seeds' `VgaError`).
#[derive(Debug, thiserror::Error)]
pub enum VgaError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("invalid {kind} {value:?}: use 1 to 64 ASCII letters, digits, '-' or '_'")]
    InvalidId { kind: &'static str, value: String },
    #[error("invalid task: {0}")]
    InvalidTask(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A compiler or environment could not be found, probed or prepared.
    #[error("toolchain: {0}")]
    Toolchain(String),
    /// Stored bytes (a cache object) that do not read back as what was stored.
    #[error("damaged: {0}")]
    Damaged(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl VgaError {
    /// The wire code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            VgaError::Codec(CodecError::TooLarge { .. }) => ErrorCode::TooLarge,
            VgaError::Codec(CodecError::MsgPackEncode(_))
            | VgaError::Io { .. }
            | VgaError::Damaged(_) => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// What kind of error a reply carries; stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload could not be parsed or failed validation; nothing was changed.
    BadRequest,
    /// The payload is larger than the subject accepts.
    TooLarge,
    /// The admission queue is full; retry later.
    Busy,
    /// No such task.
    NotFound,
    /// A task id that is already in use for a different task.
    Conflict,
    /// Something on our side failed; the request may be retried.
    Internal,
    /// A budget or rate limit refused the call before anything was spent; the message names
    /// the limit. Also a provider's own `insufficient_quota`.
    QuotaExceeded,
    /// The gateway cannot serve this yet: no vault, no key for the provider, no passphrase,
    /// or the provider is not configured. The message says what to do.
    Unavailable,
    /// The provider failed or answered with an error; the message has its words.
    Upstream,
    /// No live worker could ever run the task (it asks for GPUs the swarm does not have); the
    /// message says what the swarm has. Nothing was changed.
    Unsatisfiable,
}

/// The body of every error reply: `{"error":{"code":"busy","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = serde_json::to_value(self.code).unwrap_or_default();
        write!(f, "{}: {}", code.as_str().unwrap_or("error"), self.message)
    }
}

impl std::error::Error for WireError {}

impl From<&VgaError> for WireError {
    fn from(e: &VgaError) -> Self {
        WireError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}
