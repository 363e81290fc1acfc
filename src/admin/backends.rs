//! `GET /admin/backends`: each backend of the running policy with what the gateway knows of its
//! load — requests in flight from this gateway, and its last `/metrics` scrape with its age —
//! and of its health: active-check verdict or passive ejection, since when and why.

use std::time::Instant;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::json_response;
use crate::config::PolicySnapshot;
use crate::routing::ScrapeView;

pub(super) fn report(snapshot: &PolicySnapshot) -> Response<Vec<u8>> {
    let now = Instant::now();
    let stale_after = snapshot.scrape_stale_after();
    let backends: Vec<Value> = snapshot
        .policy
        .backends
        .iter()
        .zip(&snapshot.loads)
        .map(|(spec, load)| {
            let scrape = match load.last_scrape() {
                None => json!({"state": "none"}),
                Some(record) => {
                    let age_ms = now.saturating_duration_since(record.at).as_secs_f64() * 1e3;
                    let state = match record.view(now, stale_after) {
                        ScrapeView::Fresh(_) => "fresh",
                        ScrapeView::Unknown => "stale",
                        ScrapeView::Failing => "failing",
                    };
                    match &record.result {
                        Ok(l) => json!({
                            "state": state,
                            "age_ms": age_ms,
                            "running": l.running,
                            "waiting": l.waiting,
                            "kv_cache_usage": l.kv_usage,
                        }),
                        Err(error) => json!({"state": state, "age_ms": age_ms, "error": error}),
                    }
                }
            };
            json!({
                "name": spec.name,
                "url": spec.url,
                "in_flight": load.in_flight(),
                "max_inflight": spec.max_inflight,
                "scrape": scrape,
                "health": crate::backends::health::report(&load.health, now),
                "health_check": spec.health_check.as_ref().map(|c| json!({
                    "path": c.path,
                    "interval_ms": c.interval.as_millis() as u64,
                    "timeout_ms": c.timeout.as_millis() as u64,
                    "rise": c.rise,
                    "fall": c.fall,
                })),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "policy_version": snapshot.version,
            "scrape_interval_ms": snapshot.policy.server.scrape_interval.map(|d| d.as_millis() as u64),
            "outlier": {
                "enabled": snapshot.policy.outlier.enabled,
                "consecutive_failures": snapshot.policy.outlier.consecutive_failures,
                "base_ejection_ms": snapshot.policy.outlier.base_ejection.as_millis() as u64,
                "max_ejection_ms": snapshot.policy.outlier.max_ejection.as_millis() as u64,
                "max_ejected_percent": snapshot.policy.outlier.max_ejected_percent,
            },
            "backends": backends,
        }),
    )
}
