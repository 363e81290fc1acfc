//! `PolicySnapshot`: one immutable, versioned policy plus the runtime handles its requests use
//! (in-flight counters per backend, metrics per arm). A request pins one snapshot for its whole
//! life, so a swap never splits a request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use super::policy::{Policy, RouteSpec};
use crate::backends::{BackendLoad, LoadRegistry, PrefixIndex};
use crate::guardrails::SeriesHandles;
use crate::metrics::{ArmStats, Metrics};
use crate::routing::candidates::expected_cost;
use crate::routing::{BackendView, RequestFacts, ScrapeView};
use crate::shadow::ShadowStats;
use crate::telemetry::attempts::{BackendAttempts, RouteRetries};
use crate::telemetry::prefix::PrefixStats;
use crate::telemetry::usage::UsageHandles;

/// Output tokens assumed for a request that sets no `max_tokens`, when ordering candidates by
/// what the request would cost.
const ASSUMED_OUTPUT_TOKENS: u64 = 256;

/// The running policy: validated content, version, and runtime handles.
pub struct PolicySnapshot {
    pub version: u64,
    pub policy: Policy,
    /// The TOML it was built from, as given (shown by `GET /admin/config`, replayed by rollback).
    pub source: String,
    pub content_hash: u64,
    /// Parallel to `policy.backends`.
    pub loads: Vec<Arc<BackendLoad>>,
    /// Parallel to `policy.routes`, then to each route's arms.
    pub arm_stats: Vec<Vec<Arc<ArmStats>>>,
    /// Parallel to `policy.routes`: the shadow series of routes that mirror.
    pub shadow_stats: Vec<Option<Arc<ShadowStats>>>,
    /// Parallel to `policy.routes`: the prefix-affinity series of routes balanced by prefix.
    pub prefix_stats: Vec<Option<Arc<PrefixStats>>>,
    /// Which backends recently served which prompt blocks; one per process.
    pub prefix_index: Arc<PrefixIndex>,
    /// Parallel to `policy.routes`: retry budget and fallback counts.
    pub route_retries: Vec<Arc<RouteRetries>>,
    /// Parallel to `policy.backends`: attempts by result.
    pub backend_attempts: Vec<Arc<BackendAttempts>>,
    /// Token and cost series, resolved on first use.
    pub usage: UsageHandles,
    /// Guardrail windows per (route, arm, backend), resolved on first use.
    pub windows: SeriesHandles,
    model_index: HashMap<String, usize>,
}

impl PolicySnapshot {
    pub(super) fn build(
        version: u64,
        policy: Policy,
        source: String,
        loads: &LoadRegistry,
        prefix_index: &Arc<PrefixIndex>,
        metrics: &Metrics,
    ) -> PolicySnapshot {
        let model_index = policy
            .routes
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.models.iter().map(move |m| (m.clone(), i)))
            .collect();
        let backend_loads = policy
            .backends
            .iter()
            .map(|b| loads.get(&b.name, b.addr))
            .collect();
        let arm_stats = policy
            .routes
            .iter()
            .map(|r| {
                r.arms
                    .arms()
                    .iter()
                    .map(|a| metrics.arm(&r.name, &a.name))
                    .collect()
            })
            .collect();
        let shadow_stats = policy
            .routes
            .iter()
            .map(|r| r.shadow.as_ref().map(|_| metrics.shadow(&r.name)))
            .collect();
        let prefix_stats = policy
            .routes
            .iter()
            .map(|r| r.balance.block_shape().map(|_| metrics.prefix(&r.name)))
            .collect();
        let route_retries = policy
            .routes
            .iter()
            .map(|r| metrics.attempts.route(&r.name))
            .collect();
        let backend_attempts = policy
            .backends
            .iter()
            .map(|b| metrics.attempts.backend(&b.name))
            .collect();
        PolicySnapshot {
            version,
            route_retries,
            backend_attempts,
            usage: UsageHandles::default(),
            windows: SeriesHandles::default(),
            shadow_stats,
            prefix_stats,
            prefix_index: prefix_index.clone(),
            content_hash: content_hash(&source),
            policy,
            source,
            loads: backend_loads,
            arm_stats,
            model_index,
        }
    }

    /// Whether any route caches answers.
    pub fn caches(&self) -> bool {
        self.policy.routes.iter().any(|r| r.cache.is_some())
    }

    /// The route serving `model` and its index.
    pub fn route_for_model(&self, model: &str) -> Option<(usize, &RouteSpec)> {
        self.model_index
            .get(model)
            .map(|&i| (i, &self.policy.routes[i]))
    }

    /// How old a successful scrape may be before its figures count as unknown.
    pub fn scrape_stale_after(&self) -> Duration {
        self.policy
            .server
            .scrape_interval
            .map_or(Duration::ZERO, crate::backends::scrape::stale_after)
    }

    /// What candidate ordering sees of backend `b` at `now` for the request of `facts`: its
    /// tier, load, cooldown, health, what the request would cost there, its scraped load and — when the
    /// request's prefix was hashed — how many of its blocks the backend is believed to hold.
    pub fn backend_view(&self, b: usize, now: Instant, facts: &RequestFacts) -> BackendView {
        let spec = &self.policy.backends[b];
        let load = &self.loads[b];
        BackendView {
            tier: spec.tier_rank,
            in_flight: load.in_flight(),
            max_inflight: spec.max_inflight,
            cooling: load.cooling(now),
            expected_cost: spec.price.as_ref().map_or(0.0, |p| {
                expected_cost(
                    facts.prompt_tokens_estimate,
                    facts.max_tokens.unwrap_or(ASSUMED_OUTPUT_TOKENS),
                    p.input_per_mtok,
                    p.output_per_mtok,
                )
            }),
            scrape: if self.policy.server.scrape_interval.is_some() {
                load.scrape_view(now, self.scrape_stale_after())
            } else {
                ScrapeView::Unknown
            },
            matched_blocks: self.matched_blocks(b, &facts.prefix_blocks),
            down: load.health.down(),
            ejected_until: load.health.ejected_until(now),
        }
    }

    /// Leading blocks of `blocks` backend `b` is believed to hold (0 without blocks).
    pub fn matched_blocks(&self, b: usize, blocks: &[u64]) -> usize {
        if blocks.is_empty() {
            0
        } else {
            self.prefix_index.matches(blocks, &[self.loads[b].id()])[0]
        }
    }

    /// Every model name some route serves, in policy order.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.policy
            .routes
            .iter()
            .flat_map(|r| r.models.iter().map(String::as_str))
    }
}

impl std::fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySnapshot")
            .field("version", &self.version)
            .field("content_hash", &format_args!("{:016x}", self.content_hash))
            .finish_non_exhaustive()
    }
}

pub fn content_hash(text: &str) -> u64 {
    xxh3_64(text.as_bytes())
}
