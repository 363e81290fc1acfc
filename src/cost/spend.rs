//! `SpendLedger`: the counters behind budgets and rate limits — local always, shared through
//! Redis when the policy has `[redis]`.
//!
//! Every counter (one per limit, scope value and window) is held locally in a bounded moka
//! cache that drops it when its window is over. Admission reads the local estimate only, never
//! Redis, so it costs no round trip: the estimate is the Redis total last seen plus what this
//! process added since (or, before Redis ever answered, this process's own total). A background
//! task ([`SpendLedger::sync`]) sends what was added (`INCRBYFLOAT` with an expiry at the window's
//! end, pipelined) and refreshes the totals of counters admission looked at, a few times a
//! second. While Redis is down the additions wait in the counters (local accounting) and are
//! sent when it returns.
//!
//! Scope values are kept hashed: an API key as its SHA-256 ([`ApiKeyHash`]), a header value the
//! same way, a route by its name. Neither Redis nor `/admin/spend` ever holds a key in clear.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::json;

use super::budget::{admit, Admission, Check, Refusal, Scope, Window};
use crate::config::PolicySnapshot;
use crate::redis::{RedisState, SharedRedis};
use crate::routing::ApiKeyHash;
use crate::telemetry::prom;

/// Most counters held locally; beyond it the least used are dropped (their spend is then
/// known only to Redis, or lost without it).
pub const MAX_COUNTERS: u64 = 100_000;
/// Most counters waiting for the background sync; beyond it a counter waits for its next use.
pub const MAX_QUEUED: usize = 65_536;
/// Counters sent to Redis in one pipeline.
const BATCH: usize = 512;
/// How stale a Redis total may be before admission asks for a fresh one.
pub const REFRESH_AFTER: Duration = Duration::from_millis(250);
/// Redis keys outlive their window by this much, so a late writer's total is still readable.
const EXPIRY_GRACE_SECS: u64 = 60;

/// What a counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CounterKind {
    Usd,
    Requests,
    Tokens,
}

impl CounterKind {
    fn as_str(self) -> &'static str {
        match self {
            CounterKind::Usd => "usd",
            CounterKind::Requests => "requests",
            CounterKind::Tokens => "tokens",
        }
    }
}

/// One counter: a limit, the (hashed) scope value, a window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// The budget's or rate limit's name.
    pub limit: Arc<str>,
    pub kind: CounterKind,
    /// Hex SHA-256 of the API key or header value, or the route's name.
    pub scope: Arc<str>,
    pub window_start: u64,
}

struct Counter {
    window_end: u64,
    state: Mutex<CounterState>,
}

#[derive(Default)]
struct CounterState {
    /// Everything this process added in the window.
    local: f64,
    /// Added here and not yet in Redis.
    pending: f64,
    /// The Redis total when last seen (it includes what this process sent).
    shared: Option<f64>,
    shared_at: Option<Instant>,
    /// Waiting in the sync queue.
    queued: bool,
}

impl CounterState {
    fn estimate(&self) -> f64 {
        match self.shared {
            Some(shared) => shared + self.pending,
            None => self.local,
        }
    }
}

/// The counters a request was admitted against; what it used is added to them when it ends.
#[derive(Default)]
pub struct Admitted {
    /// Serve from the cheapest tier (a `downgrade` budget is spent).
    pub downgrade: bool,
    usd: Vec<(CounterKey, Arc<Counter>)>,
    tokens: Vec<(CounterKey, Arc<Counter>)>,
}

/// One limit that applies to a request, with its counter.
struct Planned {
    key: CounterKey,
    counter: Arc<Counter>,
    limit: Limit,
}

#[derive(Clone, Copy)]
enum Limit {
    Budget {
        limit_usd: f64,
        action: super::budget::BudgetAction,
        window_end: u64,
    },
    Requests {
        limit: u64,
        window_end: u64,
    },
    Tokens {
        limit: u64,
        window_end: u64,
    },
}

/// Why a request was refused, for the error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub limit: String,
    pub refusal: Refusal,
    pub retry_after: u64,
}

/// Every budget and rate-limit counter of the process, plus spend by route and tier.
pub struct SpendLedger {
    counters: moka::sync::Cache<CounterKey, Arc<Counter>>,
    queue: Mutex<Vec<(CounterKey, Arc<Counter>)>>,
    by_route_tier: Mutex<BTreeMap<(String, String), f64>>,
    refusals: Mutex<BTreeMap<(String, &'static str), u64>>,
    downgrades: Mutex<BTreeMap<String, u64>>,
    sync_errors: AtomicU64,
    queue_full: AtomicU64,
}

struct UntilWindowEnd;

impl moka::Expiry<CounterKey, Arc<Counter>> for UntilWindowEnd {
    fn expire_after_create(
        &self,
        _key: &CounterKey,
        value: &Arc<Counter>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = value.window_end.saturating_sub(unix_now(SystemTime::now()));
        Some(Duration::from_secs(left + EXPIRY_GRACE_SECS))
    }
}

impl Default for SpendLedger {
    fn default() -> Self {
        SpendLedger::new()
    }
}

fn unix_now(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SpendLedger {
    pub fn new() -> SpendLedger {
        SpendLedger {
            counters: moka::sync::Cache::builder()
                .max_capacity(MAX_COUNTERS)
                .expire_after(UntilWindowEnd)
                .build(),
            queue: Mutex::new(Vec::new()),
            by_route_tier: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(BTreeMap::new()),
            downgrades: Mutex::new(BTreeMap::new()),
            sync_errors: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
        }
    }

    /// Admission of one request on `route` (after the route match, before the arm choice):
    /// reads the counters of every budget and rate limit that applies and decides with
    /// [`admit`]. An admitted request counts against its requests-per-minute limits at once.
    ///
    /// Decisions use the local estimates. The one exception is a counter this process has not
    /// seen in this window yet while Redis is up: its total is fetched first (one pipelined
    /// round trip, bounded by the command timeout), so a replica new to a key does not let it
    /// spend past a budget other replicas already filled. A failure there falls back to local.
    pub async fn admit(
        &self,
        snapshot: &PolicySnapshot,
        route: usize,
        headers: &http::HeaderMap,
        redis: &SharedRedis,
        now: SystemTime,
    ) -> Result<Admitted, Refused> {
        let policy = &snapshot.policy;
        if policy.budgets.is_empty() && policy.rate_limits.is_empty() {
            return Ok(Admitted::default());
        }
        let now_secs = unix_now(now);
        let planned = self.plan(snapshot, route, headers, now_secs);
        self.warm(&planned, redis).await;

        let checks: Vec<Check> = planned
            .iter()
            .map(|p| {
                let value = self.read(&p.key, &p.counter);
                match p.limit {
                    Limit::Budget {
                        limit_usd,
                        action,
                        window_end,
                    } => Check::Budget {
                        spent_usd: value,
                        limit_usd,
                        action,
                        window_end,
                    },
                    Limit::Requests { limit, window_end } => Check::Requests {
                        count: value.round() as u64,
                        limit,
                        window_end,
                    },
                    Limit::Tokens { limit, window_end } => Check::Tokens {
                        count: value.round() as u64,
                        limit,
                        window_end,
                    },
                }
            })
            .collect();
        match admit(&checks, now_secs) {
            Admission::Reject {
                index,
                refusal,
                retry_after,
            } => {
                let limit = planned[index].key.limit.to_string();
                let kind = match refusal {
                    Refusal::Budget => "budget",
                    Refusal::Requests => "requests",
                    Refusal::Tokens => "tokens",
                };
                *self
                    .refusals
                    .lock()
                    .entry((limit.clone(), kind))
                    .or_default() += 1;
                Err(Refused {
                    limit,
                    refusal,
                    retry_after,
                })
            }
            verdict => {
                let mut admitted = Admitted {
                    downgrade: verdict == Admission::Downgrade,
                    ..Admitted::default()
                };
                for (p, check) in planned.into_iter().zip(&checks) {
                    match (p.limit, check) {
                        (Limit::Requests { .. }, _) => self.add(&p.key, &p.counter, 1.0),
                        (Limit::Tokens { .. }, _) => admitted.tokens.push((p.key, p.counter)),
                        (
                            Limit::Budget { .. },
                            Check::Budget {
                                spent_usd,
                                limit_usd,
                                ..
                            },
                        ) => {
                            if admitted.downgrade && spent_usd >= limit_usd {
                                *self
                                    .downgrades
                                    .lock()
                                    .entry(p.key.limit.to_string())
                                    .or_default() += 1;
                            }
                            admitted.usd.push((p.key, p.counter));
                        }
                        (Limit::Budget { .. }, _) => admitted.usd.push((p.key, p.counter)),
                    }
                }
                Ok(admitted)
            }
        }
    }

    /// The counters of every limit that applies to a request on `route`, in policy order
    /// (budgets, then rate limits). A limit whose scope the request lacks (no API key, no such
    /// header) does not apply.
    fn plan(
        &self,
        snapshot: &PolicySnapshot,
        route: usize,
        headers: &http::HeaderMap,
        now_secs: u64,
    ) -> Vec<Planned> {
        let policy = &snapshot.policy;
        let mut api_key = None;
        let mut scope_value = |scope: &Scope| -> Option<Arc<str>> {
            match scope {
                Scope::ApiKey => api_key
                    .get_or_insert_with(|| ApiKeyHash::from_headers(headers))
                    .map(|h| Arc::from(h.to_string())),
                Scope::Header(name) => headers
                    .get(name.as_str())
                    .filter(|v| !v.is_empty())
                    .map(|v| Arc::from(ApiKeyHash::of(v.as_bytes()).to_string())),
                Scope::Route => Some(Arc::from(policy.routes[route].name.as_str())),
            }
        };
        let mut planned = Vec::new();
        for b in policy.budgets.iter().filter(|b| b.applies_to(route)) {
            let Some(scope) = scope_value(&b.scope) else {
                continue;
            };
            let (start, end) = b.window.bounds(now_secs);
            let key = CounterKey {
                limit: Arc::from(b.name.as_str()),
                kind: CounterKind::Usd,
                scope,
                window_start: start,
            };
            planned.push(Planned {
                counter: self.counter(&key, end),
                key,
                limit: Limit::Budget {
                    limit_usd: b.limit_usd,
                    action: b.action,
                    window_end: end,
                },
            });
        }
        for r in policy.rate_limits.iter().filter(|r| r.applies_to(route)) {
            let Some(scope) = scope_value(&r.scope) else {
                continue;
            };
            let (start, end) = Window::Minute.bounds(now_secs);
            for (kind, limit) in [
                (CounterKind::Requests, r.requests_per_minute),
                (CounterKind::Tokens, r.tokens_per_minute),
            ] {
                let Some(limit) = limit else {
                    continue;
                };
                let key = CounterKey {
                    limit: Arc::from(r.name.as_str()),
                    kind,
                    scope: scope.clone(),
                    window_start: start,
                };
                planned.push(Planned {
                    counter: self.counter(&key, end),
                    key,
                    limit: if kind == CounterKind::Requests {
                        Limit::Requests {
                            limit,
                            window_end: end,
                        }
                    } else {
                        Limit::Tokens {
                            limit,
                            window_end: end,
                        }
                    },
                });
            }
        }
        planned
    }

    /// Fetches the Redis totals of counters this process has never read, when Redis is up.
    async fn warm(&self, planned: &[Planned], redis: &SharedRedis) {
        if redis.state() != RedisState::Up {
            return;
        }
        let Some(settings) = redis.settings() else {
            return;
        };
        let cold: Vec<&Planned> = planned
            .iter()
            .filter(|p| p.counter.state.lock().shared_at.is_none())
            .collect();
        if cold.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for p in &cold {
            pipe.cmd("GET").arg(redis_key(&settings.key_prefix, &p.key));
        }
        if let Ok(values) = redis.pipeline::<Vec<redis::Value>>(&pipe).await {
            let now = Instant::now();
            for (p, value) in cold.iter().zip(values) {
                let mut state = p.counter.state.lock();
                if state.shared_at.is_none() {
                    state.shared = Some(parse_total(&value));
                    state.shared_at = Some(now);
                }
            }
        }
    }

    /// Adds what a finished request used to the counters it was admitted against, and to the
    /// spend of its route and tier. Called once per request, from the request's record.
    pub fn record(&self, admitted: &Admitted, cost_usd: f64, tokens: u64, route: &str, tier: &str) {
        if cost_usd > 0.0 {
            for (key, counter) in &admitted.usd {
                self.add(key, counter, cost_usd);
            }
            *self
                .by_route_tier
                .lock()
                .entry((route.to_owned(), tier.to_owned()))
                .or_default() += cost_usd;
        }
        if tokens > 0 {
            for (key, counter) in &admitted.tokens {
                self.add(key, counter, tokens as f64);
            }
        }
    }

    fn counter(&self, key: &CounterKey, window_end: u64) -> Arc<Counter> {
        self.counters.get_with_by_ref(key, || {
            Arc::new(Counter {
                window_end,
                state: Mutex::new(CounterState::default()),
            })
        })
    }

    /// The estimate admission decides on; asks the sync for a fresh Redis total when stale.
    fn read(&self, key: &CounterKey, counter: &Arc<Counter>) -> f64 {
        let mut state = counter.state.lock();
        let stale = state.shared_at.is_none_or(|t| t.elapsed() > REFRESH_AFTER);
        if stale {
            self.enqueue(key, counter, &mut state);
        }
        state.estimate()
    }

    fn add(&self, key: &CounterKey, counter: &Arc<Counter>, amount: f64) {
        let mut state = counter.state.lock();
        state.local += amount;
        state.pending += amount;
        self.enqueue(key, counter, &mut state);
    }

    fn enqueue(&self, key: &CounterKey, counter: &Arc<Counter>, state: &mut CounterState) {
        if state.queued {
            return;
        }
        let mut queue = self.queue.lock();
        if queue.len() >= MAX_QUEUED {
            self.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        state.queued = true;
        queue.push((key.clone(), counter.clone()));
    }

    /// One round of the background sync: sends pending additions and fetches fresh totals for
    /// every queued counter, in pipelines of [`BATCH`]. Without Redis it only clears the queue
    /// (the local totals are the truth); while Redis fails the counters stay queued for the next
    /// round. Returns how many counters were synced.
    pub async fn sync(&self, redis: &SharedRedis) -> usize {
        let queued = std::mem::take(&mut *self.queue.lock());
        if queued.is_empty() {
            return 0;
        }
        let Some(settings) = redis.settings() else {
            for (_, counter) in &queued {
                let mut state = counter.state.lock();
                state.queued = false;
                state.pending = 0.0;
                state.shared = None;
            }
            return 0;
        };
        let mut synced = 0;
        let mut retry = Vec::new();
        let mut chunks = queued.into_iter().peekable();
        while chunks.peek().is_some() {
            let batch: Vec<_> = chunks.by_ref().take(BATCH).collect();
            let mut pipe = redis::pipe();
            let mut sent = Vec::with_capacity(batch.len());
            for (key, counter) in &batch {
                let name = redis_key(&settings.key_prefix, key);
                let pending = counter.state.lock().pending;
                if pending > 0.0 {
                    pipe.cmd("INCRBYFLOAT").arg(&name).arg(pending);
                    pipe.cmd("EXPIREAT")
                        .arg(&name)
                        .arg(counter.window_end + EXPIRY_GRACE_SECS)
                        .ignore();
                } else {
                    pipe.cmd("GET").arg(&name);
                }
                sent.push(pending);
            }
            match redis.pipeline::<Vec<redis::Value>>(&pipe).await {
                Ok(values) if values.len() == batch.len() => {
                    let now = Instant::now();
                    for (((_, counter), value), pending) in batch.iter().zip(values).zip(sent) {
                        let mut state = counter.state.lock();
                        state.pending -= pending;
                        state.shared = Some(parse_total(&value));
                        state.shared_at = Some(now);
                        state.queued = false;
                    }
                    synced += batch.len();
                }
                Ok(_) | Err(_) => {
                    self.sync_errors.fetch_add(1, Ordering::Relaxed);
                    retry.extend(batch);
                }
            }
        }
        if !retry.is_empty() {
            let mut queue = self.queue.lock();
            // The failed ones go first: they waited longest.
            retry.append(&mut queue);
            *queue = retry;
        }
        synced
    }

    /// The `/admin/spend` document: per budget and rate limit of the running policy, the
    /// counters of the current window (largest first, at most `max_per_limit` each), and the
    /// spend by route and tier since the process started.
    pub fn report(
        &self,
        snapshot: &PolicySnapshot,
        redis: &SharedRedis,
        now: SystemTime,
        max_per_limit: usize,
    ) -> serde_json::Value {
        let now_secs = unix_now(now);
        // Per limit and kind: (counter, estimate, whether Redis has been read).
        type Rows = Vec<(CounterKey, f64, bool)>;
        let mut by_limit: BTreeMap<(Arc<str>, CounterKind), Rows> = BTreeMap::new();
        for (key, counter) in self.counters.iter() {
            let state = counter.state.lock();
            let key = CounterKey::clone(&key);
            by_limit
                .entry((key.limit.clone(), key.kind))
                .or_default()
                .push((key, state.estimate(), state.shared.is_some()));
        }
        let counters_of = |name: &str, kind: CounterKind, window: Window| {
            let (start, _) = window.bounds(now_secs);
            let mut list: Vec<_> = by_limit
                .get(&(Arc::from(name), kind))
                .map(|v| {
                    v.iter()
                        .filter(|(k, _, _)| k.window_start == start)
                        .collect()
                })
                .unwrap_or_default();
            list.sort_by(|a, b| b.1.total_cmp(&a.1));
            list.truncate(max_per_limit);
            list.into_iter()
                .map(|(k, value, shared)| {
                    json!({
                        "scope_value": &*k.scope,
                        "window_start": k.window_start,
                        "value": value,
                        "source": if *shared { "redis" } else { "local" },
                    })
                })
                .collect::<Vec<_>>()
        };
        let policy = &snapshot.policy;
        let route_names = |routes: &[usize]| -> Vec<&str> {
            routes
                .iter()
                .map(|&r| policy.routes[r].name.as_str())
                .collect()
        };
        let budgets: Vec<_> = policy
            .budgets
            .iter()
            .map(|b| {
                let (start, end) = b.window.bounds(now_secs);
                json!({
                    "name": b.name,
                    "scope": b.scope.to_string(),
                    "window": b.window.as_str(),
                    "window_start": start,
                    "window_end": end,
                    "limit_usd": b.limit_usd,
                    "action": match b.action {
                        super::budget::BudgetAction::Reject => "reject",
                        super::budget::BudgetAction::Downgrade => "downgrade",
                    },
                    "routes": route_names(&b.routes),
                    "spend": counters_of(&b.name, CounterKind::Usd, b.window),
                })
            })
            .collect();
        let rate_limits: Vec<_> = policy
            .rate_limits
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "scope": r.scope.to_string(),
                    "requests_per_minute": r.requests_per_minute,
                    "tokens_per_minute": r.tokens_per_minute,
                    "routes": route_names(&r.routes),
                    "requests": counters_of(&r.name, CounterKind::Requests, Window::Minute),
                    "tokens": counters_of(&r.name, CounterKind::Tokens, Window::Minute),
                })
            })
            .collect();
        let by_route_tier: Vec<_> = self
            .by_route_tier
            .lock()
            .iter()
            .map(|((route, tier), usd)| json!({"route": route, "tier": tier, "spent_usd": usd}))
            .collect();
        json!({
            "redis": match redis.state() {
                RedisState::NotConfigured => "not_configured",
                RedisState::Up => "up",
                RedisState::Degraded => "degraded",
            },
            "budgets": budgets,
            "rate_limits": rate_limits,
            "by_route_tier": by_route_tier,
        })
    }

    /// Appends the `switchyard_budget_*` series to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        prom::family(
            out,
            "switchyard_budget_refusals_total",
            "counter",
            "Requests refused with 429 by a budget or rate limit, by limit and kind (budget, requests, tokens).",
        );
        for ((limit, kind), n) in self.refusals.lock().iter() {
            prom::sample(
                out,
                "switchyard_budget_refusals_total",
                &prom::labels(&[("limit", limit), ("kind", kind)]),
                n,
            );
        }
        prom::family(
            out,
            "switchyard_budget_downgrades_total",
            "counter",
            "Requests served from the cheapest tier because a downgrade budget was spent.",
        );
        for (budget, n) in self.downgrades.lock().iter() {
            prom::sample(
                out,
                "switchyard_budget_downgrades_total",
                &prom::labels(&[("budget", budget)]),
                n,
            );
        }
        prom::family(
            out,
            "switchyard_budget_counters",
            "gauge",
            "Budget and rate-limit counters held locally.",
        );
        prom::sample(
            out,
            "switchyard_budget_counters",
            "",
            self.counters.entry_count(),
        );
        prom::family(
            out,
            "switchyard_budget_sync_errors_total",
            "counter",
            "Counter pipelines to Redis that failed (the counters stay local and are retried).",
        );
        prom::sample(
            out,
            "switchyard_budget_sync_errors_total",
            "",
            self.sync_errors.load(Ordering::Relaxed),
        );
    }
}

/// `{prefix}:spend:{limit}:{kind}:{window_start}:{scope}`.
pub fn redis_key(prefix: &str, key: &CounterKey) -> String {
    format!(
        "{prefix}:spend:{}:{}:{}:{}",
        key.limit,
        key.kind.as_str(),
        key.window_start,
        key.scope
    )
}

fn parse_total(value: &redis::Value) -> f64 {
    match value {
        redis::Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0),
        redis::Value::SimpleString(s) => s.parse().unwrap_or(0.0),
        redis::Value::Int(n) => *n as f64,
        redis::Value::Double(d) => *d,
        _ => 0.0,
    }
}

/// How often the background sync runs: additions reach Redis, and totals come back, within
/// about this (plus [`REFRESH_AFTER`] for totals).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The background service that runs [`SpendLedger::sync`] every [`SYNC_INTERVAL`], off the
/// request path, until the server shuts down.
pub struct SpendSync {
    pub ledger: Arc<SpendLedger>,
    pub redis: Arc<SharedRedis>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SpendSync {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.ledger.sync(&self.redis).await;
                }
                _ = shutdown.changed() => {
                    // What was counted but not yet sent goes out once more before the end.
                    self.ledger.sync(&self.redis).await;
                    return;
                }
            }
        }
    }
}
