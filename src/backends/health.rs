//! Backend health: what active probes and passive outlier ejection say of one backend.
//!
//! Two sources, kept apart because they mean different things:
//! - **Passive ejection** watches every upstream attempt (including ones a retry hid from the
//!   client). After `outlier.consecutive_failures` failed attempts in a row (connect error, 5xx,
//!   timeout; a 429 has its own cooldown) the backend is ejected for `base_ejection_ms`, doubled
//!   by each repeated ejection up to `max_ejection_ms`. When the time is up it gets traffic
//!   again; one success clears the failure count. Candidate ordering never lets ejection take
//!   more than `max_ejected_percent` of an arm's backends, and never all of them.
//! - **Active checks** (`[backends.health_check]`) probe a path on an interval; `fall` failed
//!   probes in a row mark the backend unhealthy, `rise` passing ones bring it back. A probe can
//!   see what traffic cannot (a backend nobody is sending to), so unhealthy backends are left out
//!   even when that leaves an arm empty: the request then gets `backends_unavailable`.
//!
//! The request path reads two atomics and, on an attempt's result, writes at most one; the
//! transition details shown by `/admin/backends` sit behind a lock taken only on transitions.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::clock::millis_since_epoch;
use crate::config::policy::OutlierPolicy;
use crate::routing::fallback::AttemptFailure;

/// An ejection past this many doublings is at `max_ejection` anyway; the cap keeps the shift sane.
const MAX_DOUBLINGS: u32 = 20;

/// One ejection decided at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// How long the backend stays out.
    pub length: Duration,
    /// Ejections in a row counting this one (the next doubles from here).
    pub level: u32,
}

/// The ejection a backend earns at `now_ms`, having earned `level` in a row before, the last
/// one ending at `last_until_ms` (0: never ejected). A backend that stayed in for longer than
/// `max_ejection` since its last ejection starts again from the base length.
pub fn next_ejection(
    policy: &OutlierPolicy,
    level: u32,
    last_until_ms: u64,
    now_ms: u64,
) -> Ejection {
    let max_ms = policy.max_ejection.as_millis() as u64;
    let level = if last_until_ms == 0 || now_ms.saturating_sub(last_until_ms) > max_ms {
        0
    } else {
        level
    };
    let length = policy
        .base_ejection
        .saturating_mul(1u32 << level.min(MAX_DOUBLINGS))
        .min(policy.max_ejection);
    Ejection {
        length,
        level: level + 1,
    }
}

/// Whether a failed attempt of this kind counts toward ejection. A 429 is the backend asking
/// for room (it has its own cooldown), not the backend being sick.
pub fn counts_toward_ejection(failure: AttemptFailure) -> bool {
    !matches!(failure, AttemptFailure::RateLimited)
}

/// What the active checker believes of a backend: its verdict and how many probes in a row
/// have contradicted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    pub healthy: bool,
    pub streak: u32,
}

impl Default for ProbeState {
    /// A backend is believed healthy until probes say otherwise, so a fresh gateway serves at once.
    fn default() -> Self {
        ProbeState {
            healthy: true,
            streak: 0,
        }
    }
}

/// The verdict after one probe: `fall` failures in a row take a healthy backend out, `rise`
/// passes in a row bring an unhealthy one back; a result that agrees with the verdict resets
/// the streak.
pub fn after_probe(state: ProbeState, passed: bool, rise: u32, fall: u32) -> ProbeState {
    if passed == state.healthy {
        return ProbeState {
            healthy: state.healthy,
            streak: 0,
        };
    }
    let streak = state.streak + 1;
    let needed = if state.healthy { fall } else { rise };
    if streak >= needed.max(1) {
        ProbeState {
            healthy: passed,
            streak: 0,
        }
    } else {
        ProbeState {
            healthy: state.healthy,
            streak,
        }
    }
}

/// The backend's state as `/admin/backends` and `/metrics` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthState {
    Healthy,
    /// Taken out by active checks.
    Unhealthy,
    /// Taken out by passive ejection until a time.
    Ejected,
}

impl HealthState {
    pub const ALL: [HealthState; 3] = [
        HealthState::Healthy,
        HealthState::Unhealthy,
        HealthState::Ejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
            HealthState::Ejected => "ejected",
        }
    }
}

/// The last transition, for display.
#[derive(Debug, Clone, Default)]
pub struct HealthDetail {
    /// Wall-clock time of the last change of state (None: healthy since start).
    pub since: Option<SystemTime>,
    /// Why the last change happened.
    pub reason: Option<String>,
    /// The last probe's error, while it keeps failing.
    pub last_probe_error: Option<String>,
    pub probe: ProbeState,
}

/// Health of one backend, kept with its [`super::BackendLoad`] across policy versions.
#[derive(Debug, Default)]
pub struct BackendHealth {
    consecutive_failures: AtomicU32,
    /// Milliseconds since the process epoch until which the backend is ejected (0: never was).
    ejected_until_ms: AtomicU64,
    /// Ejections in a row (the exponent of the next one's length).
    level: AtomicU32,
    /// Ejections since start (a counter for `/metrics`).
    ejections: AtomicU64,
    /// Active checks say the backend is down.
    down: AtomicBool,
    detail: Mutex<HealthDetail>,
}

impl BackendHealth {
    /// An attempt's answer went to the client: the failure streak is over.
    pub fn on_success(&self) {
        // Read first: a healthy backend's line stays shared between cores.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// An attempt failed at `now`. Returns the ejection it caused, if any.
    pub fn on_failure(
        &self,
        failure: AttemptFailure,
        policy: &OutlierPolicy,
        now: Instant,
    ) -> Option<Ejection> {
        if !policy.enabled || !counts_toward_ejection(failure) {
            return None;
        }
        let now_ms = millis_since_epoch(now);
        let until = self.ejected_until_ms.load(Relaxed);
        if until > now_ms {
            // Attempts begun before the ejection say nothing new: the next one is earned afresh.
            return None;
        }
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures < policy.consecutive_failures {
            return None;
        }
        let ejection = next_ejection(policy, self.level.load(Relaxed), until, now_ms);
        let new_until = now_ms + ejection.length.as_millis() as u64;
        // Of several requests failing at once, one ejects.
        self.ejected_until_ms
            .compare_exchange(until, new_until, Relaxed, Relaxed)
            .ok()?;
        self.level.store(ejection.level, Relaxed);
        self.ejections.fetch_add(1, Relaxed);
        self.consecutive_failures.store(0, Relaxed);
        let mut detail = self.detail.lock();
        detail.since = Some(SystemTime::now());
        detail.reason = Some(format!(
            "{failures} failed attempts in a row (last: {})",
            failure.as_str()
        ));
        Some(ejection)
    }

    /// Stores the active checker's verdict after a probe (`error` is the failed probe's, if any).
    /// Returns whether the verdict changed.
    pub fn on_probe(&self, passed: bool, error: Option<String>, rise: u32, fall: u32) -> bool {
        let mut detail = self.detail.lock();
        let before = detail.probe;
        detail.probe = after_probe(before, passed, rise, fall);
        detail.last_probe_error = error;
        let changed = detail.probe.healthy != before.healthy;
        if changed {
            detail.since = Some(SystemTime::now());
            detail.reason = Some(if passed {
                format!("{rise} health checks passed in a row")
            } else {
                format!(
                    "{fall} health checks failed in a row: {}",
                    detail.last_probe_error.as_deref().unwrap_or("failed")
                )
            });
            self.down.store(!passed, Relaxed);
        }
        changed
    }

    /// Active checks stopped (the policy no longer probes this backend): trust traffic alone.
    pub fn clear_probe(&self) {
        let mut detail = self.detail.lock();
        if !detail.probe.healthy {
            detail.since = Some(SystemTime::now());
            detail.reason = Some("health check removed from the policy".into());
        }
        detail.probe = ProbeState::default();
        detail.last_probe_error = None;
        self.down.store(false, Relaxed);
    }

    /// Active checks say the backend is down.
    pub fn down(&self) -> bool {
        self.down.load(Relaxed)
    }

    /// When the backend's ejection ends, in milliseconds since the process epoch, if it is
    /// ejected at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<u64> {
        let until = self.ejected_until_ms.load(Relaxed);
        (until > millis_since_epoch(now)).then_some(until)
    }

    pub fn state(&self, now: Instant) -> HealthState {
        if self.down() {
            HealthState::Unhealthy
        } else if self.ejected_until(now).is_some() {
            HealthState::Ejected
        } else {
            HealthState::Healthy
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// How long the backend stays ejected after `now` (zero when it is not).
    pub fn ejected_for(&self, now: Instant) -> Duration {
        self.ejected_until(now).map_or(Duration::ZERO, |until| {
            Duration::from_millis(until - millis_since_epoch(now))
        })
    }

    pub fn detail(&self) -> HealthDetail {
        self.detail.lock().clone()
    }
}

/// The health series of every backend of `snapshot` at `now`, through the shared Prometheus
/// writer (backend names are escaped there).
pub fn render(snapshot: &crate::config::PolicySnapshot, now: Instant, out: &mut String) {
    use crate::telemetry::prom;
    let backends = || snapshot.policy.backends.iter().zip(&snapshot.loads);
    prom::family(
        out,
        "switchyard_backend_health",
        "gauge",
        "1 for each backend's current health state (healthy, unhealthy by active checks, ejected after failed attempts), else 0.",
    );
    for (spec, load) in backends() {
        let state = load.health.state(now);
        for s in HealthState::ALL {
            prom::sample(
                out,
                "switchyard_backend_health",
                &prom::labels(&[("backend", &spec.name), ("state", s.as_str())]),
                u8::from(s == state),
            );
        }
    }
    let per_backend =
        |out: &mut String, name: &str, kind: &str, help: &str, value: fn(&BackendHealth) -> u64| {
            prom::family(out, name, kind, help);
            for (spec, load) in backends() {
                prom::sample(
                    out,
                    name,
                    &prom::labels(&[("backend", &spec.name)]),
                    value(&load.health),
                );
            }
        };
    per_backend(
        out,
        "switchyard_backend_ejections_total",
        "counter",
        "Passive ejections of each backend since start.",
        BackendHealth::ejections,
    );
    per_backend(
        out,
        "switchyard_backend_consecutive_failures",
        "gauge",
        "Failed attempts in a row on each backend (ejection comes at outlier.consecutive_failures).",
        |h| u64::from(h.consecutive_failures()),
    );
}

/// What `/admin/backends` shows of one backend's health at `now`.
pub fn report(health: &BackendHealth, now: Instant) -> serde_json::Value {
    let detail = health.detail();
    let since = detail
        .since
        .map(|t| humantime::format_rfc3339_millis(t).to_string());
    serde_json::json!({
        "state": health.state(now).as_str(),
        "since": since,
        "reason": detail.reason,
        "consecutive_failures": health.consecutive_failures(),
        "ejections": health.ejections(),
        "ejected_for_ms": health.ejected_for(now).as_millis() as u64,
        "last_probe_error": detail.last_probe_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            enabled: true,
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn ejections_double_up_to_the_maximum_and_reset_after_a_quiet_spell() {
        let p = policy();
        let first = next_ejection(&p, 0, 0, 10_000);
        assert_eq!(
            first,
            Ejection {
                length: Duration::from_secs(1),
                level: 1
            }
        );
        // Ejected again soon after the first ended: twice as long, then four times, then capped.
        let second = next_ejection(&p, 1, 11_000, 12_000);
        assert_eq!(second.length, Duration::from_secs(2));
        assert_eq!(
            next_ejection(&p, 2, 14_000, 14_500).length,
            Duration::from_secs(4)
        );
        assert_eq!(
            next_ejection(&p, 3, 18_500, 19_000).length,
            Duration::from_secs(5)
        );
        assert_eq!(
            next_ejection(&p, 40, 18_500, 19_000).length,
            Duration::from_secs(5)
        );
        // In service longer than the maximum ejection since the last one: back to the base.
        assert_eq!(next_ejection(&p, 3, 20_000, 25_001), first);
    }

    #[test]
    fn probes_flip_the_verdict_only_after_rise_or_fall_in_a_row() {
        let mut s = ProbeState::default();
        s = after_probe(s, false, 2, 3);
        s = after_probe(s, false, 2, 3);
        assert!(s.healthy, "two failures of three needed");
        s = after_probe(s, true, 2, 3);
        assert_eq!(
            s,
            ProbeState::default(),
            "a pass in between resets the streak"
        );
        for _ in 0..3 {
            s = after_probe(s, false, 2, 3);
        }
        assert_eq!(
            s,
            ProbeState {
                healthy: false,
                streak: 0
            }
        );
        s = after_probe(s, true, 2, 3);
        assert!(!s.healthy);
        s = after_probe(s, true, 2, 3);
        assert!(s.healthy);
    }

    #[test]
    fn consecutive_failures_eject_once_and_a_success_resets_the_count() {
        let h = BackendHealth::default();
        let p = policy();
        let t = Instant::now();
        assert!(h.on_failure(AttemptFailure::ServerError, &p, t).is_none());
        h.on_success();
        assert!(h.on_failure(AttemptFailure::Connect, &p, t).is_none());
        assert!(h.on_failure(AttemptFailure::Connect, &p, t).is_none());
        assert_eq!(h.consecutive_failures(), 2);
        // 429s say nothing of health.
        assert!(h.on_failure(AttemptFailure::RateLimited, &p, t).is_none());
        let e = h.on_failure(AttemptFailure::FirstByteTimeout, &p, t);
        assert_eq!(e.map(|e| e.length), Some(Duration::from_secs(1)));
        assert_eq!(h.state(t), HealthState::Ejected);
        assert_eq!(h.ejections(), 1);
        assert!(h.detail().reason.unwrap().contains("first_byte_timeout"));
        // While ejected, more failures do not stack ejections.
        for _ in 0..5 {
            assert!(h.on_failure(AttemptFailure::Connect, &p, t).is_none());
        }
        assert_eq!(
            h.state(t + Duration::from_millis(1100)),
            HealthState::Healthy
        );
        let later = t + Duration::from_millis(1100);
        for _ in 0..2 {
            h.on_failure(AttemptFailure::Connect, &p, later);
        }
        let again = h.on_failure(AttemptFailure::Connect, &p, later).unwrap();
        assert_eq!(
            again.length,
            Duration::from_secs(2),
            "a repeat ejection is longer"
        );
        assert_eq!(h.ejections(), 2);
    }

    #[test]
    fn disabled_ejection_only_counts() {
        let h = BackendHealth::default();
        let p = OutlierPolicy {
            enabled: false,
            ..policy()
        };
        for _ in 0..10 {
            assert!(h
                .on_failure(AttemptFailure::Connect, &p, Instant::now())
                .is_none());
        }
        assert_eq!(h.state(Instant::now()), HealthState::Healthy);
    }

    #[test]
    fn active_verdicts_mark_the_backend_down_and_back() {
        let h = BackendHealth::default();
        assert!(h.on_probe(false, Some("refused".into()), 2, 1));
        assert!(h.down());
        assert_eq!(h.state(Instant::now()), HealthState::Unhealthy);
        assert!(h.detail().reason.unwrap().contains("refused"));
        assert!(!h.on_probe(true, None, 2, 1));
        assert!(h.on_probe(true, None, 2, 1));
        assert!(!h.down());
        h.on_probe(false, None, 2, 1);
        h.clear_probe();
        assert!(!h.down());
    }
}
