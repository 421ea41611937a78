//! The one error type of the serving path. Each variant is a cause a client or operator must
//! tell apart, and maps to exactly one HTTP status, so no handler invents its own.

use crate::store::StoreError;

/// Why a request (or a pipeline load) failed. The message names the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or its inputs are invalid: the client's fault (400).
    #[error("{0}")]
    InvalidInput(String),
    /// The management API was called without the admin token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// No such pipeline, version or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with what is stored: an immutable version, a pinned object (409).
    #[error("{0}")]
    Conflict(String),
    /// The request is larger than a limit allows: its body, its inputs for the stages'
    /// memory, or the response it asks for (413).
    #[error("{0}")]
    TooLarge(String),
    /// The request body did not arrive in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// A stage trapped or reported a failure, or produced unusable output (500).
    #[error("{0}")]
    StageFailed(String),
    /// A stage ran past its deadline (504).
    #[error("{0}")]
    StageTimeout(String),
    /// The model cannot take the request now: unloaded (503).
    #[error("{0}")]
    Unavailable(String),
    /// The server is at capacity; the client should retry after a pause (503, `Retry-After`).
    #[error("{0}")]
    Overloaded(String),
}

impl Error {
    /// A refused management operation: what the store says, else the operator's input was
    /// wrong (400). The message keeps every cause in the chain.
    pub fn refused(error: anyhow::Error) -> Error {
        let message = format!("{error:#}");
        match error.chain().find_map(|e| e.downcast_ref::<StoreError>()) {
            Some(StoreError::NotFound(_)) => Error::NotFound(message),
            Some(StoreError::Pinned(_) | StoreError::Immutable(_)) => Error::Conflict(message),
            None => match error.downcast::<Error>() {
                Ok(e) => e,
                Err(_) => Error::InvalidInput(message),
            },
        }
    }

    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::RequestTimeout(_) => 408,
            Error::TooLarge(_) => 413,
            Error::StageFailed(_) => 500,
            Error::Unavailable(_) | Error::Overloaded(_) => 503,
            Error::StageTimeout(_) => 504,
        }
    }
}
