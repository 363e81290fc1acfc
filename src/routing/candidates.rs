//! Candidate order within the chosen arm: which backends to try, in which order.
//!
//! Tiers are tried from the request's starting tier upward (overflow up: a saturated or failing
//! cheap tier hands over to the next dearer one), then — where the route allows it — downward.
//! Inside a tier the route's `balance` orders the backends (see [`super::balance`]): with
//! `least_inflight` (the default) the cheapest backend for this request comes first (expected
//! cost from the request's size and the backend's price), then the least loaded, ties rotated so
//! equal backends share the work; `round_robin` and `prefix` order the tier by their own rules. A backend at its `max_inflight` or cooling down after a 429 is left
//! out, and so is one its active health check calls unhealthy (even the last of an arm). A
//! passively ejected backend is left out too, but never more than the outlier policy's
//! `max_ejected_percent` of the arm's healthy backends and never all of them: past that share
//! the ejections ending soonest are ignored. Pure: the caller passes a view of load, cooldowns
//! and health taken at one instant.

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
    /// Its active health check calls it unhealthy.
    pub down: bool,
    /// When its passive ejection ends (milliseconds on the process clock), if it is ejected.
    pub ejected_until: Option<u64>,
}

impl BackendView {
    fn open(&self) -> bool {
        self.in_flight < self.max_inflight && !self.cooling && !self.down
    }
}

/// How many of `live` backends (those not taken out by active checks) passive ejection may
/// leave out at once: `percent` of them rounded down, and never all.
pub fn max_ejected(live: usize, percent: u8) -> usize {
    (live * usize::from(percent) / 100).min(live.saturating_sub(1))
}

/// Which of `views` (position in the arm, view) are ejected and stay out: all of them when
/// they are within `max_ejected_percent` of the arm's backends not down, else only the share
/// allowed, those whose ejection ends last. No allocation: arms are small, the count is
/// quadratic in their size.
fn stays_ejected(views: &[(usize, usize, BackendView)], i: usize, max_ejected_percent: u8) -> bool {
    let Some(until) = views[i].2.ejected_until else {
        return false;
    };
    let live = views.iter().filter(|(_, _, v)| !v.down).count();
    let ejected = views
        .iter()
        .filter(|(_, _, v)| !v.down && v.ejected_until.is_some())
        .count();
    let allowed = max_ejected(live, max_ejected_percent);
    if ejected <= allowed {
        return true;
    }
    // Rank among the ejected by end time (ties by arm position): the latest `allowed` stay out.
    let later = views
        .iter()
        .enumerate()
        .filter(|(j, (_, _, v))| {
            !v.down
                && v.ejected_until
                    .is_some_and(|u| u > until || (u == until && *j > i))
        })
        .count();
    later < allowed
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
#[expect(
    clippy::too_many_arguments,
    reason = "pure: every fact the decision reads is passed in, none fetched"
)]
pub fn order_backends(
    backends: &[usize],
    start_tier: usize,
    tiers: usize,
    overflow_down: bool,
    balance: &Balance,
    prompt_blocks: usize,
    max_ejected_percent: u8,
    view: impl Fn(usize) -> BackendView,
    draws: BalanceDraws,
) -> Vec<usize> {
    let rotation = draws.rotation;
    let n = backends.len().max(1);
    let mut views: Vec<(usize, usize, BackendView)> = backends
        .iter()
        .enumerate()
        .map(|(pos, &b)| (b, (pos + n - rotation % n) % n, view(b)))
        .collect();
    // Decided on the views as taken, then applied: one decision must not shift the next.
    let mut out_mask = 0u128;
    if views.iter().any(|(_, _, v)| v.ejected_until.is_some()) {
        for i in 0..views.len().min(128) {
            if stays_ejected(&views, i, max_ejected_percent) {
                out_mask |= 1 << i;
            }
        }
    }
    let mut i = 0;
    views.retain(|(_, _, v)| {
        // Ejection is weighed for an arm's first 128 backends; beyond, only load and checks.
        let keep = v.open() && (i >= 128 || out_mask & (1u128 << i) == 0);
        i += 1;
        keep
    });
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
            down: false,
            ejected_until: None,
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
            50,
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
                50,
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
                50,
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
                50,
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
                    50,
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
        let order = order_backends(
            &[0, 1, 2, 3],
            0,
            2,
            false,
            &prefix,
            8,
            50,
            |b| views[b],
            rot(0),
        );
        assert_eq!(order, vec![1, 0, 3, 2]);
    }

    fn order(views: &[BackendView], max_ejected_percent: u8) -> Vec<usize> {
        let all: Vec<usize> = (0..views.len()).collect();
        order_backends(
            &all,
            0,
            1,
            false,
            &Balance::LeastInflight,
            0,
            max_ejected_percent,
            |b| views[b],
            rot(0),
        )
    }

    #[test]
    fn never_all_of_an_arm_is_ejected() {
        assert_eq!(max_ejected(1, 100), 0);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(2, 100), 1);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(10, 0), 0);
        assert_eq!(max_ejected(0, 50), 0);
    }

    #[test]
    fn ejected_backends_stay_out_within_the_allowed_share() {
        let mut views = [v(0, 0, 0.0), v(0, 1, 0.0), v(0, 2, 0.0), v(0, 3, 0.0)];
        views[0].ejected_until = Some(5_000);
        assert_eq!(order(&views, 50), vec![1, 2, 3]);
        views[2].ejected_until = Some(9_000);
        assert_eq!(order(&views, 50), vec![1, 3]);
        // A third ejection is past 50 %: the one ending soonest (0) is let back in.
        views[3].ejected_until = Some(7_000);
        assert_eq!(order(&views, 50), vec![0, 1]);
        // 0 % keeps nobody out; 100 % keeps all but the one ending soonest out.
        assert_eq!(order(&views, 0), vec![0, 1, 2, 3]);
        views[1].ejected_until = Some(8_000);
        assert_eq!(order(&views, 100), vec![0]);
    }

    #[test]
    fn unhealthy_backends_are_out_even_all_of_them_and_shrink_the_ejection_share() {
        let mut views = [v(0, 0, 0.0), v(0, 1, 0.0)];
        views[0].down = true;
        views[1].ejected_until = Some(1);
        // Of one live backend none may be ejected: it serves despite its ejection.
        assert_eq!(order(&views, 100), vec![1]);
        views[1].down = true;
        assert_eq!(order(&views, 100), Vec::<usize>::new());
    }

    #[test]
    fn expected_cost_is_linear_in_tokens() {
        assert!((expected_cost(1_000_000, 500_000, 1.0, 2.0) - 2.0).abs() < 1e-12);
    }
}
