//! The one Redis client of the process, shared by budgets and rate limits, the response cache
//! and fleet distribution.
//!
//! Redis is never needed for correctness (see DESIGN.md): every call here has a short timeout and
//! comes back as [`RedisUnavailable`] when Redis is not configured, down, slow or answering with
//! an error, so callers fall back to local state instead of stalling or failing a request.
//!
//! The connection lives on a runtime of its own (one thread, started on first use), so Redis I/O,
//! reconnects and the health probe never take turns with the proxy's workers; a caller only
//! awaits the answer, bounded by the command timeout. The connection is a `redis`
//! `ConnectionManager`, which reconnects by itself; a probe PINGs once a second so the up/degraded
//! state follows Redis even when nothing else calls it. A policy swap that changes `[redis]`
//! drops the old connection and the next call opens one to the new address.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline};

use crate::telemetry::prom;

/// How often the probe PINGs a configured Redis, so a recovery is seen without traffic.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The validated `[redis]` section of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Every command (or pipeline) must be answered within this, else the caller hears
    /// "unavailable" and carries on locally.
    pub command_timeout: Duration,
    /// One TCP connect (and handshake) to Redis.
    pub connect_timeout: Duration,
    /// Prefix of every key this gateway writes, so deployments can share one Redis.
    pub key_prefix: String,
}

/// Why a Redis call gave no answer. Callers treat every kind the same way (use local state);
/// the kind is for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedisUnavailable {
    #[error("redis is not configured")]
    NotConfigured,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis connection failed: {0}")]
    Connection(String),
    #[error("redis refused the command: {0}")]
    Command(String),
}

/// The process-wide Redis client. Cheap to share (`Arc`); every method is safe to call from any
/// runtime or thread.
pub struct SharedRedis {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the running policy asks for; `None` without `[redis]`.
    wanted: Mutex<Option<RedisSettings>>,
    /// The open connection, for the settings it was opened with.
    link: Mutex<Option<Link>>,
    /// Started on first use and kept for the life of the process.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    health: Health,
}

#[derive(Clone)]
struct Link {
    settings: RedisSettings,
    manager: ConnectionManager,
}

#[derive(Default)]
struct Health {
    state: Mutex<HealthState>,
    commands_ok: AtomicU64,
    errors_timeout: AtomicU64,
    errors_connection: AtomicU64,
    errors_command: AtomicU64,
}

#[derive(Default)]
struct HealthState {
    /// Set while Redis is configured but failing; cleared by the next success.
    degraded_since: Option<Instant>,
    /// Completed degraded periods.
    degraded_total: Duration,
}

/// What `/metrics` and the admin pages show about Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisState {
    NotConfigured,
    /// Configured, and the last call succeeded (or none was made yet).
    Up,
    /// Configured, and the last call failed: callers are on local state.
    Degraded,
}

impl Default for SharedRedis {
    fn default() -> Self {
        SharedRedis::new()
    }
}

impl SharedRedis {
    /// A client with nothing configured: every call answers [`RedisUnavailable::NotConfigured`]
    /// until [`configure`](Self::configure) names a Redis.
    pub fn new() -> SharedRedis {
        SharedRedis {
            inner: Arc::new(Inner {
                wanted: Mutex::new(None),
                link: Mutex::new(None),
                runtime: Mutex::new(None),
                health: Health::default(),
            }),
        }
    }

    /// Called with every policy that becomes the running one. Settings that differ from the
    /// open connection's drop it (the next call connects to the new address); `None` turns Redis
    /// off. Cheap when nothing changed.
    pub fn configure(&self, settings: Option<&RedisSettings>) {
        let mut wanted = self.inner.wanted.lock();
        if wanted.as_ref() == settings {
            return;
        }
        *wanted = settings.cloned();
        drop(wanted);
        *self.inner.link.lock() = None;
        let mut state = self.inner.health.state.lock();
        if let Some(since) = state.degraded_since.take() {
            state.degraded_total += since.elapsed();
        }
        drop(state);
        if settings.is_some() {
            self.ensure_runtime();
        }
    }

    /// The running settings, when Redis is configured.
    pub fn settings(&self) -> Option<RedisSettings> {
        self.inner.wanted.lock().clone()
    }

    /// Runs one command. Never waits longer than the command timeout (plus scheduling).
    pub async fn query<T>(&self, cmd: &Cmd) -> Result<T, RedisUnavailable>
    where
        T: FromRedisValue + Send + 'static,
    {
        let cmd = cmd.clone();
        self.run(move |mut conn| async move { cmd.query_async::<T>(&mut conn).await })
            .await
    }

    /// Runs a pipeline (one round trip). Same bounds as [`query`](Self::query).
    pub async fn pipeline<T>(&self, pipe: &Pipeline) -> Result<T, RedisUnavailable>
    where
        T: FromRedisValue + Send + 'static,
    {
        let pipe = pipe.clone();
        self.run(move |mut conn| async move { pipe.query_async::<T>(&mut conn).await })
            .await
    }

    /// The state right now.
    pub fn state(&self) -> RedisState {
        if self.inner.wanted.lock().is_none() {
            return RedisState::NotConfigured;
        }
        if self.inner.health.state.lock().degraded_since.is_some() {
            RedisState::Degraded
        } else {
            RedisState::Up
        }
    }

    /// Seconds spent degraded since the process started, the current period included.
    pub fn degraded_seconds(&self) -> f64 {
        let state = self.inner.health.state.lock();
        let current = state.degraded_since.map_or(Duration::ZERO, |s| s.elapsed());
        (state.degraded_total + current).as_secs_f64()
    }

    /// Calls that failed, by kind: `(timeout, connection, command)`.
    pub fn error_counts(&self) -> (u64, u64, u64) {
        let h = &self.inner.health;
        (
            h.errors_timeout.load(Ordering::Relaxed),
            h.errors_connection.load(Ordering::Relaxed),
            h.errors_command.load(Ordering::Relaxed),
        )
    }

    /// Appends the `switchyard_redis_*` series to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        let state = self.state();
        prom::family(
            out,
            "switchyard_redis_configured",
            "gauge",
            "1 when the running policy has a [redis] section.",
        );
        prom::sample(
            out,
            "switchyard_redis_configured",
            "",
            u8::from(state != RedisState::NotConfigured),
        );
        prom::family(
            out,
            "switchyard_redis_up",
            "gauge",
            "1 while Redis answers; 0 while configured but failing (counters and cache are local meanwhile).",
        );
        prom::sample(
            out,
            "switchyard_redis_up",
            "",
            u8::from(state == RedisState::Up),
        );
        prom::family(
            out,
            "switchyard_redis_degraded_seconds_total",
            "counter",
            "Time Redis was configured but failing.",
        );
        prom::sample(
            out,
            "switchyard_redis_degraded_seconds_total",
            "",
            format_args!("{:.3}", self.degraded_seconds()),
        );
        prom::family(
            out,
            "switchyard_redis_commands_total",
            "counter",
            "Redis commands and pipelines answered.",
        );
        prom::sample(
            out,
            "switchyard_redis_commands_total",
            "",
            self.inner.health.commands_ok.load(Ordering::Relaxed),
        );
        prom::family(
            out,
            "switchyard_redis_errors_total",
            "counter",
            "Redis calls that failed, by kind (timeout, connection, command).",
        );
        let (timeout, connection, command) = self.error_counts();
        for (kind, n) in [
            ("timeout", timeout),
            ("connection", connection),
            ("command", command),
        ] {
            prom::sample(
                out,
                "switchyard_redis_errors_total",
                &prom::labels(&[("kind", kind)]),
                n,
            );
        }
    }

    async fn run<T, F, Fut>(&self, op: F) -> Result<T, RedisUnavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let Some(settings) = self.inner.wanted.lock().clone() else {
            return Err(RedisUnavailable::NotConfigured);
        };
        let handle = self.ensure_runtime();
        let inner = Arc::downgrade(&self.inner);
        let timeout = settings.command_timeout;
        let task = handle.spawn(async move {
            let manager = link_for(&inner, &settings)?;
            match tokio::time::timeout(timeout, op(manager)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                    Err(RedisUnavailable::Connection(e.to_string()))
                }
                Ok(Err(e)) => Err(RedisUnavailable::Command(e.to_string())),
                Err(_) => Err(RedisUnavailable::Timeout(timeout)),
            }
        });
        // The task enforces the timeout itself; this bound only guards against a runtime that
        // cannot schedule it (e.g. shutting down).
        let result = match tokio::time::timeout(timeout * 2, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(RedisUnavailable::Connection(join.to_string())),
            Err(_) => Err(RedisUnavailable::Timeout(timeout)),
        };
        self.inner.health.observe(&result);
        result
    }

    fn ensure_runtime(&self) -> tokio::runtime::Handle {
        let mut runtime = self.inner.runtime.lock();
        if let Some(rt) = runtime.as_ref() {
            return rt.handle().clone();
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("switchyard-redis")
            .enable_all()
            .build()
            .expect("the redis runtime starts (one thread)");
        rt.spawn(probe(Arc::downgrade(&self.inner)));
        let handle = rt.handle().clone();
        *runtime = Some(rt);
        handle
    }
}

impl Drop for SharedRedis {
    fn drop(&mut self) {
        // A runtime may not be dropped from inside another's async context; let its thread wind
        // down on its own.
        if let Some(rt) = self.inner.runtime.lock().take() {
            rt.shutdown_background();
        }
    }
}

impl Health {
    fn observe<T>(&self, result: &Result<T, RedisUnavailable>) {
        match result {
            Ok(_) => {
                self.commands_ok.fetch_add(1, Ordering::Relaxed);
                let mut state = self.state.lock();
                if let Some(since) = state.degraded_since.take() {
                    state.degraded_total += since.elapsed();
                    tracing::info!("redis is back: shared counters and cache resume");
                }
            }
            Err(RedisUnavailable::NotConfigured) => {}
            Err(e) => {
                let counter = match e {
                    RedisUnavailable::Timeout(_) => &self.errors_timeout,
                    RedisUnavailable::Command(_) => &self.errors_command,
                    _ => &self.errors_connection,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // A refused command says nothing about reachability.
                if matches!(e, RedisUnavailable::Command(_)) {
                    return;
                }
                let mut state = self.state.lock();
                if state.degraded_since.is_none() {
                    state.degraded_since = Some(Instant::now());
                    tracing::warn!(error = %e, "redis unavailable: falling back to local state");
                }
            }
        }
    }
}

/// The connection for `settings`, opened (lazily: no I/O here) when there is none or the
/// settings changed. Runs on the Redis runtime, which the manager's tasks then live on.
fn link_for(
    inner: &Weak<Inner>,
    settings: &RedisSettings,
) -> Result<ConnectionManager, RedisUnavailable> {
    let inner = inner.upgrade().ok_or(RedisUnavailable::NotConfigured)?;
    let mut link = inner.link.lock();
    if let Some(l) = link.as_ref().filter(|l| &l.settings == settings) {
        return Ok(l.manager.clone());
    }
    let client = redis::Client::open(settings.url.as_str())
        .map_err(|e| RedisUnavailable::Connection(e.to_string()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.command_timeout))
        // Reconnects are retried by the next call or the probe; a long internal retry loop
        // would only hold callers until their timeout.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    let manager = ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| RedisUnavailable::Connection(e.to_string()))?;
    *link = Some(Link {
        settings: settings.clone(),
        manager: manager.clone(),
    });
    Ok(manager)
}

/// PINGs a configured Redis every [`PROBE_INTERVAL`] so the state and the connection recover
/// without traffic. Ends when the client is dropped.
async fn probe(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let Some(settings) = strong.wanted.lock().clone() else {
            continue;
        };
        drop(strong);
        let result = match link_for(&inner, &settings) {
            Ok(mut conn) => {
                match tokio::time::timeout(
                    settings.command_timeout,
                    redis::cmd("PING").query_async::<String>(&mut conn),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(RedisUnavailable::Connection(e.to_string())),
                    Err(_) => Err(RedisUnavailable::Timeout(settings.command_timeout)),
                }
            }
            Err(e) => Err(e),
        };
        if let Some(strong) = inner.upgrade() {
            strong.health.observe(&result);
        }
    }
}
