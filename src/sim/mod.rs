//! The simulated OpenAI-compatible model server (`switchyard sim`).
//!
//! It stands in for vLLM-like backends in the demo, the gateway's tests and
//! the benches, so they run without GPUs yet exercise what real backends do:
//! streaming, `usage` with prefix-cache hits, vLLM's metric names, latency,
//! and failures.
//!
//! ```text
//! switchyard sim --listen 127.0.0.1:9101 --model llama-3.1-70b-instruct \
//!     --ttft-ms 200 --prefill-us-per-token 50 --tpot-ms 30 --name v1
//! curl -s localhost:9101/v1/chat/completions -d '{"model": "llama-3.1-70b-instruct",
//!     "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": true}'
//! ```
//!
//! - Endpoints: `POST /v1/chat/completions`, `/v1/completions` (plain and
//!   SSE), `/v1/embeddings`; vLLM's `POST /tokenize`, `/detokenize` and
//!   `/v1/chat/completions/render` (the rendered prompt and its `token_ids`);
//!   `GET /v1/models`, `/health`, `/metrics`.
//! - Prompts are cut into prefix blocks by the gateway's own hashing
//!   (`routing::prefix`), seeded with the model name; the prefix cache holds
//!   `--kv-cache-blocks` blocks and evicts the least recently used.
//! - Output is deterministic in the prompt and `--seed`; its length is the
//!   request's `max_tokens` (default 16) capped by `--max-output-tokens`.
//! - Tokens: 4 bytes of prompt text each; every generated word is one token.
//! - Timing: the first token after `--ttft-ms` plus `--prefill-us-per-token`
//!   for each prompt token not in the prefix cache, then one token per
//!   `--tpot-ms`; a non-streaming answer waits for the last token.
//! - Faults: `--error-rate`/`--error-status`, `--max-concurrency`,
//!   `--stall-ms`, `--drop-after-events`, `--stream-error-after`.
//! - Safety signals for guardrails: `--refusal TEXT` (every answer begins
//!   with it) and `--content-filter-rate F` (that share of answers ends with
//!   `finish_reason: "content_filter"`).
//! - Every response carries `x-sim-name`.
//!
//! In process, [`SimServer::start`] runs one on the caller's tokio runtime
//! and records what it received, for tests that check what a gateway sent.
//!
//! Where things live: flags in `args`; the pure model in `model` (tokenizer,
//! latency plan), `kv_cache` (prefix cache), `text` (generated text,
//! embeddings), `stream` (the SSE event script) and `faults`; the wire
//! format in `openai`; refusals in `error`; `/metrics` in `metrics`; sockets
//! and timing in `server`.
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
mod tokenize;

pub use args::SimArgs;
pub use server::{run, ReceivedRequest, SimServer, RECEIVED_CAPACITY, SIM_NAME_HEADER};
