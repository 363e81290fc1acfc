//! The cache's decision for one request, made after the arm choice (the key includes the arm's
//! identity) and before any upstream exchange. Pure: the snapshot, the chosen route and arm,
//! the request's headers and body in; a plan out.

use std::time::Duration;

use http::HeaderMap;

use super::eligibility::{verdict, BypassReason, ClientControl, Verdict};
use super::key::{Answerer, CacheKey, KeyScope, KeyedBody};
use crate::config::policy::CacheScope;
use crate::config::PolicySnapshot;
use crate::routing::{ApiKeyHash, Endpoint};

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

/// Plans the cache's part for a request to `endpoint` that matched `route` and chose `arm`.
/// `model` is the request's `model` (sent upstream unless a backend renames it).
pub fn plan(
    snapshot: &PolicySnapshot,
    route: usize,
    arm: usize,
    endpoint: Endpoint,
    model: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Plan {
    let route_spec = &snapshot.policy.routes[route];
    let Some(spec) = &route_spec.cache else {
        return Plan::Off;
    };
    let Ok(keyed) = KeyedBody::parse(body) else {
        return Plan::Bypass(BypassReason::Unreadable);
    };
    let sampling = keyed.sampling();
    let (lookup, store, ttl) = match verdict(
        spec,
        endpoint,
        &sampling,
        &ClientControl::from_headers(headers),
    ) {
        Verdict::Bypass(reason) => return Plan::Bypass(reason),
        Verdict::Use { lookup, store, ttl } => (lookup, store, ttl),
    };
    let scope = match spec.scope {
        CacheScope::Global => KeyScope::Global,
        CacheScope::ApiKey => match ApiKeyHash::from_headers(headers) {
            Some(hash) => KeyScope::Tenant(hash),
            None => return Plan::Bypass(BypassReason::NoApiKey),
        },
    };
    let arm_spec = &route_spec.arms.arms()[arm];
    let upstream_models: Vec<&str> = arm_spec
        .backends
        .iter()
        .map(|&b| {
            snapshot.policy.backends[b]
                .upstream_model
                .as_deref()
                .unwrap_or(model)
        })
        .collect();
    let answerer = Answerer {
        route: &route_spec.name,
        arm: &arm_spec.name,
        upstream_models: &upstream_models,
    };
    Plan::Use {
        key: keyed.key(endpoint, &answerer, scope, &spec.ignore_fields),
        lookup,
        store,
        ttl,
        include_usage: sampling.include_usage,
        max_entry_bytes: spec.max_entry_bytes,
    }
}
