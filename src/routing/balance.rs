//! Choice among the backends of one arm (or one tier of it): the route's `balance` strategy
//! orders them for a request. Pure: the caller passes an explicit view of each backend's load
//! and of how much of the prompt's prefix it is believed to hold, and the randomness.
//!
//! - `least_inflight`: fewest requests in flight first, ties rotated.
//! - `round_robin`: the backends in turn.
//! - `prefix`: the backend whose KV cache most likely holds the prompt's prefix, unless that
//!   would pile load on it. Each backend within the load bound is scored as
//!   `prefix_weight × matched/prompt blocks` plus `load_weight × (1 − load/(highest load + 1))`
//!   plus `kv_weight × (1 − KV usage)`. Backends whose load would pass `load_bound` × the mean
//!   load (and `load_bound_floor`, so that a request or two on an idle fleet is no pile-up) go
//!   after every backend within it, fewest loaded first. An `explore_percent` share of requests
//!   puts a random backend within the bound first, so the index learns about backends it would
//!   otherwise never try.
//!
//! A backend's load is its requests in flight from this gateway, or — when its `/metrics` scrape
//! is fresh — the larger of that and its own running + waiting count. A backend without a fresh
//! scrape is never taken for idle: its KV usage counts as full, and the prefix it was believed to
//! hold counts for nothing when its scrape fails outright (it may have restarted, or be gone).
//! Backends at their `max_inflight` are left out in every strategy.

use super::prefix::BlockShape;

/// How a route orders the backends of the chosen arm.
#[derive(Debug, Clone, PartialEq)]
pub enum Balance {
    LeastInflight,
    RoundRobin,
    Prefix(PrefixBalance),
}

impl Balance {
    /// The prefix block shape when the strategy needs the prompt's block hashes.
    pub fn block_shape(&self) -> Option<BlockShape> {
        match self {
            Balance::Prefix(p) => Some(p.shape),
            _ => None,
        }
    }

    /// The policy-file name of the strategy.
    pub fn name(&self) -> &'static str {
        match self {
            Balance::LeastInflight => "least_inflight",
            Balance::RoundRobin => "round_robin",
            Balance::Prefix(_) => "prefix",
        }
    }
}

pub const DEFAULT_BLOCK_TOKENS: u32 = 16;
pub const DEFAULT_MAX_BLOCKS: usize = 512;
pub const DEFAULT_PREFIX_WEIGHT: f64 = 3.0;
pub const DEFAULT_LOAD_WEIGHT: f64 = 1.0;
pub const DEFAULT_KV_WEIGHT: f64 = 0.5;
pub const DEFAULT_LOAD_BOUND: f64 = 1.5;
pub const DEFAULT_LOAD_BOUND_FLOOR: f64 = 4.0;
pub const DEFAULT_EXPLORE_PERCENT: f64 = 1.0;

/// The knobs of `balance = "prefix"` (`[routes.prefix]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixBalance {
    /// How prompts are cut into hashed blocks.
    pub shape: BlockShape,
    pub prefix_weight: f64,
    pub load_weight: f64,
    pub kv_weight: f64,
    /// No backend is preferred for its prefix while its load would exceed this multiple of the
    /// mean load (the new request counted); at least 1.
    pub load_bound: f64,
    /// A backend whose load, this request counted, stays at or below this is never over the
    /// bound: at low load the mean is tiny and the multiple alone would scatter every prefix.
    pub load_bound_floor: f64,
    /// Share of requests, in basis points, that put a random backend within the bound first.
    pub explore_bp: u32,
}

impl Default for PrefixBalance {
    fn default() -> Self {
        PrefixBalance {
            shape: BlockShape {
                block_tokens: DEFAULT_BLOCK_TOKENS,
                max_blocks: DEFAULT_MAX_BLOCKS,
            },
            prefix_weight: DEFAULT_PREFIX_WEIGHT,
            load_weight: DEFAULT_LOAD_WEIGHT,
            kv_weight: DEFAULT_KV_WEIGHT,
            load_bound: DEFAULT_LOAD_BOUND,
            load_bound_floor: DEFAULT_LOAD_BOUND_FLOOR,
            explore_bp: (DEFAULT_EXPLORE_PERCENT * 100.0) as u32,
        }
    }
}

/// A backend's own figures from its `/metrics` scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScrapedLoad {
    /// `vllm:num_requests_running`.
    pub running: f64,
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:kv_cache_usage_perc`, 0..=1.
    pub kv_usage: f64,
}

/// What the last scrape says about a backend, as of the decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScrapeView {
    /// A scrape younger than the staleness limit.
    Fresh(ScrapedLoad),
    /// Not scraped yet, scraping off, or the last success is too old: load unknown.
    Unknown,
    /// The last scrape failed (refused, timed out, not metrics): load unknown, and whatever the
    /// backend cached before may be gone.
    Failing,
}

/// One backend of a tier as the strategy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalanceView {
    /// Index into the snapshot's backends.
    pub backend: usize,
    pub in_flight: u32,
    pub max_inflight: u32,
    pub scrape: ScrapeView,
    /// Leading prompt blocks this backend is believed to hold (from the prefix index).
    pub matched_blocks: usize,
}

impl BalanceView {
    fn load(&self) -> f64 {
        let own = f64::from(self.in_flight);
        match self.scrape {
            ScrapeView::Fresh(s) => own.max(s.running + s.waiting),
            _ => own,
        }
    }

    fn kv_free(&self) -> f64 {
        match self.scrape {
            ScrapeView::Fresh(s) => (1.0 - s.kv_usage).clamp(0.0, 1.0),
            _ => 0.0,
        }
    }

    fn matched(&self) -> usize {
        match self.scrape {
            ScrapeView::Failing => 0,
            _ => self.matched_blocks,
        }
    }
}

/// The randomness a balance decision may use, drawn by the caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct BalanceDraws {
    /// Turn counter: breaks ties and drives round robin.
    pub rotation: usize,
    /// Uniform in `0..10_000`: explore when below the strategy's `explore_bp`.
    pub explore: u32,
    /// Uniform: which backend within the bound exploration puts first.
    pub pick: usize,
}

/// Orders `backends` (one arm or tier) for a request whose prompt has `prompt_blocks` hashed
/// blocks; the caller tries them in this order. Backends at their `max_inflight` are left out.
pub fn order(
    balance: &Balance,
    backends: &[BalanceView],
    prompt_blocks: usize,
    draws: BalanceDraws,
) -> Vec<usize> {
    let n = backends.len().max(1);
    // Position after rotation: equal backends take turns at the front.
    let turn = |pos: usize| (pos + n - draws.rotation % n) % n;
    let open = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.in_flight < b.max_inflight);
    match balance {
        Balance::RoundRobin => {
            let mut v: Vec<(usize, usize)> = open.map(|(p, b)| (turn(p), b.backend)).collect();
            v.sort_unstable();
            v.into_iter().map(|(_, b)| b).collect()
        }
        Balance::LeastInflight => {
            let mut v: Vec<(u32, usize, usize)> = open
                .map(|(p, b)| (b.in_flight, turn(p), b.backend))
                .collect();
            v.sort_unstable();
            v.into_iter().map(|(_, _, b)| b).collect()
        }
        Balance::Prefix(knobs) => {
            let open: Vec<(usize, &BalanceView)> = open.collect();
            order_by_prefix(knobs, &open, prompt_blocks, draws, turn)
        }
    }
}

fn order_by_prefix(
    knobs: &PrefixBalance,
    open: &[(usize, &BalanceView)],
    prompt_blocks: usize,
    draws: BalanceDraws,
    turn: impl Fn(usize) -> usize,
) -> Vec<usize> {
    if open.is_empty() {
        return Vec::new();
    }
    let total: f64 = open.iter().map(|(_, b)| b.load()).sum();
    let highest = open.iter().map(|(_, b)| b.load()).fold(0.0, f64::max);
    // Bounded loads: with the new request counted, nobody may go past the bound × the mean.
    let cap =
        (knobs.load_bound.max(1.0) * (total + 1.0) / open.len() as f64).max(knobs.load_bound_floor);
    let mut within: Vec<(f64, usize, usize)> = Vec::with_capacity(open.len());
    let mut over: Vec<(f64, usize, usize)> = Vec::new();
    for &(pos, b) in open {
        let load = b.load();
        if load + 1.0 > cap {
            over.push((load, turn(pos), b.backend));
            continue;
        }
        let prefix = if prompt_blocks == 0 {
            0.0
        } else {
            b.matched().min(prompt_blocks) as f64 / prompt_blocks as f64
        };
        let score = knobs.prefix_weight * prefix
            + knobs.load_weight * (1.0 - load / (highest + 1.0))
            + knobs.kv_weight * b.kv_free();
        within.push((score, turn(pos), b.backend));
    }
    within.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    over.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    if draws.explore < knobs.explore_bp && !within.is_empty() {
        let chosen = draws.pick % within.len();
        let first = within.remove(chosen);
        within.insert(0, first);
    }
    within
        .into_iter()
        .chain(over)
        .map(|(_, _, backend)| backend)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(backend: usize, in_flight: u32, matched: usize) -> BalanceView {
        BalanceView {
            backend,
            in_flight,
            max_inflight: 100,
            scrape: ScrapeView::Fresh(ScrapedLoad {
                running: 0.0,
                waiting: 0.0,
                kv_usage: 0.5,
            }),
            matched_blocks: matched,
        }
    }

    fn prefix(explore_bp: u32) -> Balance {
        Balance::Prefix(PrefixBalance {
            explore_bp,
            ..PrefixBalance::default()
        })
    }

    const NO_DRAWS: BalanceDraws = BalanceDraws {
        rotation: 0,
        explore: 9_999,
        pick: 0,
    };

    #[test]
    fn least_inflight_first_and_saturated_left_out() {
        let mut views = vec![view(0, 5, 0), view(1, 1, 0), view(2, 10, 0), view(3, 3, 0)];
        views[2].max_inflight = 10;
        assert_eq!(
            order(&Balance::LeastInflight, &views, 0, NO_DRAWS),
            vec![1, 3, 0]
        );
    }

    #[test]
    fn least_inflight_ties_rotate() {
        let views = [view(7, 0, 0), view(8, 0, 0), view(9, 0, 0)];
        let firsts: Vec<usize> = (0..6)
            .map(|rotation| {
                order(
                    &Balance::LeastInflight,
                    &views,
                    0,
                    BalanceDraws {
                        rotation,
                        ..NO_DRAWS
                    },
                )[0]
            })
            .collect();
        assert_eq!(firsts, vec![7, 8, 9, 7, 8, 9]);
    }

    #[test]
    fn round_robin_ignores_load_and_prefix() {
        let views = [view(0, 50, 9), view(1, 0, 0), view(2, 0, 0)];
        let firsts: Vec<usize> = (0..3)
            .map(|rotation| {
                order(
                    &Balance::RoundRobin,
                    &views,
                    9,
                    BalanceDraws {
                        rotation,
                        ..NO_DRAWS
                    },
                )[0]
            })
            .collect();
        assert_eq!(firsts, vec![0, 1, 2]);
    }

    #[test]
    fn the_longest_matched_prefix_wins_within_the_bound() {
        // Backend 2 holds 8 of 10 blocks and has a little more load than the idle others.
        let views = [view(0, 1, 0), view(1, 1, 2), view(2, 2, 8), view(3, 1, 0)];
        let order = order(&prefix(0), &views, 10, NO_DRAWS);
        assert_eq!(order[0], 2, "{order:?}");
        assert_eq!(order[1], 1, "the next longest match follows");
    }

    #[test]
    fn a_backend_over_the_load_bound_loses_its_prefix_advantage() {
        // Mean load with the new request: (9 + 0 + 1 + 0 + 1) / 4 = 2.75; 1.5 × that = 4.125.
        let views = [view(0, 9, 10), view(1, 0, 0), view(2, 1, 0), view(3, 0, 0)];
        let order = order(&prefix(0), &views, 10, NO_DRAWS);
        assert_ne!(order[0], 0, "{order:?}");
        assert_eq!(*order.last().unwrap(), 0, "over the bound goes last");
    }

    #[test]
    fn below_the_floor_nobody_is_over_the_bound() {
        // Mean with the new request: 4 / 4 = 1; 1.5 × that = 1.5, but the floor is 4.
        let views = [view(0, 3, 10), view(1, 0, 0), view(2, 0, 0), view(3, 0, 0)];
        assert_eq!(order(&prefix(0), &views, 10, NO_DRAWS)[0], 0);
        let views = [view(0, 4, 10), view(1, 0, 0), view(2, 0, 0), view(3, 0, 0)];
        assert_ne!(order(&prefix(0), &views, 10, NO_DRAWS)[0], 0);
    }

    #[test]
    fn scraped_queue_counts_as_load() {
        // In flight from this gateway is 0, but the backend's own queue is long.
        let mut busy = view(0, 0, 10);
        busy.scrape = ScrapeView::Fresh(ScrapedLoad {
            running: 4.0,
            waiting: 6.0,
            kv_usage: 0.9,
        });
        let views = [busy, view(1, 0, 0), view(2, 0, 0)];
        let order = order(&prefix(0), &views, 10, NO_DRAWS);
        assert_eq!(*order.last().unwrap(), 0, "{order:?}");
    }

    #[test]
    fn a_stale_scrape_is_unknown_never_idle() {
        let mut stale = view(0, 0, 0);
        stale.scrape = ScrapeView::Unknown;
        let views = [stale, view(1, 0, 0)];
        // Same in flight, same (no) prefix: the backend with a fresh, half-full cache goes
        // first, whatever the rotation.
        for rotation in 0..2 {
            let order = order(
                &prefix(0),
                &views,
                4,
                BalanceDraws {
                    rotation,
                    ..NO_DRAWS
                },
            );
            assert_eq!(order, vec![1, 0]);
        }
        // But a stale backend's prefix still counts: it is unknown, not gone.
        let mut stale = view(0, 0, 4);
        stale.scrape = ScrapeView::Unknown;
        let order = order(&prefix(0), &[stale, view(1, 0, 0)], 4, NO_DRAWS);
        assert_eq!(order[0], 0);
    }

    #[test]
    fn a_failing_scrape_voids_the_prefix() {
        let mut gone = view(0, 0, 10);
        gone.scrape = ScrapeView::Failing;
        let order = order(&prefix(0), &[gone, view(1, 0, 0)], 10, NO_DRAWS);
        assert_eq!(order, vec![1, 0]);
    }

    #[test]
    fn exploration_puts_a_random_backend_within_the_bound_first() {
        let views = [view(0, 0, 10), view(1, 0, 0), view(2, 9, 0)];
        let balance = prefix(200);
        let explored = order(
            &balance,
            &views,
            10,
            BalanceDraws {
                rotation: 0,
                explore: 199,
                pick: 1,
            },
        );
        assert_eq!(explored[0], 1);
        assert_eq!(*explored.last().unwrap(), 2, "never the one over the bound");
        let not = order(
            &balance,
            &views,
            10,
            BalanceDraws {
                rotation: 0,
                explore: 200,
                pick: 1,
            },
        );
        assert_eq!(not[0], 0, "draws at or above the share do not explore");
    }

    #[test]
    fn prefix_without_any_match_spreads_by_load() {
        let views = [view(0, 3, 0), view(1, 0, 0), view(2, 1, 0)];
        assert_eq!(order(&prefix(0), &views, 6, NO_DRAWS), vec![1, 2, 0]);
    }

    #[test]
    fn saturated_backends_are_left_out_of_prefix_too() {
        let mut full = view(0, 4, 10);
        full.max_inflight = 4;
        assert_eq!(
            order(&prefix(0), &[full, view(1, 0, 0)], 10, NO_DRAWS),
            vec![1]
        );
        assert!(order(&prefix(0), &[full], 10, NO_DRAWS).is_empty());
    }
}
