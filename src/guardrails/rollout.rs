//! Progressive rollout: an arm ramped through weight steps while its guardrails hold.

use std::time::Duration;

/// One validated `[routes.rollout]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutSpec {
    /// Index of the arm rolled out.
    pub arm: usize,
    /// Weights in basis points, strictly ascending, the last 10 000 (100 %).
    pub steps_bp: Vec<u32>,
    /// Time at one step before the next may be taken.
    pub bake: Duration,
    /// Indexes of the route's guardrails that must pass to advance.
    pub require: Vec<usize>,
}
