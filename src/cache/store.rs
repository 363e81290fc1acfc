//! `ResponseCache`: the in-process L1 (moka, weighed by entry bytes, a TTL per entry), the
//! shared L2 (Redis, when `[redis]` is configured), the single-flight table and the counts.
//! One per process, kept across policy versions.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::notification::RemovalCause;
use moka::Expiry;

use super::flight::{Flights, Joined};
use super::key::CacheKey;
use super::memo::{Remembered, SlotMemo};
use super::record::{wire, CachedAnswer};
use super::stats::{CacheStats, Layer};
use crate::config::policy::CacheSettings;
use crate::redis::{RedisState, SharedRedis};
use crate::routing::RequestFacts;

/// Longest an L2 lookup may take before it counts as a miss, whatever the Redis command
/// timeout: a slow Redis must never cost a request more than this.
pub const L2_LOOKUP_TIMEOUT: Duration = Duration::from_millis(50);

/// Slots of the key memo: 4 096 × under 64 bytes.
const KEY_MEMO_SLOTS: usize = 4_096;
/// Slots of the facts memo, which holds only bodies of up to [`FACTS_MEMO_MAX_BODY`] bytes:
/// request facts are smaller than their body, so at most 16 MiB, usually a few hundred KiB.
const FACTS_MEMO_SLOTS: usize = 1_024;
/// The largest body whose facts are remembered.
pub const FACTS_MEMO_MAX_BODY: usize = 16 * 1024;

/// The process's response cache.
pub struct ResponseCache {
    l1: moka::sync::Cache<CacheKey, Arc<CachedAnswer>>,
    flights: Arc<Flights>,
    /// What recently seen bodies gave: a repeated request is not parsed again (`memo.rs`).
    facts_memo: SlotMemo<Arc<RequestFacts>>,
    key_memo: SlotMemo<Remembered>,
    stats: Arc<CacheStats>,
    redis: Arc<SharedRedis>,
    settings: CacheSettings,
}

/// Each entry lives for what is left of its own TTL when it is inserted (an L2 entry may be
/// half-way through its life already).
struct RemainingTtl;

impl Expiry<CacheKey, Arc<CachedAnswer>> for RemainingTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedAnswer>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(value.remaining_ms(now_ms())))
    }

    fn expire_after_update(
        &self,
        key: &CacheKey,
        value: &Arc<CachedAnswer>,
        updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// Wall-clock milliseconds since the Unix epoch: entry ages must agree across replicas.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ResponseCache {
    pub fn new(settings: CacheSettings, redis: Arc<SharedRedis>) -> ResponseCache {
        let stats = Arc::new(CacheStats::default());
        let on_evict = stats.clone();
        let l1 = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<CachedAnswer>| {
                u32::try_from(v.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(RemainingTtl)
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    on_evict.evictions.fetch_add(1, Relaxed);
                }
            })
            .build();
        ResponseCache {
            l1,
            flights: Arc::new(Flights::default()),
            facts_memo: SlotMemo::new(FACTS_MEMO_SLOTS),
            key_memo: SlotMemo::new(KEY_MEMO_SLOTS),
            stats,
            redis,
            settings,
        }
    }

    pub fn facts_memo(&self) -> &SlotMemo<Arc<RequestFacts>> {
        &self.facts_memo
    }

    pub fn key_memo(&self) -> &SlotMemo<Remembered> {
        &self.key_memo
    }

    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    pub fn single_flight_wait(&self) -> Duration {
        self.settings.single_flight_wait
    }

    /// The entry for `key` that can serve a client wanting (or not) the usage chunk: L1 first,
    /// then Redis within [`L2_LOOKUP_TIMEOUT`]. An L2 hit fills L1.
    pub async fn lookup(
        &self,
        key: CacheKey,
        include_usage: bool,
    ) -> Option<(Arc<CachedAnswer>, Layer)> {
        if let Some(a) = self.l1.get(&key) {
            return a.serves(include_usage).then_some((a, Layer::L1));
        }
        let a = self.l2_get(key).await?;
        let a = Arc::new(a);
        self.l1.insert(key, a.clone());
        a.serves(include_usage).then_some((a, Layer::L2))
    }

    async fn l2_get(&self, key: CacheKey) -> Option<CachedAnswer> {
        let prefix = self.redis.settings()?.key_prefix;
        let started = Instant::now();
        let got = tokio::time::timeout(
            L2_LOOKUP_TIMEOUT,
            self.redis
                .query::<Option<Vec<u8>>>(redis::cmd("GET").arg(l2_key(&prefix, key))),
        )
        .await;
        self.stats.l2_latency.record(started.elapsed());
        match got {
            Ok(Ok(Some(data))) => match wire::decode(&data) {
                Some(a) if a.remaining_ms(now_ms()) > 0 => Some(a),
                Some(_) => None,
                None => {
                    self.stats.l2_corrupt.fetch_add(1, Relaxed);
                    None
                }
            },
            Ok(Ok(None)) => None,
            Ok(Err(_)) | Err(_) => {
                self.stats.l2_errors.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// Leads or follows the flight of identical misses for `key`.
    pub fn join(&self, key: CacheKey) -> Joined {
        self.flights.join(key)
    }

    /// Stores a complete answer: L1 now, Redis in the background (the request does not wait).
    pub fn store(&self, key: CacheKey, answer: Arc<CachedAnswer>) {
        self.l1.insert(key, answer.clone());
        let Some(prefix) = self.redis.settings().map(|s| s.key_prefix) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let redis = self.redis.clone();
        let stats = self.stats.clone();
        runtime.spawn(async move {
            let ttl_ms = answer.remaining_ms(now_ms());
            if ttl_ms == 0 {
                return;
            }
            let data = wire::encode(&answer);
            let mut cmd = redis::cmd("SET");
            cmd.arg(l2_key(&prefix, key))
                .arg(data)
                .arg("PX")
                .arg(ttl_ms);
            match redis.query::<()>(&cmd).await {
                Ok(()) => stats.l2_writes.fetch_add(1, Relaxed),
                Err(_) => stats.l2_errors.fetch_add(1, Relaxed),
            };
        });
    }

    /// Drops every L1 entry, or those of `route`. Returns how many. Redis entries are left to
    /// their TTL: they are shared with other replicas, which may still be serving them.
    pub fn clear(&self, route: Option<&str>) -> u64 {
        let doomed: Vec<Arc<CacheKey>> = self
            .l1
            .iter()
            .filter(|(_, v)| route.is_none_or(|r| v.route == r))
            .map(|(k, _)| k)
            .collect();
        if route.is_none() {
            // Also drops expired entries the iterator no longer shows.
            self.l1.invalidate_all();
        } else {
            for k in &doomed {
                self.l1.invalidate(k.as_ref());
            }
        }
        self.l1.run_pending_tasks();
        doomed.len() as u64
    }

    /// L1 entries and their weight in bytes, after pending maintenance.
    pub fn size(&self) -> (u64, u64) {
        self.l1.run_pending_tasks();
        (self.l1.entry_count(), self.l1.weighted_size())
    }

    /// `GET /admin/cache`.
    pub fn report(&self) -> serde_json::Value {
        let (entries, bytes) = self.size();
        let l2 = match self.redis.state() {
            RedisState::NotConfigured => "not_configured",
            RedisState::Up => "up",
            RedisState::Degraded => "degraded",
        };
        serde_json::json!({
            "entries": entries,
            "bytes": bytes,
            "max_bytes": self.settings.max_bytes,
            "evictions": self.stats.evictions.load(Relaxed),
            "single_flights_in_progress": self.flights.len(),
            "l2": {
                "state": l2,
                "errors": self.stats.l2_errors.load(Relaxed),
                "writes": self.stats.l2_writes.load(Relaxed),
                "corrupt": self.stats.l2_corrupt.load(Relaxed),
            },
            "routes": self.stats.routes_json(),
        })
    }

    /// The `switchyard_cache_*` families of `/metrics`.
    pub fn render(&self, out: &mut String) {
        let (entries, bytes) = self.size();
        self.stats.render(out, entries, bytes);
    }
}

fn l2_key(prefix: &str, key: CacheKey) -> String {
    format!("{prefix}:cache:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::record::AnswerBody;

    fn answer(route: &str, bytes: usize, ttl_ms: u64) -> Arc<CachedAnswer> {
        Arc::new(CachedAnswer {
            route: route.into(),
            arm: "a".into(),
            backend: "b".into(),
            stored_at_ms: now_ms(),
            ttl_ms,
            cost_usd: 0.001,
            body: AnswerBody::Plain {
                content_type: "application/json".into(),
                bytes: bytes::Bytes::from(vec![b'x'; bytes]),
            },
            hit_head: crate::cache::HitHead::default(),
        })
    }

    fn cache(max_bytes: u64) -> ResponseCache {
        ResponseCache::new(
            CacheSettings {
                max_bytes,
                single_flight_wait: Duration::from_secs(1),
            },
            Arc::new(SharedRedis::new()),
        )
    }

    #[tokio::test]
    async fn hits_expire_and_clear_by_route() {
        let c = cache(1 << 20);
        c.store(CacheKey(1), answer("r1", 100, 60_000));
        c.store(CacheKey(2), answer("r2", 100, 60_000));
        c.store(CacheKey(3), answer("r1", 100, 50));
        assert!(matches!(
            c.lookup(CacheKey(1), false).await,
            Some((_, Layer::L1))
        ));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(c.lookup(CacheKey(3), false).await.is_none(), "expired");
        assert_eq!(c.clear(Some("r1")), 1);
        assert!(c.lookup(CacheKey(1), false).await.is_none());
        assert!(c.lookup(CacheKey(2), false).await.is_some());
        assert_eq!(c.clear(None), 1);
        assert_eq!(c.size(), (0, 0));
    }

    #[tokio::test]
    async fn the_byte_bound_evicts() {
        let c = cache(64 * 1024);
        for i in 0..64 {
            c.store(CacheKey(i), answer("r", 4 * 1024, 60_000));
        }
        let (entries, bytes) = c.size();
        assert!(bytes <= 64 * 1024, "{bytes} bytes held");
        assert!(entries < 64, "{entries} entries held");
        assert!(c.stats().evictions.load(Relaxed) > 0);
    }
}
