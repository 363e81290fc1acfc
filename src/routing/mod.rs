//! Pure routing decisions over [`RequestFacts`] and a policy snapshot: which route, which arm,
//! which backends in which order. No I/O, no clocks, no randomness of their own; the proxy
//! supplies the random draw and the rotation.

pub mod arm;
pub mod backend;
pub mod facts;

pub use arm::{choose_arm, sticky_bucket, Arm, ArmTable, StickyKey, BUCKETS};
pub use backend::order_by_load;
pub use facts::{rewrite_model, Endpoint, FactsError, RequestFacts};

use crate::config::PolicySnapshot;
use crate::error::GatewayError;

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index into the snapshot's routes.
    pub route: usize,
    /// Index into the route's arms.
    pub arm: usize,
    /// The arm's backends to try, in order (indexes into the snapshot's backends).
    pub backends: Vec<usize>,
}

/// Decides route, arm and backend order for a request. `random_bucket` (uniform in
/// `0..BUCKETS`) is used only when the route is not sticky or the request lacks the key;
/// `rotation` breaks ties between equally loaded backends.
pub fn decide(
    snapshot: &PolicySnapshot,
    facts: &RequestFacts,
    headers: &http::HeaderMap,
    random_bucket: u32,
    rotation: usize,
) -> Result<Decision, GatewayError> {
    let (route_index, route) = snapshot
        .route_for_model(&facts.model)
        .ok_or_else(|| GatewayError::UnknownModel(facts.model.clone()))?;
    let key = route.sticky.value(headers, facts);
    let arm_index = choose_arm(&route.arms, &route.salt, key, random_bucket);
    let arm = &route.arms.arms()[arm_index];
    let backends = order_by_load(
        &arm.backends,
        |b| {
            (
                snapshot.loads[b].in_flight(),
                snapshot.policy.backends[b].max_inflight,
            )
        },
        rotation,
    );
    if backends.is_empty() {
        return Err(GatewayError::BackendsSaturated {
            route: route.name.clone(),
            arm: arm.name.clone(),
        });
    }
    Ok(Decision {
        route: route_index,
        arm: arm_index,
        backends,
    })
}
