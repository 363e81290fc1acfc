//! Pure routing decisions over [`RequestFacts`] and a policy snapshot: which route, which arm,
//! which tier to start from, which backends in which order, whether to retry. No I/O, no clocks,
//! no randomness of their own; the proxy supplies the random draws, the rotation and a view of
//! backend load taken at one instant.
//!
//! The decision comes in steps so others can sit between them: [`match_route`] (route from the
//! model; budget admission follows it), [`choose_arm`] (sticky or random bucket, QA override,
//! shadow; the cache lookup follows it, since its key includes the arm), then [`candidates`]
//! (tiers, price, load, cooldowns, fallback routes).

pub mod api_key;
pub mod arm;
pub mod balance;
pub mod candidates;
pub mod facts;
pub mod fallback;
pub mod prefix;
pub mod tier;

pub use api_key::ApiKeyHash;
pub use arm::{sticky_bucket, Arm, ArmTable, NewArm, StickyKey, BUCKETS};
pub use balance::{Balance, BalanceDraws, BalanceView, PrefixBalance, ScrapeView, ScrapedLoad};
pub use candidates::BackendView;
pub use facts::{rewrite_model, Endpoint, FactsError, RequestFacts};

use crate::config::{PolicySnapshot, RouteSpec};

/// Why no decision could be made for a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    #[error("no route serves model `{0}`")]
    UnknownModel(String),
    #[error("route `{route}` has no arm named `{arm}`")]
    UnknownArm { route: String, arm: String },
    #[error(
        "every backend of route `{route}` arm `{arm}` is at its in-flight limit or cooling down"
    )]
    BackendsSaturated { route: String, arm: String },
    #[error("every backend of route `{route}` arm `{arm}` fails its health check")]
    BackendsUnhealthy { route: String, arm: String },
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

impl Draws {
    /// The part of the draws a balance strategy uses.
    pub fn balance(&self) -> BalanceDraws {
        BalanceDraws {
            rotation: self.rotation,
            explore: self.explore,
            pick: self.pick,
        }
    }
}

/// The header a QA client sets to force an arm on routes with `allow_arm_override`.
pub const ARM_OVERRIDE_HEADER: http::HeaderName = http::HeaderName::from_static("x-switchyard-arm");

/// The arm chosen for a request, and whether a copy goes to the route's shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmChoice {
    /// Index into the route's arms.
    pub arm: usize,
    pub mirror: bool,
}

/// One backend to try, with the route and arm whose policy it is tried under (a fallback
/// route's candidates carry that route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub backend: usize,
    pub route: usize,
    pub arm: usize,
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index into the snapshot's routes.
    pub route: usize,
    pub arm: usize,
    /// The tier the request starts from (index into the policy's tiers).
    pub start_tier: usize,
    /// Backends to try, in order: the arm's own (by tier), then the fallback routes'.
    pub candidates: Vec<Candidate>,
    /// Whether a copy goes to the route's shadow backend.
    pub mirror: bool,
}

/// The route serving the request's model.
pub fn match_route(snapshot: &PolicySnapshot, facts: &RequestFacts) -> Result<usize, RoutingError> {
    snapshot
        .route_for_model(&facts.model)
        .map(|(i, _)| i)
        .ok_or_else(|| RoutingError::UnknownModel(facts.model.clone()))
}

/// The arm of `route` for this request: the QA override where the route allows it, else the
/// sticky key's bucket, else the random one; and whether the request is mirrored.
pub fn choose_arm(
    route: &RouteSpec,
    facts: &RequestFacts,
    headers: &http::HeaderMap,
    draws: Draws,
) -> Result<ArmChoice, RoutingError> {
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
    let arm =
        forced.unwrap_or_else(|| arm::choose_arm(&route.arms, &route.salt, key, draws.arm_bucket));
    let mirror = route.shadow.as_ref().is_some_and(|shadow| {
        (shadow.mirror_streaming || !facts.stream)
            && mirror_bucket(&route.salt, key, draws.shadow_bucket) < shadow.percent_bp
    });
    Ok(ArmChoice { arm, mirror })
}

/// The backends to try for a request that starts at `start_tier` on `route`'s arm `arm`: that
/// arm's backends by tier, then each fallback route's (its own arm choice and tier rules, with
/// the same draws). A backend already listed is not listed again. `view` describes each
/// backend now; `plan` is the plan of the client's API key. Errors when nothing at all can be
/// tried.
#[expect(
    clippy::too_many_arguments,
    reason = "pure: every fact the decision reads is passed in, none fetched"
)]
pub fn candidates(
    snapshot: &PolicySnapshot,
    route_index: usize,
    arm_index: usize,
    start_tier: usize,
    facts: &RequestFacts,
    headers: &http::HeaderMap,
    plan: Option<&str>,
    draws: Draws,
    view: impl Fn(usize) -> BackendView,
) -> Result<Vec<Candidate>, RoutingError> {
    let policy = &snapshot.policy;
    let route = &policy.routes[route_index];
    let arm = &route.arms.arms()[arm_index];
    let mut out: Vec<Candidate> = candidates::order_backends(
        &arm.backends,
        start_tier,
        policy.tier_count(),
        route.tiering.overflow_down,
        &route.balance,
        facts.prefix_blocks.len(),
        policy.outlier.max_ejected_percent,
        &view,
        draws.balance(),
    )
    .into_iter()
    .map(|backend| Candidate {
        backend,
        route: route_index,
        arm: arm_index,
    })
    .collect();
    for &fallback in &route.fallback_routes {
        let other = &policy.routes[fallback];
        let Ok(choice) = choose_arm(other, facts, headers, draws) else {
            continue;
        };
        let start = tier::start_tier(&other.tiering, &policy.tiers, facts, headers, plan);
        // The fallback route's own balance orders its backends; the prompt was hashed with this
        // route's block shape, so a prefix-balanced fallback sees matches only when they agree.
        let backends = candidates::order_backends(
            &other.arms.arms()[choice.arm].backends,
            start,
            policy.tier_count(),
            other.tiering.overflow_down,
            &other.balance,
            facts.prefix_blocks.len(),
            policy.outlier.max_ejected_percent,
            &view,
            draws.balance(),
        );
        for backend in backends {
            if !out.iter().any(|c| c.backend == backend) {
                out.push(Candidate {
                    backend,
                    route: fallback,
                    arm: choice.arm,
                });
            }
        }
    }
    if out.is_empty() {
        // Taken out by health checks is not a load problem: say so.
        let unhealthy = arm.backends.iter().all(|&b| view(b).down);
        let (route, arm) = (route.name.clone(), arm.name.clone());
        return Err(if unhealthy {
            RoutingError::BackendsUnhealthy { route, arm }
        } else {
            RoutingError::BackendsSaturated { route, arm }
        });
    }
    Ok(out)
}

/// The plan of the request's API key. Hashing the credential costs a SHA-256, so only when the
/// policy has plans at all.
pub fn plan_for<'a>(snapshot: &'a PolicySnapshot, headers: &http::HeaderMap) -> Option<&'a str> {
    if snapshot.policy.plans.is_empty() {
        return None;
    }
    tier::plan_of(&snapshot.policy.plans, ApiKeyHash::from_headers(headers))
}

/// Every step at once, for callers with no step of their own in between (benches, tests).
pub fn decide(
    snapshot: &PolicySnapshot,
    facts: &RequestFacts,
    headers: &http::HeaderMap,
    draws: Draws,
    view: impl Fn(usize) -> BackendView,
) -> Result<Decision, RoutingError> {
    let route = match_route(snapshot, facts)?;
    let spec = &snapshot.policy.routes[route];
    let choice = choose_arm(spec, facts, headers, draws)?;
    let plan = plan_for(snapshot, headers);
    let start_tier = tier::start_tier(&spec.tiering, &snapshot.policy.tiers, facts, headers, plan);
    let candidates = candidates(
        snapshot, route, choice.arm, start_tier, facts, headers, plan, draws, view,
    )?;
    Ok(Decision {
        route,
        arm: choice.arm,
        start_tier,
        candidates,
        mirror: choice.mirror,
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
