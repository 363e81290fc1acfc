//! Guardrail rules and their verdicts: pure functions of window data, no clock, no I/O.
//!
//! A rule (`[[routes.guardrails]]`) names a metric (a quantile of a distribution, or a rate),
//! a window, and a bound: absolute (`max = "800ms"`) and/or relative to the champion arm over
//! the same window (`max_ratio = 1.2`). For metrics where more is better (output tokens per
//! second) the bounds are `min` / `min_ratio`. Below `min_requests` in the window the verdict is
//! *inconclusive*, never *failed*. With `confidence`, a relative failure counts only when a
//! one-sided test says the canary is worse than the champion at that confidence (Mann-Whitney U
//! for distributions, a two-proportion z-test for rates), so noise at low volume does not fail a
//! healthy canary; the absolute bound stays absolute.

use std::fmt;
use std::time::Duration;

use super::window::{Dist, SliceData};

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardrailMetric {
    Latency,
    Ttfb,
    Ttft,
    InterToken,
    OutputTps,
    OutputTokens,
    Cost,
    /// Failures (5xx, 429, connect errors, timeouts, errored streams) per request.
    ErrorRate,
    /// Requests that needed another backend, per request.
    FallbackRate,
    /// Answers that ended with `finish_reason: "content_filter"`, per request.
    ContentFilterRate,
    /// Answers that matched the route's refusal patterns, per request.
    RefusalRate,
}

impl GuardrailMetric {
    pub const NAMES: &'static str = "latency, ttfb, ttft, itl, output_tps, output_tokens, cost, \
         error_rate, fallback_rate, content_filter_rate, refusal_rate";

    pub fn parse(text: &str) -> Option<GuardrailMetric> {
        Some(match text {
            "latency" => GuardrailMetric::Latency,
            "ttfb" => GuardrailMetric::Ttfb,
            "ttft" => GuardrailMetric::Ttft,
            "itl" => GuardrailMetric::InterToken,
            "output_tps" => GuardrailMetric::OutputTps,
            "output_tokens" => GuardrailMetric::OutputTokens,
            "cost" => GuardrailMetric::Cost,
            "error_rate" => GuardrailMetric::ErrorRate,
            "fallback_rate" => GuardrailMetric::FallbackRate,
            "content_filter_rate" => GuardrailMetric::ContentFilterRate,
            "refusal_rate" => GuardrailMetric::RefusalRate,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailMetric::Latency => "latency",
            GuardrailMetric::Ttfb => "ttfb",
            GuardrailMetric::Ttft => "ttft",
            GuardrailMetric::InterToken => "itl",
            GuardrailMetric::OutputTps => "output_tps",
            GuardrailMetric::OutputTokens => "output_tokens",
            GuardrailMetric::Cost => "cost",
            GuardrailMetric::ErrorRate => "error_rate",
            GuardrailMetric::FallbackRate => "fallback_rate",
            GuardrailMetric::ContentFilterRate => "content_filter_rate",
            GuardrailMetric::RefusalRate => "refusal_rate",
        }
    }

    /// The distribution a quantile is taken of; `None` for rates.
    pub fn dist(self) -> Option<Dist> {
        Some(match self {
            GuardrailMetric::Latency => Dist::Latency,
            GuardrailMetric::Ttfb => Dist::Ttfb,
            GuardrailMetric::Ttft => Dist::Ttft,
            GuardrailMetric::InterToken => Dist::InterToken,
            GuardrailMetric::OutputTps => Dist::OutputTps,
            GuardrailMetric::OutputTokens => Dist::OutputTokens,
            GuardrailMetric::Cost => Dist::Cost,
            _ => return None,
        })
    }

    /// Durations are written `"800ms"` in the policy and shown in seconds.
    pub fn is_duration(self) -> bool {
        matches!(
            self,
            GuardrailMetric::Latency
                | GuardrailMetric::Ttfb
                | GuardrailMetric::Ttft
                | GuardrailMetric::InterToken
        )
    }

    /// Where more is better, bounds are minimums.
    pub fn higher_is_better(self) -> bool {
        self == GuardrailMetric::OutputTps
    }

    /// The rate's numerator; `None` for distributions.
    fn rate_count(self, data: &SliceData) -> Option<u64> {
        Some(match self {
            GuardrailMetric::ErrorRate => data.failures(),
            GuardrailMetric::FallbackRate => data.fallbacks,
            GuardrailMetric::ContentFilterRate => data.content_filtered,
            GuardrailMetric::RefusalRate => data.refusals,
            _ => return None,
        })
    }
}

/// What happens when a rule has failed `consecutive` evaluations in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardrailAction {
    /// Log and count (`switchyard_guardrail_alerts_total`).
    Alert,
    /// The failing arm's weight goes to the champion (blue-green: the active set flips back to
    /// the champion's), as a new policy version sourced `guardrail`.
    Rollback,
    /// The route's rollout holds at its step (an alert without a rollout).
    Pause,
}

impl GuardrailAction {
    pub fn parse(text: &str) -> Option<GuardrailAction> {
        match text {
            "alert" => Some(GuardrailAction::Alert),
            "rollback" => Some(GuardrailAction::Rollback),
            "pause" => Some(GuardrailAction::Pause),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GuardrailAction::Alert => "alert",
            GuardrailAction::Rollback => "rollback",
            GuardrailAction::Pause => "pause",
        }
    }
}

/// One validated `[[routes.guardrails]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardrailRule {
    /// Unique within the route; the rollout's `require` names rules by it.
    pub name: String,
    pub metric: GuardrailMetric,
    /// For distributions: the quantile (0..1) compared.
    pub quantile: Option<f64>,
    pub window: Duration,
    /// Absolute bound in natural units (seconds, USD, tokens, tokens/s, share 0..1): a maximum,
    /// or a minimum where more is better.
    pub absolute: Option<f64>,
    /// Bound relative to the champion's value over the same window.
    pub ratio: Option<f64>,
    /// When set, a relative failure also needs a one-sided test significant at this level.
    pub confidence: Option<f64>,
    pub min_requests: u64,
    /// Failing evaluations in a row before the action is taken.
    pub consecutive: u32,
    pub action: GuardrailAction,
    /// The arm the rule watches; `None` watches every arm but the champion.
    pub arm: Option<String>,
}

impl GuardrailRule {
    /// `ttft p95`, `error_rate`: how the rule's figure is named in reasons.
    pub fn label(&self) -> String {
        match self.quantile {
            Some(q) => format!("{} p{}", self.metric.as_str(), fmt_quantile(q)),
            None => self.metric.as_str().to_owned(),
        }
    }

    /// The rule's figure over `data`; `None` when the window holds no sample of it.
    pub fn observe(&self, data: &SliceData) -> Option<f64> {
        match (self.metric.dist(), self.metric.rate_count(data)) {
            (Some(dist), _) => data.quantile(dist, self.quantile.unwrap_or(0.5)),
            (None, Some(count)) => {
                let n = data.requests();
                (n > 0).then(|| count as f64 / n as f64)
            }
            (None, None) => None,
        }
    }
}

/// The outcome of one rule on one arm at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not enough data to say: never acted on, never counts toward `consecutive`.
    Inconclusive,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        })
    }
}

/// A verdict with the figures behind it, for the history reason and `/admin/guardrails`.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub observed: Option<f64>,
    pub champion: Option<f64>,
    pub requests: u64,
    pub champion_requests: u64,
    /// One-sided p-value of the test, when it ran.
    pub p_value: Option<f64>,
    /// "canary ttft p95 1.9 s > 1.2 × champion 1.1 s over 60 s, 412 vs 3 890 requests".
    pub detail: String,
}

/// Judges `rule` on the canary arm's window data against the champion's (same window).
/// `champion` is `None` when the judged arm is the champion itself or the route has none.
pub fn judge(
    rule: &GuardrailRule,
    arm: &str,
    data: &SliceData,
    champion: Option<(&str, &SliceData)>,
) -> Judgement {
    let requests = data.requests();
    let champion_requests = champion.map_or(0, |(_, c)| c.requests());
    let label = rule.label();
    let over = fmt_window(rule.window);
    let mut j = Judgement {
        verdict: Verdict::Inconclusive,
        observed: rule.observe(data),
        champion: champion.and_then(|(_, c)| rule.observe(c)),
        requests,
        champion_requests,
        p_value: None,
        detail: String::new(),
    };
    if requests < rule.min_requests {
        j.detail = format!(
            "{arm} {label}: {} requests over {over} < min_requests {}",
            fmt_count(requests),
            fmt_count(rule.min_requests)
        );
        return j;
    }
    let Some(observed) = j.observed else {
        j.detail = format!("{arm} {label}: no samples over {over}");
        return j;
    };
    let worse = |value: f64, bound: f64| {
        if rule.metric.higher_is_better() {
            value < bound
        } else {
            value > bound
        }
    };
    let (cmp_fail, cmp_ok) = if rule.metric.higher_is_better() {
        ("<", "≥")
    } else {
        (">", "≤")
    };
    let show = |v: f64| fmt_value(rule.metric, v);
    if let Some(bound) = rule.absolute {
        if worse(observed, bound) {
            j.verdict = Verdict::Fail;
            j.detail = format!(
                "{arm} {label} {} {cmp_fail} {} over {over}, {} requests",
                show(observed),
                show(bound),
                fmt_count(requests)
            );
            return j;
        }
    }
    let Some(ratio) = rule.ratio else {
        j.verdict = Verdict::Pass;
        j.detail = format!(
            "{arm} {label} {} {cmp_ok} {} over {over}, {} requests",
            show(observed),
            show(rule.absolute.unwrap_or(f64::NAN)),
            fmt_count(requests)
        );
        return j;
    };
    let Some((champion_name, champion_data)) = champion else {
        j.detail = format!("{arm} {label}: no champion to compare with");
        return j;
    };
    if champion_requests < rule.min_requests {
        j.detail = format!(
            "{arm} {label}: champion {champion_name} has {} requests over {over} < min_requests {}",
            fmt_count(champion_requests),
            fmt_count(rule.min_requests)
        );
        return j;
    }
    let Some(reference) = j.champion else {
        j.detail = format!("{arm} {label}: champion {champion_name} has no samples over {over}");
        return j;
    };
    let bound = ratio * reference;
    let relation = format!(
        "{arm} {label} {} {{}} {ratio} × {champion_name} {} over {over}, {} vs {} requests",
        show(observed),
        show(reference),
        fmt_count(requests),
        fmt_count(champion_requests)
    );
    if !worse(observed, bound) {
        j.verdict = Verdict::Pass;
        j.detail = relation.replace("{}", cmp_ok);
        return j;
    }
    if let Some(confidence) = rule.confidence {
        let p = match rule.metric.dist() {
            Some(dist) => mann_whitney_worse(
                data.hist(dist),
                champion_data.hist(dist),
                rule.metric.higher_is_better(),
            ),
            None => {
                let count = |d: &SliceData| rule.metric.rate_count(d).unwrap_or(0);
                proportion_worse(
                    count(data),
                    requests,
                    count(champion_data),
                    champion_requests,
                )
            }
        };
        j.p_value = p;
        match p {
            Some(p) if p < 1.0 - confidence => {}
            _ => {
                j.verdict = Verdict::Inconclusive;
                j.detail = format!(
                    "{} (not significant at {confidence}: p = {})",
                    relation.replace("{}", cmp_fail),
                    p.map_or("n/a".to_owned(), |p| format!("{p:.3}"))
                );
                return j;
            }
        }
    }
    j.verdict = Verdict::Fail;
    j.detail = relation.replace("{}", cmp_fail);
    j
}

/// One-sided p-value that the canary's values are stochastically worse (greater, or smaller
/// when `higher_is_better`) than the champion's: Mann-Whitney U with the normal approximation,
/// tie correction and continuity correction. Ranks come straight from the two histograms —
/// values equal to the histograms' precision are ties — so no raw samples are kept. `None`
/// when either side is empty or every value ties.
pub fn mann_whitney_worse(
    canary: &hdrhistogram::Histogram<u64>,
    champion: &hdrhistogram::Histogram<u64>,
    higher_is_better: bool,
) -> Option<f64> {
    let (n1, n2) = (canary.len() as f64, champion.len() as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    let mut groups: std::collections::BTreeMap<u64, (f64, f64)> = Default::default();
    for v in canary.iter_recorded() {
        groups
            .entry(canary.lowest_equivalent(v.value_iterated_to()))
            .or_default()
            .0 += v.count_at_value() as f64;
    }
    for v in champion.iter_recorded() {
        groups
            .entry(champion.lowest_equivalent(v.value_iterated_to()))
            .or_default()
            .1 += v.count_at_value() as f64;
    }
    let n = n1 + n2;
    let (mut below, mut rank_sum, mut ties) = (0.0, 0.0, 0.0);
    for (a, b) in groups.values() {
        let t = a + b;
        // The group's ranks are below+1 ..= below+t; each member gets their mean.
        rank_sum += a * (below + (t + 1.0) / 2.0);
        ties += t * t * t - t;
        below += t;
    }
    let u = rank_sum - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    if var <= 0.0 {
        return None;
    }
    let excess = if higher_is_better { mean - u } else { u - mean };
    Some(normal_upper_tail((excess - 0.5) / var.sqrt()))
}

/// One-sided p-value that the canary's share `x1/n1` is greater than the champion's `x2/n2`
/// (two-proportion z-test, pooled). `None` when the pooled share is 0 or 1.
pub fn proportion_worse(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<f64> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (x1, n1, x2, n2) = (x1 as f64, n1 as f64, x2 as f64, n2 as f64);
    let pooled = (x1 + x2) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    (se > 0.0).then(|| normal_upper_tail((x1 / n1 - x2 / n2) / se))
}

/// P(Z > z) for a standard normal Z. Uses the complementary error function by Abramowitz and
/// Stegun's formula 7.1.26 (absolute error below 1.5e-7), enough for a significance test.
pub fn normal_upper_tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let erfc_abs = {
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
        let poly = t
            * (0.254_829_592
                + t * (-0.284_496_736
                    + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
        poly * (-x * x).exp()
    };
    let erfc = if x >= 0.0 { erfc_abs } else { 2.0 - erfc_abs };
    erfc / 2.0
}

fn fmt_quantile(q: f64) -> String {
    let pct = q * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("{}", pct.round() as u64)
    } else {
        format!("{pct}")
    }
}

/// A figure as people read it: seconds for durations, percent for rates, USD for cost; two
/// significant digits, the histograms' precision.
pub fn fmt_value(metric: GuardrailMetric, v: f64) -> String {
    if v.is_nan() {
        return "n/a".to_owned();
    }
    match metric {
        m if m.is_duration() => format!("{} s", sig2(v)),
        GuardrailMetric::Cost => format!("${}", sig2(v)),
        GuardrailMetric::OutputTps => format!("{} tok/s", sig2(v)),
        GuardrailMetric::OutputTokens => format!("{} tokens", sig2(v)),
        _ => format!("{}%", sig2(v * 100.0)),
    }
}

/// Two significant digits, no trailing zeros.
fn sig2(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (1 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// `60 s`, `15 min`.
pub fn fmt_window(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 60_000 {
        format!("{} min", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{} s", sig2(d.as_secs_f64()))
    }
}

/// `3 890`: thousands grouped by a space, as in the history's reasons.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Consecutive-failure hysteresis: the running count of failing evaluations of one rule on
/// one arm. A pass resets it; an inconclusive evaluation leaves it as it was (missing data is
/// neither evidence of health nor of failure). Returns whether the action is due now.
pub fn step_streak(streak: &mut u32, verdict: &Verdict, consecutive: u32) -> bool {
    match verdict {
        Verdict::Pass => {
            *streak = 0;
            false
        }
        Verdict::Inconclusive => false,
        Verdict::Fail => {
            *streak = streak.saturating_add(1);
            *streak >= consecutive.max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrails::window::{OutcomeClass, RequestFigures};

    fn rule(metric: GuardrailMetric) -> GuardrailRule {
        GuardrailRule {
            name: "r".into(),
            metric,
            quantile: metric.dist().map(|_| 0.95),
            window: Duration::from_secs(60),
            absolute: None,
            ratio: None,
            confidence: None,
            min_requests: 10,
            consecutive: 1,
            action: GuardrailAction::Rollback,
            arm: None,
        }
    }

    /// `n` successful requests with the given TTFTs (cycled).
    fn ttfts(n: usize, ms: &[u64]) -> SliceData {
        let mut d = SliceData::default();
        for i in 0..n {
            d.record(&RequestFigures {
                outcome: OutcomeClass::Success,
                latency: Duration::from_millis(ms[i % ms.len()] * 2),
                ttfb: None,
                ttft: Some(Duration::from_millis(ms[i % ms.len()])),
                inter_token: &[],
                output_tokens: None,
                cost_usd: None,
                fallback: false,
                content_filter: false,
                refusal: false,
            });
        }
        d
    }

    fn errors(n: u64, failed: u64) -> SliceData {
        let mut d = SliceData::default();
        for i in 0..n {
            d.record(&RequestFigures {
                outcome: if i < failed {
                    OutcomeClass::StreamError
                } else {
                    OutcomeClass::Success
                },
                latency: Duration::from_millis(10),
                ttfb: None,
                ttft: None,
                inter_token: &[],
                output_tokens: None,
                cost_usd: None,
                fallback: false,
                content_filter: false,
                refusal: false,
            });
        }
        d
    }

    #[test]
    fn absolute_bound() {
        let mut r = rule(GuardrailMetric::Ttft);
        r.absolute = Some(0.8);
        let slow = judge(&r, "canary", &ttfts(100, &[900]), None);
        assert_eq!(slow.verdict, Verdict::Fail, "{}", slow.detail);
        assert_eq!(
            slow.detail,
            "canary ttft p95 0.9 s > 0.8 s over 60 s, 100 requests"
        );
        let fast = judge(&r, "canary", &ttfts(100, &[700]), None);
        assert_eq!(fast.verdict, Verdict::Pass, "{}", fast.detail);
    }

    #[test]
    fn relative_bound_names_both_sides() {
        let mut r = rule(GuardrailMetric::Ttft);
        r.ratio = Some(1.2);
        let champion = ttfts(3890, &[1100]);
        let j = judge(
            &r,
            "canary",
            &ttfts(412, &[1900]),
            Some(("champion", &champion)),
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.detail,
            "canary ttft p95 1.9 s > 1.2 × champion 1.1 s over 60 s, 412 vs 3 890 requests"
        );
        let j = judge(
            &r,
            "canary",
            &ttfts(412, &[1300]),
            Some(("champion", &champion)),
        );
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.detail);
    }

    #[test]
    fn both_arms_degrading_trip_absolute_not_relative() {
        let champion = ttfts(200, &[2000]);
        let canary = ttfts(200, &[2100]);
        let mut relative = rule(GuardrailMetric::Ttft);
        relative.ratio = Some(1.2);
        let mut absolute = rule(GuardrailMetric::Ttft);
        absolute.absolute = Some(1.0);
        let c = Some(("champion", &champion));
        assert_eq!(
            judge(&relative, "canary", &canary, c).verdict,
            Verdict::Pass
        );
        assert_eq!(
            judge(&absolute, "canary", &canary, c).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn below_min_volume_is_inconclusive_never_failed() {
        let mut r = rule(GuardrailMetric::Ttft);
        r.absolute = Some(0.1);
        r.min_requests = 50;
        let j = judge(&r, "canary", &ttfts(49, &[5000]), None);
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert_eq!(
            j.detail,
            "canary ttft p95: 49 requests over 60 s < min_requests 50"
        );
        // A relative rule needs the champion's volume too.
        let mut r = rule(GuardrailMetric::Ttft);
        r.ratio = Some(1.2);
        r.min_requests = 50;
        let champion = ttfts(10, &[100]);
        let j = judge(
            &r,
            "canary",
            &ttfts(60, &[5000]),
            Some(("champion", &champion)),
        );
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.detail);
        // No TTFT samples at all (non-streaming traffic): inconclusive.
        let mut plain = ttfts(0, &[1]);
        plain.merge(&errors(100, 0));
        let mut r = rule(GuardrailMetric::Ttft);
        r.absolute = Some(0.1);
        assert_eq!(
            judge(&r, "canary", &plain, None).verdict,
            Verdict::Inconclusive
        );
    }

    #[test]
    fn error_rate_and_higher_is_better() {
        let mut r = rule(GuardrailMetric::ErrorRate);
        r.absolute = Some(0.05);
        let j = judge(&r, "canary", &errors(100, 10), None);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(
            j.detail,
            "canary error_rate 10% > 5% over 60 s, 100 requests"
        );
        assert_eq!(
            judge(&r, "canary", &errors(100, 5), None).verdict,
            Verdict::Pass
        );

        let mut tps = rule(GuardrailMetric::OutputTps);
        tps.absolute = Some(40.0);
        tps.quantile = Some(0.5);
        let mut d = SliceData::default();
        let gaps = [Duration::from_millis(50); 4];
        for _ in 0..20 {
            d.record(&RequestFigures {
                outcome: OutcomeClass::Success,
                latency: Duration::from_millis(300),
                ttfb: None,
                ttft: Some(Duration::from_millis(100)),
                inter_token: &gaps,
                output_tokens: Some(5),
                cost_usd: None,
                fallback: false,
                content_filter: false,
                refusal: false,
            });
        }
        // 4 tokens after the first in 200 ms: 20 tok/s, below the 40 tok/s minimum.
        let j = judge(&tps, "canary", &d, None);
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.detail);
        assert_eq!(
            j.detail,
            "canary output_tps p50 20 tok/s < 40 tok/s over 60 s, 20 requests"
        );
    }

    /// canary {4, 5, 6} vs champion {1, 2, 3}: U = 9 of a possible 9. By hand: mean 4.5,
    /// variance 3·3·7/12 = 5.25, z = (9 − 4.5 − 0.5)/√5.25 = 1.7457, one-sided p = 0.0404
    /// (P(Z > 1.7457) from a normal table; the exact permutation p would be 1/20).
    #[test]
    fn mann_whitney_small_fixture() {
        let hist = |vals: &[u64]| {
            let mut h = hdrhistogram::Histogram::<u64>::new(2).unwrap();
            for v in vals {
                h.record(*v).unwrap();
            }
            h
        };
        let p = mann_whitney_worse(&hist(&[4, 5, 6]), &hist(&[1, 2, 3]), false).unwrap();
        assert!((p - 0.0404).abs() < 5e-4, "p = {p}");
        // The other direction: the canary is not worse.
        let p = mann_whitney_worse(&hist(&[1, 2, 3]), &hist(&[4, 5, 6]), false).unwrap();
        assert!(p > 0.9, "p = {p}");
        // Where higher is better, small canary values are the worse ones.
        let p = mann_whitney_worse(&hist(&[1, 2, 3]), &hist(&[4, 5, 6]), true).unwrap();
        assert!((p - 0.0404).abs() < 5e-4, "p = {p}");
    }

    /// With ties: canary {2, 2, 3, 3}, champion {1, 1, 2, 2}. Ranks: the two 1s share 1.5, the
    /// four 2s share 4.5, the two 3s share 7.5. Canary rank sum = 4.5·2 + 7.5·2 = 24, U = 24 −
    /// 10 = 14, mean 8. Tie term Σ(t³ − t) = 6 + 60 + 6 = 72; variance = 16/12 · (9 − 72/56) =
    /// 10.2857; z = (14 − 8 − 0.5)/3.2071 = 1.7150; one-sided p = 0.0432.
    #[test]
    fn mann_whitney_ties_fixture() {
        let hist = |vals: &[u64]| {
            let mut h = hdrhistogram::Histogram::<u64>::new(2).unwrap();
            for v in vals {
                h.record(*v).unwrap();
            }
            h
        };
        let p = mann_whitney_worse(&hist(&[2, 2, 3, 3]), &hist(&[1, 1, 2, 2]), false).unwrap();
        assert!((p - 0.0432).abs() < 5e-4, "p = {p}");
        assert_eq!(
            mann_whitney_worse(&hist(&[5, 5]), &hist(&[5, 5]), false),
            None
        );
    }

    #[test]
    fn normal_tail_known_points() {
        for (z, p) in [
            (0.0, 0.5),
            (1.6449, 0.05),
            (1.96, 0.025),
            (2.3263, 0.01),
            (-1.96, 0.975),
        ] {
            assert!((normal_upper_tail(z) - p).abs() < 1e-4, "z {z}");
        }
    }

    #[test]
    fn statistical_test_keeps_noise_from_failing_a_healthy_canary() {
        let mut r = rule(GuardrailMetric::Ttft);
        r.ratio = Some(1.1);
        r.confidence = Some(0.99);
        r.min_requests = 5;
        // 6 canary samples whose p95 lands on one unlucky value; the bulk equals the champion.
        let champion = ttfts(600, &[100, 110, 120, 130, 140, 150]);
        let canary = ttfts(6, &[100, 110, 120, 130, 140, 400]);
        let j = judge(&r, "canary", &canary, Some(("champion", &champion)));
        assert_eq!(j.verdict, Verdict::Inconclusive, "{}", j.detail);
        assert!(j.p_value.unwrap() > 0.01);
        // A canary that is slower throughout is failed.
        let canary = ttfts(60, &[300, 310, 320, 330, 340, 400]);
        let j = judge(&r, "canary", &canary, Some(("champion", &champion)));
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.detail);
        assert!(j.p_value.unwrap() < 1e-6);
    }

    /// 30/200 vs 10/200: pooled 0.1, se = √(0.1·0.9·0.01) = 0.03, z = 0.1/0.03 = 3.333,
    /// one-sided p = 0.00043.
    #[test]
    fn proportion_test_fixture() {
        let p = proportion_worse(30, 200, 10, 200).unwrap();
        assert!((p - 0.000_43).abs() < 2e-5, "p = {p}");
        assert_eq!(proportion_worse(0, 10, 0, 10), None);
    }

    #[test]
    fn consecutive_failures_hysteresis() {
        let mut streak = 0;
        assert!(!step_streak(&mut streak, &Verdict::Fail, 3));
        assert!(!step_streak(&mut streak, &Verdict::Inconclusive, 3));
        assert!(!step_streak(&mut streak, &Verdict::Fail, 3));
        assert!(step_streak(&mut streak, &Verdict::Fail, 3));
        assert!(!step_streak(&mut streak, &Verdict::Pass, 3));
        assert_eq!(streak, 0);
        assert!(!step_streak(&mut streak, &Verdict::Fail, 3));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_count(3890), "3 890");
        assert_eq!(fmt_count(1_234_567), "1 234 567");
        assert_eq!(fmt_count(412), "412");
        assert_eq!(fmt_window(Duration::from_secs(900)), "15 min");
        assert_eq!(fmt_window(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(fmt_value(GuardrailMetric::Ttft, 1.912), "1.9 s");
        assert_eq!(fmt_value(GuardrailMetric::ErrorRate, 0.0213), "2.1%");
    }
}
