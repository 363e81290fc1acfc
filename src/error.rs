//! `GatewayError`: every way the gateway itself answers a request with an error, mapped once to
//! an HTTP status and the OpenAI error shape `{"error": {"message", "type", "code"}}`.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(String),
    #[error("You must provide a model parameter.")]
    MissingModel,
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    UnknownModel(String),
    #[error("Route `{route}` has no arm named `{arm}` (from the x-switchyard-arm header).")]
    UnknownArm { route: String, arm: String },
    #[error("Invalid URL ({method} {path}).")]
    UnknownPath { method: String, path: String },
    #[error("Method {method} is not allowed on {path}.")]
    MethodNotAllowed { method: String, path: String },
    #[error("The request body exceeds the limit of {limit} bytes.")]
    BodyTooLarge { limit: usize },
    #[error("The request body was not received completely: {0}")]
    BodyRead(String),
    #[error("The request body was not received within {0} ms.")]
    BodyTimeout(u64),
    #[error("No backend of route `{route}` arm `{arm}` could be reached.")]
    BackendsUnavailable { route: String, arm: String },
    #[error("Every backend of route `{route}` arm `{arm}` is at its in-flight limit.")]
    BackendsSaturated { route: String, arm: String },
    #[error("The backend did not answer in time ({0}).")]
    UpstreamTimeout(String),
    #[error("The backend failed: {0}")]
    UpstreamFailed(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("The request head could not be parsed: {0}")]
    MalformedHead(String),
    #[error("The gateway failed to answer: {0}")]
    Internal(String),
    #[error(
        "The gateway is at its connection limit ({limit}); try again in {retry_after} seconds."
    )]
    TooManyConnections { limit: usize, retry_after: u64 },
    #[error(
        "You exceeded your current quota (budget `{budget}`); it renews in {retry_after} seconds."
    )]
    BudgetExceeded { budget: String, retry_after: u64 },
    #[error("Rate limit reached for {what} per minute (limit `{limit}`); try again in {retry_after} seconds.")]
    RateLimited {
        limit: String,
        /// `requests` or `tokens`: also the OpenAI error type.
        what: &'static str,
        retry_after: u64,
    },
}

impl GatewayError {
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::InvalidJson(_)
            | GatewayError::MissingModel
            | GatewayError::BodyRead(_)
            | GatewayError::MalformedHead(_)
            | GatewayError::UnknownArm { .. } => 400,
            GatewayError::UnknownModel(_) | GatewayError::UnknownPath { .. } => 404,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::BodyTimeout(_) => 408,
            GatewayError::BodyTooLarge { .. } => 413,
            GatewayError::HeadersTooLarge(_) => 431,
            GatewayError::BudgetExceeded { .. } | GatewayError::RateLimited { .. } => 429,
            GatewayError::Internal(_) => 500,
            GatewayError::UpstreamFailed(_) => 502,
            GatewayError::BackendsUnavailable { .. }
            | GatewayError::BackendsSaturated { .. }
            | GatewayError::TooManyConnections { .. } => 503,
            GatewayError::UpstreamTimeout(_) => 504,
        }
    }

    /// The stable machine-readable code clients and dashboards key on.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidJson(_) => "invalid_json",
            GatewayError::MissingModel => "missing_model",
            GatewayError::UnknownModel(_) => "model_not_found",
            GatewayError::UnknownArm { .. } => "unknown_arm",
            GatewayError::UnknownPath { .. } => "unknown_url",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::BodyTooLarge { .. } => "request_too_large",
            GatewayError::BodyRead(_) => "incomplete_body",
            GatewayError::BodyTimeout(_) => "body_timeout",
            GatewayError::BackendsUnavailable { .. } => "backends_unavailable",
            GatewayError::BackendsSaturated { .. } => "backends_saturated",
            GatewayError::TooManyConnections { .. } => "too_many_connections",
            GatewayError::UpstreamTimeout(_) => "upstream_timeout",
            GatewayError::UpstreamFailed(_) => "upstream_error",
            GatewayError::HeadersTooLarge(_) => "request_header_fields_too_large",
            GatewayError::MalformedHead(_) => "invalid_request_head",
            GatewayError::Internal(_) => "internal_error",
            GatewayError::BudgetExceeded { .. } => "insufficient_quota",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
        }
    }

    /// True when the connection must be closed after the answer: the request's framing or
    /// size was wrong, so what follows on the socket cannot be trusted to start a new request.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BodyRead(_)
                | GatewayError::BodyTimeout(_)
                | GatewayError::BodyTooLarge { .. }
                | GatewayError::HeadersTooLarge(_)
                | GatewayError::MalformedHead(_)
        )
    }

    pub fn error_type(&self) -> &'static str {
        // OpenAI's own types for quota and rate-limit answers, which client SDKs key on.
        match self {
            GatewayError::BudgetExceeded { .. } => return "insufficient_quota",
            GatewayError::RateLimited { what, .. } => return what,
            _ => {}
        }
        if self.status() >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    /// Seconds the client should wait before trying again (`Retry-After`), for refusals that
    /// end when a window does.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            GatewayError::BudgetExceeded { retry_after, .. }
            | GatewayError::RateLimited { retry_after, .. }
            | GatewayError::TooManyConnections { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> Bytes {
        openai_error_body(&self.to_string(), self.error_type(), self.code())
    }
}

impl From<crate::cost::Refused> for GatewayError {
    fn from(r: crate::cost::Refused) -> Self {
        use crate::cost::budget::Refusal;
        match r.refusal {
            Refusal::Budget => GatewayError::BudgetExceeded {
                budget: r.limit,
                retry_after: r.retry_after,
            },
            Refusal::Requests | Refusal::Tokens => GatewayError::RateLimited {
                limit: r.limit,
                what: if r.refusal == Refusal::Requests {
                    "requests"
                } else {
                    "tokens"
                },
                retry_after: r.retry_after,
            },
        }
    }
}

impl From<crate::routing::FactsError> for GatewayError {
    fn from(e: crate::routing::FactsError) -> Self {
        match e {
            crate::routing::FactsError::Malformed(m) => GatewayError::InvalidJson(m),
            crate::routing::FactsError::MissingModel => GatewayError::MissingModel,
        }
    }
}

impl From<crate::routing::RoutingError> for GatewayError {
    fn from(e: crate::routing::RoutingError) -> Self {
        use crate::routing::RoutingError;
        match e {
            RoutingError::UnknownModel(model) => GatewayError::UnknownModel(model),
            RoutingError::UnknownArm { route, arm } => GatewayError::UnknownArm { route, arm },
            RoutingError::BackendsSaturated { route, arm } => {
                GatewayError::BackendsSaturated { route, arm }
            }
            RoutingError::BackendsUnhealthy { route, arm } => {
                GatewayError::BackendsUnavailable { route, arm }
            }
        }
    }
}

/// `{"error": {"message": .., "type": .., "code": ..}}`.
pub fn openai_error_body(message: &str, error_type: &str, code: &str) -> Bytes {
    let v = serde_json::json!({"error": {"message": message, "type": error_type, "code": code}});
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let e = GatewayError::UnknownModel("gpt-9".into());
        assert_eq!(e.status(), 404);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        assert_eq!(
            GatewayError::UpstreamTimeout("x".into()).error_type(),
            "server_error"
        );
        let quota = GatewayError::BudgetExceeded {
            budget: "daily".into(),
            retry_after: 42,
        };
        let v: serde_json::Value = serde_json::from_slice(&quota.body()).unwrap();
        assert_eq!(
            (quota.status(), quota.retry_after()),
            (429, Some(42)),
            "a spent budget is a 429 with Retry-After"
        );
        assert_eq!(v["error"]["code"], "insufficient_quota");
        assert_eq!(v["error"]["type"], "insufficient_quota");
    }
}
