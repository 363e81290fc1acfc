//! The active health checker: one background task that probes every backend with a
//! `[backends.health_check]` on its own interval and hands each result to the backend's
//! [`super::BackendHealth`], which turns `rise`/`fall` streaks into a verdict.
//!
//! Off the request path: a request reads the verdict with one atomic load. At most one probe
//! per backend is out at a time (its timeout is at most its interval), so a hung backend cannot
//! pile up probes. The task follows policy swaps: a backend that gains a check is probed from
//! the next tick, one that loses it goes back to trusting traffic alone.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Limited};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::Instant;

use super::scrape::{poll_client, within, HttpClient};
use super::BackendLoad;
use crate::config::policy::HealthCheck;
use crate::config::PolicyStore;

/// How often the task looks for probes that are due: the resolution of every interval.
const TICK: Duration = Duration::from_millis(50);
/// A health answer is small; more than this is read no further (the status decides anyway).
const MAX_HEALTH_BYTES: usize = 64 * 1024;

/// The background service that runs every backend's active health check.
pub struct HealthChecker {
    pub store: Arc<PolicyStore>,
}

type Key = (String, SocketAddr);
type ProbeDone = (Key, Arc<BackendLoad>, HealthCheck, Result<(), String>);

/// One probe: `GET url + path`, passed by any 2xx within `timeout`.
async fn probe(client: &HttpClient, url: &str, check: &HealthCheck) -> Result<(), String> {
    let uri: http::Uri = format!("{}{}", url.trim_end_matches('/'), check.path)
        .parse()
        .map_err(|e| format!("bad health check URL: {e}"))?;
    let fetch = async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Read (boundedly) so the connection can be reused for the next probe.
        let _ = Limited::new(response.into_body(), MAX_HEALTH_BYTES)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    within(check.timeout, fetch).await
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = poll_client();
        let mut due: HashMap<Key, Instant> = HashMap::new();
        let mut out: HashSet<Key> = HashSet::new();
        let mut probes: FuturesUnordered<Pin<Box<dyn Future<Output = ProbeDone> + Send>>> =
            FuturesUnordered::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let snapshot = self.store.current();
                    let now = Instant::now();
                    let mut live = HashSet::with_capacity(snapshot.policy.backends.len());
                    for (spec, load) in snapshot.policy.backends.iter().zip(&snapshot.loads) {
                        let Some(check) = &spec.health_check else {
                            if load.health.down() {
                                load.health.clear_probe();
                            }
                            continue;
                        };
                        let key = (spec.name.clone(), spec.addr);
                        live.insert(key.clone());
                        if out.contains(&key) || due.get(&key).is_some_and(|t| *t > now) {
                            continue;
                        }
                        due.insert(key.clone(), now + check.interval);
                        out.insert(key.clone());
                        let (client, url, check, load) =
                            (client.clone(), spec.url.clone(), check.clone(), load.clone());
                        probes.push(Box::pin(async move {
                            let result = probe(&client, &url, &check).await;
                            (key, load, check, result)
                        }));
                    }
                    due.retain(|k, _| live.contains(k));
                }
                Some((key, load, check, result)) = probes.next(), if !probes.is_empty() => {
                    out.remove(&key);
                    let passed = result.is_ok();
                    if load.health.on_probe(passed, result.err(), check.rise, check.fall) {
                        let detail = load.health.detail();
                        if passed {
                            tracing::info!(backend = %key.0, "backend healthy again");
                        } else {
                            tracing::warn!(backend = %key.0, reason = ?detail.reason, "backend unhealthy");
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
