//! Budgets and rate limits: what the policy says (`[[budgets]]`, `[[rate_limits]]`), the UTC
//! windows they count over, and the admission verdict — a pure function of the spend and counts
//! so far, the limits and the time, decided before the arm is chosen.
//!
//! The counters themselves live in [`super::spend`]; this file does no I/O and reads no clock.

use std::fmt;

/// Whose spending a budget or rate limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The client's credential (`Authorization: Bearer`, else `x-api-key`), kept hashed.
    ApiKey,
    /// A request header's value, e.g. a team id (name lower-case); kept hashed.
    Header(String),
    /// The route the request matched: one counter per route.
    Route,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::ApiKey => f.write_str("api-key"),
            Scope::Header(name) => write!(f, "header:{name}"),
            Scope::Route => f.write_str("route"),
        }
    }
}

/// A counting window, aligned to UTC (a day starts at 00:00 UTC, a month on its first day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// `[start, end)` in Unix seconds of the window holding `now`.
    pub fn bounds(self, now: u64) -> (u64, u64) {
        let fixed = |len: u64| {
            let start = now - now % len;
            (start, start + len)
        };
        match self {
            Window::Minute => fixed(60),
            Window::Hour => fixed(3_600),
            Window::Day => fixed(86_400),
            Window::Month => {
                let days = (now / 86_400) as i64;
                let (y, m, _) = civil_from_days(days);
                let start = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                let end = days_from_civil(ny, nm, 1);
                (start as u64 * 86_400, end as u64 * 86_400)
            }
        }
    }
}

/// What happens to a request whose budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetAction {
    /// 429 `insufficient_quota` until the window ends.
    Reject,
    /// Served from the cheapest tier instead of the one its rules would pick.
    Downgrade,
}

/// One `[[budgets]]` entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSpec {
    pub name: String,
    pub scope: Scope,
    pub window: Window,
    pub limit_usd: f64,
    pub action: BudgetAction,
    /// Indexes of the routes it applies to; empty means every route.
    pub routes: Vec<usize>,
}

/// One `[[rate_limits]]` entry, validated: per-minute caps per scope value.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitSpec {
    pub name: String,
    pub scope: Scope,
    pub requests_per_minute: Option<u64>,
    /// Prompt plus completion tokens of answered requests in the current minute.
    pub tokens_per_minute: Option<u64>,
    pub routes: Vec<usize>,
}

impl BudgetSpec {
    pub fn applies_to(&self, route: usize) -> bool {
        self.routes.is_empty() || self.routes.contains(&route)
    }
}

impl RateLimitSpec {
    pub fn applies_to(&self, route: usize) -> bool {
        self.routes.is_empty() || self.routes.contains(&route)
    }
}

/// One limit that applies to a request, with its counter's reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// A USD budget: spent so far in its window.
    Budget {
        spent_usd: f64,
        limit_usd: f64,
        action: BudgetAction,
        window_end: u64,
    },
    /// Requests admitted so far in the current minute.
    Requests {
        count: u64,
        limit: u64,
        window_end: u64,
    },
    /// Tokens used so far in the current minute.
    Tokens {
        count: u64,
        limit: u64,
        window_end: u64,
    },
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Budget,
    Requests,
    Tokens,
}

/// The admission verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Serve it, from the cheapest tier.
    Downgrade,
    /// Refuse it; `index` names the check (in the order given) that refused, and the client may
    /// try again after `retry_after` seconds (when that window ends).
    Reject {
        index: usize,
        refusal: Refusal,
        retry_after: u64,
    },
}

/// Decides one request: a limit that is reached rejects (the first in order names the
/// refusal; the longest wait among reached limits is the `Retry-After`); else a spent
/// `downgrade` budget downgrades; else the request is allowed. A limit is reached when the
/// count so far is at or over it, so the request that crosses a budget is still served and
/// the next one is not.
pub fn admit(checks: &[Check], now: u64) -> Admission {
    let mut reject: Option<(usize, Refusal, u64)> = None;
    let mut downgrade = false;
    for (index, check) in checks.iter().enumerate() {
        let (reached, refusal, end) = match *check {
            Check::Budget {
                spent_usd,
                limit_usd,
                action,
                window_end,
            } => {
                if spent_usd >= limit_usd && action == BudgetAction::Downgrade {
                    downgrade = true;
                    continue;
                }
                (spent_usd >= limit_usd, Refusal::Budget, window_end)
            }
            Check::Requests {
                count,
                limit,
                window_end,
            } => (count >= limit, Refusal::Requests, window_end),
            Check::Tokens {
                count,
                limit,
                window_end,
            } => (count >= limit, Refusal::Tokens, window_end),
        };
        if reached {
            let wait = end.saturating_sub(now).max(1);
            reject = Some(match reject {
                None => (index, refusal, wait),
                Some((i, r, w)) => (i, r, w.max(wait)),
            });
        }
    }
    match reject {
        Some((index, refusal, retry_after)) => Admission::Reject {
            index,
            refusal,
            retry_after,
        },
        None if downgrade => Admission::Downgrade,
        None => Admission::Allow,
    }
}

// Gregorian calendar <-> days since 1970-01-01 (Howard Hinnant's public-domain algorithms).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-02-14T13:45:30Z
    const NOW: u64 = 1_771_076_730;

    #[test]
    fn windows_align_to_utc() {
        assert_eq!(Window::Minute.bounds(NOW), (NOW - 30, NOW + 30));
        assert_eq!(
            Window::Hour.bounds(NOW),
            (NOW - 45 * 60 - 30, NOW - 45 * 60 - 30 + 3600)
        );
        // 2026-02-14T00:00:00Z = 1771027200
        assert_eq!(Window::Day.bounds(NOW), (1_771_027_200, 1_771_113_600));
        // 2026-02-01 = 1769904000, 2026-03-01 = 1772323200 (28 days)
        assert_eq!(Window::Month.bounds(NOW), (1_769_904_000, 1_772_323_200));
        // December rolls over to January of the next year: 2025-12-31T23:59:59Z.
        let (start, end) = Window::Month.bounds(1_767_225_599);
        assert_eq!((start, end), (1_764_547_200, 1_767_225_600));
        // A leap February: 2024-02-10 → 2024-02-01 .. 2024-03-01 (29 days).
        let (start, end) = Window::Month.bounds(1_707_523_200);
        assert_eq!(end - start, 29 * 86_400);
    }

    fn budget(spent: f64, limit: f64, action: BudgetAction) -> Check {
        Check::Budget {
            spent_usd: spent,
            limit_usd: limit,
            action,
            window_end: NOW + 100,
        }
    }

    #[test]
    fn under_every_limit_is_allowed() {
        assert_eq!(admit(&[], NOW), Admission::Allow);
        let checks = [
            budget(0.99, 1.0, BudgetAction::Reject),
            Check::Requests {
                count: 9,
                limit: 10,
                window_end: NOW + 30,
            },
            Check::Tokens {
                count: 0,
                limit: 1,
                window_end: NOW + 30,
            },
        ];
        assert_eq!(admit(&checks, NOW), Admission::Allow);
    }

    #[test]
    fn a_spent_budget_rejects_until_its_window_ends() {
        let checks = [budget(1.0, 1.0, BudgetAction::Reject)];
        assert_eq!(
            admit(&checks, NOW),
            Admission::Reject {
                index: 0,
                refusal: Refusal::Budget,
                retry_after: 100
            }
        );
    }

    #[test]
    fn a_spent_downgrade_budget_downgrades_but_a_reject_wins() {
        let down = budget(2.0, 1.0, BudgetAction::Downgrade);
        assert_eq!(admit(&[down], NOW), Admission::Downgrade);
        let rpm = Check::Requests {
            count: 10,
            limit: 10,
            window_end: NOW + 30,
        };
        assert_eq!(
            admit(&[down, rpm], NOW),
            Admission::Reject {
                index: 1,
                refusal: Refusal::Requests,
                retry_after: 30
            }
        );
    }

    #[test]
    fn the_longest_wait_among_reached_limits_is_the_retry_after() {
        let checks = [
            Check::Tokens {
                count: 500,
                limit: 100,
                window_end: NOW + 30,
            },
            budget(5.0, 1.0, BudgetAction::Reject),
        ];
        assert_eq!(
            admit(&checks, NOW),
            Admission::Reject {
                index: 0,
                refusal: Refusal::Tokens,
                retry_after: 100
            }
        );
        // At the very end of a window the client is told to wait at least a second.
        let at_end = [Check::Requests {
            count: 1,
            limit: 1,
            window_end: NOW,
        }];
        assert!(matches!(
            admit(&at_end, NOW),
            Admission::Reject { retry_after: 1, .. }
        ));
    }
}
