//! The simulated OpenAI-compatible model server (`switchyard sim`).
//!
//! It stands in for vLLM-like backends in the demo, the gateway's tests and
//! the benches: OpenAI endpoints (plain and SSE), `usage` with prefix-cache
//! hits, vLLM's Prometheus metric names, a latency model, and fault
//! injection, all configured by [`SimArgs`].
//!
//! Where things live: the flags in `args`; the pure model (tokenizer,
//! latency plan) in `model`, the prefix KV cache in `kv_cache`, generated
//! text in `text`, the SSE event script in `stream`, fault decisions in
//! `faults`; the wire format in `openai`; sockets and timing in `server`.
#![deny(unsafe_code)]

mod args;
mod error;
mod faults;
mod kv_cache;
mod metrics;
mod model;
mod openai;
mod server;
mod stream;
mod text;

pub use args::SimArgs;
pub use server::{run, ReceivedRequest, SimServer, RECEIVED_CAPACITY, SIM_NAME_HEADER};
