//! The proxy listener's HTTP application, on pingora's HTTP/1 server sessions.
//!
//! [`Gateway`] reads each request's head and answers it whole: the body is read once (bounded), parsed
//! into [`RequestFacts`](crate::routing::RequestFacts), routed by the pure decision functions,
//! and exchanged with the backends over pingora's pooled upstream connector in two phases: the
//! pre-commit exchange (`exchange`: attempts and fallbacks, nothing sent to the client yet) and
//! the committed relay (`relay`: bytes flow to the client, no retry). pingora's proxy loop
//! (`ProxyHttp`) is not used: it replays a body read before `upstream_peer` only from its
//! 64 KiB retry buffer, and LLM prompts are routinely larger; with the upstream leg our own,
//! the loop's hooks and its per-request future were only cost.
//!
//! Whatever happens, the request's [`RequestRecord`](crate::telemetry::RequestRecord) is
//! completed and handed once to every consumer when the request ends.

pub(crate) mod body;
mod cache;
mod ctx;
mod exchange;
mod fill;
mod gateway;
mod head;
mod observe;
mod relay;
mod wire;

pub use ctx::RequestCtx;
pub use gateway::Gateway;
pub use relay::PREFIX_MATCH_HEADER;

use crate::error::GatewayError;

/// Why a request ended without a normal response.
pub(crate) enum Failure {
    /// Nothing was sent to the client yet: answer with this error.
    Respond(GatewayError),
    /// The response had begun (or the client went away): the connection can only be closed.
    Abort(Box<pingora::Error>),
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Failure::Respond(e)
    }
}
