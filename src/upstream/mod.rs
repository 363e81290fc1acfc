//! The upstream leg, shared by the proxy's exchange and the shadow copies (and, later, health
//! checks): the request a backend receives, one attempt on one backend, and what the gateway
//! learns from a response body as it passes (the SSE scanner and the capture built on it).
//!
//! Nothing here writes to a client: what to do with an answer is the caller's business.

pub mod attempt;
pub mod capture;
pub mod one_send;
pub mod request;
pub mod sse;

pub use attempt::{attempt, release, Answer, AttemptError, UpstreamPool};
pub use capture::{Captured, ResponseCapture};
pub use request::{
    for_backend, is_hop_header, upstream_base, upstream_request, CREDENTIAL_HEADERS,
    GATEWAY_HEADER_PREFIX,
};
