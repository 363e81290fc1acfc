//! Windowed HDR histograms per (route, arm, backend): what the guardrail rules read and what
//! `/metrics` exposes.
//!
//! Time is cut into slices (e.g. 10 s) kept for a span (e.g. 15 min). A window query merges the
//! slices it covers, so any window's quantiles are exact to the histograms' precision (two
//! significant digits) rather than to a fixed bucket width. Recording never serialises request
//! threads on one lock: each thread records into one of [`SHARDS`] shards of the series; a
//! shard hands its slice over to the shared ring only when its thread first records into the
//! next slice, and readers merge the ring with whatever the shards still hold.
//!
//! No clock lives here: every call takes `now_ms`, milliseconds on the caller's monotonic
//! clock, so tests drive time by hand.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Shards per series: enough that the proxy's worker threads rarely meet on one lock.
pub const SHARDS: usize = 8;
/// Significant digits of every histogram: a quantile is exact to 1 %.
const SIGFIG: u8 = 2;

/// The request's outcome class, shared with the record and `/metrics`.
pub use crate::telemetry::Outcome as OutcomeClass;

/// Every outcome class, in counter order.
pub const OUTCOMES: [OutcomeClass; 9] = [
    OutcomeClass::Success,
    OutcomeClass::ClientError,
    OutcomeClass::RateLimited,
    OutcomeClass::ServerError,
    OutcomeClass::ConnectError,
    OutcomeClass::Timeout,
    OutcomeClass::StreamError,
    OutcomeClass::ClientAbort,
    OutcomeClass::Rejected,
];

/// The distributions kept per series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dist {
    /// Request received → response complete.
    Latency,
    /// Request sent upstream → first response byte.
    Ttfb,
    /// Request sent upstream → first generated token (streams).
    Ttft,
    /// Gap between two generated tokens (streams), one sample per gap.
    InterToken,
    /// Generated tokens per second after the first.
    OutputTps,
    OutputTokens,
    /// Cost of one request in USD.
    Cost,
}

impl Dist {
    pub const ALL: [Dist; 7] = [
        Dist::Latency,
        Dist::Ttfb,
        Dist::Ttft,
        Dist::InterToken,
        Dist::OutputTps,
        Dist::OutputTokens,
        Dist::Cost,
    ];

    /// Integer units per natural unit (seconds, tokens/s, tokens, USD): histograms hold integers.
    pub fn scale(self) -> f64 {
        match self {
            Dist::Latency | Dist::Ttfb | Dist::Ttft | Dist::InterToken => 1e6,
            Dist::OutputTps => 1e3,
            Dist::OutputTokens => 1.0,
            Dist::Cost => 1e9,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One request's figures, as the recorder takes them.
#[derive(Debug, Clone, Copy)]
pub struct RequestFigures<'a> {
    pub outcome: OutcomeClass,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    pub ttft: Option<Duration>,
    pub inter_token: &'a [Duration],
    pub output_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    /// The request needed another backend than the first candidate.
    pub fallback: bool,
    /// The answer ended with `finish_reason: "content_filter"`.
    pub content_filter: bool,
    /// The answer matched one of the route's refusal patterns.
    pub refusal: bool,
}

/// Counts and distributions of some stretch of time; the unit of merging.
#[derive(Debug, Clone)]
pub struct SliceData {
    hists: [Histogram<u64>; 7],
    outcomes: [u64; 9],
    pub fallbacks: u64,
    pub content_filtered: u64,
    pub refusals: u64,
}

impl Default for SliceData {
    fn default() -> Self {
        SliceData {
            hists: std::array::from_fn(|_| {
                Histogram::new(SIGFIG).expect("two significant digits are valid")
            }),
            outcomes: [0; 9],
            fallbacks: 0,
            content_filtered: 0,
            refusals: 0,
        }
    }
}

fn record_value(h: &mut Histogram<u64>, value: f64) {
    if value.is_finite() && value >= 0.0 {
        // Auto-resizing histograms accept any u64; saturation is the only failure.
        let _ = h.record(value.round() as u64);
    }
}

impl SliceData {
    /// Adds one request.
    pub fn record(&mut self, f: &RequestFigures<'_>) {
        self.outcomes[f.outcome as usize] += 1;
        self.fallbacks += u64::from(f.fallback);
        self.content_filtered += u64::from(f.content_filter);
        self.refusals += u64::from(f.refusal);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        record_value(&mut self.hists[Dist::Latency.index()], us(f.latency));
        if let Some(t) = f.ttfb {
            record_value(&mut self.hists[Dist::Ttfb.index()], us(t));
        }
        if let Some(t) = f.ttft {
            record_value(&mut self.hists[Dist::Ttft.index()], us(t));
        }
        let itl = &mut self.hists[Dist::InterToken.index()];
        for gap in f.inter_token {
            record_value(itl, us(*gap));
        }
        if let Some(tokens) = f.output_tokens.filter(|t| *t > 0) {
            record_value(&mut self.hists[Dist::OutputTokens.index()], tokens as f64);
            // Decode speed: the tokens after the first, over the time after the first.
            let decode = f
                .ttft
                .map_or(f.latency, |t| f.latency.saturating_sub(t))
                .as_secs_f64();
            if f.outcome == OutcomeClass::Success && decode > 0.0 {
                let after_first = if f.ttft.is_some() { tokens - 1 } else { tokens };
                if after_first > 0 {
                    record_value(
                        &mut self.hists[Dist::OutputTps.index()],
                        after_first as f64 / decode * Dist::OutputTps.scale(),
                    );
                }
            }
        }
        if let Some(cost) = f.cost_usd {
            record_value(&mut self.hists[Dist::Cost.index()], cost * 1e9);
        }
    }

    /// Adds everything of `other`.
    pub fn merge(&mut self, other: &SliceData) {
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            // Both auto-resize, so adding cannot run out of range.
            let _ = a.add(b);
        }
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a += b;
        }
        self.fallbacks += other.fallbacks;
        self.content_filtered += other.content_filtered;
        self.refusals += other.refusals;
    }

    /// Requests recorded.
    pub fn requests(&self) -> u64 {
        self.outcomes.iter().sum()
    }

    pub fn outcome(&self, class: OutcomeClass) -> u64 {
        self.outcomes[class as usize]
    }

    /// Requests whose class is a failure of the arm.
    pub fn failures(&self) -> u64 {
        OUTCOMES
            .iter()
            .filter(|c| c.is_backend_error())
            .map(|c| self.outcome(*c))
            .sum()
    }

    /// The histogram of `dist`, in the integer units of [`Dist::scale`].
    pub fn hist(&self, dist: Dist) -> &Histogram<u64> {
        &self.hists[dist.index()]
    }

    /// The `q` quantile (0..=1) of `dist` in natural units; `None` without samples.
    pub fn quantile(&self, dist: Dist, q: f64) -> Option<f64> {
        let h = self.hist(dist);
        (!h.is_empty()).then(|| h.median_equivalent(h.value_at_quantile(q)) as f64 / dist.scale())
    }
}

/// Slice width and how long slices are kept. Bound at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    pub slice: Duration,
    pub span: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            slice: Duration::from_secs(10),
            span: Duration::from_secs(15 * 60),
        }
    }
}

impl WindowConfig {
    fn slice_ms(&self) -> u64 {
        (self.slice.as_millis() as u64).max(1)
    }

    fn slices(&self) -> u64 {
        (self.span.as_millis() as u64)
            .div_ceil(self.slice_ms())
            .max(1)
    }
}

struct Shard {
    /// The slice index `data` belongs to.
    index: u64,
    data: Option<Box<SliceData>>,
}

struct Closed {
    /// Oldest first, at most one entry per slice index, at most `slices` entries.
    ring: VecDeque<(u64, SliceData)>,
    /// Every slice ever closed, for the cumulative Prometheus histograms.
    total: SliceData,
}

/// The windows of one (route, arm, backend).
pub struct Series {
    config: WindowConfig,
    shards: [Mutex<Shard>; SHARDS],
    closed: Mutex<Closed>,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Each thread sticks to one shard, handed out in turn.
    static SHARD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

impl Series {
    pub fn new(config: WindowConfig) -> Series {
        Series {
            config,
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    index: 0,
                    data: None,
                })
            }),
            closed: Mutex::new(Closed {
                ring: VecDeque::new(),
                total: SliceData::default(),
            }),
        }
    }

    /// Records one request at `now_ms`.
    pub fn record(&self, now_ms: u64, figures: &RequestFigures<'_>) {
        let index = now_ms / self.config.slice_ms();
        let mut shard = self.shards[SHARD.with(|s| *s)].lock();
        if shard.index < index {
            if let Some(done) = shard.data.take() {
                self.close(shard.index, &done, index);
            }
            shard.index = index;
        }
        // A thread whose `now` lags another's by a slice records into the newer slice: off by
        // at most one slice, never lost.
        shard
            .data
            .get_or_insert_with(Default::default)
            .record(figures);
    }

    fn close(&self, index: u64, data: &SliceData, now_index: u64) {
        let mut closed = self.closed.lock();
        closed.total.merge(data);
        let oldest = now_index.saturating_sub(self.config.slices() - 1);
        if index >= oldest {
            match closed.ring.iter().position(|(i, _)| *i >= index) {
                Some(p) if closed.ring[p].0 == index => closed.ring[p].1.merge(data),
                Some(p) => closed.ring.insert(p, (index, data.clone())),
                None => closed.ring.push_back((index, data.clone())),
            }
        }
        while closed.ring.front().is_some_and(|(i, _)| *i < oldest) {
            closed.ring.pop_front();
        }
    }

    /// Everything recorded in the `window` ending at `now_ms` (the slices it covers, the
    /// current one included; at most the span).
    pub fn window(&self, now_ms: u64, window: Duration) -> SliceData {
        let now_index = now_ms / self.config.slice_ms();
        let covered = (window.as_millis() as u64)
            .div_ceil(self.config.slice_ms())
            .clamp(1, self.config.slices());
        let oldest = now_index + 1 - covered.min(now_index + 1);
        let mut out = SliceData::default();
        for (i, data) in &self.closed.lock().ring {
            if (oldest..=now_index).contains(i) {
                out.merge(data);
            }
        }
        for shard in &self.shards {
            let shard = shard.lock();
            if let Some(data) = &shard.data {
                if (oldest..=now_index).contains(&shard.index) {
                    out.merge(data);
                }
            }
        }
        out
    }

    /// Everything ever recorded: the source of the cumulative Prometheus histograms.
    pub fn cumulative(&self) -> SliceData {
        let mut out = self.closed.lock().total.clone();
        for shard in &self.shards {
            if let Some(data) = &shard.lock().data {
                out.merge(data);
            }
        }
        out
    }
}

/// Names a series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub route: String,
    pub arm: String,
    pub backend: String,
}

/// Every series of the process. Series outlive policy versions: an arm keeps its windows
/// across swaps, so a rollback does not blind the guardrails.
pub struct Windows {
    config: WindowConfig,
    series: Mutex<BTreeMap<SeriesKey, Arc<Series>>>,
}

impl Default for Windows {
    fn default() -> Self {
        Windows::new(WindowConfig::default())
    }
}

impl Windows {
    pub fn new(config: WindowConfig) -> Windows {
        Windows {
            config,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn config(&self) -> WindowConfig {
        self.config
    }

    /// The series of `route`/`arm`/`backend`, created on first use. Snapshots look their
    /// handles up once when built; requests never come here on the hot path.
    pub fn series(&self, route: &str, arm: &str, backend: &str) -> Arc<Series> {
        let key = SeriesKey {
            route: route.to_owned(),
            arm: arm.to_owned(),
            backend: backend.to_owned(),
        };
        self.series
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(Series::new(self.config)))
            .clone()
    }

    /// Every series, in key order.
    pub fn all(&self) -> Vec<(SeriesKey, Arc<Series>)> {
        self.series
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The series of one route and arm, across its backends, merged over `window`.
    pub fn arm_window(&self, route: &str, arm: &str, now_ms: u64, window: Duration) -> SliceData {
        let mut out = SliceData::default();
        for (key, series) in self.all() {
            if key.route == route && key.arm == arm {
                out.merge(&series.window(now_ms, window));
            }
        }
        out
    }
}

/// A snapshot's handles on its series, by (route, arm, backend) index, resolved on first use so
/// a request's recording costs one read lock and a hash lookup, not the registry's mutex.
#[derive(Default)]
pub struct SeriesHandles {
    resolved: parking_lot::RwLock<std::collections::HashMap<(usize, usize, usize), Arc<Series>>>,
}

impl SeriesHandles {
    pub fn get(
        &self,
        at: (usize, usize, usize),
        windows: &Windows,
        names: impl FnOnce() -> (String, String, String),
    ) -> Arc<Series> {
        if let Some(s) = self.resolved.read().get(&at) {
            return s.clone();
        }
        let (route, arm, backend) = names();
        let series = windows.series(&route, &arm, &backend);
        self.resolved.write().insert(at, series.clone());
        series
    }
}

/// The process's monotonic clock for the windows: milliseconds since it was made. Only the
/// callers of the windows and the evaluator read it; the decisions take the time as input.
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(std::time::Instant::now())
    }
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(outcome: OutcomeClass, latency_ms: u64) -> RequestFigures<'static> {
        RequestFigures {
            outcome,
            latency: Duration::from_millis(latency_ms),
            ttfb: Some(Duration::from_millis(latency_ms / 2)),
            ttft: None,
            inter_token: &[],
            output_tokens: None,
            cost_usd: None,
            fallback: false,
            content_filter: false,
            refusal: false,
        }
    }

    /// Within the histograms' 1 % precision.
    fn close(got: Option<f64>, want: f64) -> bool {
        got.is_some_and(|g| (g - want).abs() <= want * 0.01)
    }

    fn series() -> Series {
        Series::new(WindowConfig {
            slice: Duration::from_secs(10),
            span: Duration::from_secs(60),
        })
    }

    #[test]
    fn quantiles_are_exact_to_two_digits() {
        let s = series();
        for ms in 1..=1000 {
            s.record(5_000, &figures(OutcomeClass::Success, ms));
        }
        let w = s.window(5_000, Duration::from_secs(10));
        assert_eq!(w.requests(), 1000);
        let p95 = w.quantile(Dist::Latency, 0.95).unwrap();
        assert!((p95 - 0.950).abs() / 0.950 < 0.01, "p95 {p95}");
        let p50 = w.quantile(Dist::Ttfb, 0.5).unwrap();
        assert!((p50 - 0.250).abs() / 0.250 < 0.01, "ttfb p50 {p50}");
        assert_eq!(w.quantile(Dist::Ttft, 0.5), None);
    }

    #[test]
    fn windows_cover_their_slices_and_age_out() {
        let s = series();
        // One request per 10 s slice at t = 0, 10, …, 90 s, latency = slice number + 1 ms.
        for i in 0..10u64 {
            s.record(i * 10_000 + 1, &figures(OutcomeClass::Success, i + 1));
        }
        let now = 95_000;
        assert_eq!(s.window(now, Duration::from_secs(10)).requests(), 1);
        assert_eq!(s.window(now, Duration::from_secs(30)).requests(), 3);
        // The span is 60 s: a longer window is clipped to it.
        assert_eq!(s.window(now, Duration::from_secs(600)).requests(), 6);
        let last3 = s.window(now, Duration::from_secs(30));
        assert!(close(last3.quantile(Dist::Latency, 0.0), 0.008));
        // Nothing recorded since: a window 2 min later is empty, the cumulative view is not.
        assert_eq!(
            s.window(now + 120_000, Duration::from_secs(60)).requests(),
            0
        );
        assert_eq!(s.cumulative().requests(), 10);
    }

    /// The soak's RSS rose ~1.9 MiB a minute for its 10 minutes: that is these windows filling
    /// (a slice per 10 s per series until the span is full). This pins the bound: the ring
    /// never holds more than the span's slices, and one slice of streaming figures up to ~1 s
    /// costs at most 80 KiB of histogram counts, so a series stays under
    /// `slices × 80 KiB` (90 × 80 KiB ≈ 7 MiB at the default 15 min span).
    #[test]
    fn a_series_holds_at_most_a_span_of_slices_of_bounded_size() {
        let s = series(); // 10 s slices over 60 s: 6 slices
        let gaps = [Duration::from_millis(40); 32];
        let mut f = figures(OutcomeClass::Success, 1_250);
        f.ttft = Some(Duration::from_millis(250));
        f.inter_token = &gaps;
        f.output_tokens = Some(33);
        f.cost_usd = Some(0.000_05);
        // Ten minutes of one request every 100 ms: ten times the span.
        for t in (0..600_000u64).step_by(100) {
            s.record(t, &f);
        }
        let closed = s.closed.lock();
        assert!(
            closed.ring.len() <= 6,
            "{} slices kept for a 6-slice span",
            closed.ring.len()
        );
        for (index, slice) in &closed.ring {
            let bytes: usize = slice
                .hists
                .iter()
                .map(|h| h.distinct_values() * std::mem::size_of::<u64>())
                .sum();
            assert!(
                bytes <= 80 * 1024,
                "slice {index}: {bytes} bytes of histogram counts"
            );
        }
    }

    #[test]
    fn outcome_classes_and_signals_are_counted() {
        let s = series();
        let mut f = figures(OutcomeClass::StreamError, 5);
        f.refusal = true;
        f.fallback = true;
        s.record(0, &f);
        s.record(0, &figures(OutcomeClass::ClientError, 5));
        let mut ok = figures(OutcomeClass::Success, 5);
        ok.content_filter = true;
        s.record(0, &ok);
        let w = s.window(0, Duration::from_secs(10));
        assert_eq!((w.requests(), w.failures()), (3, 1));
        assert_eq!(w.outcome(OutcomeClass::StreamError), 1);
        assert_eq!((w.fallbacks, w.refusals, w.content_filtered), (1, 1, 1));
    }

    #[test]
    fn streams_give_ttft_gaps_and_decode_speed() {
        let s = series();
        let gaps = [Duration::from_millis(20); 9];
        s.record(
            0,
            &RequestFigures {
                outcome: OutcomeClass::Success,
                latency: Duration::from_millis(280),
                ttfb: Some(Duration::from_millis(90)),
                ttft: Some(Duration::from_millis(100)),
                inter_token: &gaps,
                output_tokens: Some(10),
                cost_usd: Some(0.000_25),
                fallback: false,
                content_filter: false,
                refusal: false,
            },
        );
        let w = s.window(0, Duration::from_secs(10));
        assert_eq!(w.hist(Dist::InterToken).len(), 9);
        assert!(close(w.quantile(Dist::Ttft, 0.5), 0.1));
        // 9 tokens after the first in 180 ms = 50 tokens/s.
        assert!(close(w.quantile(Dist::OutputTps, 0.5), 50.0));
        assert!(close(w.quantile(Dist::OutputTokens, 0.5), 10.0));
        let cost = w.quantile(Dist::Cost, 0.5).unwrap();
        assert!((cost - 0.000_25).abs() < 0.000_25 * 0.01, "{cost}");
    }

    #[test]
    fn threads_record_into_shards_and_readers_merge_them() {
        let s = Arc::new(series());
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        // Threads move through slices 0..3 at their own pace.
                        s.record(i * 60 + t, &figures(OutcomeClass::Success, 3));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.window(30_000, Duration::from_secs(60)).requests(), 3000);
        assert_eq!(s.cumulative().requests(), 3000);
    }

    #[test]
    fn registry_merges_an_arm_across_backends() {
        let w = Windows::new(WindowConfig::default());
        w.series("r", "canary", "b1")
            .record(0, &figures(OutcomeClass::Success, 1));
        w.series("r", "canary", "b2")
            .record(0, &figures(OutcomeClass::ServerError, 1));
        w.series("r", "champion", "b1")
            .record(0, &figures(OutcomeClass::Success, 1));
        let canary = w.arm_window("r", "canary", 0, Duration::from_secs(10));
        assert_eq!((canary.requests(), canary.failures()), (2, 1));
        assert_eq!(w.all().len(), 3);
    }
}
