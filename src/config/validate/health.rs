//! `[outlier]` and `[backends.health_check]`: when a failing backend is ejected and for how
//! long, and how an actively probed one is judged.

use std::time::Duration;

use super::{positive, positive_at_most, Errors};
use crate::config::policy::*;
use crate::config::raw::{RawHealthCheck, RawOutlier};

/// An ejection longer than a day would outlive any incident it was meant to wait out.
const MAX_EJECTION_LIMIT_MS: u64 = 24 * 3600 * 1000;
/// A probe pace slower than a minute would not notice a dead backend in useful time.
const MAX_INTERVAL_MS: u64 = 60_000;
/// Counts beyond this would take minutes to move at any sane interval.
const MAX_RISE_FALL: u64 = 100;

pub(super) fn validate_outlier(raw: Option<&RawOutlier>, errors: &mut Errors) -> OutlierPolicy {
    let Some(o) = raw else {
        return OutlierPolicy::default();
    };
    let failures = positive_at_most(
        "outlier.consecutive_failures",
        o.consecutive_failures,
        DEFAULT_OUTLIER_FAILURES,
        1000,
        errors,
    );
    let base = positive(
        "outlier.base_ejection_ms",
        o.base_ejection_ms,
        DEFAULT_BASE_EJECTION_MS,
        errors,
    );
    let max = positive_at_most(
        "outlier.max_ejection_ms",
        o.max_ejection_ms,
        DEFAULT_MAX_EJECTION_MS.max(base),
        MAX_EJECTION_LIMIT_MS,
        errors,
    );
    if max < base {
        errors.push(
            "outlier.max_ejection_ms",
            format!("{max} is shorter than outlier.base_ejection_ms ({base})"),
        );
    }
    let percent = o.max_ejected_percent.unwrap_or(DEFAULT_MAX_EJECTED_PERCENT);
    if percent > 100 {
        errors.push(
            "outlier.max_ejected_percent",
            format!("{percent} must be a percentage (0 to 100)"),
        );
    }
    OutlierPolicy {
        enabled: o.enabled.unwrap_or(true),
        consecutive_failures: failures.min(1000) as u32,
        base_ejection: Duration::from_millis(base),
        max_ejection: Duration::from_millis(max.max(base)),
        max_ejected_percent: percent.min(100) as u8,
    }
}

pub(super) fn validate_health_check(
    backend: &str,
    raw: Option<&RawHealthCheck>,
    errors: &mut Errors,
) -> Option<HealthCheck> {
    let h = raw?;
    let path = format!("{backend}.health_check");
    let probe = h.path.as_deref().unwrap_or(DEFAULT_HEALTH_PATH);
    if !probe.starts_with('/') || probe.parse::<http::uri::PathAndQuery>().is_err() {
        errors.push(
            format!("{path}.path"),
            format!("`{probe}` is not a path like /health"),
        );
    }
    let interval = positive_at_most(
        &format!("{path}.interval_ms"),
        h.interval_ms,
        DEFAULT_HEALTH_INTERVAL_MS,
        MAX_INTERVAL_MS,
        errors,
    );
    let timeout = positive(
        &format!("{path}.timeout_ms"),
        h.timeout_ms,
        DEFAULT_HEALTH_TIMEOUT_MS.min(interval),
        errors,
    );
    // One probe at a time per backend: a timeout past the interval would skip probes silently.
    if timeout > interval {
        errors.push(
            format!("{path}.timeout_ms"),
            format!("{timeout} is longer than interval_ms ({interval})"),
        );
    }
    let mut count = |field: &str, v: Option<u64>, default: u64| {
        let n = positive_at_most(
            &format!("{path}.{field}"),
            v,
            default,
            MAX_RISE_FALL,
            errors,
        );
        n.min(MAX_RISE_FALL) as u32
    };
    let rise = count("rise", h.rise, DEFAULT_HEALTH_RISE);
    let fall = count("fall", h.fall, DEFAULT_HEALTH_FALL);
    Some(HealthCheck {
        path: probe.to_owned(),
        interval: Duration::from_millis(interval),
        timeout: Duration::from_millis(timeout),
        rise,
        fall,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{assert_errors, errors_of, parse_policy, ONE_ROUTE};
    use super::*;

    fn errors_with(extra: &str) -> Vec<String> {
        errors_of(&format!("{ONE_ROUTE}\n{extra}"))
    }

    #[test]
    fn defaults_eject_passively_and_probe_nobody() {
        let p = parse_policy(ONE_ROUTE).unwrap();
        assert_eq!(p.outlier, OutlierPolicy::default());
        assert!(p.outlier.enabled);
        assert_eq!(p.backends[0].health_check, None);
    }

    #[test]
    fn a_health_check_section_takes_defaults_for_what_it_omits() {
        let text = ONE_ROUTE.replace(
            "url = \"http://127.0.0.1:9101\"",
            "url = \"http://127.0.0.1:9101\"\n[backends.health_check]\ninterval_ms = 500\nrise = 3",
        );
        let p = parse_policy(&text).unwrap();
        assert_eq!(
            p.backends[0].health_check,
            Some(HealthCheck {
                path: "/health".into(),
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(500),
                rise: 3,
                fall: 2,
            })
        );
    }

    #[test]
    fn every_outlier_error_names_its_field() {
        let errs = errors_with(
            "[outlier]\nconsecutive_failures = 0\nbase_ejection_ms = 5000\nmax_ejection_ms = 1000\nmax_ejected_percent = 101\n",
        );
        assert_errors(
            &errs,
            &[
                "outlier.consecutive_failures: must be greater than 0",
                "outlier.max_ejection_ms: 1000 is shorter than outlier.base_ejection_ms (5000)",
                "outlier.max_ejected_percent: 101 must be a percentage",
            ],
        );
        assert!(
            errors_with("[outlier]\nejections = 3\n")[0].contains("unknown field `ejections`"),
            "unknown fields are refused"
        );
    }

    #[test]
    fn every_health_check_error_names_its_field() {
        let text = ONE_ROUTE.replace(
            "url = \"http://127.0.0.1:9101\"",
            "url = \"http://127.0.0.1:9101\"\n[backends.health_check]\npath = \"health\"\ninterval_ms = 1000\ntimeout_ms = 2000\nrise = 0\nfall = 101",
        );
        let errs = errors_of(&text);
        assert_errors(
            &errs,
            &[
                "backends[0].health_check.path: `health` is not a path",
                "backends[0].health_check.timeout_ms: 2000 is longer than interval_ms (1000)",
                "backends[0].health_check.rise: must be greater than 0",
                "backends[0].health_check.fall: must be at most 100",
            ],
        );
    }
}
