//! The cache's decision for one request, made after the arm choice (the key includes the arm's
//! identity) and before any upstream exchange. The snapshot, the chosen route and arm, the
//! request's headers and body in; a plan out. Deterministic: the memo only saves recomputing
//! what these bytes in this context gave before.

use std::time::Duration;

use http::HeaderMap;

use super::eligibility::{verdict, BypassReason, ClientControl, Verdict};
use super::key::{Answerer, CacheKey, KeyScope, KeyedBody};
use super::memo::{BodyDigest, Remembered, SlotMemo};
use crate::config::policy::CacheScope;
use crate::config::PolicySnapshot;
use crate::routing::{ApiKeyHash, RequestFacts};

/// What the cache does for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The route has no cache: nothing was parsed or hashed.
    Off,
    Bypass(BypassReason),
    Use {
        key: CacheKey,
        /// Answer from the cache when possible (`false` under `cache-control: no-cache`).
        lookup: bool,
        /// Store the answer when it is a complete success.
        store: bool,
        ttl: Duration,
        /// The client asked for the usage chunk of a stream.
        include_usage: bool,
        max_entry_bytes: usize,
    },
}

/// A request body as the plan reads it: its bytes, and their digest when the caller already
/// has it (see [`BodyDigest::new`]; computed here otherwise).
pub struct SeenBody<'a> {
    pub bytes: &'a [u8],
    pub digest: Option<BodyDigest>,
}

/// Plans the cache's part for a request with `facts` that matched `route` and chose `arm`.
/// `memo` remembers what the same body gave before in the same context. The facts' `model` is
/// sent upstream unless a backend renames it.
pub fn plan(
    snapshot: &PolicySnapshot,
    route: usize,
    arm: usize,
    facts: &RequestFacts,
    headers: &HeaderMap,
    body: SeenBody<'_>,
    memo: &SlotMemo<Remembered>,
) -> Plan {
    let endpoint = facts.endpoint;
    let route_spec = &snapshot.policy.routes[route];
    let Some(spec) = &route_spec.cache else {
        return Plan::Off;
    };
    let tenant = match spec.scope {
        CacheScope::Global => None,
        CacheScope::ApiKey => ApiKeyHash::from_headers(headers),
    };
    let digest = body
        .digest
        .unwrap_or_else(|| BodyDigest::new(snapshot.version, endpoint, body.bytes))
        .within(route, arm, tenant.as_ref());
    // A body seen before in this context skips the parse; one whose key was never needed
    // (bypassed) is parsed again only if it now needs one.
    let (sampling, known_key, parsed) = match memo.get(digest) {
        Some(r) => (r.sampling, r.key, None),
        None => match KeyedBody::parse(body.bytes) {
            Ok(keyed) => (keyed.sampling(), None, Some(keyed)),
            Err(_) => return Plan::Bypass(BypassReason::Unreadable),
        },
    };
    let (lookup, store, ttl) = match verdict(
        spec,
        endpoint,
        &sampling,
        &ClientControl::from_headers(headers),
    ) {
        Verdict::Bypass(reason) => {
            if parsed.is_some() {
                memo.put(
                    digest,
                    Remembered {
                        key: None,
                        sampling,
                    },
                );
            }
            return Plan::Bypass(reason);
        }
        Verdict::Use { lookup, store, ttl } => (lookup, store, ttl),
    };
    if spec.scope == CacheScope::ApiKey && tenant.is_none() {
        return Plan::Bypass(BypassReason::NoApiKey);
    }
    let key = match known_key {
        Some(key) => key,
        None => {
            let keyed = match parsed.map_or_else(|| KeyedBody::parse(body.bytes), Ok) {
                Ok(keyed) => keyed,
                Err(_) => return Plan::Bypass(BypassReason::Unreadable),
            };
            let key = key_of(
                &keyed,
                snapshot,
                route,
                arm,
                facts,
                tenant,
                &spec.ignore_fields,
            );
            memo.put(
                digest,
                Remembered {
                    key: Some(key),
                    sampling,
                },
            );
            key
        }
    };
    Plan::Use {
        key,
        lookup,
        store,
        ttl,
        include_usage: sampling.include_usage,
        max_entry_bytes: spec.max_entry_bytes,
    }
}

/// The key of `keyed` on `route`'s `arm` for `tenant`: what would answer it (the arm and its
/// backends' upstream model names) and everything in the body that can change the answer,
/// less the route's `ignore` fields.
fn key_of(
    keyed: &KeyedBody,
    snapshot: &PolicySnapshot,
    route: usize,
    arm: usize,
    facts: &RequestFacts,
    tenant: Option<ApiKeyHash>,
    ignore: &[String],
) -> CacheKey {
    let route_spec = &snapshot.policy.routes[route];
    let arm_spec = &route_spec.arms.arms()[arm];
    let upstream_models: Vec<&str> = arm_spec
        .backends
        .iter()
        .map(|&b| {
            snapshot.policy.backends[b]
                .upstream_model
                .as_deref()
                .unwrap_or(&facts.model)
        })
        .collect();
    let answerer = Answerer {
        route: &route_spec.name,
        arm: &arm_spec.name,
        upstream_models: &upstream_models,
    };
    let scope = tenant.map_or(KeyScope::Global, KeyScope::Tenant);
    keyed.key(facts.endpoint, &answerer, scope, ignore)
}
