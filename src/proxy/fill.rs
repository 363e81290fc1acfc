//! A cache miss whose answer may be stored: what the cache step hands the relay through the
//! request's context, and the store (or not) once the relay is over.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::cache::flight::FlightGuard;
use crate::cache::stats::RouteCacheStats;
use crate::cache::store::now_ms;
use crate::cache::{CacheKey, CachedAnswer, HitHead, Recorder, ResponseCache};
use crate::config::PolicySnapshot;
use crate::telemetry::{Outcome, RequestRecord};

/// A miss whose answer may be stored: carried in the request's context to the relay.
pub(crate) struct Fill {
    pub(super) cache: Arc<ResponseCache>,
    pub(super) stats: Arc<RouteCacheStats>,
    pub(super) key: CacheKey,
    pub(super) ttl_ms: u64,
    pub(super) max_entry_bytes: usize,
    /// Set when this request leads the flight of identical misses.
    pub(super) flight: Option<FlightGuard>,
}

impl Fill {
    /// A recorder for the answer about to be relayed.
    pub(crate) fn recorder(&self, is_sse: bool) -> Recorder {
        Recorder::new(is_sse, self.max_entry_bytes)
    }

    /// Called when the relay is over: stores the answer if it is a complete success, and
    /// settles the flight either way (dropping the guard releases the followers).
    pub(crate) fn finish(
        self,
        recorder: Recorder,
        status: u16,
        complete: bool,
        content_type: &str,
        snapshot: &PolicySnapshot,
        record: &RequestRecord,
    ) {
        let Fill {
            cache,
            stats,
            key,
            ttl_ms,
            max_entry_bytes: _,
            flight,
        } = self;
        let complete = complete && record.outcome == Outcome::Success;
        match recorder.finish(status, complete, content_type) {
            Ok(body) => {
                let policy = &snapshot.policy;
                let route = record.route.map(|r| &policy.routes[r]);
                let answer = Arc::new(CachedAnswer {
                    route: route.map(|r| r.name.clone()).unwrap_or_default(),
                    arm: route
                        .zip(record.arm)
                        .map(|(r, a)| r.arms.arms()[a].name.clone())
                        .unwrap_or_default(),
                    backend: record
                        .backend
                        .map(|b| policy.backends[b].name.clone())
                        .unwrap_or_default(),
                    stored_at_ms: now_ms(),
                    ttl_ms,
                    cost_usd: record.cost_usd,
                    body,
                    hit_head: HitHead::default(),
                });
                cache.store(key, answer.clone());
                stats.stores.fetch_add(1, Relaxed);
                if let Some(flight) = flight {
                    flight.complete(answer);
                }
            }
            Err(why) => {
                stats.not_stored.fetch_add(1, Relaxed);
                tracing::debug!(key = %key, reason = why.as_str(), "answer not cached");
            }
        }
    }
}
