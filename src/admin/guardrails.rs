//! `GET /admin/guardrails` (window figures per route/arm/backend, rule verdicts, rollouts) and
//! `POST /admin/rollout/{route}/pause|resume|promote|abort`.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{error, json_response, percent_decode, query_param};
use crate::config::PolicyStore;
use crate::guardrails::evaluator::CommandError;
use crate::guardrails::rollout::fmt_weight;
use crate::guardrails::{Dist, GuardrailRuntime, RolloutCommand, SliceData, OUTCOMES};

/// Window of the figures when the query names none.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

fn dist_name(d: Dist) -> &'static str {
    match d {
        Dist::Latency => "latency_seconds",
        Dist::Ttfb => "ttfb_seconds",
        Dist::Ttft => "ttft_seconds",
        Dist::InterToken => "itl_seconds",
        Dist::OutputTps => "output_tokens_per_second",
        Dist::OutputTokens => "output_tokens",
        Dist::Cost => "cost_usd",
    }
}

fn figures(data: &SliceData) -> Value {
    let mut quantiles = serde_json::Map::new();
    for d in Dist::ALL {
        if data.hist(d).is_empty() {
            continue;
        }
        quantiles.insert(
            dist_name(d).to_owned(),
            json!({
                "count": data.hist(d).len(),
                "p50": data.quantile(d, 0.5),
                "p95": data.quantile(d, 0.95),
                "p99": data.quantile(d, 0.99),
            }),
        );
    }
    let outcomes: serde_json::Map<String, Value> = OUTCOMES
        .iter()
        .filter(|o| data.outcome(**o) > 0)
        .map(|o| (o.as_str().to_owned(), json!(data.outcome(*o))))
        .collect();
    json!({
        "requests": data.requests(),
        "outcomes": outcomes,
        "failures": data.failures(),
        "fallbacks": data.fallbacks,
        "content_filtered": data.content_filtered,
        "refusals": data.refusals,
        "quantiles": quantiles,
    })
}

/// The guardrails' view: `?window=60s` sets the figures' window.
pub(super) fn report(
    store: &PolicyStore,
    runtime: &GuardrailRuntime,
    query: &str,
) -> Response<Vec<u8>> {
    let window = match query_param(query, "window").map(percent_decode) {
        None => DEFAULT_WINDOW,
        Some(text) => match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("`window` must be a duration like \"60s\", not `{text}`"),
                    "invalid_window",
                )
            }
        },
    };
    let metrics = store.metrics();
    let now_ms = metrics.clock.now_ms();
    let series: Vec<Value> = metrics
        .windows
        .all()
        .into_iter()
        .map(|(key, s)| {
            let mut v = figures(&s.window(now_ms, window));
            v["route"] = json!(key.route);
            v["arm"] = json!(key.arm);
            v["backend"] = json!(key.backend);
            v
        })
        .collect();
    let (statuses, rollouts) = runtime.report();
    let rules: Vec<Value> = statuses
        .iter()
        .map(|s| {
            json!({
                "route": s.route,
                "rule": s.rule,
                "arm": s.arm,
                "action": s.action.as_str(),
                "verdict": s.judgement.verdict.to_string(),
                "observed": s.judgement.observed,
                "champion": s.judgement.champion,
                "requests": s.judgement.requests,
                "champion_requests": s.judgement.champion_requests,
                "p_value": s.judgement.p_value,
                "streak": s.streak,
                "consecutive": s.consecutive,
                "detail": s.judgement.detail,
            })
        })
        .collect();
    let snapshot = store.current();
    let rollouts: Vec<Value> = rollouts
        .iter()
        .map(|(route, ro)| {
            let arm = snapshot
                .policy
                .routes
                .iter()
                .find(|r| &r.name == route)
                .map(|r| r.arms.arms()[ro.spec.arm].name.clone());
            json!({
                "route": route,
                "arm": arm,
                "phase": ro.phase.as_str(),
                "weight": fmt_weight(ro.weight_bp).parse::<f64>().unwrap_or(0.0),
                "steps": ro.spec.steps_bp.iter().map(|s| f64::from(*s) / 100.0).collect::<Vec<_>>(),
                "at_step_seconds": now_ms.saturating_sub(ro.since_ms) as f64 / 1e3,
                "bake_seconds": ro.spec.bake.as_secs_f64(),
                "note": ro.note,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "window_seconds": window.as_secs_f64(),
            "series": series,
            "rules": rules,
            "rollouts": rollouts,
        }),
    )
}

/// `POST /admin/rollout/{route}/{verb}` (the route name percent-encoded).
pub(super) fn rollout(runtime: &GuardrailRuntime, rest: &str) -> Response<Vec<u8>> {
    let Some((route, verb)) = rest.rsplit_once('/') else {
        return error(
            StatusCode::NOT_FOUND,
            "use /admin/rollout/{route}/pause|resume|promote|abort",
            "unknown_url",
        );
    };
    let Some(cmd) = RolloutCommand::parse(verb) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("`{verb}` is not one of pause, resume, promote, abort"),
            "unknown_url",
        );
    };
    let route = percent_decode(route);
    match runtime.command(&route, cmd) {
        Ok(phase) => json_response(StatusCode::OK, &json!({"route": route, "phase": phase})),
        Err(e @ CommandError::NoRollout(_)) => {
            error(StatusCode::NOT_FOUND, &e.to_string(), "no_rollout")
        }
        Err(e @ CommandError::WrongPhase { .. }) => {
            error(StatusCode::CONFLICT, &e.to_string(), "rollout_phase")
        }
        Err(e) => error(StatusCode::CONFLICT, &e.to_string(), "invalid_policy"),
    }
}
