//! The proxy listener: pingora's `ProxyHttp` hooks, kept thin.
//!
//! Every request is answered inside `request_filter`: the body is read once (bounded), parsed
//! into [`RequestFacts`](crate::routing::RequestFacts), routed by the pure decision functions,
//! and exchanged with the backend over pingora's pooled upstream connector (`forward`). Doing
//! the upstream leg here rather than in pingora's proxy loop is deliberate: pingora replays a
//! body read before `upstream_peer` only from its 64 KiB retry buffer, and LLM prompts are
//! routinely larger; it also keeps "retry only before the first byte reached the client" and
//! SSE error detection in one place.

pub(crate) mod body;
mod ctx;
mod forward;
mod gateway;

pub use ctx::RequestCtx;
pub use gateway::Gateway;
