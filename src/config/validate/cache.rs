//! `[cache]` and `[routes.cache]`: sizes, lifetimes, which requests and whose answers.

use std::time::Duration;

use super::{positive, positive_at_most, Errors};
use crate::cache::key::NAMED_FIELDS;
use crate::config::policy::*;
use crate::config::raw::{RawCache, RawRouteCache};

/// A single entry larger than this would crowd out everything else; it also bounds the
/// recording buffer of one response.
const MAX_ENTRY_BYTES_LIMIT: u64 = 64 * 1024 * 1024;
/// A week: longer lifetimes are better served by a store of record than by a cache.
const MAX_TTL_S: u64 = 7 * 24 * 3600;

pub(super) fn validate_cache(raw: Option<&RawCache>, errors: &mut Errors) -> CacheSettings {
    let Some(c) = raw else {
        return CacheSettings::default();
    };
    let max_bytes = positive(
        "cache.max_bytes",
        c.max_bytes,
        DEFAULT_CACHE_MAX_BYTES,
        errors,
    );
    if max_bytes < 64 * 1024 {
        errors.push("cache.max_bytes", "must be at least 65536");
    }
    let wait = positive_at_most(
        "cache.single_flight_wait_ms",
        c.single_flight_wait_ms,
        DEFAULT_SINGLE_FLIGHT_WAIT_MS,
        600_000,
        errors,
    );
    CacheSettings {
        max_bytes,
        single_flight_wait: Duration::from_millis(wait),
    }
}

pub(super) fn validate_route_cache(
    path: &str,
    c: &RawRouteCache,
    errors: &mut Errors,
) -> Option<RouteCacheSpec> {
    let ttl_s = positive_at_most(
        &format!("{path}.ttl_s"),
        c.ttl_s,
        DEFAULT_CACHE_TTL_S,
        MAX_TTL_S,
        errors,
    );
    let max_ttl_s = positive(&format!("{path}.max_ttl_s"), c.max_ttl_s, ttl_s, errors);
    if max_ttl_s < ttl_s {
        errors.push(
            format!("{path}.max_ttl_s"),
            format!("{max_ttl_s} is below ttl_s ({ttl_s})"),
        );
    } else if max_ttl_s > MAX_TTL_S {
        errors.push(
            format!("{path}.max_ttl_s"),
            format!("must be at most {MAX_TTL_S}"),
        );
    }
    let max_entry_bytes = positive_at_most(
        &format!("{path}.max_entry_bytes"),
        c.max_entry_bytes,
        DEFAULT_CACHE_MAX_ENTRY_BYTES,
        MAX_ENTRY_BYTES_LIMIT,
        errors,
    );
    let requests = match c.requests.as_deref().unwrap_or("deterministic") {
        "deterministic" => CacheRequests::Deterministic,
        "all" => CacheRequests::All,
        other => {
            errors.push(
                format!("{path}.requests"),
                format!("`{other}` is not one of `deterministic`, `all`"),
            );
            CacheRequests::Deterministic
        }
    };
    let scope = match c.scope.as_deref().unwrap_or("global") {
        "global" => CacheScope::Global,
        "api-key" => CacheScope::ApiKey,
        other => {
            errors.push(
                format!("{path}.scope"),
                format!("`{other}` is not one of `global`, `api-key`"),
            );
            CacheScope::Global
        }
    };
    for (i, field) in c.ignore_fields.iter().enumerate() {
        if field.is_empty() {
            errors.push(format!("{path}.ignore_fields[{i}]"), "must not be empty");
        } else if NAMED_FIELDS.contains(&field.as_str()) {
            errors.push(
                format!("{path}.ignore_fields[{i}]"),
                format!(
                    "`{field}` decides the answer (or is already left out) and cannot be ignored"
                ),
            );
        }
    }
    if !c.enabled.unwrap_or(true) {
        return None;
    }
    Some(RouteCacheSpec {
        ttl: Duration::from_secs(ttl_s),
        max_ttl: Duration::from_secs(max_ttl_s.max(ttl_s)),
        max_entry_bytes: max_entry_bytes.min(MAX_ENTRY_BYTES_LIMIT) as usize,
        requests,
        scope,
        ignore_fields: c.ignore_fields.clone(),
        charge_hits: c.charge_hits.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::policy::{CacheRequests, CacheScope};
    use crate::config::validate::{assert_errors, errors_of, parse_policy};

    const POLICY: &str = r#"
        [cache]
        max_bytes = 1048576
        [[backends]]
        name = "a"
        url = "http://127.0.0.1:9101"
        [[routes]]
        name = "chat"
        models = ["m"]
          [[routes.arms]]
          name = "only"
          backends = ["a"]
          weight = 100
          [routes.cache]
          ttl_s = 60
          max_ttl_s = 600
          requests = "all"
          scope = "api-key"
          ignore_fields = ["request_tag"]
    "#;

    #[test]
    fn cache_sections_validate() {
        let p = parse_policy(POLICY).expect("valid");
        assert_eq!(p.cache.max_bytes, 1_048_576);
        let c = p.routes[0].cache.as_ref().expect("enabled");
        assert_eq!((c.ttl.as_secs(), c.max_ttl.as_secs()), (60, 600));
        assert_eq!(
            (c.requests, c.scope),
            (CacheRequests::All, CacheScope::ApiKey)
        );
        assert_eq!(c.max_entry_bytes, 1024 * 1024);
        let off =
            parse_policy(&POLICY.replace("ttl_s = 60\n", "ttl_s = 60\nenabled = false\n")).unwrap();
        assert!(off.routes[0].cache.is_none());
    }

    #[test]
    fn cache_errors_name_their_fields() {
        let bad = POLICY
            .replace("max_bytes = 1048576", "max_bytes = 10")
            .replace("max_ttl_s = 600", "max_ttl_s = 30")
            .replace("\"all\"", "\"some\"")
            .replace("\"api-key\"", "\"user\"")
            .replace("\"request_tag\"", "\"messages\"");
        let errs = errors_of(&bad);
        assert_errors(
            &errs,
            &[
                "cache.max_bytes: must be at least 65536",
                "routes[0].cache.max_ttl_s: 30 is below ttl_s (60)",
                "routes[0].cache.requests: `some` is not one of",
                "routes[0].cache.scope: `user` is not one of",
                "routes[0].cache.ignore_fields[0]: `messages` decides the answer",
            ],
        );
    }
}
