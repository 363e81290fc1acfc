//! What one load run measured: HDR histograms while it runs, a serialisable
//! [`RunReport`] after.
//!
//! All histograms hold nanoseconds; reports show microseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram tracks: longer than any run's hard time limit.
const MAX_NS: u64 = 120_000_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_NS)
}

/// The send schedule of an open-loop run: request `i` is *intended* to leave
/// at `i / rate` after the start, whether or not a connection is free then.
///
/// Latency is measured from that intended time, so time a request spent
/// waiting behind a slow one counts against the server (the correction for
/// coordinated omission), instead of silently not being sent.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoopClock {
    interval_ns: u64,
}

impl OpenLoopClock {
    pub fn new(rate_per_s: f64) -> Self {
        assert!(rate_per_s > 0.0, "an open-loop rate must be positive");
        Self {
            interval_ns: ((1e9 / rate_per_s).round() as u64).max(1),
        }
    }

    /// Offset of request `index`'s intended send time from the run's start.
    pub fn intended(&self, index: u64) -> Duration {
        Duration::from_nanos(index.saturating_mul(self.interval_ns))
    }

    /// How many requests are due by `elapsed` after the start.
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        u64::try_from(elapsed.as_nanos() / u128::from(self.interval_ns))
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    /// The latency to record for request `index` that completed `done` after
    /// the start: from intended send to completion, never from actual send.
    pub fn corrected_latency(&self, index: u64, done: Duration) -> Duration {
        done.saturating_sub(self.intended(index))
    }
}

/// Live histograms and counters of one run (or several merged runs).
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Request latency: CO-corrected in open loop, send → last byte in closed.
    pub latency: Histogram<u64>,
    /// Actual send → last byte, whatever the mode; equals `latency` in closed loop.
    pub service: Histogram<u64>,
    /// Send → first SSE event (streams only).
    pub ttfe: Histogram<u64>,
    /// Time between consecutive SSE events of one stream.
    pub gap: Histogram<u64>,
    /// Open loop: actual send − intended send, the generator's own pacing
    /// error plus waiting for a free connection.
    pub send_lag: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Gaps at or above the stall threshold.
    pub stalls: u64,
    pub events: u64,
    pub body_bytes: u64,
    /// Responses by the answering sim's `x-sim-name` header.
    pub backends: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: histogram(),
            service: histogram(),
            ttfe: histogram(),
            gap: histogram(),
            send_lag: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            stalls: 0,
            events: 0,
            body_bytes: 0,
            backends: BTreeMap::new(),
            elapsed: Duration::ZERO,
        }
    }
}

impl Recorder {
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One successful request: its latency (CO-corrected in open loop) and
    /// its service time (actual send → last byte).
    pub fn record_ok(&mut self, latency: Duration, service: Duration) {
        self.ok += 1;
        self.latency.saturating_record(nanos(latency));
        self.service.saturating_record(nanos(service));
    }

    pub fn record_gap(&mut self, gap: Duration, stall: Duration) {
        self.gap.saturating_record(nanos(gap));
        if gap >= stall {
            self.stalls += 1;
        }
    }

    pub fn record_send_lag(&mut self, lag: Duration) {
        self.send_lag.saturating_record(nanos(lag));
    }

    pub fn record_ttfe(&mut self, ttfe: Duration) {
        self.ttfe.saturating_record(nanos(ttfe));
    }

    /// Folds another run into this one (interleaved rounds, several connections).
    /// Elapsed times add up, since rounds run one after another.
    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in [
            (&mut self.latency, &other.latency),
            (&mut self.service, &other.service),
            (&mut self.ttfe, &other.ttfe),
            (&mut self.gap, &other.gap),
            (&mut self.send_lag, &other.send_lag),
        ] {
            mine.add(theirs).expect("histograms share bounds");
        }
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.backends {
            *self.backends.entry(k.clone()).or_default() += v;
        }
        self.stalls += other.stalls;
        self.events += other.events;
        self.body_bytes += other.body_bytes;
        self.elapsed += other.elapsed;
    }

    pub fn report(&self, target: &str) -> RunReport {
        let secs = self.elapsed.as_secs_f64();
        RunReport {
            target: target.to_owned(),
            ok: self.ok,
            errors: self.error_count(),
            error_kinds: self.errors.clone(),
            elapsed_s: round3(secs),
            achieved_rps: if secs > 0.0 {
                round3(self.ok as f64 / secs)
            } else {
                0.0
            },
            offered_rps: None,
            latency: Summary::of(&self.latency),
            service: Summary::of(&self.service),
            ttfe: Summary::of(&self.ttfe),
            gap: Summary::of(&self.gap),
            send_lag: Summary::of(&self.send_lag),
            stalls: self.stalls,
            events: self.events,
            backends: self.backends.clone(),
            cpu_us_per_req: None,
        }
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Summary {
    /// `None` for an empty histogram, so reports never show made-up zeros.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| round3(ns as f64 / 1000.0);
        Some(Self {
            count: h.len(),
            mean_us: round3(h.mean() / 1000.0),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        })
    }

    /// Percentile `q` in µs.
    pub fn at(&self, q: Quantile) -> f64 {
        match q {
            Quantile::P50 => self.p50_us,
            Quantile::P99 => self.p99_us,
            Quantile::P999 => self.p999_us,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantile {
    P50,
    P99,
    P999,
}

/// Points of the cumulative distribution, (latency µs, fraction ≤ it), thinned
/// to about `points` entries, for the CDF plots.
pub fn cdf_points(h: &Histogram<u64>, points: usize) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let total = h.len() as f64;
    let all: Vec<(f64, f64)> = h
        .iter_recorded()
        .map(|v| {
            (
                round3(v.value_iterated_to() as f64 / 1000.0),
                v.count_since_last_iteration() as f64,
            )
        })
        .scan(0.0, |cum, (us, n)| {
            *cum += n;
            Some((us, *cum / total))
        })
        .collect();
    let step = (all.len() / points.max(1)).max(1);
    let mut out: Vec<(f64, f64)> = all.iter().copied().step_by(step).collect();
    if out.last() != all.last() {
        out.extend(all.last().copied());
    }
    out
}

/// One run against one target, as it goes into `latest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub target: String,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub achieved_rps: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rps: Option<f64>,
    pub latency: Option<Summary>,
    pub service: Option<Summary>,
    pub ttfe: Option<Summary>,
    pub gap: Option<Summary>,
    pub send_lag: Option<Summary>,
    pub stalls: u64,
    pub events: u64,
    pub backends: BTreeMap<String, u64>,
    /// The proxy's user+system CPU per completed request (proxy targets only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_req: Option<f64>,
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedule_is_evenly_spaced() {
        let c = OpenLoopClock::new(1000.0);
        assert_eq!(c.intended(0), Duration::ZERO);
        assert_eq!(c.intended(1), Duration::from_millis(1));
        assert_eq!(c.intended(2500), Duration::from_millis(2500));
        assert_eq!(c.due_by(Duration::ZERO), 1, "request 0 is due at once");
        assert_eq!(c.due_by(Duration::from_micros(999)), 1);
        assert_eq!(c.due_by(Duration::from_millis(1)), 2);
    }

    #[test]
    fn latency_counts_from_the_intended_send_time() {
        // At 1000 rps, a server that stalls 100 ms on request 0 makes requests
        // 1..100 wait behind it on one connection. Each of them is sent late
        // but must be charged from when it should have left.
        let c = OpenLoopClock::new(1000.0);
        let service = Duration::from_micros(50);
        let mut free_at = Duration::ZERO;
        let mut latencies = Vec::new();
        for i in 0..200u64 {
            let send = c.intended(i).max(free_at);
            let took = if i == 0 {
                Duration::from_millis(100)
            } else {
                service
            };
            free_at = send + took;
            latencies.push(c.corrected_latency(i, free_at));
        }
        assert_eq!(latencies[0], Duration::from_millis(100));
        assert_eq!(
            latencies[1],
            Duration::from_millis(99) + service,
            "request 1 waited from 1 ms to 100 ms"
        );
        assert!(latencies[50] > Duration::from_millis(40));
        let slow = latencies
            .iter()
            .filter(|l| **l > Duration::from_millis(1))
            .count();
        // Request 0, the 100 that came due during the stall, and the 4 that
        // come due while the backlog drains at 20 per ms: k < 104.2.
        assert_eq!(slow, 105, "requests charged for the stall");
        assert_eq!(latencies[199], service, "the backlog has drained by then");
    }

    #[test]
    fn corrected_latency_never_underflows() {
        let c = OpenLoopClock::new(10.0);
        assert_eq!(
            c.corrected_latency(5, Duration::from_millis(10)),
            Duration::ZERO
        );
    }

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = Recorder::default();
        a.record_ok(Duration::from_micros(100), Duration::from_micros(100));
        a.elapsed = Duration::from_secs(1);
        let mut b = Recorder::default();
        b.record_ok(Duration::from_micros(300), Duration::from_micros(300));
        b.error("status_502");
        b.elapsed = Duration::from_secs(1);
        a.merge(&b);
        let r = a.report("x");
        assert_eq!(r.ok, 2);
        assert_eq!(r.errors, 1);
        assert_eq!(r.latency.map(|s| s.count), Some(2));
        assert_eq!(r.achieved_rps, 1.0);
    }

    #[test]
    fn report_round_trips_through_json() {
        let mut rec = Recorder::default();
        for us in [50, 60, 70, 80, 5000] {
            rec.record_ok(Duration::from_micros(us), Duration::from_micros(us));
        }
        rec.record_gap(Duration::from_millis(20), Duration::from_millis(40));
        rec.record_gap(Duration::from_millis(45), Duration::from_millis(40));
        rec.error("timeout");
        rec.elapsed = Duration::from_millis(500);
        let report = rec.report("nginx");
        let json = serde_json::to_string(&report).expect("serialises");
        let back: RunReport = serde_json::from_str(&json).expect("parses back");
        assert_eq!(back, report);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["target"], "nginx");
        assert_eq!(v["ok"], 5);
        assert_eq!(v["errors"], 1);
        assert_eq!(v["error_kinds"]["timeout"], 1);
        assert_eq!(
            v["stalls"], 1,
            "the 45 ms gap is a stall, the 20 ms one is not"
        );
        assert_eq!(v["achieved_rps"], 10.0);
        let p50 = v["latency"]["p50_us"].as_f64().unwrap();
        assert!((69.9..=70.1).contains(&p50), "p50 {p50}");
        assert!(v["ttfe"].is_null(), "no streams, no TTFE");
        assert!(v.get("cpu_us_per_req").is_none());
    }

    #[test]
    fn cdf_is_thinned_and_ends_at_one() {
        let mut rec = Recorder::default();
        for us in 1..=1000 {
            rec.record_ok(Duration::from_micros(us), Duration::from_micros(us));
        }
        let cdf = cdf_points(&rec.latency, 10);
        assert!(cdf.len() <= 12, "thinned to about 10 points: {}", cdf.len());
        assert_eq!(cdf.last().map(|p| p.1), Some(1.0), "a CDF ends at 1");
        assert!(cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
