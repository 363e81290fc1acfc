//! Upstream attempts and fallbacks: per backend, attempts by result; per route, fallbacks by
//! the failure that caused them, retries refused by the retry budget, and the budget itself.
//! Kept per name across policy versions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::Mutex;

use super::prom;
use crate::routing::fallback::{AttemptFailure, RetryBudget};

const KINDS: usize = AttemptFailure::ALL.len();

fn slot(f: AttemptFailure) -> usize {
    AttemptFailure::ALL
        .iter()
        .position(|k| *k == f)
        .unwrap_or(0)
}

/// Attempts on one backend, by result.
#[derive(Debug, Default)]
pub struct BackendAttempts {
    served: AtomicU64,
    failed: [AtomicU64; KINDS],
}

impl BackendAttempts {
    /// Counts one attempt: `None` when its answer went to the client.
    pub fn record(&self, failure: Option<AttemptFailure>) {
        match failure {
            None => self.served.fetch_add(1, Relaxed),
            Some(f) => self.failed[slot(f)].fetch_add(1, Relaxed),
        };
    }

    pub fn failed(&self, f: AttemptFailure) -> u64 {
        self.failed[slot(f)].load(Relaxed)
    }
}

/// A route's retry budget and fallback counts.
#[derive(Debug, Default)]
pub struct RouteRetries {
    pub budget: RetryBudget,
    fallbacks: [AtomicU64; KINDS],
    pub budget_exhausted: AtomicU64,
}

impl RouteRetries {
    /// Counts a move to the next candidate after `failure`.
    pub fn record_fallback(&self, failure: AttemptFailure) {
        self.fallbacks[slot(failure)].fetch_add(1, Relaxed);
    }

    pub fn fallbacks(&self, f: AttemptFailure) -> u64 {
        self.fallbacks[slot(f)].load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct AttemptRegistry {
    backends: Mutex<BTreeMap<String, Arc<BackendAttempts>>>,
    routes: Mutex<BTreeMap<String, Arc<RouteRetries>>>,
}

impl AttemptRegistry {
    pub fn backend(&self, name: &str) -> Arc<BackendAttempts> {
        self.backends
            .lock()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    pub fn route(&self, name: &str) -> Arc<RouteRetries> {
        self.routes
            .lock()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    pub fn render(&self, out: &mut String) {
        let backends: Vec<_> = self
            .backends
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let routes: Vec<_> = self
            .routes
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prom::family(
            out,
            "switchyard_upstream_attempts_total",
            "counter",
            "Attempts on each backend, by result: served, or the failure that moved on or ended the request.",
        );
        for (name, a) in &backends {
            prom::sample(
                out,
                "switchyard_upstream_attempts_total",
                &prom::labels(&[("backend", name), ("result", "served")]),
                a.served.load(Relaxed),
            );
            for f in AttemptFailure::ALL {
                prom::sample(
                    out,
                    "switchyard_upstream_attempts_total",
                    &prom::labels(&[("backend", name), ("result", f.as_str())]),
                    a.failed(f),
                );
            }
        }
        prom::family(
            out,
            "switchyard_fallbacks_total",
            "counter",
            "Moves to the next candidate before the first byte reached the client, by reason.",
        );
        for (name, r) in &routes {
            for f in AttemptFailure::ALL {
                prom::sample(
                    out,
                    "switchyard_fallbacks_total",
                    &prom::labels(&[("route", name), ("reason", f.as_str())]),
                    r.fallbacks(f),
                );
            }
        }
        prom::family(
            out,
            "switchyard_retry_budget_exhausted_total",
            "counter",
            "Fallbacks refused because the route's retry budget was spent.",
        );
        for (name, r) in &routes {
            prom::sample(
                out,
                "switchyard_retry_budget_exhausted_total",
                &prom::labels(&[("route", name)]),
                r.budget_exhausted.load(Relaxed),
            );
        }
    }
}
