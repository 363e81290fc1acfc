//! Cost routing: the policy's `tiers` and `[plans]`, each route's tier rules, fallback routes
//! and retry settings.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{positive, Errors};
use crate::config::raw::{RawPlans, RawPolicy, RawRetry, RawRoute, RawTierRule};
use crate::routing::fallback::{
    AttemptFailure, RetryPolicy, DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_PERCENT,
    DEFAULT_MAX_ATTEMPTS,
};
use crate::routing::tier::{TierCondition, TierPlan, TierRule};
use crate::routing::ApiKeyHash;

/// Most attempts a route may allow one request.
const MAX_ATTEMPTS_LIMIT: u64 = 10;

pub(super) fn validate_tiers(raw: &RawPolicy, errors: &mut Errors) -> Vec<String> {
    let mut seen = HashSet::new();
    for (i, t) in raw.tiers.iter().enumerate() {
        if t.is_empty() {
            errors.push(format!("tiers[{i}]"), "must not be empty");
        } else if !seen.insert(t.as_str()) {
            errors.push(format!("tiers[{i}]"), format!("duplicate tier `{t}`"));
        }
    }
    raw.tiers.clone()
}

/// The index of tier `name` in `tiers`, or an error at `path`.
pub(super) fn tier_index(
    path: &str,
    name: &str,
    tiers: &[String],
    errors: &mut Errors,
) -> Option<usize> {
    if tiers.is_empty() {
        errors.push(
            path,
            format!("names tier `{name}` but the policy declares no `tiers`"),
        );
        return None;
    }
    let found = tiers.iter().position(|t| t == name);
    if found.is_none() {
        errors.push(
            path,
            format!("unknown tier `{name}`; the policy's tiers are {tiers:?}"),
        );
    }
    found
}

pub(super) fn validate_plans(
    plans: Option<&RawPlans>,
    errors: &mut Errors,
) -> HashMap<ApiKeyHash, String> {
    let mut out = HashMap::new();
    let Some(plans) = plans else {
        return out;
    };
    let mut add =
        |path: String, hex: &str, plan: &str, errors: &mut Errors| match ApiKeyHash::parse_hex(
            hex.trim(),
        ) {
            Some(_) if plan.is_empty() => errors.push(path, "the plan name must not be empty"),
            Some(key) => {
                out.insert(key, plan.to_owned());
            }
            None => errors.push(
                path,
                "must be the SHA-256 of the key as 64 hex digits (`printf %s KEY | sha256sum`)",
            ),
        };
    for (hex, plan) in &plans.keys {
        add(format!("plans.keys.{hex}"), hex, plan, errors);
    }
    if let Some(file) = &plans.keys_file {
        match std::fs::read_to_string(file) {
            Err(e) => errors.push("plans.keys_file", format!("cannot read `{file}`: {e}")),
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let path = format!("plans.keys_file line {}", n + 1);
                    match line.split_once(char::is_whitespace) {
                        Some((hex, plan)) => add(path, hex, plan.trim(), errors),
                        None => errors.push(path, "expected `HEX PLAN`"),
                    }
                }
            }
        }
    }
    out
}

pub(super) fn validate_tiering(
    path: &str,
    r: &RawRoute,
    tiers: &[String],
    errors: &mut Errors,
) -> TierPlan {
    let default_tier = r.default_tier.as_ref().map_or(Some(0), |t| {
        tier_index(&format!("{path}.default_tier"), t, tiers, errors)
    });
    let rules = r
        .tier_rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| tier_rule(&format!("{path}.tier_rules[{i}]"), rule, tiers, errors))
        .collect();
    if r.allow_client_tier == Some(true) && tiers.is_empty() {
        errors.push(
            format!("{path}.allow_client_tier"),
            "needs the policy's `tiers` to name what a client may ask for",
        );
    }
    TierPlan {
        rules,
        default_tier: default_tier.unwrap_or(0),
        allow_client_tier: r.allow_client_tier.unwrap_or(false),
        overflow_down: r.overflow_down.unwrap_or(false),
    }
}

fn tier_rule(
    path: &str,
    r: &RawTierRule,
    tiers: &[String],
    errors: &mut Errors,
) -> Option<TierRule> {
    let tier = tier_index(&format!("{path}.tier"), &r.tier, tiers, errors);
    if let (Some(lo), Some(hi)) = (r.prompt_tokens_at_least, r.prompt_tokens_below) {
        if lo >= hi {
            errors.push(
                format!("{path}.prompt_tokens_below"),
                format!("must be above prompt_tokens_at_least ({lo}); no request could match"),
            );
        }
    }
    let header = match &r.header {
        None => None,
        Some(h) => {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                errors.push(
                    format!("{path}.header.name"),
                    format!("`{}` is not a valid header name", h.name),
                );
            }
            Some((h.name.to_ascii_lowercase(), h.value.clone()))
        }
    };
    if matches!(&r.plan, Some(p) if p.is_empty()) {
        errors.push(format!("{path}.plan"), "must not be empty when given");
    }
    Some(TierRule {
        tier: tier?,
        when: TierCondition {
            prompt_tokens_at_least: r.prompt_tokens_at_least,
            prompt_tokens_below: r.prompt_tokens_below,
            max_tokens_at_least: r.max_tokens_at_least,
            tools: r.tools,
            json_mode: r.json_mode,
            stream: r.stream,
            header,
            plan: r.plan.clone(),
        },
    })
}

pub(super) fn validate_retry(path: &str, r: Option<&RawRetry>, errors: &mut Errors) -> RetryPolicy {
    let default = RawRetry::default();
    let r = r.unwrap_or(&default);
    let on = match &r.on {
        None => AttemptFailure::ALL.to_vec(),
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let parsed = AttemptFailure::parse(n);
                if parsed.is_none() {
                    let known: Vec<_> = AttemptFailure::ALL.iter().map(|f| f.as_str()).collect();
                    errors.push(
                        format!("{path}.on[{i}]"),
                        format!("`{n}` is not one of {known:?}"),
                    );
                }
                parsed
            })
            .collect(),
    };
    let max_attempts = positive(
        &format!("{path}.max_attempts"),
        r.max_attempts,
        u64::from(DEFAULT_MAX_ATTEMPTS),
        errors,
    );
    if max_attempts > MAX_ATTEMPTS_LIMIT {
        errors.push(
            format!("{path}.max_attempts"),
            format!("must be at most {MAX_ATTEMPTS_LIMIT}"),
        );
    }
    let percent = r.budget_percent.unwrap_or(DEFAULT_BUDGET_PERCENT);
    if !percent.is_finite() || !(0.0..=100.0).contains(&percent) {
        errors.push(
            format!("{path}.budget_percent"),
            "must be a percentage between 0 and 100",
        );
    }
    let floor = r
        .budget_min_per_second
        .unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND);
    if !floor.is_finite() || floor < 0.0 {
        errors.push(
            format!("{path}.budget_min_per_second"),
            "must be a finite number ≥ 0",
        );
    }
    let ttft_timeout = r.ttft_timeout_ms.map(|ms| {
        Duration::from_millis(positive(
            &format!("{path}.ttft_timeout_ms"),
            Some(ms),
            1,
            errors,
        ))
    });
    RetryPolicy {
        on,
        max_attempts: max_attempts.min(MAX_ATTEMPTS_LIMIT) as u32,
        budget_percent: percent,
        budget_min_per_second: floor,
        ttft_timeout,
    }
}

/// Fallback route names → indexes; a route may not fall back to itself or name one twice.
pub(super) fn validate_fallbacks(
    path: &str,
    own: usize,
    names: &[String],
    route_index: &HashMap<&str, usize>,
    errors: &mut Errors,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let p = format!("{path}.fallback_routes[{i}]");
        match route_index.get(name.as_str()) {
            None => errors.push(p, format!("unknown route `{name}`")),
            Some(&r) if r == own => errors.push(p, "a route cannot fall back to itself"),
            Some(&r) if out.contains(&r) => {
                errors.push(p, format!("route `{name}` is listed twice"))
            }
            Some(&r) => out.push(r),
        }
    }
    out
}
