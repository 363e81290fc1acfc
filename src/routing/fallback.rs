//! Fallback verdicts: whether a failed attempt may be followed by another, before anything
//! reached the client.
//!
//! Three bounds, all of which must allow it: the route retries on this kind of failure
//! (`retry.on`), the request has attempts left (`retry.max_attempts`), and the route's retry
//! budget has room — retries in the last [`BUDGET_WINDOW_SECS`] seconds stay below
//! `budget_percent` of the requests in that window plus `budget_min_per_second` a second, so a
//! dead tier cannot multiply the load on the rest (the scheme of Finagle's and Linkerd's retry
//! budgets). The verdicts are pure; [`RetryBudget`] holds the window's counts, lock-free.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Seconds the retry budget looks back over.
pub const BUDGET_WINDOW_SECS: u64 = 10;

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_BUDGET_PERCENT: f64 = 20.0;
pub const DEFAULT_BUDGET_MIN_PER_SECOND: f64 = 5.0;

/// Why one attempt on one backend did not serve the request. Each is a fallback trigger that a
/// route may enable or not (see `routing::fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttemptFailure {
    /// No connection could be made.
    Connect,
    /// The backend answered 429.
    RateLimited,
    /// The backend answered 5xx, or its connection broke before anything reached the client.
    ServerError,
    /// No response header within the backend's `first_byte_timeout_ms`.
    FirstByteTimeout,
    /// A stream's first event did not arrive within the route's `ttft_timeout_ms`.
    TtftTimeout,
}

impl AttemptFailure {
    /// The name used in policies (`retry.on`), metrics and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptFailure::Connect => "connect",
            AttemptFailure::RateLimited => "429",
            AttemptFailure::ServerError => "5xx",
            AttemptFailure::FirstByteTimeout => "first_byte_timeout",
            AttemptFailure::TtftTimeout => "ttft_timeout",
        }
    }

    pub const ALL: [AttemptFailure; 5] = [
        AttemptFailure::Connect,
        AttemptFailure::RateLimited,
        AttemptFailure::ServerError,
        AttemptFailure::FirstByteTimeout,
        AttemptFailure::TtftTimeout,
    ];

    pub fn parse(text: &str) -> Option<AttemptFailure> {
        AttemptFailure::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

/// A route's retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Which failures move on to the next candidate.
    pub on: Vec<AttemptFailure>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub budget_percent: f64,
    pub budget_min_per_second: f64,
    /// Longest wait for a stream's first event after the request was sent; `None` uses the
    /// backend's `first_byte_timeout_ms`.
    pub ttft_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            on: AttemptFailure::ALL.to_vec(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            budget_percent: DEFAULT_BUDGET_PERCENT,
            budget_min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            ttft_timeout: None,
        }
    }
}

/// Why no further attempt is made after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try the next candidate.
    Retry,
    /// The route does not retry this kind of failure.
    NotRetried,
    /// The request used its `max_attempts`.
    AttemptsExhausted,
    /// The route's retry budget is spent.
    BudgetExhausted,
}

/// The retry budget's counts over the window, as one reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetReading {
    pub requests: u64,
    pub retries: u64,
}

/// Whether another attempt follows a failure of kind `failure` after `attempts_made` attempts.
pub fn verdict(
    policy: &RetryPolicy,
    failure: AttemptFailure,
    attempts_made: u32,
    budget: BudgetReading,
) -> Verdict {
    if !policy.on.contains(&failure) {
        Verdict::NotRetried
    } else if attempts_made >= policy.max_attempts {
        Verdict::AttemptsExhausted
    } else if !budget_allows(policy, budget) {
        Verdict::BudgetExhausted
    } else {
        Verdict::Retry
    }
}

/// Retries so far stay below `percent` of requests plus the per-second floor over the window.
pub fn budget_allows(policy: &RetryPolicy, budget: BudgetReading) -> bool {
    let allowed = budget.requests as f64 * policy.budget_percent / 100.0
        + policy.budget_min_per_second * BUDGET_WINDOW_SECS as f64;
    (budget.retries as f64) < allowed
}

/// Requests and retries of one route over the last [`BUDGET_WINDOW_SECS`] seconds, in
/// one-second slots. Kept per route name across policy versions. Slots are reset by whichever
/// request first sees them stale; a race there loses a count or two, never blocks.
#[derive(Debug, Default)]
pub struct RetryBudget {
    slots: [Slot; BUDGET_WINDOW_SECS as usize],
}

#[derive(Debug, Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % BUDGET_WINDOW_SECS) as usize];
        let seen = slot.second.load(Relaxed);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Relaxed, Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Relaxed);
            slot.retries.store(0, Relaxed);
        }
        slot
    }

    /// Counts a request at `second` (seconds since any fixed origin).
    pub fn record_request(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Relaxed);
    }

    /// Counts a retry at `second`.
    pub fn record_retry(&self, second: u64) {
        self.slot(second).retries.fetch_add(1, Relaxed);
    }

    /// The counts of the window ending at `second`.
    pub fn reading(&self, second: u64) -> BudgetReading {
        let oldest = second.saturating_sub(BUDGET_WINDOW_SECS - 1);
        self.slots
            .iter()
            .filter(|s| (oldest..=second).contains(&s.second.load(Relaxed)))
            .fold(BudgetReading::default(), |acc, s| BudgetReading {
                requests: acc.requests + s.requests.load(Relaxed),
                retries: acc.retries + s.retries.load(Relaxed),
            })
    }
}

/// The `Retry-After` of a 429 as a cooldown: delay-seconds, capped; an HTTP date or garbage
/// gives the default.
pub fn retry_after(value: Option<&[u8]>, default: Duration, cap: Duration) -> Duration {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_secs)
        .min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bound_refuses() {
        let p = RetryPolicy {
            on: vec![AttemptFailure::Connect, AttemptFailure::ServerError],
            max_attempts: 3,
            budget_percent: 20.0,
            budget_min_per_second: 0.0,
            ttft_timeout: None,
        };
        let room = BudgetReading {
            requests: 100,
            retries: 0,
        };
        assert_eq!(
            verdict(&p, AttemptFailure::Connect, 1, room),
            Verdict::Retry
        );
        assert_eq!(
            verdict(&p, AttemptFailure::RateLimited, 1, room),
            Verdict::NotRetried
        );
        assert_eq!(
            verdict(&p, AttemptFailure::ServerError, 3, room),
            Verdict::AttemptsExhausted
        );
        let spent = BudgetReading {
            requests: 100,
            retries: 20,
        };
        assert_eq!(
            verdict(&p, AttemptFailure::ServerError, 1, spent),
            Verdict::BudgetExhausted
        );
    }

    #[test]
    fn the_floor_lets_a_quiet_route_retry() {
        let p = RetryPolicy::default();
        // 5 a second over 10 s: 50 retries even with no requests counted.
        assert!(budget_allows(
            &p,
            BudgetReading {
                requests: 0,
                retries: 49
            }
        ));
        assert!(!budget_allows(
            &p,
            BudgetReading {
                requests: 0,
                retries: 50
            }
        ));
        // 20 % of 1000 requests on top of the floor.
        assert!(budget_allows(
            &p,
            BudgetReading {
                requests: 1000,
                retries: 249
            }
        ));
        assert!(!budget_allows(
            &p,
            BudgetReading {
                requests: 1000,
                retries: 250
            }
        ));
    }

    #[test]
    fn the_window_forgets_old_seconds() {
        let b = RetryBudget::default();
        for s in 100..105 {
            b.record_request(s);
            b.record_retry(s);
        }
        assert_eq!(
            b.reading(104),
            BudgetReading {
                requests: 5,
                retries: 5
            }
        );
        // At 112 only seconds 103 and 104 are inside the window.
        assert_eq!(
            b.reading(112),
            BudgetReading {
                requests: 2,
                retries: 2
            }
        );
        // Second 113 reuses slot 3 (of 103): the old counts go.
        b.record_request(113);
        assert_eq!(
            b.reading(113),
            BudgetReading {
                requests: 2,
                retries: 1
            }
        );
    }

    #[test]
    fn retry_after_parses_seconds_only() {
        let d = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        assert_eq!(retry_after(Some(b"7"), d, cap), Duration::from_secs(7));
        assert_eq!(retry_after(Some(b"9999"), d, cap), cap);
        assert_eq!(
            retry_after(Some(b"Wed, 21 Oct 2015 07:28:00 GMT"), d, cap),
            d
        );
        assert_eq!(retry_after(None, d, cap), d);
    }
}
