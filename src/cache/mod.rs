//! The response cache: a repeated request answered by the gateway itself, faster than any
//! backend and at no GPU cost, never with a wrong, partial or cross-tenant answer.
//!
//! One concept per file: `key` (what may stand in for what), `eligibility` (whether a request
//! uses the cache at all).

pub mod eligibility;
pub mod key;
