//! Why the sim refuses a request, mapped once to an HTTP status and the
//! OpenAI error shape.

use http::StatusCode;

/// Bodies larger than this get 413. Well above the 16 MiB the gateway's
/// tests need, small enough that a runaway client cannot exhaust memory.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Every refusal the sim answers, whether the client's fault or injected.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("could not parse the request body: {0}")]
    InvalidJson(#[from] serde_json::Error),
    #[error("max_tokens must be at least 1, got 0")]
    ZeroMaxTokens,
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("reading the request body failed: {0}")]
    BodyRead(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method not allowed on {0}")]
    MethodNotAllowed(String),
    #[error("more than {0} requests in flight (--max-concurrency)")]
    Overloaded(usize),
    #[error("injected failure (--error-rate)")]
    Injected(StatusCode),
}

impl SimError {
    pub fn status(&self) -> StatusCode {
        match self {
            SimError::InvalidJson(_) | SimError::ZeroMaxTokens | SimError::BodyRead(_) => {
                StatusCode::BAD_REQUEST
            }
            SimError::ModelNotFound(_) | SimError::NoRoute(_) => StatusCode::NOT_FOUND,
            SimError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            SimError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            SimError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            SimError::Injected(status) => *status,
        }
    }

    /// The `error.code` field; `model_not_found` is what vLLM and OpenAI send.
    pub fn code(&self) -> &'static str {
        match self {
            SimError::InvalidJson(_) => "invalid_json",
            SimError::ZeroMaxTokens => "invalid_value",
            SimError::ModelNotFound(_) => "model_not_found",
            SimError::BodyTooLarge => "request_too_large",
            SimError::BodyRead(_) => "invalid_body",
            SimError::NoRoute(_) => "not_found",
            SimError::MethodNotAllowed(_) => "method_not_allowed",
            SimError::Overloaded(_) => "rate_limit_exceeded",
            SimError::Injected(_) => "injected_fault",
        }
    }

    /// The `error.type` field, from the status class as OpenAI does.
    pub fn kind(&self) -> &'static str {
        error_kind(self.status())
    }
}

pub fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "rate_limit_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    }
}

/// Ends a stream without its terminating chunk: hyper closes the connection
/// when a response body fails (`--drop-after-events`).
#[derive(Debug, thiserror::Error)]
#[error("connection dropped on purpose after {0} events (--drop-after-events)")]
pub struct StreamDropped(pub u32);
