//! Tokens and cost per route, arm, backend and tier: the `gen_ai_client_token_usage` histogram
//! (OpenTelemetry GenAI semantic conventions, `gen_ai_token_type` = input | output) and
//! `switchyard_cost_usd_total`. Series are created on first use and kept for the process's life.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::prom;

/// Bucket bounds of token counts, as the GenAI conventions advise.
pub const TOKEN_BOUNDS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// A fixed-bucket histogram of token counts.
#[derive(Debug, Default)]
pub struct TokenHistogram {
    buckets: [AtomicU64; TOKEN_BOUNDS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl TokenHistogram {
    pub fn record(&self, tokens: u64) {
        if let Some(i) = TOKEN_BOUNDS.iter().position(|b| tokens as f64 <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(tokens, Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }

    fn render(&self, out: &mut String, labels: &str) {
        let mut running = 0;
        let cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Relaxed);
                running
            })
            .collect();
        prom::histogram(
            out,
            "gen_ai_client_token_usage",
            labels,
            &TOKEN_BOUNDS,
            &cumulative,
            self.count.load(Relaxed),
            self.sum.load(Relaxed) as f64,
        );
    }
}

/// Cost is kept in nano-dollars so it can be a lock-free integer counter.
const NANO: f64 = 1e9;

/// Tokens and cost of one route/arm/backend/tier.
#[derive(Debug, Default)]
pub struct UsageSeries {
    pub input: TokenHistogram,
    pub output: TokenHistogram,
    pub cached_input: AtomicU64,
    cost_nano_usd: AtomicU64,
}

impl UsageSeries {
    pub fn record(&self, input: u64, output: u64, cached: u64, cost_usd: f64) {
        self.input.record(input);
        self.output.record(output);
        self.cached_input.fetch_add(cached, Relaxed);
        self.cost_nano_usd
            .fetch_add((cost_usd.max(0.0) * NANO).round() as u64, Relaxed);
    }

    pub fn cost_usd(&self) -> f64 {
        self.cost_nano_usd.load(Relaxed) as f64 / NANO
    }
}

/// The labels of one usage series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsageKey {
    pub route: String,
    pub arm: String,
    pub backend: String,
    pub tier: String,
}

/// Every usage series the process has seen.
#[derive(Debug, Default)]
pub struct UsageRegistry {
    series: Mutex<BTreeMap<UsageKey, Arc<UsageSeries>>>,
}

impl UsageRegistry {
    pub fn series(&self, key: UsageKey) -> Arc<UsageSeries> {
        self.series.lock().entry(key).or_default().clone()
    }

    pub fn render(&self, out: &mut String) {
        let series: Vec<_> = self
            .series
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        prom::family(
            out,
            "gen_ai_client_token_usage",
            "histogram",
            "Tokens per request, by route, arm, backend, tier and token type (input, output).",
        );
        for (k, s) in &series {
            for (kind, h) in [("input", &s.input), ("output", &s.output)] {
                let labels = prom::labels(&[
                    ("route", &k.route),
                    ("arm", &k.arm),
                    ("backend", &k.backend),
                    ("tier", &k.tier),
                    ("gen_ai_token_type", kind),
                ]);
                h.render(out, &labels);
            }
        }
        prom::family(
            out,
            "switchyard_cached_input_tokens_total",
            "counter",
            "Prompt tokens the backends served from their prefix cache.",
        );
        for (k, s) in &series {
            prom::sample(
                out,
                "switchyard_cached_input_tokens_total",
                &key_labels(k),
                s.cached_input.load(Relaxed),
            );
        }
        prom::family(
            out,
            "switchyard_cost_usd_total",
            "counter",
            "What requests cost at the serving backend's price, in USD.",
        );
        for (k, s) in &series {
            prom::sample(
                out,
                "switchyard_cost_usd_total",
                &key_labels(k),
                s.cost_usd(),
            );
        }
    }
}

fn key_labels(k: &UsageKey) -> String {
    prom::labels(&[
        ("route", &k.route),
        ("arm", &k.arm),
        ("backend", &k.backend),
        ("tier", &k.tier),
    ])
}

/// One snapshot's handles to its usage series, by (route, arm, backend) index, resolved on a
/// request's first use so later requests take a read lock and a hash lookup only.
#[derive(Debug, Default)]
pub struct UsageHandles {
    resolved: RwLock<HashMap<(usize, usize, usize), Arc<UsageSeries>>>,
}

impl UsageHandles {
    pub fn get(
        &self,
        at: (usize, usize, usize),
        registry: &UsageRegistry,
        key: impl FnOnce() -> UsageKey,
    ) -> Arc<UsageSeries> {
        if let Some(s) = self.resolved.read().get(&at) {
            return s.clone();
        }
        let series = registry.series(key());
        self.resolved.write().insert(at, series.clone());
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_cost_render_with_escaped_labels() {
        let r = UsageRegistry::default();
        let s = r.series(UsageKey {
            route: "chat\"x".into(),
            arm: "a".into(),
            backend: "b".into(),
            tier: "economy".into(),
        });
        s.record(100, 20, 64, 0.000_123);
        s.record(3, 5000, 0, 0.5);
        let mut out = String::new();
        r.render(&mut out);
        let labels = r#"route="chat\"x",arm="a",backend="b",tier="economy""#;
        assert!(
            out.contains(&format!(
                "gen_ai_client_token_usage_sum{{{labels},gen_ai_token_type=\"input\"}} 103\n"
            )),
            "{out}"
        );
        assert!(out.contains(&format!(
            "gen_ai_client_token_usage_bucket{{{labels},gen_ai_token_type=\"output\",le=\"64\"}} 1\n"
        )), "{out}");
        assert!(
            out.contains(&format!("switchyard_cost_usd_total{{{labels}}} 0.500123\n")),
            "{out}"
        );
        assert!(out.contains(&format!(
            "switchyard_cached_input_tokens_total{{{labels}}} 64\n"
        )));
    }
}
