//! `PolicySnapshot`: one immutable, versioned policy plus the runtime handles its requests use
//! (in-flight counters per backend, metrics per arm). A request pins one snapshot for its whole
//! life, so a swap never splits a request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

use super::policy::{Policy, RouteSpec};
use crate::backends::{BackendLoad, LoadRegistry, PrefixIndex};
use crate::metrics::{ArmStats, Metrics};
use crate::routing::{BackendView, ScrapeView};
use crate::shadow::ShadowStats;
use crate::telemetry::prefix::PrefixStats;

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
        PolicySnapshot {
            version,
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

    /// The balance strategy's view of `backends` (indexes into the policy's backends) for a
    /// prompt with these prefix blocks, as of `now`: in-flight counts, scraped load, and — when
    /// there are blocks — how many of them each backend is believed to hold.
    pub fn backend_views(
        &self,
        backends: &[usize],
        blocks: &[u64],
        now: Instant,
    ) -> Vec<BackendView> {
        let stale_after = self.scrape_stale_after();
        let matched = if blocks.is_empty() {
            vec![0; backends.len()]
        } else {
            let ids: Vec<_> = backends.iter().map(|&b| self.loads[b].id()).collect();
            self.prefix_index.matches(blocks, &ids)
        };
        backends
            .iter()
            .zip(matched)
            .map(|(&b, matched_blocks)| BackendView {
                backend: b,
                in_flight: self.loads[b].in_flight(),
                max_inflight: self.policy.backends[b].max_inflight,
                scrape: if self.policy.server.scrape_interval.is_some() {
                    self.loads[b].scrape_view(now, stale_after)
                } else {
                    ScrapeView::Unknown
                },
                matched_blocks,
            })
            .collect()
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
