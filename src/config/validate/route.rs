//! `[[routes]]`: stickiness, arms and their weights, blue-green sets; the shadow is checked by
//! its own module.

use std::collections::{HashMap, HashSet};

use super::{weight_bp, Errors};
use crate::config::policy::*;
use crate::config::raw::RawRoute;
use crate::routing::{ArmTable, NewArm, StickyKey, BUCKETS};

pub(super) fn validate_route(
    path: &str,
    r: &RawRoute,
    backend_index: &HashMap<&str, usize>,
    span: std::time::Duration,
    errors: &mut Errors,
) -> Option<RouteSpec> {
    let sticky = match StickyKey::parse(r.sticky.as_deref().unwrap_or("none")) {
        Ok(s) => Some(s),
        Err(e) => {
            errors.push(format!("{path}.sticky"), e);
            None
        }
    };
    if matches!(&r.salt, Some(s) if s.is_empty()) {
        errors.push(format!("{path}.salt"), "must not be empty when given");
    }
    if r.arms.is_empty() {
        errors.push(format!("{path}.arms"), "at least one arm is required");
    }
    let sets_used = r.arms.iter().any(|a| a.set.is_some());
    match &r.active {
        Some(active) if !r.arms.iter().any(|a| a.set.as_ref() == Some(active)) => errors.push(
            format!("{path}.active"),
            format!("no arm belongs to set `{active}`"),
        ),
        None if sets_used => errors.push(
            format!("{path}.active"),
            "arms name a `set`, so the route must name its active set",
        ),
        _ => {}
    }
    let mut arm_names = HashSet::new();
    let mut arms = Vec::with_capacity(r.arms.len());
    // Weights sum to 100 within each set (one implicit set without blue-green).
    let mut set_totals: Vec<(Option<&str>, u64)> = Vec::new();
    for (j, a) in r.arms.iter().enumerate() {
        let apath = format!("{path}.arms[{j}]");
        if a.name.is_empty() {
            errors.push(format!("{apath}.name"), "must not be empty");
        } else if !arm_names.insert(a.name.as_str()) {
            errors.push(
                format!("{apath}.name"),
                format!("duplicate arm name `{}`", a.name),
            );
        }
        if r.active.is_some() && a.set.is_none() {
            errors.push(
                format!("{apath}.set"),
                "the route names an active set, so every arm must name its set",
            );
        }
        let bp = weight_bp(a.weight);
        if bp.is_none() {
            errors.push(
                format!("{apath}.weight"),
                format!(
                    "{} must be a percentage between 0 and 100 with at most two decimals",
                    a.weight
                ),
            );
        }
        let set = a.set.as_deref();
        match set_totals.iter_mut().find(|(s, _)| *s == set) {
            Some((_, total)) => *total += u64::from(bp.unwrap_or(0)),
            None => set_totals.push((set, u64::from(bp.unwrap_or(0)))),
        }
        if a.backends.is_empty() {
            errors.push(
                format!("{apath}.backends"),
                "must list at least one backend",
            );
        }
        let mut seen = HashSet::new();
        let mut indexes = Vec::with_capacity(a.backends.len());
        for (k, name) in a.backends.iter().enumerate() {
            match backend_index.get(name.as_str()) {
                Some(&i) if seen.insert(i) => indexes.push(i),
                Some(_) => errors.push(
                    format!("{apath}.backends[{k}]"),
                    format!("backend `{name}` is listed twice"),
                ),
                None => errors.push(
                    format!("{apath}.backends[{k}]"),
                    format!("unknown backend `{name}`"),
                ),
            }
        }
        arms.push(NewArm {
            name: a.name.clone(),
            backends: indexes,
            weight_bp: bp.unwrap_or(0),
            set: a.set.clone(),
            active: r.active.is_none() || a.set == r.active,
        });
    }
    for (set, total) in &set_totals {
        if *total != u64::from(BUCKETS) {
            let whose = match set {
                Some(set) => format!("weights of set `{set}`"),
                None => "weights".to_owned(),
            };
            errors.push(
                format!("{path}.arms"),
                format!(
                    "{whose} sum to {}, they must sum to 100",
                    *total as f64 / 100.0
                ),
            );
        }
    }
    let shadow = r.shadow.as_ref().and_then(|s| {
        super::shadow::validate_shadow(&format!("{path}.shadow"), s, backend_index, errors)
    });
    let cache = r
        .cache
        .as_ref()
        .and_then(|c| super::cache::validate_route_cache(&format!("{path}.cache"), c, errors));
    let balance = super::balance::validate_balance(path, r, errors);
    let champion = super::guardrails::validate_champion(path, r, errors);
    let guardrails = super::guardrails::validate_rules(path, r, span, errors);
    let rollout = r.rollout.as_ref().and_then(|ro| {
        super::guardrails::validate_rollout(
            &format!("{path}.rollout"),
            ro,
            r,
            champion,
            &guardrails,
            errors,
        )
    });
    let refusal_patterns = super::guardrails::validate_refusal_patterns(path, r, errors);
    Some(RouteSpec {
        name: r.name.clone(),
        models: r.models.clone(),
        sticky: sticky?,
        salt: r.salt.clone().unwrap_or_else(|| r.name.clone()),
        arms: ArmTable::new(arms),
        active_set: r.active.clone(),
        allow_arm_override: r.allow_arm_override.unwrap_or(false),
        shadow,
        cache,
        balance: balance?,
        champion,
        guardrails,
        rollout,
        refusal_patterns,
        // Filled by the caller, which sees the policy's tiers and every route.
        tiering: Default::default(),
        fallback_routes: Vec::new(),
        retry: Default::default(),
    })
}
