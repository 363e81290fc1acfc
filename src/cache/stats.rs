//! What the cache did, per route and per layer, for `/metrics` and `GET /admin/cache`.
//! Counts live outside policy versions, like the arm series: a route keeps its figures across
//! swaps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::json;

use crate::metrics::Histogram;
use crate::telemetry::prom;

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The in-process cache.
    L1,
    /// Redis, shared by replicas.
    L2,
    /// An identical request that was already upstream (single flight).
    Flight,
}

impl Layer {
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::L1 => "l1",
            Layer::L2 => "l2",
            Layer::Flight => "flight",
        }
    }
}

/// One route's counts.
#[derive(Default)]
pub struct RouteCacheStats {
    pub hits_l1: AtomicU64,
    pub hits_l2: AtomicU64,
    pub hits_flight: AtomicU64,
    pub misses: AtomicU64,
    pub bypasses: AtomicU64,
    pub stores: AtomicU64,
    /// Answers relayed on a miss but not stored (error, truncated, too large).
    pub not_stored: AtomicU64,
    /// Requests that waited for an identical one upstream.
    pub flight_joins: AtomicU64,
    /// USD the hits did not spend upstream, in nano-dollars.
    pub saved_nano_usd: AtomicU64,
}

impl RouteCacheStats {
    pub fn hit(&self, layer: Layer, saved_usd: f64) {
        match layer {
            Layer::L1 => &self.hits_l1,
            Layer::L2 => &self.hits_l2,
            Layer::Flight => &self.hits_flight,
        }
        .fetch_add(1, Relaxed);
        self.saved_nano_usd
            .fetch_add((saved_usd.max(0.0) * 1e9).round() as u64, Relaxed);
    }

    fn hits(&self) -> u64 {
        self.hits_l1.load(Relaxed) + self.hits_l2.load(Relaxed) + self.hits_flight.load(Relaxed)
    }

    /// Hits over lookups (hits and misses); bypasses never looked.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.hits();
        let lookups = hits + self.misses.load(Relaxed);
        if lookups == 0 {
            0.0
        } else {
            hits as f64 / lookups as f64
        }
    }

    fn saved_usd(&self) -> f64 {
        self.saved_nano_usd.load(Relaxed) as f64 / 1e9
    }
}

/// Counts of the whole cache.
#[derive(Default)]
pub struct CacheStats {
    routes: RwLock<BTreeMap<String, Arc<RouteCacheStats>>>,
    /// Entries pushed out by the byte bound (not expiries, not deletions).
    pub evictions: AtomicU64,
    /// Redis lookups and writes that failed or timed out.
    pub l2_errors: AtomicU64,
    /// Entries read from Redis that could not be decoded.
    pub l2_corrupt: AtomicU64,
    pub l2_writes: AtomicU64,
    /// Redis lookup latency, answered or not.
    pub l2_latency: Histogram,
}

impl CacheStats {
    /// The series of `route`, created on first use.
    pub fn route(&self, route: &str) -> Arc<RouteCacheStats> {
        if let Some(s) = self.routes.read().get(route) {
            return s.clone();
        }
        self.routes
            .write()
            .entry(route.to_owned())
            .or_default()
            .clone()
    }

    pub fn routes(&self) -> Vec<(String, Arc<RouteCacheStats>)> {
        self.routes
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Per route: lookups by result and layer, stores, joins, saved USD, hit ratio.
    pub fn routes_json(&self) -> Vec<serde_json::Value> {
        self.routes()
            .into_iter()
            .map(|(route, s)| {
                json!({
                    "route": route,
                    "hits": {"l1": s.hits_l1.load(Relaxed), "l2": s.hits_l2.load(Relaxed),
                             "flight": s.hits_flight.load(Relaxed)},
                    "misses": s.misses.load(Relaxed),
                    "bypasses": s.bypasses.load(Relaxed),
                    "stores": s.stores.load(Relaxed),
                    "not_stored": s.not_stored.load(Relaxed),
                    "flight_joins": s.flight_joins.load(Relaxed),
                    "hit_ratio": s.hit_ratio(),
                    "saved_usd": s.saved_usd(),
                })
            })
            .collect()
    }

    /// Writes the `switchyard_cache_*` families. `entries` and `bytes` are the L1's.
    pub fn render(&self, out: &mut String, entries: u64, bytes: u64) {
        let routes = self.routes();
        prom::family(
            out,
            "switchyard_cache_lookups_total",
            "counter",
            "Cache lookups by route, result (hit, miss, bypass) and layer of the hit.",
        );
        for (route, s) in &routes {
            for (result, layer, n) in [
                ("hit", "l1", &s.hits_l1),
                ("hit", "l2", &s.hits_l2),
                ("hit", "flight", &s.hits_flight),
                ("miss", "", &s.misses),
                ("bypass", "", &s.bypasses),
            ] {
                let labels =
                    prom::labels(&[("route", route), ("result", result), ("layer", layer)]);
                prom::sample(
                    out,
                    "switchyard_cache_lookups_total",
                    &labels,
                    n.load(Relaxed),
                );
            }
        }
        for (name, help, pick) in [
            (
                "switchyard_cache_stores_total",
                "Answers stored in the cache.",
                (|s: &RouteCacheStats| s.stores.load(Relaxed)) as fn(&RouteCacheStats) -> u64,
            ),
            (
                "switchyard_cache_not_stored_total",
                "Answers relayed on a miss but not stored (error, truncated, too large).",
                |s| s.not_stored.load(Relaxed),
            ),
            (
                "switchyard_cache_single_flight_joins_total",
                "Requests that waited for an identical request already upstream.",
                |s| s.flight_joins.load(Relaxed),
            ),
        ] {
            prom::family(out, name, "counter", help);
            for (route, s) in &routes {
                prom::sample(out, name, &prom::labels(&[("route", route)]), pick(s));
            }
        }
        prom::family(
            out,
            "switchyard_cache_saved_usd_total",
            "counter",
            "What cache hits would have cost upstream, in USD.",
        );
        for (route, s) in &routes {
            prom::sample(
                out,
                "switchyard_cache_saved_usd_total",
                &prom::labels(&[("route", route)]),
                s.saved_usd(),
            );
        }
        for (name, kind, help, value) in [
            (
                "switchyard_cache_entries",
                "gauge",
                "Entries in the in-process cache.",
                entries,
            ),
            (
                "switchyard_cache_bytes",
                "gauge",
                "Bytes the in-process cache holds (entry weights).",
                bytes,
            ),
            (
                "switchyard_cache_evictions_total",
                "counter",
                "Entries pushed out of the in-process cache by its byte bound.",
                self.evictions.load(Relaxed),
            ),
            (
                "switchyard_cache_l2_errors_total",
                "counter",
                "Redis cache lookups and writes that failed or timed out (served without L2).",
                self.l2_errors.load(Relaxed),
            ),
            (
                "switchyard_cache_l2_writes_total",
                "counter",
                "Entries written to Redis.",
                self.l2_writes.load(Relaxed),
            ),
        ] {
            prom::family(out, name, kind, help);
            prom::sample(out, name, "", value);
        }
        prom::family(
            out,
            "switchyard_cache_l2_lookup_seconds",
            "histogram",
            "Redis cache lookup latency, answered or not.",
        );
        self.l2_latency
            .render(out, "switchyard_cache_l2_lookup_seconds", "");
    }
}
