//! `PolicySnapshot`: one immutable, versioned policy plus the runtime handles its requests use
//! (in-flight counters per backend, metrics per arm). A request pins one snapshot for its whole
//! life, so a swap never splits a request.

use std::collections::HashMap;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::policy::{Policy, RouteSpec};
use crate::backends::{BackendLoad, LoadRegistry};
use crate::metrics::{ArmStats, Metrics};
use crate::shadow::ShadowStats;

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
    model_index: HashMap<String, usize>,
}

impl PolicySnapshot {
    pub(super) fn build(
        version: u64,
        policy: Policy,
        source: String,
        loads: &LoadRegistry,
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
        PolicySnapshot {
            version,
            shadow_stats,
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
