//! Candidate order within the chosen arm: which backends to try, in which order.
//!
//! Tiers are tried from the request's starting tier upward (overflow up: a saturated or failing
//! cheap tier hands over to the next dearer one), then — where the route allows it — downward.
//! Inside a tier the route's `balance` orders the backends (see [`super::balance`]): with
//! `least_inflight` (the default) the cheapest backend for this request comes first (expected
//! cost from the request's size and the backend's price), then the least loaded, ties rotated so
//! equal backends share the work; `round_robin` and `prefix` order the tier by their own rules. A backend at its `max_inflight` or cooling down after a 429 is left
//! out. Pure: the caller passes a view of load and cooldowns taken at one instant.

use super::balance::{self, Balance, BalanceDraws, BalanceView, ScrapeView};

/// What the order needs to know of one backend right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendView {
    /// Index of the backend's tier (0 when the policy has no tiers).
    pub tier: usize,
    pub in_flight: u32,
    pub max_inflight: u32,
    /// Told to back off (429 with `Retry-After`) and not yet due.
    pub cooling: bool,
    /// What this request would cost there, from its estimated size and the backend's price.
    pub expected_cost: f64,
    /// The backend's last `/metrics` scrape, as of now.
    pub scrape: ScrapeView,
    /// Leading blocks of the request's prompt the backend is believed to hold.
    pub matched_blocks: usize,
}

impl BackendView {
    fn open(&self) -> bool {
        self.in_flight < self.max_inflight && !self.cooling
    }
}

/// The tiers to try, in order: `start` and each above it, then — with `overflow_down` — each
/// below it, nearest first. `tiers` is the policy's tier count (at least 1).
pub fn tier_sequence(
    start: usize,
    tiers: usize,
    overflow_down: bool,
) -> impl Iterator<Item = usize> {
    let tiers = tiers.max(1);
    let start = start.min(tiers - 1);
    let below = if overflow_down { start } else { 0 };
    (start..tiers).chain((0..below).rev())
}

/// Orders `backends` (indexes into the policy's backends, in the arm's declared order) for one
/// request whose prompt has `prompt_blocks` hashed blocks. `balance` orders each tier, `draws`
/// break ties (and let `prefix` explore); `view` describes each backend now.
#[allow(clippy::too_many_arguments)]
pub fn order_backends(
    backends: &[usize],
    start_tier: usize,
    tiers: usize,
    overflow_down: bool,
    balance: &Balance,
    prompt_blocks: usize,
    view: impl Fn(usize) -> BackendView,
    draws: BalanceDraws,
) -> Vec<usize> {
    let rotation = draws.rotation;
    let n = backends.len().max(1);
    let views: Vec<(usize, usize, BackendView)> = backends
        .iter()
        .enumerate()
        .map(|(pos, &b)| (b, (pos + n - rotation % n) % n, view(b)))
        .filter(|(_, _, v)| v.open())
        .collect();
    let mut out = Vec::with_capacity(views.len());
    for tier in tier_sequence(start_tier, tiers, overflow_down) {
        let mut in_tier: Vec<_> = views.iter().filter(|(_, _, v)| v.tier == tier).collect();
        if !matches!(balance, Balance::LeastInflight) {
            let members: Vec<BalanceView> = in_tier
                .iter()
                .map(|(b, _, v)| BalanceView {
                    backend: *b,
                    in_flight: v.in_flight,
                    max_inflight: v.max_inflight,
                    scrape: v.scrape,
                    matched_blocks: v.matched_blocks,
                })
                .collect();
            out.extend(balance::order(balance, &members, prompt_blocks, draws));
            continue;
        }
        in_tier.sort_by(|(_, ra, a), (_, rb, b)| {
            a.expected_cost
                .total_cmp(&b.expected_cost)
                .then(a.in_flight.cmp(&b.in_flight))
                .then(ra.cmp(rb))
        });
        out.extend(in_tier.into_iter().map(|(b, _, _)| *b));
    }
    out
}

/// Expected cost in USD of a request of `prompt_tokens` asking for up to `max_tokens` at the
/// given per-million prices: the figure candidates are ordered by within a tier.
pub fn expected_cost(
    prompt_tokens: u64,
    max_tokens: u64,
    input_per_mtok: f64,
    output_per_mtok: f64,
) -> f64 {
    (prompt_tokens as f64 * input_per_mtok + max_tokens as f64 * output_per_mtok) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(rotation: usize) -> BalanceDraws {
        BalanceDraws {
            rotation,
            ..BalanceDraws::default()
        }
    }

    fn v(tier: usize, in_flight: u32, cost: f64) -> BackendView {
        BackendView {
            tier,
            in_flight,
            max_inflight: 10,
            cooling: false,
            expected_cost: cost,
            scrape: ScrapeView::Unknown,
            matched_blocks: 0,
        }
    }

    #[test]
    fn tiers_upward_from_the_start_then_down_when_allowed() {
        assert_eq!(tier_sequence(1, 3, false).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(tier_sequence(1, 3, true).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(
            tier_sequence(2, 4, true).collect::<Vec<_>>(),
            vec![2, 3, 1, 0]
        );
        assert_eq!(tier_sequence(0, 0, true).collect::<Vec<_>>(), vec![0]);
        assert_eq!(tier_sequence(9, 2, false).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn cheapest_first_within_a_tier_then_least_loaded() {
        // 0,1: economy (1 dearer than 0); 2,3: premium, equal price, 3 less loaded.
        let views = [v(0, 5, 0.001), v(0, 0, 0.002), v(2, 4, 0.01), v(2, 1, 0.01)];
        let order = order_backends(
            &[0, 1, 2, 3],
            0,
            3,
            false,
            &Balance::LeastInflight,
            0,
            |b| views[b],
            rot(0),
        );
        assert_eq!(order, vec![0, 1, 3, 2]);
        // Starting at premium leaves economy out, unless overflow down is allowed.
        assert_eq!(
            order_backends(
                &[0, 1, 2, 3],
                2,
                3,
                false,
                &Balance::LeastInflight,
                0,
                |b| views[b],
                rot(0)
            ),
            vec![3, 2]
        );
        assert_eq!(
            order_backends(
                &[0, 1, 2, 3],
                2,
                3,
                true,
                &Balance::LeastInflight,
                0,
                |b| views[b],
                rot(0)
            ),
            vec![3, 2, 0, 1]
        );
    }

    #[test]
    fn saturated_and_cooling_backends_are_left_out() {
        let mut views = [v(0, 10, 0.0), v(0, 0, 0.0), v(1, 0, 0.0)];
        views[1].cooling = true;
        assert_eq!(
            order_backends(
                &[0, 1, 2],
                0,
                2,
                false,
                &Balance::LeastInflight,
                0,
                |b| views[b],
                rot(0)
            ),
            vec![2]
        );
    }

    #[test]
    fn equal_backends_rotate() {
        let firsts: Vec<usize> = (0..6)
            .map(|r| {
                order_backends(
                    &[7, 8, 9],
                    0,
                    1,
                    false,
                    &Balance::LeastInflight,
                    0,
                    |_| v(0, 0, 0.0),
                    rot(r),
                )[0]
            })
            .collect();
        assert_eq!(firsts, vec![7, 8, 9, 7, 8, 9]);
    }

    #[test]
    fn prefix_balance_orders_within_a_tier_and_never_across() {
        // 0,1: tier 0; 2,3: tier 1. Backend 1 holds the prefix in tier 0, backend 3 in tier 1;
        // backend 2 holds more of it than anyone but sits in the dearer tier.
        let mut views = [v(0, 0, 0.0), v(0, 0, 0.0), v(1, 0, 0.0), v(1, 0, 0.0)];
        views[1].matched_blocks = 4;
        views[2].matched_blocks = 2;
        views[3].matched_blocks = 8;
        let prefix = Balance::Prefix(crate::routing::PrefixBalance {
            explore_bp: 0,
            ..Default::default()
        });
        let order = order_backends(&[0, 1, 2, 3], 0, 2, false, &prefix, 8, |b| views[b], rot(0));
        assert_eq!(order, vec![1, 0, 3, 2]);
    }

    #[test]
    fn expected_cost_is_linear_in_tokens() {
        assert!((expected_cost(1_000_000, 500_000, 1.0, 2.0) - 2.0).abs() < 1e-12);
    }
}
