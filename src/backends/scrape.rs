//! Backend load, scraped: the `/metrics` of every backend a prefix-balanced route uses, polled in the background for vLLM's
//! `vllm:num_requests_running`, `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc`, so
//! load-aware balancing sees requests other gateways sent and the backend's own queue.
//!
//! Off the request path: the scraper writes each result into the backend's [`BackendLoad`] with
//! one atomic pointer store; a request reads it with one atomic load and never waits. A scrape
//! older than [`stale_after`] the interval, or a failed one, is *unknown*: balancing falls back
//! to the gateway's own in-flight counts and never takes the backend for idle.
//!
//! The parser reads the Prometheus text format as vLLM writes it: labelled series of one name
//! are summed (vLLM labels by model and, with data parallelism, by engine), except the KV usage,
//! a fraction, which is averaged over its series. vLLM before 0.10 called it
//! `vllm:gpu_cache_usage_perc`; both names are read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::BackendLoad;
use crate::config::{PolicySnapshot, PolicyStore};
use crate::routing::{Balance, ScrapeView, ScrapedLoad};

/// A `/metrics` answer larger than this is refused: vLLM's is tens of KiB.
pub const MAX_METRICS_BYTES: usize = 4 * 1024 * 1024;

/// The result of a backend's last scrape.
#[derive(Debug, Clone)]
pub struct ScrapeRecord {
    /// When the answer (or the failure) came.
    pub at: Instant,
    pub result: Result<ScrapedLoad, String>,
}

/// A scrape older than this many intervals is stale.
pub const STALE_INTERVALS: u32 = 5;

/// How old a successful scrape may be before its figures count as unknown.
pub fn stale_after(interval: Duration) -> Duration {
    interval * STALE_INTERVALS
}

impl ScrapeRecord {
    /// What a decision at `now` may believe of this record.
    pub fn view(&self, now: Instant, stale_after: Duration) -> ScrapeView {
        match &self.result {
            Err(_) => ScrapeView::Failing,
            Ok(_) if now.saturating_duration_since(self.at) > stale_after => ScrapeView::Unknown,
            Ok(load) => ScrapeView::Fresh(*load),
        }
    }
}

/// Reads the three load figures from a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> Result<ScrapedLoad, String> {
    let (mut running, mut waiting) = (None::<f64>, None::<f64>);
    let (mut kv_sum, mut kv_series, mut legacy_sum, mut legacy_series) = (0.0, 0u32, 0.0, 0u32);
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_ascii_whitespace())
            .unwrap_or(line.len());
        let name = &line[..name_end];
        let slot = match name {
            "vllm:num_requests_running" => 0,
            "vllm:num_requests_waiting" => 1,
            "vllm:kv_cache_usage_perc" => 2,
            "vllm:gpu_cache_usage_perc" => 3,
            _ => continue,
        };
        let Some(value) = sample_value(&line[name_end..]) else {
            return Err(format!("unreadable sample: {line}"));
        };
        match slot {
            0 => *running.get_or_insert(0.0) += value,
            1 => *waiting.get_or_insert(0.0) += value,
            2 => (kv_sum, kv_series) = (kv_sum + value, kv_series + 1),
            _ => (legacy_sum, legacy_series) = (legacy_sum + value, legacy_series + 1),
        }
    }
    let kv_usage = match (kv_series, legacy_series) {
        (0, 0) => return Err("no vllm:kv_cache_usage_perc series".into()),
        (0, n) => legacy_sum / f64::from(n),
        (n, _) => kv_sum / f64::from(n),
    };
    Ok(ScrapedLoad {
        running: running.ok_or("no vllm:num_requests_running series")?,
        waiting: waiting.ok_or("no vllm:num_requests_waiting series")?,
        kv_usage,
    })
}

/// The value after a sample's name: skips the labels (whose values may hold spaces and
/// escaped quotes), ignores an optional timestamp.
fn sample_value(rest: &str) -> Option<f64> {
    let after_labels = if let Some(labels) = rest.strip_prefix('{') {
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in labels.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        &labels[end? + 1..]
    } else {
        rest
    };
    let value: f64 = after_labels.split_ascii_whitespace().next()?.parse().ok()?;
    value.is_finite().then_some(value)
}

/// The background service that scrapes every backend of the running policy.
pub struct BackendScraper {
    pub store: Arc<PolicyStore>,
}

/// The client the background pollers (this scraper, the health checker) reach backends with:
/// one idle connection per backend, kept between polls.
pub(super) type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub(super) fn poll_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector)
}

/// `fetch`'s result, or an error naming `timeout` when it took longer.
pub(super) async fn within<T>(
    timeout: Duration,
    fetch: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, fetch).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// One scrape of `url`'s `/metrics`, bounded by `timeout` and [`MAX_METRICS_BYTES`].
async fn scrape_once(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
) -> Result<ScrapedLoad, String> {
    let uri: http::Uri = format!("{}/metrics", url.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad metrics URL: {e}"))?;
    let fetch = async {
        let response = client.get(uri).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_METRICS_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|e| e.to_string())?;
        parse_metrics(text)
    };
    within(timeout, fetch).await
}

#[async_trait]
impl BackgroundService for BackendScraper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = poll_client();
        loop {
            let snapshot = self.store.current();
            let Some(interval) = snapshot.policy.server.scrape_interval else {
                // Scraping is off; a later policy may turn it on.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            };
            let timeout = (interval * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
            let next = tokio::time::Instant::now() + interval;
            let scrapes = scraped_backends(&snapshot).into_iter().map(|b| {
                scrape_into(
                    &client,
                    &snapshot.policy.backends[b].url,
                    &snapshot.loads[b],
                    timeout,
                )
            });
            tokio::select! {
                _ = futures::future::join_all(scrapes) => {}
                _ = shutdown.changed() => return,
            }
            drop(snapshot);
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The backends whose load some decision reads: those of routes balanced by prefix. Others are
/// left alone (no traffic to their `/metrics` that nobody uses).
pub fn scraped_backends(snapshot: &PolicySnapshot) -> Vec<usize> {
    let mut wanted = vec![false; snapshot.policy.backends.len()];
    for route in &snapshot.policy.routes {
        if matches!(route.balance, Balance::Prefix(_)) {
            for arm in route.arms.arms() {
                for &b in &arm.backends {
                    wanted[b] = true;
                }
            }
        }
    }
    (0..wanted.len()).filter(|&b| wanted[b]).collect()
}

async fn scrape_into(client: &HttpClient, url: &str, load: &BackendLoad, timeout: Duration) {
    let result = scrape_once(client, url, timeout).await;
    if let Err(error) = &result {
        tracing::debug!(url, error, "backend scrape failed");
    }
    load.set_scrape(ScrapeRecord {
        at: Instant::now(),
        result,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of vLLM 0.10's exposition (trimmed), with data-parallel engines.
    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 4.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
# HELP vllm:num_requests_running_total not the gauge
vllm:num_requests_running_total 99
vllm:prefix_cache_hits_total{engine="0",model_name="x"} 1.2e3
"#;

    #[test]
    fn sums_series_and_averages_the_kv_fraction() {
        let load = parse_metrics(VLLM).unwrap();
        assert_eq!(load.running, 5.0);
        assert_eq!(load.waiting, 4.0);
        assert_eq!(load.kv_usage, 0.375);
    }

    #[test]
    fn older_vllm_names_and_awkward_labels() {
        let text = "vllm:num_requests_running{model_name=\"a } b\\\" c\"} 1 1700000000000\n\
                    vllm:num_requests_waiting 2\n\
                    vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.75\n";
        let load = parse_metrics(text).unwrap();
        assert_eq!(
            (load.running, load.waiting, load.kv_usage),
            (1.0, 2.0, 0.75)
        );
    }

    #[test]
    fn not_vllm_metrics_is_a_failure() {
        assert!(parse_metrics("process_cpu_seconds_total 3\n").is_err());
        assert!(parse_metrics("vllm:num_requests_running{x=\"1\"} NaN\n").is_err());
        assert!(parse_metrics("vllm:num_requests_running{x=\"1\" 2\n").is_err());
    }

    #[test]
    fn records_age_into_unknown_and_failures_are_failing() {
        let t0 = Instant::now();
        let ok = ScrapeRecord {
            at: t0,
            result: Ok(ScrapedLoad {
                running: 1.0,
                waiting: 0.0,
                kv_usage: 0.1,
            }),
        };
        let limit = stale_after(Duration::from_millis(100));
        assert!(matches!(ok.view(t0, limit), ScrapeView::Fresh(_)));
        assert_eq!(
            ok.view(t0 + Duration::from_millis(501), limit),
            ScrapeView::Unknown
        );
        let failed = ScrapeRecord {
            at: t0,
            result: Err("refused".into()),
        };
        assert_eq!(failed.view(t0, limit), ScrapeView::Failing);
    }
}
