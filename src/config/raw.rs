//! The policy file as written: TOML deserialised with `deny_unknown_fields`, nothing checked yet.
//!
//! Every field here is part of the contract operators and their tooling rely on (see the
//! README's policy reference). Values are optional where a default exists; `validate` turns this
//! into a [`super::Policy`] or a list of every problem found, each naming its field path.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Shared state across replicas (budget counters, response cache, fleet policy).
    pub redis: Option<RawRedis>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
    /// Longest wait for one command before the caller falls back to local state.
    pub command_timeout_ms: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    /// Prefix of every key written (default `switchyard`), so deployments can share a Redis.
    pub key_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token_env: Option<String>,
    pub max_body_bytes: Option<u64>,
    /// Worker threads of the proxy service (pingora runtime threads).
    pub threads: Option<u64>,
    /// How many accepted policy versions the history keeps for rollback.
    pub history_limit: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub url: String,
    pub model: Option<String>,
    pub tier: Option<String>,
    pub price: Option<RawPrice>,
    pub max_inflight: Option<u64>,
    pub connect_timeout_ms: Option<u64>,
    pub first_byte_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub total_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub models: Vec<String>,
    pub sticky: Option<String>,
    /// Bucketing salt; defaults to the route's name so buckets survive unrelated edits.
    pub salt: Option<String>,
    /// Blue-green: the arm set that takes traffic; arms of other sets stand by.
    pub active: Option<String>,
    /// Lets a request force an arm with `x-switchyard-arm: NAME` (QA). Off by default.
    pub allow_arm_override: Option<bool>,
    #[serde(default)]
    pub arms: Vec<RawArm>,
    pub shadow: Option<RawShadow>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub backend: String,
    pub percent: f64,
    /// Model name sent to the shadow backend (else the backend's own `model` rewrite applies).
    pub model: Option<String>,
    pub max_inflight: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Whether streaming requests are mirrored too (default true).
    pub mirror_streaming: Option<bool>,
    /// JSONL file of sampled pairs (both outputs and all figures) for offline review.
    pub sample_file: Option<String>,
    /// Share of compared pairs written to `sample_file` (default 10).
    pub sample_percent: Option<f64>,
    /// Size at which `sample_file` rotates to `<file>.1` (default 64 MiB).
    pub sample_max_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArm {
    pub name: String,
    /// Blue-green set this arm belongs to (with the route's `active`).
    pub set: Option<String>,
    #[serde(default)]
    pub backends: Vec<String>,
    pub weight: f64,
}
