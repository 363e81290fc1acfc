//! switchyard: an LLM inference edge gateway built on pingora.
//!
//! The crate is one binary (`switchyard`) and this library, which the binary,
//! the integration tests and the benchmarks share. See `README.md` for the
//! operator's view and the concepts, and `benches/findings.md` for what the
//! profiles showed.
#![deny(unsafe_code)]

pub mod admin;
pub mod backends;
pub mod cache;
pub mod client;
pub mod config;
pub mod cost;
pub mod error;
pub mod guardrails;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod redis;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod sim;
pub mod telemetry;
pub mod upstream;
