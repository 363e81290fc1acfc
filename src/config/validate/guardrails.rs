//! `[guardrails]`, and per route: `champion`, `[[routes.guardrails]]`, `[routes.rollout]`,
//! `refusal_patterns`.

use std::collections::HashSet;
use std::time::Duration;

use super::{weight_bp, Errors};
use crate::config::policy::*;
use crate::config::raw::{RawFigure, RawGuardrail, RawPolicy, RawRollout, RawRoute};
use crate::guardrails::{
    GuardrailAction, GuardrailMetric, GuardrailRule, RolloutSpec, WindowConfig,
};

fn duration(path: &str, text: &str, errors: &mut Errors) -> Option<Duration> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Some(d),
        Ok(_) => {
            errors.push(path, "must be longer than 0");
            None
        }
        Err(e) => {
            errors.push(
                path,
                format!("`{text}` is not a duration like \"800ms\", \"60s\" or \"15m\": {e}"),
            );
            None
        }
    }
}

pub(super) fn validate_settings(raw: &RawPolicy, errors: &mut Errors) -> GuardrailSettings {
    let defaults = WindowConfig::default();
    let g = raw.guardrails.clone().unwrap_or_default();
    let mut pick = |field: &str, value: &Option<String>, default: Duration| {
        value
            .as_deref()
            .and_then(|t| duration(&format!("guardrails.{field}"), t, errors))
            .unwrap_or(default)
    };
    let slice = pick("slice", &g.slice, defaults.slice);
    let span = pick("span", &g.span, defaults.span);
    let interval = pick("interval", &g.interval, DEFAULT_GUARDRAIL_INTERVAL);
    if span < slice {
        errors.push("guardrails.span", "must be at least one slice long");
    } else if span.as_millis() / slice.as_millis().max(1) > 10_000 {
        errors.push(
            "guardrails.span",
            "keeps more than 10000 slices; use longer slices",
        );
    }
    GuardrailSettings {
        windows: WindowConfig { slice, span },
        interval,
    }
}

/// The champion's index: the named arm, else the first arm of the active set.
pub(super) fn validate_champion(path: &str, r: &RawRoute, errors: &mut Errors) -> usize {
    match &r.champion {
        Some(name) => match r.arms.iter().position(|a| &a.name == name) {
            Some(i) => i,
            None => {
                errors.push(
                    format!("{path}.champion"),
                    format!("no arm is named `{name}`"),
                );
                0
            }
        },
        None => r
            .arms
            .iter()
            .position(|a| r.active.is_none() || a.set == r.active)
            .unwrap_or(0),
    }
}

pub(super) fn validate_refusal_patterns(
    path: &str,
    r: &RawRoute,
    errors: &mut Errors,
) -> Vec<String> {
    let mut out = Vec::with_capacity(r.refusal_patterns.len());
    for (i, p) in r.refusal_patterns.iter().enumerate() {
        let ppath = format!("{path}.refusal_patterns[{i}]");
        if p.trim().is_empty() {
            errors.push(ppath, "must not be empty");
        } else if p.len() > MAX_REFUSAL_PATTERN_BYTES {
            errors.push(
                ppath,
                format!("is longer than {MAX_REFUSAL_PATTERN_BYTES} bytes"),
            );
        } else {
            out.push(p.to_lowercase());
        }
    }
    out
}

fn quantile(path: &str, q: &RawFigure, errors: &mut Errors) -> Option<f64> {
    let value = match q {
        RawFigure::Number(n) => Some(*n),
        RawFigure::Text(t) => t
            .strip_prefix('p')
            .and_then(|d| d.parse::<f64>().ok())
            .map(|pct| pct / 100.0),
    };
    match value {
        Some(v) if v > 0.0 && v <= 1.0 => Some(v),
        _ => {
            errors.push(path, "must be like \"p95\" or a number in (0, 1]");
            None
        }
    }
}

/// A bound in natural units: a duration for time metrics, a share (`0.05` or `"5%"`) for
/// rates, a number otherwise.
fn bound(path: &str, metric: GuardrailMetric, f: &RawFigure, errors: &mut Errors) -> Option<f64> {
    let value = match (f, metric) {
        (RawFigure::Text(t), m) if m.is_duration() => {
            return duration(path, t, errors).map(|d| d.as_secs_f64())
        }
        (RawFigure::Number(_), m) if m.is_duration() => {
            errors.push(path, "must be a duration like \"800ms\"");
            return None;
        }
        (RawFigure::Number(n), _) => Some(*n),
        (RawFigure::Text(t), m) if m.dist().is_none() => t
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<f64>().ok())
            .map(|p| p / 100.0),
        (RawFigure::Text(_), _) => None,
    };
    match value {
        Some(v) if v.is_finite() && v >= 0.0 && (metric.dist().is_some() || v <= 1.0) => Some(v),
        _ => {
            errors.push(
                path,
                if metric.dist().is_some() {
                    "must be a number ≥ 0"
                } else {
                    "must be a share like 0.05 or \"5%\""
                },
            );
            None
        }
    }
}

fn validate_rule(
    path: &str,
    g: &RawGuardrail,
    r: &RawRoute,
    span: Duration,
    errors: &mut Errors,
) -> Option<GuardrailRule> {
    let before = errors.0.len();
    let metric = GuardrailMetric::parse(&g.metric);
    if metric.is_none() {
        errors.push(
            format!("{path}.metric"),
            format!("`{}` is not one of {}", g.metric, GuardrailMetric::NAMES),
        );
    }
    let window = duration(&format!("{path}.window"), &g.window, errors);
    if window.is_some_and(|w| w > span) {
        errors.push(
            format!("{path}.window"),
            format!(
                "is longer than guardrails.span ({}); the windows keep no more",
                humantime::format_duration(span)
            ),
        );
    }
    let metric = metric?;
    let quantile = match (&g.quantile, metric.dist()) {
        (Some(q), Some(_)) => quantile(&format!("{path}.quantile"), q, errors),
        (None, Some(_)) => {
            errors.push(
                format!("{path}.quantile"),
                format!(
                    "`{}` is a distribution: name a quantile like \"p95\"",
                    g.metric
                ),
            );
            None
        }
        (Some(_), None) => {
            errors.push(
                format!("{path}.quantile"),
                format!("`{}` is a rate; it takes no quantile", g.metric),
            );
            None
        }
        (None, None) => None,
    };
    let (abs_field, ratio_field, wrong_abs, wrong_ratio) = if metric.higher_is_better() {
        ("min", "min_ratio", &g.max, g.max_ratio)
    } else {
        ("max", "max_ratio", &g.min, g.min_ratio)
    };
    let (abs_raw, ratio) = if metric.higher_is_better() {
        (&g.min, g.min_ratio)
    } else {
        (&g.max, g.max_ratio)
    };
    if wrong_abs.is_some() || wrong_ratio.is_some() {
        errors.push(
            format!("{path}.{abs_field}"),
            format!(
                "`{}` is bounded by `{abs_field}` and `{ratio_field}` only",
                g.metric
            ),
        );
    }
    let absolute = abs_raw
        .as_ref()
        .and_then(|f| bound(&format!("{path}.{abs_field}"), metric, f, errors));
    if let Some(x) = ratio {
        if !(x.is_finite() && x > 0.0) {
            errors.push(format!("{path}.{ratio_field}"), "must be greater than 0");
        }
    }
    if abs_raw.is_none() && ratio.is_none() {
        errors.push(
            path.to_owned(),
            format!("needs `{abs_field}` and/or `{ratio_field}`"),
        );
    }
    if let Some(c) = g.confidence {
        if !(c > 0.5 && c < 1.0) {
            errors.push(
                format!("{path}.confidence"),
                "must be between 0.5 and 1 (e.g. 0.95)",
            );
        }
        if ratio.is_none() {
            errors.push(
                format!("{path}.confidence"),
                format!("tests the canary against the champion: it needs `{ratio_field}`"),
            );
        }
    }
    let action = match g.action.as_deref() {
        None => GuardrailAction::Alert,
        Some(a) => GuardrailAction::parse(a).unwrap_or_else(|| {
            errors.push(
                format!("{path}.action"),
                format!("`{a}` is not one of \"alert\", \"rollback\", \"pause\""),
            );
            GuardrailAction::Alert
        }),
    };
    if let Some(arm) = &g.arm {
        if !r.arms.iter().any(|a| &a.name == arm) {
            errors.push(format!("{path}.arm"), format!("no arm is named `{arm}`"));
        }
    }
    let consecutive = match g.consecutive {
        Some(0) => {
            errors.push(format!("{path}.consecutive"), "must be at least 1");
            1
        }
        Some(n) => n.min(u64::from(u32::MAX)) as u32,
        None => 1,
    };
    if errors.0.len() > before {
        return None;
    }
    Some(GuardrailRule {
        name: g.name.clone().unwrap_or_else(|| match quantile {
            Some(_) => format!("{}-{}", metric.as_str(), quantile_label(g)),
            None => metric.as_str().to_owned(),
        }),
        metric,
        quantile,
        window: window?,
        absolute,
        ratio,
        confidence: g.confidence,
        min_requests: g.min_requests.unwrap_or(100),
        consecutive,
        action,
        arm: g.arm.clone(),
    })
}

fn quantile_label(g: &RawGuardrail) -> String {
    match &g.quantile {
        Some(RawFigure::Text(t)) => t.clone(),
        Some(RawFigure::Number(n)) => format!("p{}", n * 100.0),
        None => String::new(),
    }
}

pub(super) fn validate_rules(
    path: &str,
    r: &RawRoute,
    span: Duration,
    errors: &mut Errors,
) -> Vec<GuardrailRule> {
    let mut names = HashSet::new();
    let mut rules = Vec::with_capacity(r.guardrails.len());
    for (i, g) in r.guardrails.iter().enumerate() {
        let gpath = format!("{path}.guardrails[{i}]");
        if let Some(rule) = validate_rule(&gpath, g, r, span, errors) {
            if !names.insert(rule.name.clone()) {
                errors.push(
                    format!("{gpath}.name"),
                    format!(
                        "duplicate guardrail name `{}` (name rules that share a metric)",
                        rule.name
                    ),
                );
            }
            rules.push(rule);
        }
    }
    rules
}

pub(super) fn validate_rollout(
    path: &str,
    ro: &RawRollout,
    r: &RawRoute,
    champion: usize,
    rules: &[GuardrailRule],
    errors: &mut Errors,
) -> Option<RolloutSpec> {
    let before = errors.0.len();
    let arm = r.arms.iter().position(|a| a.name == ro.arm);
    match arm {
        None => errors.push(
            format!("{path}.arm"),
            format!("no arm is named `{}`", ro.arm),
        ),
        Some(i) if i == champion => errors.push(
            format!("{path}.arm"),
            format!("`{}` is the champion; roll out another arm", ro.arm),
        ),
        Some(_) => {}
    }
    if r.active.is_some() {
        errors.push(
            path.to_owned(),
            "a blue-green route switches sets; a progressive rollout needs weighted arms",
        );
    }
    if ro.steps.is_empty() {
        errors.push(format!("{path}.steps"), "must list at least one step");
    }
    let mut steps = Vec::with_capacity(ro.steps.len());
    for (i, s) in ro.steps.iter().enumerate() {
        match weight_bp(*s) {
            Some(bp) if bp > 0 && steps.last().is_none_or(|last| *last < bp) => steps.push(bp),
            Some(_) => errors.push(
                format!("{path}.steps[{i}]"),
                "steps must be above 0 and strictly ascending",
            ),
            None => errors.push(
                format!("{path}.steps[{i}]"),
                format!("{s} must be a percentage between 0 and 100 with at most two decimals"),
            ),
        }
    }
    if steps.last().is_some_and(|l| *l != 10_000) {
        errors.push(
            format!("{path}.steps"),
            "the last step must be 100: reaching it completes the rollout",
        );
    }
    let bake = duration(&format!("{path}.bake"), &ro.bake, errors);
    let require = match &ro.require {
        None => (0..rules.len()).collect(),
        Some(names) => names
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let found = rules.iter().position(|rule| &rule.name == n);
                if found.is_none() {
                    errors.push(
                        format!("{path}.require[{i}]"),
                        format!("no guardrail of this route is named `{n}`"),
                    );
                }
                found
            })
            .collect(),
    };
    if errors.0.len() > before {
        return None;
    }
    Some(RolloutSpec {
        arm: arm?,
        steps_bp: steps,
        bake: bake?,
        require,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse_policy;
    use crate::config::validate::{assert_errors, errors_of};
    use crate::guardrails::{GuardrailAction, GuardrailMetric};

    const BASE: &str = r#"
        [guardrails]
        slice = "1s"
        span = "2m"
        interval = "500ms"
        [[backends]]
        name = "a"
        url = "http://127.0.0.1:9101"
        [[routes]]
        name = "chat"
        models = ["m"]
        refusal_patterns = ["I can't help with"]
          [[routes.arms]]
          name = "champion"
          backends = ["a"]
          weight = 95
          [[routes.arms]]
          name = "canary"
          backends = ["a"]
          weight = 5
          [[routes.guardrails]]
          metric = "ttft"
          quantile = "p95"
          window = "60s"
          max = "800ms"
          max_ratio = 1.2
          confidence = 0.95
          min_requests = 50
          consecutive = 2
          action = "rollback"
          [[routes.guardrails]]
          name = "errors"
          metric = "error_rate"
          window = "30s"
          max = "5%"
          action = "rollback"
          [routes.rollout]
          arm = "canary"
          steps = [5, 25, 100]
          bake = "10s"
          require = ["errors"]
    "#;

    #[test]
    fn guardrails_and_rollout_validate() {
        let p = parse_policy(BASE).expect("valid");
        assert_eq!(p.guardrails.windows.slice.as_millis(), 1000);
        let r = &p.routes[0];
        assert_eq!(r.champion, 0);
        assert_eq!(r.refusal_patterns, vec!["i can't help with"]);
        let ttft = &r.guardrails[0];
        assert_eq!(ttft.name, "ttft-p95");
        assert_eq!(ttft.metric, GuardrailMetric::Ttft);
        assert_eq!(
            (ttft.quantile, ttft.absolute, ttft.ratio),
            (Some(0.95), Some(0.8), Some(1.2))
        );
        assert_eq!(
            (ttft.consecutive, ttft.action),
            (2, GuardrailAction::Rollback)
        );
        assert_eq!(r.guardrails[1].absolute, Some(0.05));
        let ro = r.rollout.as_ref().unwrap();
        assert_eq!(
            (ro.arm, ro.steps_bp.clone(), ro.require.clone()),
            (1, vec![500, 2500, 10_000], vec![1])
        );
    }

    #[test]
    fn every_guardrail_error_names_its_field() {
        let bad = BASE
            .replace("quantile = \"p95\"", "quantile = \"p950\"")
            .replace("max = \"800ms\"", "max = 0.8")
            .replace("max = \"5%\"", "max = \"150%\"")
            .replace(
                "metric = \"error_rate\"",
                "metric = \"error_rate\"\n          quantile = 0.5",
            )
            .replace("steps = [5, 25, 100]", "steps = [25, 5, 90]")
            .replace("require = [\"errors\"]", "require = [\"nope\"]")
            .replace("window = \"30s\"", "window = \"5m\"")
            .replace("consecutive = 2", "consecutive = 0");
        let errs = errors_of(&bad);
        assert_errors(
            &errs,
            &[
                "routes[0].guardrails[0].quantile: must be like \"p95\"",
                "routes[0].guardrails[0].max: must be a duration",
                "routes[0].guardrails[0].consecutive: must be at least 1",
                "routes[0].guardrails[1].window: is longer than guardrails.span",
                "routes[0].guardrails[1].quantile: `error_rate` is a rate",
                "routes[0].guardrails[1].max: must be a share",
                "routes[0].rollout.steps[1]: steps must be above 0 and strictly ascending",
                "routes[0].rollout.steps: the last step must be 100",
                "routes[0].rollout.require[0]: no guardrail of this route is named `nope`",
            ],
        );
    }

    #[test]
    fn windows_cannot_change_while_running() {
        let a = parse_policy(BASE).unwrap().guardrails;
        let b = parse_policy(&BASE.replace("slice = \"1s\"", "slice = \"2s\""))
            .unwrap()
            .guardrails;
        let errs = super::super::check_windows_swap(&a, &b).unwrap_err();
        assert_eq!(errs[0].path, "guardrails.slice");
    }
}
