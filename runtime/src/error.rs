//! The one error type of the serving path. Each variant is a cause a client or operator must
//! tell apart, and maps to exactly one HTTP status, so no handler invents its own.

/// Why a request (or a pipeline load) failed. The message names the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or its inputs are invalid: the client's fault (400).
    #[error("{0}")]
    InvalidInput(String),
    /// No such pipeline, version or route (404).
    #[error("{0}")]
    NotFound(String),
    /// The request body is larger than the configured limit (413).
    #[error("{0}")]
    BodyTooLarge(String),
    /// The request uses a protocol feature this server does not implement (501).
    #[error("{0}")]
    NotSupported(String),
    /// A stage trapped or reported a failure, or produced unusable output (500).
    #[error("{0}")]
    StageFailed(String),
    /// A stage ran past its deadline (504).
    #[error("{0}")]
    StageTimeout(String),
    /// The server cannot take the request now (503).
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::InvalidInput(_) => 400,
            Error::NotFound(_) => 404,
            Error::BodyTooLarge(_) => 413,
            Error::StageFailed(_) => 500,
            Error::NotSupported(_) => 501,
            Error::Unavailable(_) => 503,
            Error::StageTimeout(_) => 504,
        }
    }
}
