//! The policy file as written: TOML deserialised with `deny_unknown_fields`, nothing checked yet.
//!
//! Every field here is part of the contract operators and their tooling rely on (see the
//! README's policy reference). Values are optional where a default exists; `validate` turns this
//! into a [`super::Policy`] or a list of every problem found, each naming its field path.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Cost tiers, cheapest first (`tiers = ["economy", "standard", "premium"]`).
    #[serde(default)]
    pub tiers: Vec<String>,
    #[serde(default)]
    pub server: RawServer,
    /// API-key plans for tier rules: hashed keys → plan name.
    pub plans: Option<RawPlans>,
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
    /// Price of prompt tokens the backend served from its prefix cache (default: the input
    /// price).
    pub cached_input_per_mtok: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlans {
    /// SHA-256 (hex) of an API key → the plan it belongs to.
    #[serde(default)]
    pub keys: std::collections::BTreeMap<String, String>,
    /// A file of more `HEX PLAN` lines (blank lines and `#` comments allowed).
    pub keys_file: Option<String>,
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
    /// Tier a request matching no tier rule starts from (default: the cheapest).
    pub default_tier: Option<String>,
    /// Honour the client's `x-switchyard-tier` header.
    pub allow_client_tier: Option<bool>,
    /// Let candidates move to cheaper tiers too when the starting tier and above cannot serve.
    pub overflow_down: Option<bool>,
    /// Rules choosing the starting tier, first match wins.
    #[serde(default)]
    pub tier_rules: Vec<RawTierRule>,
    /// Routes whose candidates are tried after this route's own, with the model rewritten.
    #[serde(default)]
    pub fallback_routes: Vec<String>,
    pub retry: Option<RawRetry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierRule {
    pub tier: String,
    pub prompt_tokens_at_least: Option<u64>,
    pub prompt_tokens_below: Option<u64>,
    pub max_tokens_at_least: Option<u64>,
    pub tools: Option<bool>,
    pub json_mode: Option<bool>,
    pub stream: Option<bool>,
    pub header: Option<RawHeaderMatch>,
    pub plan: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Failures that move on to the next candidate: connect, 429, 5xx, first_byte_timeout,
    /// ttft_timeout (default: all).
    pub on: Option<Vec<String>>,
    pub max_attempts: Option<u64>,
    pub budget_percent: Option<f64>,
    pub budget_min_per_second: Option<f64>,
    pub ttft_timeout_ms: Option<u64>,
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
