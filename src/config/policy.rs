//! The validated policy: every reference resolved, every number in range. Built only by
//! [`super::validate`]; immutable afterwards. Runtime state (in-flight counters, the version)
//! is added by [`super::PolicySnapshot`].

use std::net::SocketAddr;
use std::time::Duration;

use std::collections::HashMap;

use crate::routing::fallback::RetryPolicy;
use crate::routing::tier::TierPlan;
use crate::routing::{ApiKeyHash, ArmTable, Balance, StickyKey};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_HISTORY_LIMIT: u64 = 50;
/// A legitimate client sends its head in one or two packets; a few seconds leaves room for
/// slow links while cutting a client that drips one byte a second long before it matters.
pub const DEFAULT_HEAD_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_KEEPALIVE_TIMEOUT_SECS: u64 = 15;
/// Room for a multi-megabyte prompt over a slow link; a slow upload still cannot pin a worker.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 60_000;
/// OpenAI-style clients send a handful of short headers; 32 KiB leaves room for large cookies
/// and tracing headers.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 32 * 1024;
pub const DEFAULT_MAX_HEADERS: u64 = 100;
/// Room for thousands of idle or slow clients (each costs one descriptor and a few KiB) while
/// staying below what a raised descriptor limit holds with an upstream socket per connection.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Operators, probes and scrapers: a few dozen at once at most.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u64 = 64;
/// pingora reads at most this many header fields and answers more with its own 400, so our
/// limit must stay below it for the 431 to be ours.
pub const PINGORA_MAX_HEADERS: u64 = 256;
/// pingora refuses a head larger than this (1 MiB) with its own 400.
pub const PINGORA_MAX_HEADER_BYTES: u64 = 1_048_575;
pub const DEFAULT_MAX_INFLIGHT: u64 = 256;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Prefill of a long prompt on a busy GPU can take tens of seconds before the first byte.
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_TOTAL_TIMEOUT_MS: u64 = 600_000;
/// Redis sits beside the request path: a slow answer must cost a request little.
pub const DEFAULT_REDIS_COMMAND_TIMEOUT_MS: u64 = 100;
pub const DEFAULT_REDIS_CONNECT_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_REDIS_KEY_PREFIX: &str = "switchyard";

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub server: ServerSettings,
    /// Cost tiers, cheapest first; empty when the policy declares none (one implicit tier).
    pub tiers: Vec<String>,
    /// Hashed API key → plan name, for tier rules.
    pub plans: HashMap<ApiKeyHash, String>,
    pub backends: Vec<BackendSpec>,
    pub routes: Vec<RouteSpec>,
    pub cache: CacheSettings,
    /// `[redis]`: absent means every shared counter and cache stays local to this process.
    pub redis: Option<crate::redis::RedisSettings>,
    /// `[[budgets]]`, in policy order (admission checks them in this order).
    pub budgets: Vec<crate::cost::BudgetSpec>,
    /// `[[rate_limits]]`, in policy order.
    pub rate_limits: Vec<crate::cost::RateLimitSpec>,
    pub guardrails: GuardrailSettings,
    /// `[outlier]`: passive ejection settings, for every backend.
    pub outlier: OutlierPolicy,
}

pub const DEFAULT_OUTLIER_FAILURES: u64 = 5;
pub const DEFAULT_BASE_EJECTION_MS: u64 = 10_000;
pub const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;
pub const DEFAULT_MAX_EJECTED_PERCENT: u64 = 50;

/// `[outlier]`, validated: when failed attempts eject a backend and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub enabled: bool,
    /// Failed attempts in a row that eject a backend.
    pub consecutive_failures: u32,
    /// The first ejection's length; doubled by each repeated ejection up to `max_ejection`.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// Largest share of an arm's backends left out for being ejected (at most all but one).
    pub max_ejected_percent: u8,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            enabled: true,
            consecutive_failures: DEFAULT_OUTLIER_FAILURES as u32,
            base_ejection: Duration::from_millis(DEFAULT_BASE_EJECTION_MS),
            max_ejection: Duration::from_millis(DEFAULT_MAX_EJECTION_MS),
            max_ejected_percent: DEFAULT_MAX_EJECTED_PERCENT as u8,
        }
    }
}

pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 2_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_HEALTH_RISE: u64 = 2;
pub const DEFAULT_HEALTH_FALL: u64 = 2;

/// `[backends.health_check]`, validated: how one backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path and query probed with `GET`; any 2xx passes.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

pub const DEFAULT_GUARDRAIL_INTERVAL: Duration = Duration::from_secs(5);

/// `[guardrails]`: the windows' shape (bound at start-up) and the evaluator's pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardrailSettings {
    pub windows: crate::guardrails::WindowConfig,
    pub interval: Duration,
}

impl Policy {
    /// How many tiers candidates are ordered over (at least 1).
    pub fn tier_count(&self) -> usize {
        self.tiers.len().max(1)
    }

    /// The display name of tier `index`, if the policy names its tiers.
    pub fn tier_name(&self, index: usize) -> Option<&str> {
        self.tiers.get(index).map(String::as_str)
    }
}

/// Settings of the process itself. `listen`, `admin_listen` and `threads` are bound at start-up;
/// a hot swap that changes them is refused (see `validate::check_swap`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token_env: Option<String>,
    pub max_body_bytes: usize,
    pub threads: usize,
    pub history_limit: usize,
    /// From a connection's accept to its first request head read: past it the connection is
    /// closed without an answer, so slow-header clients cannot hold sockets.
    pub head_timeout: Duration,
    /// From an answer on a keep-alive connection to the next request head read: past it the
    /// connection is closed (idle, or its head dripped too late).
    pub keepalive_timeout_secs: u64,
    /// From a request's head read to its whole body read: past it the request is answered 408
    /// and the connection closed.
    pub body_timeout: Duration,
    /// Heads above these limits are answered 431 and the connection is closed; nothing reaches
    /// a backend.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Open connections the proxy listener keeps; one more is answered 503 with
    /// `Retry-After` and closed. Capped at start by what the descriptor limit can hold.
    pub max_connections: usize,
    /// The admin listener's own limit, counted apart, so a proxy flood never takes the
    /// slots `/readyz` and the admin API need.
    pub admin_max_connections: usize,
    /// How often backends' `/metrics` are scraped; `None` when scraping is off.
    pub scrape_interval: Option<Duration>,
    /// Whether answers carry debugging headers (`x-switchyard-prefix-match`).
    pub debug_headers: bool,
}

/// Backends' `/metrics` are scraped this often unless `scrape_interval_ms` says otherwise.
pub const DEFAULT_SCRAPE_INTERVAL_MS: u64 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    pub name: String,
    /// The URL as written, for display.
    pub url: String,
    pub addr: SocketAddr,
    /// `host[:port]` from the URL, sent as the upstream `Host` header.
    pub authority: String,
    /// When set, the request's `model` is rewritten to this before it goes upstream.
    pub upstream_model: Option<String>,
    /// The tier name as written (shown in `x-switchyard-tier`).
    pub tier: Option<String>,
    /// Index into the policy's tiers (0 when the policy has none).
    pub tier_rank: usize,
    pub price: Option<Price>,
    pub max_inflight: u32,
    pub timeouts: BackendTimeouts,
    /// May see clients' credentials in shadow copies.
    pub trusted: bool,
    /// Active probe; `None` leaves the backend to passive ejection alone.
    pub health_check: Option<HealthCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Prompt tokens served from the backend's prefix cache; `None` bills them as input.
    pub cached_input_per_mtok: Option<f64>,
}

/// Per-backend deadlines of one upstream exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// From the request sent to the response header received.
    pub first_byte: Duration,
    /// Longest silence between two reads of the response body.
    pub idle: Duration,
    /// The whole exchange, streaming included.
    pub total: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    pub models: Vec<String>,
    pub sticky: StickyKey,
    pub salt: String,
    pub arms: ArmTable,
    /// Blue-green: the set whose arms take traffic.
    pub active_set: Option<String>,
    pub allow_arm_override: bool,
    pub shadow: Option<ShadowSpec>,
    /// `None` when the route caches nothing: its requests are not even parsed for a key.
    pub cache: Option<RouteCacheSpec>,
    /// How the chosen arm's backends are ordered.
    pub balance: Balance,
    /// Index of the arm canaries are compared with and rolled back to.
    pub champion: usize,
    pub guardrails: Vec<crate::guardrails::GuardrailRule>,
    pub rollout: Option<crate::guardrails::RolloutSpec>,
    /// Lower-cased phrases; an answer containing one counts as a refusal.
    pub refusal_patterns: Vec<String>,
    /// Which tier a request starts from, and how far candidates may move.
    pub tiering: TierPlan,
    /// Indexes of routes tried after this one's own candidates.
    pub fallback_routes: Vec<usize>,
    pub retry: RetryPolicy,
}

/// Longest refusal phrase: answers are matched on their first bytes only (bounded capture).
pub const MAX_REFUSAL_PATTERN_BYTES: usize = 256;

pub const DEFAULT_SHADOW_MAX_INFLIGHT: u64 = 32;
pub const DEFAULT_SHADOW_TIMEOUT_MS: u64 = 60_000;

/// Mirroring of a route's traffic to a backend nobody sees the answers of.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowSpec {
    /// Index into the policy's backends.
    pub backend: usize,
    /// Share of requests mirrored, in basis points.
    pub percent_bp: u32,
    /// Model name sent to the shadow; `None` falls back to the backend's own rewrite.
    pub upstream_model: Option<String>,
    /// Mirrored requests in flight at most; beyond it copies are dropped and counted.
    pub max_inflight: u32,
    /// The whole shadow exchange, streaming included.
    pub timeout: Duration,
    pub mirror_streaming: bool,
    /// The copy carries the client's credentials (`Authorization`, `Cookie`, `x-api-key`).
    pub copy_credentials: bool,
    /// Optional JSONL file of sampled pairs.
    pub samples: Option<SampleSpec>,
}

/// Where and how much of a shadow's sampled pairs to write, from the route's `[routes.shadow]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleSpec {
    pub path: std::path::PathBuf,
    /// Share of compared pairs written, in basis points.
    pub percent_bp: u32,
    pub max_bytes: u64,
}

pub const DEFAULT_SAMPLE_PERCENT: f64 = 10.0;
pub const DEFAULT_SAMPLE_MAX_BYTES: u64 = 64 * 1024 * 1024;

pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;
pub const DEFAULT_SINGLE_FLIGHT_WAIT_MS: u64 = 30_000;
pub const DEFAULT_CACHE_TTL_S: u64 = 300;
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// `[cache]`: the process-wide response cache. `max_bytes` sizes the in-process cache when the
/// gateway starts; a swap that changes it is refused (restart to apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: u64,
    /// How long a request waits for an identical one already upstream before going itself.
    pub single_flight_wait: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            single_flight_wait: Duration::from_millis(DEFAULT_SINGLE_FLIGHT_WAIT_MS),
        }
    }
}

/// Which of a cached route's requests may be answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheRequests {
    /// Requests whose answer does not depend on chance: temperature 0 or a fixed seed, and
    /// every embeddings request.
    Deterministic,
    /// Every request: the route accepts replaying one sampled answer to everyone.
    All,
}

/// Who may be answered with an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Every client of the route shares entries.
    Global,
    /// Entries are keyed on the client's hashed credential: tenants never see each other's
    /// answers, and a request without a credential is not cached.
    ApiKey,
}

/// `[routes.cache]` of a route whose cache is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCacheSpec {
    pub ttl: Duration,
    /// Longest TTL a client may ask for with `x-switchyard-cache-ttl` (at least `ttl`).
    pub max_ttl: Duration,
    pub max_entry_bytes: usize,
    pub requests: CacheRequests,
    pub scope: CacheScope,
    /// Top-level body members left out of the key (never one the key needs: see
    /// `cache::key::KEY_FIELDS`).
    pub ignore_fields: Vec<String>,
    pub charge_hits: bool,
}
