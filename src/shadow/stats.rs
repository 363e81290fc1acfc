//! `ShadowStats`: what the mirroring of one route has shown so far — counts, agreement, and
//! distributions of similarity, latency and time to first byte for primary and shadow side by
//! side. Kept per route name across policy versions; read by `GET /admin/shadow` and `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::json;

use super::compare::{compare, ExchangeRecord};
use super::samples::SampleLog;
use crate::metrics::{write_histogram, BOUNDS};
use crate::telemetry::prom;

/// Holds one of a route's shadow in-flight places until dropped.
#[derive(Debug)]
pub struct ShadowSlot(Arc<ShadowStats>);

impl Drop for ShadowSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug)]
struct Distributions {
    /// Similarity × 1000.
    similarity: Histogram<u64>,
    primary_latency_us: Histogram<u64>,
    shadow_latency_us: Histogram<u64>,
    primary_ttft_us: Histogram<u64>,
    shadow_ttft_us: Histogram<u64>,
    length_delta_sum: i64,
    primary_cost_usd: f64,
    shadow_cost_usd: f64,
}

fn micros() -> Histogram<u64> {
    // 1 µs .. 1 hour at 3 significant digits: ~50 KiB per histogram.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record_duration(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

#[derive(Debug)]
pub struct ShadowStats {
    /// Copies sent to the shadow backend.
    pub mirrored: AtomicU64,
    /// Copies not sent because `max_inflight` shadow requests were already in flight.
    pub dropped: AtomicU64,
    pub in_flight: AtomicU64,
    /// Shadow exchanges that failed (non-2xx, broken or errored stream, timeout, unreachable).
    pub shadow_errors: AtomicU64,
    /// Mirrored requests whose primary failed.
    pub primary_errors: AtomicU64,
    /// Pairs where both sides finished and were compared.
    pub compared: AtomicU64,
    pub same_status: AtomicU64,
    pub exact_match: AtomicU64,
    /// Pairs written to the route's `sample_file`, and writes that failed.
    pub sampled: AtomicU64,
    pub sample_errors: AtomicU64,
    pub samples: SampleLog,
    dist: Mutex<Distributions>,
}

impl Default for ShadowStats {
    fn default() -> Self {
        ShadowStats {
            mirrored: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            shadow_errors: AtomicU64::new(0),
            primary_errors: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            same_status: AtomicU64::new(0),
            exact_match: AtomicU64::new(0),
            sampled: AtomicU64::new(0),
            sample_errors: AtomicU64::new(0),
            samples: SampleLog::default(),
            dist: Mutex::new(Distributions {
                similarity: Histogram::new_with_bounds(1, 1001, 3).expect("valid bounds"),
                primary_latency_us: micros(),
                shadow_latency_us: micros(),
                primary_ttft_us: micros(),
                shadow_ttft_us: micros(),
                length_delta_sum: 0,
                primary_cost_usd: 0.0,
                shadow_cost_usd: 0.0,
            }),
        }
    }
}

impl ShadowStats {
    /// Takes an in-flight place if fewer than `max` are taken; otherwise counts a drop.
    pub fn try_enter(self: &Arc<Self>, max: u32) -> Option<ShadowSlot> {
        if self.in_flight.fetch_add(1, Relaxed) >= u64::from(max) {
            self.in_flight.fetch_sub(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
            return None;
        }
        Some(ShadowSlot(self.clone()))
    }

    /// Records a finished pair. `primary` is `None` when the primary ended without a record
    /// (the client went away before it was measured).
    pub fn record(&self, primary: Option<&ExchangeRecord>, shadow: &ExchangeRecord) {
        if !shadow.ok {
            self.shadow_errors.fetch_add(1, Relaxed);
        }
        let Some(primary) = primary else { return };
        if !primary.ok {
            self.primary_errors.fetch_add(1, Relaxed);
        }
        let c = compare(primary, shadow);
        self.compared.fetch_add(1, Relaxed);
        if c.same_status {
            self.same_status.fetch_add(1, Relaxed);
        }
        if c.exact_match {
            self.exact_match.fetch_add(1, Relaxed);
        }
        let mut d = self.dist.lock();
        if let Some(s) = c.similarity {
            d.similarity
                .saturating_record((s * 1000.0).round() as u64 + 1);
        }
        record_duration(&mut d.primary_latency_us, primary.latency);
        record_duration(&mut d.shadow_latency_us, shadow.latency);
        if let Some(t) = primary.ttft {
            record_duration(&mut d.primary_ttft_us, t);
        }
        if let Some(t) = shadow.ttft {
            record_duration(&mut d.shadow_ttft_us, t);
        }
        d.length_delta_sum += c.length_delta;
        d.primary_cost_usd += primary.cost_usd;
        d.shadow_cost_usd += shadow.cost_usd;
    }

    /// The JSON of `GET /admin/shadow` for this route.
    pub fn report(&self) -> serde_json::Value {
        let d = self.dist.lock();
        let compared = self.compared.load(Relaxed);
        let rate = |n: &AtomicU64| {
            if compared == 0 {
                serde_json::Value::Null
            } else {
                json!(n.load(Relaxed) as f64 / compared as f64)
            }
        };
        let ms = |h: &Histogram<u64>| {
            if h.is_empty() {
                return serde_json::Value::Null;
            }
            let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
            json!({"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "count": h.len()})
        };
        let sim = &d.similarity;
        let similarity = if sim.is_empty() {
            serde_json::Value::Null
        } else {
            let q = |p: f64| (sim.value_at_quantile(p).saturating_sub(1)) as f64 / 1000.0;
            let share =
                |lo: u64, hi: u64| sim.count_between(lo + 1, hi + 1) as f64 / sim.len() as f64;
            json!({
                "mean": (sim.mean() - 1.0) / 1000.0,
                "p10": q(0.1), "p50": q(0.5), "p90": q(0.9),
                "count": sim.len(),
                "share": {"0-0.25": share(0, 249), "0.25-0.5": share(250, 499),
                          "0.5-0.75": share(500, 749), "0.75-1": share(750, 999), "1": share(1000, 1000)},
            })
        };
        json!({
            "mirrored": self.mirrored.load(Relaxed),
            "dropped": self.dropped.load(Relaxed),
            "in_flight": self.in_flight.load(Relaxed),
            "shadow_errors": self.shadow_errors.load(Relaxed),
            "primary_errors": self.primary_errors.load(Relaxed),
            "compared": compared,
            "sampled": self.sampled.load(Relaxed),
            "sample_errors": self.sample_errors.load(Relaxed),
            "agreement": {"status": rate(&self.same_status), "exact_text": rate(&self.exact_match)},
            "similarity": similarity,
            "length_delta_mean": if compared == 0 { serde_json::Value::Null } else { json!(d.length_delta_sum as f64 / compared as f64) },
            "latency_ms": {"primary": ms(&d.primary_latency_us), "shadow": ms(&d.shadow_latency_us)},
            "ttft_ms": {"primary": ms(&d.primary_ttft_us), "shadow": ms(&d.shadow_ttft_us)},
            "cost_usd": {"primary": d.primary_cost_usd, "shadow": d.shadow_cost_usd,
                         "delta": d.shadow_cost_usd - d.primary_cost_usd},
        })
    }

    /// Renders every route's shadow series in the Prometheus text format, one family at a time
    /// (the format wants each family's samples together).
    pub fn render_all(out: &mut String, shadows: &[(String, Arc<ShadowStats>)]) {
        type Counter = fn(&ShadowStats) -> &AtomicU64;
        let counters: [(&str, &str, &str, Counter); 7] = [
            (
                "switchyard_shadow_requests_total",
                "counter",
                "Copies sent to the shadow backend.",
                |s| &s.mirrored,
            ),
            (
                "switchyard_shadow_dropped_total",
                "counter",
                "Copies dropped because max_inflight shadow requests were in flight.",
                |s| &s.dropped,
            ),
            (
                "switchyard_shadow_errors_total",
                "counter",
                "Shadow exchanges that failed.",
                |s| &s.shadow_errors,
            ),
            (
                "switchyard_shadow_compared_total",
                "counter",
                "Primary/shadow pairs compared.",
                |s| &s.compared,
            ),
            (
                "switchyard_shadow_status_agreement_total",
                "counter",
                "Compared pairs with the same status.",
                |s| &s.same_status,
            ),
            (
                "switchyard_shadow_exact_match_total",
                "counter",
                "Compared pairs with the very same text.",
                |s| &s.exact_match,
            ),
            (
                "switchyard_shadow_in_flight",
                "gauge",
                "Shadow requests in flight.",
                |s| &s.in_flight,
            ),
        ];
        for (name, kind, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (route, s) in shadows {
                prom::sample(
                    out,
                    name,
                    &prom::labels(&[("route", route)]),
                    get(s).load(Relaxed),
                );
            }
        }
        type Pick = fn(&Distributions) -> &Histogram<u64>;
        let histograms: [(&str, &str, Pick); 2] = [
            (
                "switchyard_shadow_duration_seconds",
                "Shadow exchange duration.",
                |d| &d.shadow_latency_us,
            ),
            (
                "switchyard_shadow_time_to_first_byte_seconds",
                "Shadow time to first response byte.",
                |d| &d.shadow_ttft_us,
            ),
        ];
        for (name, help, pick) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (route, s) in shadows {
                let d = s.dist.lock();
                let h = pick(&d);
                let cumulative = BOUNDS.map(|bound| h.count_between(0, (bound * 1e6) as u64));
                let sum = if h.is_empty() {
                    0.0
                } else {
                    h.mean() * h.len() as f64 / 1e6
                };
                write_histogram(
                    out,
                    name,
                    &prom::labels(&[("route", route)]),
                    &cumulative,
                    h.len(),
                    sum,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_drops_counted() {
        let s = Arc::new(ShadowStats::default());
        let a = s.try_enter(2).unwrap();
        let _b = s.try_enter(2).unwrap();
        assert!(s.try_enter(2).is_none());
        assert_eq!(s.dropped.load(Relaxed), 1);
        drop(a);
        assert!(s.try_enter(2).is_some());
    }

    #[test]
    fn report_rates_and_similarity() {
        let s = ShadowStats::default();
        let p = ExchangeRecord {
            status: 200,
            ok: true,
            text: Some("a b c d".into()),
            output_tokens: 4,
            latency: Duration::from_millis(10),
            ..Default::default()
        };
        let same = ExchangeRecord {
            latency: Duration::from_millis(30),
            ..p.clone()
        };
        let half = ExchangeRecord {
            text: Some("a b x y".into()),
            ..p.clone()
        };
        let failed = ExchangeRecord {
            status: 500,
            ok: false,
            text: None,
            ..p.clone()
        };
        s.record(Some(&p), &same);
        s.record(Some(&p), &half);
        s.record(Some(&p), &failed);
        s.record(None, &failed);
        let r = s.report();
        assert_eq!(r["compared"], 3);
        assert_eq!(r["shadow_errors"], 2);
        assert!((r["agreement"]["status"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
        assert!((r["agreement"]["exact_text"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(r["similarity"]["count"], 2);
        assert!((r["similarity"]["mean"].as_f64().unwrap() - (1.0 + 1.0 / 3.0) / 2.0).abs() < 0.01);
        assert!((r["latency_ms"]["shadow"]["p99"].as_f64().unwrap() - 30.0).abs() < 0.1);
    }
}
