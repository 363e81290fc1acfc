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
    /// How often each backend's `/metrics` is scraped for its load (0 turns scraping off).
    pub scrape_interval_ms: Option<u64>,
    /// Debugging answer headers (`x-switchyard-prefix-match`). Off by default.
    pub debug_headers: Option<bool>,
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
    /// How the chosen arm's backends are ordered: `least_inflight` (default), `round_robin`,
    /// `prefix`.
    pub balance: Option<String>,
    /// The knobs of `balance = "prefix"`.
    pub prefix: Option<RawPrefix>,
}

/// `[routes.prefix]`: prefix-cache affinity knobs; every field has a documented default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefix {
    /// Tokens (of 4 prompt bytes) per hashed block.
    pub block_tokens: Option<u64>,
    /// Blocks hashed at most per prompt.
    pub max_blocks: Option<u64>,
    pub prefix_weight: Option<f64>,
    pub load_weight: Option<f64>,
    pub kv_weight: Option<f64>,
    /// Multiple of the mean load no backend is preferred beyond.
    pub load_bound: Option<f64>,
    /// Load (requests) at or below which a backend is never over the bound.
    pub load_bound_floor: Option<f64>,
    /// Share of requests (percent) sent to a random backend within the bound.
    pub explore_percent: Option<f64>,
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
