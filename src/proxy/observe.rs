//! The end of a request: its record, complete, goes once to every consumer — the arm's series,
//! tokens and cost, the shadow comparison, the access log. (Budgets and guardrails read the
//! same record here.)

use crate::cost::SpendLedger;
use crate::metrics::Metrics;
use crate::shadow::ExchangeRecord;
use crate::telemetry::usage::UsageKey;
use crate::telemetry::Outcome;

use super::ctx::RequestCtx;

/// Hands the finished record of `ctx` to every consumer.
pub(super) fn request_ended(ctx: &mut RequestCtx, metrics: &Metrics, spend: &SpendLedger) {
    let record = &ctx.record;
    let Some(snapshot) = ctx.snapshot.as_deref() else {
        return;
    };
    let policy = &snapshot.policy;
    if let Some(link) = ctx.shadow_link.take() {
        let usage = record.usage.unwrap_or_default();
        link.send(ExchangeRecord {
            backend: record
                .backend
                .map(|b| policy.backends[b].name.clone())
                .unwrap_or_default(),
            status: record.status,
            ok: record.outcome == Outcome::Success,
            latency: record.latency,
            ttft: record.ttft,
            prompt_tokens: usage.prompt_tokens,
            output_tokens: usage.completion_tokens,
            text: ctx.primary_text.take(),
            cost_usd: record.cost_usd,
        });
    }
    let (Some(route), Some(arm)) = (record.route, record.arm) else {
        if let Some(code) = record.error_code {
            metrics.record_rejected(code);
        }
        return;
    };
    if record.outcome == Outcome::Rejected {
        if let Some(code) = record.error_code {
            metrics.record_rejected(code);
        }
    }
    snapshot.arm_stats[route][arm].record(record.outcome, record.latency, record.ttft);
    if let Some(admitted) = ctx.admitted.take() {
        // A failed request costs what its backend reported (the record's cost), else nothing.
        let usage = record.usage.unwrap_or_default();
        spend.record(
            &admitted,
            record.cost_usd,
            usage.prompt_tokens + usage.completion_tokens,
            &policy.routes[route].name,
            record.tier.and_then(|t| policy.tier_name(t)).unwrap_or(""),
        );
    }
    if let (Some(backend), Some(usage)) = (record.backend, record.usage) {
        let series = snapshot
            .usage
            .get((route, arm, backend), &metrics.usage, || UsageKey {
                route: policy.routes[route].name.clone(),
                arm: policy.routes[route].arms.arms()[arm].name.clone(),
                backend: policy.backends[backend].name.clone(),
                tier: policy.backends[backend].tier.clone().unwrap_or_default(),
            });
        series.record(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            record.cost_usd,
        );
    }
    tracing::debug!(
        target: "switchyard::access",
        route = %policy.routes[route].name,
        arm = %policy.routes[route].arms.arms()[arm].name,
        backend = record.backend.map(|b| policy.backends[b].name.as_str()).unwrap_or(""),
        tier = record.tier.and_then(|t| policy.tier_name(t)).unwrap_or(""),
        status = record.status,
        outcome = record.outcome.as_str(),
        attempts = record.attempts.len(),
        fallbacks = record.fallbacks(),
        latency_ms = record.latency.as_secs_f64() * 1e3,
        ttft_ms = record.ttft.map_or(-1.0, |t| t.as_secs_f64() * 1e3),
        prompt_tokens = record.usage.map_or(0, |u| u.prompt_tokens),
        completion_tokens = record.usage.map_or(0, |u| u.completion_tokens),
        usage_estimated = record.usage.is_some_and(|u| u.estimated),
        cost_usd = record.cost_usd,
        version = snapshot.version,
    );
}
