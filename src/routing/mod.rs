//! Pure routing decisions over [`RequestFacts`] and a policy snapshot: which route, which arm,
//! which backends in which order. No I/O, no clocks, no randomness of their own; the proxy
//! supplies the random draw and the rotation.

pub mod api_key;
pub mod arm;
pub mod balance;
pub mod facts;
pub mod prefix;

pub use api_key::ApiKeyHash;
pub use arm::{choose_arm, sticky_bucket, Arm, ArmTable, NewArm, StickyKey, BUCKETS};
pub use balance::{BackendView, Balance, BalanceDraws, PrefixBalance, ScrapeView, ScrapedLoad};
pub use facts::{rewrite_model, Endpoint, FactsError, RequestFacts};

use crate::config::PolicySnapshot;

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index into the snapshot's routes.
    pub route: usize,
    /// Index into the route's arms.
    pub arm: usize,
    /// The arm's backends to try, in order (indexes into the snapshot's backends).
    pub backends: Vec<usize>,
    /// Parallel to `backends`: leading prompt blocks each is believed to hold (all 0 unless the
    /// route balances by prefix).
    pub matched_blocks: Vec<usize>,
    /// Whether a copy goes to the route's shadow backend.
    pub mirror: bool,
}

/// Why no decision could be made for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("no route serves model `{0}`")]
    UnknownModel(String),
    #[error("route `{route}` has no arm named `{arm}`")]
    UnknownArm { route: String, arm: String },
    #[error("every backend of route `{route}` arm `{arm}` is at its in-flight limit")]
    BackendsSaturated { route: String, arm: String },
}

/// The randomness a decision may use, drawn by the caller.
#[derive(Debug, Clone, Copy)]
pub struct Draws {
    /// Uniform in `0..BUCKETS`: the arm bucket when there is no sticky key.
    pub arm_bucket: u32,
    /// Uniform in `0..BUCKETS`: the shadow bucket when there is no sticky key.
    pub shadow_bucket: u32,
    /// Breaks ties between equally loaded backends.
    pub rotation: usize,
    /// Uniform in `0..10_000`: whether a prefix-balanced request explores.
    pub explore: u32,
    /// Uniform: which backend an exploring request tries first.
    pub pick: usize,
}

/// The header a QA client sets to force an arm on routes with `allow_arm_override`.
pub const ARM_OVERRIDE_HEADER: &str = "x-switchyard-arm";

/// Decides route, arm, backend order and mirroring for a request. `views(backends)` gives the
/// balance strategy its view of the chosen arm's backends (load, scraped figures, matched
/// prefix; see [`balance`]).
pub fn decide(
    snapshot: &PolicySnapshot,
    facts: &RequestFacts,
    headers: &http::HeaderMap,
    draws: Draws,
    views: impl FnOnce(&[usize]) -> Vec<BackendView>,
) -> Result<Decision, RoutingError> {
    let (route_index, route) = snapshot
        .route_for_model(&facts.model)
        .ok_or_else(|| RoutingError::UnknownModel(facts.model.clone()))?;
    let key = route.sticky.value(headers, facts);
    let forced = match headers.get(ARM_OVERRIDE_HEADER) {
        // Without the route's consent the header is ignored, not an error: clients may send it
        // to every route.
        Some(name) if route.allow_arm_override => {
            let name = String::from_utf8_lossy(name.as_bytes());
            Some(
                route
                    .arms
                    .position(&name)
                    .ok_or_else(|| RoutingError::UnknownArm {
                        route: route.name.clone(),
                        arm: name.into_owned(),
                    })?,
            )
        }
        _ => None,
    };
    let arm_index =
        forced.unwrap_or_else(|| choose_arm(&route.arms, &route.salt, key, draws.arm_bucket));
    let arm = &route.arms.arms()[arm_index];
    let views = views(&arm.backends);
    let backends = balance::order(
        &route.balance,
        &views,
        facts.prefix_blocks.len(),
        BalanceDraws {
            rotation: draws.rotation,
            explore: draws.explore,
            pick: draws.pick,
        },
    );
    let matched_blocks = backends
        .iter()
        .map(|b| {
            views
                .iter()
                .find(|v| v.backend == *b)
                .map_or(0, |v| v.matched_blocks)
        })
        .collect();
    if backends.is_empty() {
        return Err(RoutingError::BackendsSaturated {
            route: route.name.clone(),
            arm: arm.name.clone(),
        });
    }
    let mirror = route.shadow.as_ref().is_some_and(|shadow| {
        (shadow.mirror_streaming || !facts.stream)
            && mirror_bucket(&route.salt, key, draws.shadow_bucket) < shadow.percent_bp
    });
    Ok(Decision {
        route: route_index,
        arm: arm_index,
        backends,
        matched_blocks,
        mirror,
    })
}

/// The shadow bucket: sticky routes mirror the same keys every time (under a salt of their own,
/// so being mirrored does not correlate with the arm).
fn mirror_bucket(salt: &str, key: Option<&[u8]>, random_bucket: u32) -> u32 {
    match key {
        Some(key) => sticky_bucket(&format!("{salt}/shadow"), key),
        None => random_bucket % BUCKETS,
    }
}
