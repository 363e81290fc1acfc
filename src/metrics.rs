//! Counters and histograms per route and arm, rendered in the Prometheus text format.
//!
//! The handles hang off the policy snapshot's arms (looked up once when a snapshot is built),
//! so recording a request touches only atomics: no lock and no map lookup on the hot path.
//! Series outlive policy versions: a route/arm keeps its counts across swaps and rollbacks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::guardrails::{Clock, Dist, WindowConfig, Windows, OUTCOMES};
use crate::shadow::ShadowStats;
use crate::telemetry::attempts::AttemptRegistry;
use crate::telemetry::prefix::PrefixStats;
use crate::telemetry::prom;
use crate::telemetry::usage::UsageRegistry;
pub use crate::telemetry::Outcome;

/// Upper bounds (seconds) of the latency buckets: from sub-millisecond proxy answers to long
/// generations.
pub const BOUNDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Bucket bounds (seconds) of the request duration histogram, as OpenTelemetry's GenAI
/// conventions advise for `gen_ai.client.operation.duration`.
pub const DURATION_BOUNDS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// Bucket bounds (seconds) for time to first token (and first byte).
pub const TTFT_BOUNDS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Bucket bounds (seconds) for the time per output token.
pub const TPOT_BOUNDS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// A fixed-bucket histogram of durations (the cache's lookup latencies).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = [0; BOUNDS.len()];
        let mut running = 0;
        for (c, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running += bucket.load(Relaxed);
            *c = running;
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        write_histogram(
            out,
            name,
            labels,
            &cumulative,
            self.count.load(Relaxed),
            sum,
        );
    }
}

/// Writes a Prometheus histogram of `h` (integer units, `scale` per second): each bucket counts
/// the observations at or below its bound, to the histogram's precision.
fn write_hdr(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    h: &hdrhistogram::Histogram<u64>,
    scale: f64,
) {
    let cumulative: Vec<u64> = bounds
        .iter()
        .map(|b| h.count_between(0, (b * scale) as u64))
        .collect();
    let sum = h.mean() * h.len() as f64 / scale;
    prom::histogram(out, name, labels, bounds, &cumulative, h.len(), sum);
}

/// Writes one histogram's samples: `cumulative[i]` counts observations ≤ `BOUNDS[i]`.
pub(crate) fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    cumulative: &[u64; BOUNDS.len()],
    count: u64,
    sum_seconds: f64,
) {
    prom::histogram(out, name, labels, &BOUNDS, cumulative, count, sum_seconds);
}

/// The series of one route/arm pair.
#[derive(Default)]
pub struct ArmStats {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
}

/// Counts one request in its arm's in-flight gauge until dropped.
pub struct ArmInFlight<'a>(&'a AtomicU64);

impl Drop for ArmInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl ArmStats {
    pub fn enter(&self) -> ArmInFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        ArmInFlight(&self.in_flight)
    }

    /// Counts one request. Its durations go to the guardrail windows, which `/metrics`
    /// exposes as histograms per backend too.
    pub fn record(&self, outcome: Outcome) {
        self.requests.fetch_add(1, Relaxed);
        if outcome == Outcome::ClientError {
            self.client_errors.fetch_add(1, Relaxed);
        } else if outcome.is_backend_error() {
            self.errors.fetch_add(1, Relaxed);
        }
    }
}

/// (route, rule, arm, kind) of a guardrail event.
type GuardrailEventKey = (String, String, String, &'static str);

/// Every route/arm series the process has seen, plus the gateway-wide counters.
#[derive(Default)]
pub struct Metrics {
    arms: Mutex<BTreeMap<(String, String), Arc<ArmStats>>>,
    shadows: Mutex<BTreeMap<String, Arc<ShadowStats>>>,
    prefixes: Mutex<BTreeMap<String, Arc<PrefixStats>>>,
    /// Requests answered by the gateway itself with an error, by error code.
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub policy_version: AtomicU64,
    pub policy_swaps: AtomicU64,
    pub policy_rejected: AtomicU64,
    /// Tokens and cost per route/arm/backend/tier.
    pub usage: UsageRegistry,
    /// Attempts per backend, fallbacks and retry budgets per route.
    pub attempts: AttemptRegistry,
    /// The guardrails' windowed histograms per route/arm/backend; also the source of the
    /// latency, TTFB, TTFT and time-per-output-token histograms of `/metrics`.
    pub windows: Windows,
    /// The clock the windows are recorded and read on.
    pub clock: Clock,
    /// Guardrail events by (route, rule, arm, kind): alerts and actions taken.
    guardrail_events: Mutex<BTreeMap<GuardrailEventKey, u64>>,
}

impl Metrics {
    /// Metrics whose windows are cut as `config` says (the policy's `[guardrails]`).
    pub fn with_windows(config: WindowConfig) -> Metrics {
        Metrics {
            windows: Windows::new(config),
            ..Metrics::default()
        }
    }

    /// Counts a guardrail event: `kind` is `alert`, `rollback` or `pause`.
    pub fn record_guardrail(&self, route: &str, rule: &str, arm: &str, kind: &'static str) {
        *self
            .guardrail_events
            .lock()
            .entry((route.to_owned(), rule.to_owned(), arm.to_owned(), kind))
            .or_default() += 1;
    }

    /// The series of `route`/`arm`, created on first use. Called when a snapshot is built.
    pub fn arm(&self, route: &str, arm: &str) -> Arc<ArmStats> {
        self.arms
            .lock()
            .entry((route.to_owned(), arm.to_owned()))
            .or_default()
            .clone()
    }

    /// The shadow series of `route`, created on first use.
    pub fn shadow(&self, route: &str) -> Arc<ShadowStats> {
        self.shadows
            .lock()
            .entry(route.to_owned())
            .or_default()
            .clone()
    }

    /// The prefix-affinity series of `route`, created on first use.
    pub fn prefix(&self, route: &str) -> Arc<PrefixStats> {
        self.prefixes
            .lock()
            .entry(route.to_owned())
            .or_default()
            .clone()
    }

    /// Every route's shadow series, by route name.
    pub fn shadows(&self) -> Vec<(String, Arc<ShadowStats>)> {
        self.shadows
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Counts a request the gateway refused before any backend saw it.
    pub fn record_rejected(&self, code: &'static str) {
        *self.rejected.lock().entry(code).or_default() += 1;
    }

    /// The duration histograms per route/arm/backend, derived from the guardrail windows'
    /// cumulative data, and the outcome and guardrail counters.
    fn render_windows(&self, out: &mut String) {
        let series: Vec<_> = self
            .windows
            .all()
            .into_iter()
            .map(|(k, s)| {
                let labels = prom::labels(&[
                    ("route", &k.route),
                    ("arm", &k.arm),
                    ("backend", &k.backend),
                ]);
                (labels, s.cumulative())
            })
            .collect();
        for (name, help, dist, bounds) in [
            (
                "gen_ai_client_operation_duration_seconds",
                "Time from request received to response complete, per route, arm and backend.",
                Dist::Latency,
                &DURATION_BOUNDS[..],
            ),
            (
                "gen_ai_server_time_to_first_token_seconds",
                "Time from the request sent upstream to the first streamed token.",
                Dist::Ttft,
                &TTFT_BOUNDS[..],
            ),
            (
                "gen_ai_server_time_per_output_token_seconds",
                "Time between successive streamed tokens (one observation per gap).",
                Dist::InterToken,
                &TPOT_BOUNDS[..],
            ),
            (
                "switchyard_time_to_first_byte_seconds",
                "Time from the request sent upstream to the backend's response header.",
                Dist::Ttfb,
                &TTFT_BOUNDS[..],
            ),
        ] {
            prom::family(out, name, "histogram", help);
            for (labels, data) in &series {
                write_hdr(out, name, labels, bounds, data.hist(dist), dist.scale());
            }
        }
        prom::family(
            out,
            "switchyard_request_outcomes_total",
            "counter",
            "Requests per route, arm and backend by outcome class.",
        );
        for (labels, data) in &series {
            for o in OUTCOMES {
                let n = data.outcome(o);
                if n > 0 {
                    prom::sample(
                        out,
                        "switchyard_request_outcomes_total",
                        &format!("{labels},outcome=\"{}\"", o.as_str()),
                        n,
                    );
                }
            }
        }
        prom::family(
            out,
            "switchyard_guardrail_events_total",
            "counter",
            "Guardrail alerts and actions (alert, rollback, pause) per route, rule and arm.",
        );
        for ((route, rule, arm, kind), n) in self.guardrail_events.lock().iter() {
            prom::sample(
                out,
                "switchyard_guardrail_events_total",
                &prom::labels(&[
                    ("route", route),
                    ("rule", rule),
                    ("arm", arm),
                    ("kind", kind),
                ]),
                n,
            );
        }
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let arms: Vec<_> = self
            .arms
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let counter = |out: &mut String, name: &str, help: &str, get: &dyn Fn(&ArmStats) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((route, arm), s) in &arms {
                prom::sample(
                    out,
                    name,
                    &prom::labels(&[("route", route), ("arm", arm)]),
                    get(s),
                );
            }
        };
        counter(
            &mut out,
            "switchyard_requests_total",
            "Requests proxied, per route and arm.",
            &|s| s.requests.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_request_errors_total",
            "Proxied requests that failed: 5xx, timeouts, broken or errored streams.",
            &|s| s.errors.load(Relaxed),
        );
        counter(
            &mut out,
            "switchyard_request_client_errors_total",
            "Proxied requests the backend answered with 4xx.",
            &|s| s.client_errors.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_requests_in_flight Requests being proxied now.\n# TYPE switchyard_requests_in_flight gauge"
        );
        for ((route, arm), s) in &arms {
            prom::sample(
                &mut out,
                "switchyard_requests_in_flight",
                &prom::labels(&[("route", route), ("arm", arm)]),
                s.in_flight.load(Relaxed),
            );
        }
        self.render_windows(&mut out);
        ShadowStats::render_all(&mut out, &self.shadows());
        let prefixes: Vec<_> = self
            .prefixes
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        PrefixStats::render_all(&mut out, &prefixes);
        self.usage.render(&mut out);
        self.attempts.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP switchyard_rejected_requests_total Requests the gateway answered with an error itself, by code.\n# TYPE switchyard_rejected_requests_total counter"
        );
        for (code, n) in self.rejected.lock().iter() {
            let _ = writeln!(
                out,
                "switchyard_rejected_requests_total{{code=\"{code}\"}} {n}"
            );
        }
        for (name, kind, help, v) in [
            (
                "switchyard_policy_version",
                "gauge",
                "Version of the running policy.",
                &self.policy_version,
            ),
            (
                "switchyard_policy_swaps_total",
                "counter",
                "Policies accepted and swapped in (file, API, rollback).",
                &self.policy_swaps,
            ),
            (
                "switchyard_policy_rejected_total",
                "counter",
                "Policies refused by validation; the running one was kept.",
                &self.policy_rejected,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_histograms_come_from_the_windows_per_backend() {
        let m = Metrics::default();
        let series = m.windows.series("chat\"x", "canary", "b\\1");
        for ms in [0.5, 30.0, 500_000.0] {
            series.record(
                0,
                &crate::guardrails::RequestFigures {
                    outcome: Outcome::Success,
                    latency: std::time::Duration::from_secs_f64(ms / 1e3),
                    ttfb: None,
                    ttft: None,
                    inter_token: &[],
                    output_tokens: None,
                    cost_usd: None,
                    fallback: false,
                    content_filter: false,
                    refusal: false,
                },
            );
        }
        let out = m.render();
        let labels = r#"route="chat\"x",arm="canary",backend="b\\1""#;
        for line in [
            format!("gen_ai_client_operation_duration_seconds_bucket{{{labels},le=\"0.01\"}} 1\n"),
            format!("gen_ai_client_operation_duration_seconds_bucket{{{labels},le=\"0.04\"}} 2\n"),
            format!("gen_ai_client_operation_duration_seconds_bucket{{{labels},le=\"81.92\"}} 2\n"),
            format!("gen_ai_client_operation_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3\n"),
            format!("gen_ai_client_operation_duration_seconds_count{{{labels}}} 3\n"),
            format!("switchyard_request_outcomes_total{{{labels},outcome=\"success\"}} 3\n"),
        ] {
            assert!(out.contains(&line), "missing {line:?} in\n{out}");
        }
        assert!(
            !out.contains("switchyard_request_duration_seconds"),
            "the old fixed-bucket family is gone"
        );
    }

    /// The text format wants each family's samples in one group under one TYPE line.
    #[test]
    fn families_are_grouped() {
        let m = Metrics::default();
        for route in ["a", "b"] {
            m.arm(route, "x").record(Outcome::Success);
            m.shadow(route);
        }
        m.record_rejected("invalid_json");
        let text = m.render();
        let mut finished = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            let name = match line.strip_prefix("# TYPE ") {
                Some(rest) => rest.split(' ').next().unwrap().to_owned(),
                None if line.starts_with('#') => continue,
                None => {
                    let metric = line.split(['{', ' ']).next().unwrap();
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| {
                            metric
                                .strip_suffix(s)
                                .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                        })
                        .unwrap_or(metric)
                        .to_owned()
                }
            };
            if name != current {
                assert!(
                    finished.insert(current.clone()),
                    "family {current} appears in two groups"
                );
                current = name;
            }
        }
        assert!(text.contains("switchyard_shadow_in_flight{route=\"b\"} 0"));
    }

    #[test]
    fn series_survive_and_render() {
        let m = Metrics::default();
        m.arm("chat", "canary").record(Outcome::ServerError);
        m.arm("chat", "canary").record(Outcome::Success);
        m.record_rejected("model_not_found");
        let text = m.render();
        assert!(text.contains("switchyard_requests_total{route=\"chat\",arm=\"canary\"} 2"));
        assert!(text.contains("switchyard_request_errors_total{route=\"chat\",arm=\"canary\"} 1"));
        assert!(text.contains("switchyard_rejected_requests_total{code=\"model_not_found\"} 1"));
    }
}
