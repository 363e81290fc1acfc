//! The cache's places in the exchange: reading a repeated body's facts from the memo, and
//! before the exchange (look up, follow an identical request already upstream, or make the
//! answer from an entry, which `wire` writes). Storing a miss's answer after the relay is
//! [`Fill`]'s. The decisions are `cache::plan`'s; this file only does the I/O they call for.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;
use http::header;

use super::ctx::RequestCtx;
use super::fill::Fill;
use super::head;
use super::wire::{self, Hit, HitBody, Lines};
use super::Failure;
use crate::cache::flight::{self, Joined};
use crate::cache::memo::BodyDigest;
use crate::cache::store::{now_ms, FACTS_MEMO_MAX_BODY};
use crate::cache::{AnswerBody, CachedAnswer, Layer, Plan, ResponseCache};
use crate::config::PolicySnapshot;
use crate::error::GatewayError;
use crate::routing::{Endpoint, RequestFacts};
use crate::telemetry::{CacheStatus, Outcome};

/// The request's facts, and its body's digest when the policy caches anything. A body of up to
/// [`FACTS_MEMO_MAX_BODY`] bytes seen before under the same policy is not parsed again: what a
/// cache hit would otherwise spend most of its own time on.
pub(super) fn request_facts(
    cache: &ResponseCache,
    snapshot: &PolicySnapshot,
    endpoint: Endpoint,
    body: &[u8],
) -> Result<(Arc<RequestFacts>, Option<BodyDigest>), GatewayError> {
    let parse = || {
        RequestFacts::parse_with_prefix(endpoint, body, |model| {
            snapshot
                .route_for_model(model)
                .and_then(|(_, route)| route.balance.block_shape())
        })
        .map(Arc::new)
        .map_err(GatewayError::from)
    };
    if !snapshot.caches() {
        return Ok((parse()?, None));
    }
    let digest = BodyDigest::new(snapshot.version, endpoint, body);
    if body.len() > FACTS_MEMO_MAX_BODY {
        return Ok((parse()?, Some(digest)));
    }
    if let Some(facts) = cache.facts_memo().get(digest) {
        return Ok((facts, Some(digest)));
    }
    let facts = parse()?;
    cache.facts_memo().put(digest, facts.clone());
    Ok((facts, Some(digest)))
}

/// What the cache step decided.
pub(super) enum Step {
    /// Answer from the cache: the caller writes it.
    Hit(Hit),
    /// Go upstream (`ctx.cache_fill` is set when the answer may be stored).
    Upstream,
}

/// Runs the cache's part before the exchange for a request planned as `plan`.
pub(super) async fn before_upstream(
    cache: &Arc<ResponseCache>,
    ctx: &mut RequestCtx,
    snapshot: &PolicySnapshot,
    route: usize,
    plan: Plan,
) -> Result<Step, Failure> {
    // Most routes have no cache: they pay nothing here, not even the stats lookup.
    if let Plan::Off = plan {
        return Ok(Step::Upstream);
    }
    let route_spec = &snapshot.policy.routes[route];
    let stats = cache.stats().route(&route_spec.name);
    let (key, lookup, store, ttl, include_usage, max_entry_bytes) = match plan {
        Plan::Off => return Ok(Step::Upstream),
        Plan::Bypass(reason) => {
            stats.bypasses.fetch_add(1, Relaxed);
            tracing::debug!(reason = reason.as_str(), "cache bypassed");
            ctx.record.cache = CacheStatus::Bypass;
            return Ok(Step::Upstream);
        }
        Plan::Use {
            key,
            lookup,
            store,
            ttl,
            include_usage,
            max_entry_bytes,
        } => (key, lookup, store, ttl, include_usage, max_entry_bytes),
    };
    let charge = route_spec.cache.as_ref().is_some_and(|c| c.charge_hits);
    let mut flight = None;
    if lookup {
        if let Some((answer, layer)) = cache.lookup(key, include_usage).await {
            // Counted before the answer goes out: whoever saw the hit sees it counted.
            stats.hit(layer, saved(&answer, charge));
            let hit = hit(ctx, snapshot, &answer, layer, include_usage, charge)?;
            return Ok(Step::Hit(hit));
        }
        match cache.join(key) {
            Joined::Leader(guard) => flight = Some(guard),
            Joined::Follower(rx) => {
                stats.flight_joins.fetch_add(1, Relaxed);
                let waited =
                    tokio::time::timeout(cache.single_flight_wait(), flight::wait(rx)).await;
                if let Ok(Some(answer)) = waited {
                    if answer.serves(include_usage) {
                        stats.hit(Layer::Flight, saved(&answer, charge));
                        let hit =
                            hit(ctx, snapshot, &answer, Layer::Flight, include_usage, charge)?;
                        return Ok(Step::Hit(hit));
                    }
                }
                // The leader failed, was not stored, or took too long: go upstream as a plain
                // miss (its answer may still be stored).
            }
        }
    }
    stats.misses.fetch_add(1, Relaxed);
    ctx.record.cache = CacheStatus::Miss;
    if store {
        ctx.cache_fill = Some(Fill {
            cache: cache.clone(),
            stats,
            key,
            ttl_ms: ttl.as_millis() as u64,
            max_entry_bytes,
            flight,
        });
    }
    Ok(Step::Upstream)
}

/// What a hit spares the client: the upstream cost, unless the route bills hits anyway.
fn saved(answer: &CachedAnswer, charge: bool) -> f64 {
    if charge {
        0.0
    } else {
        answer.cost_usd
    }
}

/// The answer from `answer`: a plain body byte for byte with its content type, a stream event
/// by event. The record says "cache hit"; the cost is 0 unless the route charges hits.
fn hit(
    ctx: &mut RequestCtx,
    snapshot: &PolicySnapshot,
    answer: &CachedAnswer,
    layer: Layer,
    include_usage: bool,
    charge: bool,
) -> Result<Hit, Failure> {
    let cost = if charge { answer.cost_usd } else { 0.0 };
    let record = &mut ctx.record;
    record.cache = CacheStatus::Hit;
    record.status = 200;
    record.outcome = Outcome::Success;
    record.cost_usd = cost;
    let build = || -> pingora::Result<Hit> {
        let fixed = answer.hit_head.get_or_build(|| fixed_head(answer))?;
        let body = match &answer.body {
            AnswerBody::Plain { bytes, .. } => HitBody::Whole(bytes.clone()),
            AnswerBody::Stream { .. } => {
                HitBody::Events(answer.replay_events(include_usage).cloned().collect())
            }
        };
        let plain = matches!(body, HitBody::Whole(_));
        let mut hit = Hit::new(fixed, body);
        if plain {
            hit.line(&head::COST_USD, head::usd_text(cost).as_bytes());
        }
        hit.line(&head::CACHE_LAYER, layer.as_str().as_bytes());
        hit.number(&header::AGE, answer.age_s(now_ms()));
        let tier = snapshot
            .policy
            .backends
            .iter()
            .find(|b| b.name == answer.backend)
            .and_then(|b| b.tier.as_deref());
        if let Some(tier) = tier {
            hit.line(&head::TIER, wire::checked(tier)?);
        }
        hit.number(&head::POLICY_VERSION, snapshot.version);
        Ok(hit)
    };
    build().map_err(Failure::Abort)
}

/// The lines of a hit's head that depend only on the entry: content type and framing, `hit`,
/// and the route, arm and backend that produced it.
fn fixed_head(answer: &CachedAnswer) -> pingora::Result<Bytes> {
    let mut lines = Lines::default();
    match &answer.body {
        AnswerBody::Plain {
            content_type,
            bytes,
        } => {
            lines.text(&header::CONTENT_TYPE, content_type)?;
            lines.number(&header::CONTENT_LENGTH, bytes.len() as u64);
        }
        AnswerBody::Stream { .. } => {
            lines.text(&header::CONTENT_TYPE, "text/event-stream")?;
            lines.text(&header::TRANSFER_ENCODING, "chunked")?;
        }
    }
    lines.text(&head::CACHE, "hit")?;
    lines.text(&head::ROUTE, &answer.route)?;
    lines.text(&head::ARM, &answer.arm)?;
    lines.text(&head::BACKEND, &answer.backend)?;
    Ok(lines.done())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::ONE_ROUTE;
    use crate::config::PolicySource;

    /// The smallest policy with a cached route.
    fn cached() -> String {
        format!("{ONE_ROUTE}\n[routes.cache]\nttl_s = 60\n")
    }

    const BODY: &[u8] = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

    fn facts(
        store: &crate::config::PolicyStore,
        body: &[u8],
    ) -> (Arc<RequestFacts>, Option<BodyDigest>) {
        let snapshot = store.current();
        request_facts(store.cache(), &snapshot, Endpoint::ChatCompletions, body).unwrap()
    }

    #[test]
    fn a_repeated_body_is_parsed_once_per_policy_version() {
        let store = crate::server::new_store(&cached()).unwrap();
        let (first, digest) = facts(&store, BODY);
        let (again, same) = facts(&store, BODY);
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second read came from the memo"
        );
        assert_eq!(digest, same);

        store
            .apply(
                &cached().replace("ttl_s = 60", "ttl_s = 61"),
                PolicySource::Api,
                "a new version",
            )
            .unwrap();
        let (after_swap, new_digest) = facts(&store, BODY);
        assert!(
            !Arc::ptr_eq(&first, &after_swap),
            "parsed again under the new version"
        );
        assert_ne!(digest, new_digest);
        assert_eq!(*first, *after_swap);

        // Bodies over the bound are always parsed (the memo's memory stays bounded).
        let big = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "x".repeat(FACTS_MEMO_MAX_BODY)
        );
        let (a, _) = facts(&store, big.as_bytes());
        let (b, _) = facts(&store, big.as_bytes());
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn without_a_cached_route_nothing_is_hashed_or_remembered() {
        let store = crate::server::new_store(ONE_ROUTE).unwrap();
        let (first, digest) = facts(&store, BODY);
        let (again, _) = facts(&store, BODY);
        assert_eq!(digest, None);
        assert!(!Arc::ptr_eq(&first, &again));
    }
}
