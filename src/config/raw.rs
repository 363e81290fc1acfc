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
    /// Spending caps in USD per API key, header value or route, per UTC window.
    #[serde(default)]
    pub budgets: Vec<RawBudget>,
    /// Requests- and tokens-per-minute caps per API key or header value.
    #[serde(default)]
    pub rate_limits: Vec<RawRateLimit>,
    /// `[cache]`: settings of the response cache shared by every route.
    pub cache: Option<RawCache>,
    pub guardrails: Option<RawGuardrailSettings>,
    /// `[outlier]`: passive ejection of backends whose attempts keep failing.
    pub outlier: Option<RawOutlier>,
}

/// `[outlier]`: when a backend whose attempts keep failing is taken out of rotation, and for
/// how long. Applies to every backend.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Off switch (default on).
    pub enabled: Option<bool>,
    /// Failed attempts in a row (connect error, 5xx, timeout) that eject a backend.
    pub consecutive_failures: Option<u64>,
    /// Length of the first ejection; each repeated one doubles it.
    pub base_ejection_ms: Option<u64>,
    /// Longest ejection.
    pub max_ejection_ms: Option<u64>,
    /// Largest share of an arm's backends ejected at once (never all of them).
    pub max_ejected_percent: Option<u64>,
}

/// `[backends.health_check]`: an active probe of one backend.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path probed with `GET` (default `/health`, which vLLM serves).
    pub path: Option<String>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    /// Passing probes in a row that bring an unhealthy backend back.
    pub rise: Option<u64>,
    /// Failing probes in a row that take a healthy backend out.
    pub fall: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub name: String,
    /// `api-key`, `header:NAME` or `route`.
    pub scope: String,
    /// `minute`, `hour`, `day` or `month` (UTC).
    pub window: String,
    pub limit_usd: f64,
    /// `reject` (default) or `downgrade`.
    pub action: Option<String>,
    /// Route names it applies to; all routes when absent.
    pub routes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub name: String,
    /// `api-key` or `header:NAME`.
    pub scope: String,
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub routes: Option<Vec<String>>,
}

/// `[cache]`: the process-wide response cache.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Bytes the in-process cache may hold, all routes together.
    pub max_bytes: Option<u64>,
    /// How long a request waits for an identical one already on its way upstream.
    pub single_flight_wait_ms: Option<u64>,
}

/// `[routes.cache]`: whether and how a route's answers are cached.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// Off switch that keeps the section (default on when the section is present).
    pub enabled: Option<bool>,
    /// Lifetime of an entry, in seconds.
    pub ttl_s: Option<u64>,
    /// Longest lifetime a client may ask for with `x-switchyard-cache-ttl`.
    pub max_ttl_s: Option<u64>,
    /// Largest answer stored; bigger ones are relayed but not kept.
    pub max_entry_bytes: Option<u64>,
    /// `deterministic` (temperature 0 or a seed; every embeddings request) or `all`.
    pub requests: Option<String>,
    /// `global` or `api-key` (entries of one hashed credential serve only that credential).
    pub scope: Option<String>,
    /// Top-level body fields left out of the key (for fields that never change the answer).
    #[serde(default)]
    pub ignore_fields: Vec<String>,
    /// Whether a hit is billed like the upstream answer it replays (default: free).
    pub charge_hits: Option<bool>,
}

/// `[guardrails]`: how the windows are cut and how often the evaluator runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrailSettings {
    /// Width of one time slice (`"10s"`); bound at start-up.
    pub slice: Option<String>,
    /// How long slices are kept (`"15m"`): the longest window a rule may use; bound at start-up.
    pub span: Option<String>,
    /// How often rules are evaluated and rollouts stepped (`"5s"`).
    pub interval: Option<String>,
}

/// A number, or text such as `"800ms"`, `"p95"` or `"5%"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawFigure {
    Number(f64),
    Text(String),
}

/// One `[[routes.guardrails]]` rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuardrail {
    pub name: Option<String>,
    pub metric: String,
    /// `"p95"` or `0.95`; distributions only.
    pub quantile: Option<RawFigure>,
    pub window: String,
    pub max: Option<RawFigure>,
    pub max_ratio: Option<f64>,
    /// For `output_tps`, where more is better.
    pub min: Option<RawFigure>,
    pub min_ratio: Option<f64>,
    pub confidence: Option<f64>,
    pub min_requests: Option<u64>,
    pub consecutive: Option<u64>,
    pub action: Option<String>,
    pub arm: Option<String>,
}

/// `[routes.rollout]`: an arm ramped step by step while its guardrails hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub arm: String,
    /// Weights in percent, ascending, the last 100.
    pub steps: Vec<f64>,
    /// Time at each step before the next (`"10m"`).
    pub bake: String,
    /// Names of the route's guardrails that must pass to advance (default: all of them).
    pub require: Option<Vec<String>>,
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
    /// Longest time a client may take to send a whole request head.
    pub head_timeout_ms: Option<u64>,
    /// Longest idle wait for the next request on a keep-alive connection.
    pub keepalive_timeout_secs: Option<u64>,
    /// Longest time a client may take to send a whole request body.
    pub body_timeout_ms: Option<u64>,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: Option<u64>,
    /// Most header fields in one request.
    pub max_headers: Option<u64>,
    /// Most open connections on the proxy listener.
    pub max_connections: Option<u64>,
    /// Most open connections on the admin listener (counted apart from the proxy's).
    pub admin_max_connections: Option<u64>,
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
    /// The backend may see clients' credentials when it receives shadow copies (default false).
    pub trusted: Option<bool>,
    /// Active health check (off when absent).
    pub health_check: Option<RawHealthCheck>,
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
    pub cache: Option<RawRouteCache>,
    /// How the chosen arm's backends are ordered: `least_inflight` (default), `round_robin`,
    /// `prefix`.
    pub balance: Option<String>,
    /// The knobs of `balance = "prefix"`.
    pub prefix: Option<RawPrefix>,
    /// The arm canaries are compared with and rolled back to (default: the first arm of the
    /// active set).
    pub champion: Option<String>,
    #[serde(default)]
    pub guardrails: Vec<RawGuardrail>,
    pub rollout: Option<RawRollout>,
    /// Case-insensitive phrases that mark an answer as a refusal (`refusal_rate`).
    #[serde(default)]
    pub refusal_patterns: Vec<String>,
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
    /// Copy the client's `Authorization`, `Cookie`, `x-api-key` to the shadow (default: the
    /// shadow backend's `trusted`).
    pub copy_credentials: Option<bool>,
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
