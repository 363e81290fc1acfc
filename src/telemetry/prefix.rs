//! Per-route prefix-affinity figures: how many requests found their prompt's prefix on a
//! backend, and how much of it. They tell an operator whether `balance = "prefix"` is earning
//! its keep (a low match share with long shared prompts points at a too-small index, a too-low
//! `load_bound`, or traffic that simply does not repeat).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::prom;

/// Counters of one route, kept across policy versions.
#[derive(Debug, Default)]
pub struct PrefixStats {
    /// Requests with at least one hashed block that a backend answered.
    pub requests: AtomicU64,
    /// Of those, requests whose answering backend was believed to hold a prefix.
    pub matched: AtomicU64,
    /// Sum of matched blocks over all counted requests.
    pub matched_blocks: AtomicU64,
    /// Sum of hashed prompt blocks over all counted requests.
    pub prompt_blocks: AtomicU64,
}

impl PrefixStats {
    /// Counts one answered request: `matched` of its `prompt_blocks` blocks were believed to be
    /// on the backend that answered.
    pub fn record(&self, matched: usize, prompt_blocks: usize) {
        if prompt_blocks == 0 {
            return;
        }
        self.requests.fetch_add(1, Relaxed);
        if matched > 0 {
            self.matched.fetch_add(1, Relaxed);
        }
        self.matched_blocks.fetch_add(matched as u64, Relaxed);
        self.prompt_blocks.fetch_add(prompt_blocks as u64, Relaxed);
    }

    /// Share of counted requests that matched, 0 when none were counted.
    pub fn match_share(&self) -> f64 {
        ratio(self.matched.load(Relaxed), self.requests.load(Relaxed))
    }

    /// Mean matched blocks per counted request.
    pub fn mean_matched_blocks(&self) -> f64 {
        ratio(
            self.matched_blocks.load(Relaxed),
            self.requests.load(Relaxed),
        )
    }

    /// Writes every route's series.
    pub fn render_all(out: &mut String, routes: &[(String, Arc<PrefixStats>)]) {
        type Counter = fn(&PrefixStats) -> &AtomicU64;
        let counters: [(&str, &str, Counter); 4] = [
            (
                "switchyard_prefix_requests_total",
                "Requests of prefix-balanced routes with a hashed prompt prefix, answered by a backend.",
                |s| &s.requests,
            ),
            (
                "switchyard_prefix_matched_requests_total",
                "Of those, requests sent to a backend believed to hold part of the prefix.",
                |s| &s.matched,
            ),
            (
                "switchyard_prefix_matched_blocks_total",
                "Prompt blocks believed cached on the chosen backend, summed (mean = this / requests).",
                |s| &s.matched_blocks,
            ),
            (
                "switchyard_prefix_prompt_blocks_total",
                "Hashed prompt blocks, summed.",
                |s| &s.prompt_blocks,
            ),
        ];
        for (name, help, pick) in counters {
            prom::family(out, name, "counter", help);
            for (route, stats) in routes {
                prom::sample(
                    out,
                    name,
                    &prom::labels(&[("route", route)]),
                    pick(stats).load(Relaxed),
                );
            }
        }
        for (name, help, get) in [
            (
                "switchyard_prefix_match_ratio",
                "Share of counted requests that matched a prefix.",
                PrefixStats::match_share as fn(&PrefixStats) -> f64,
            ),
            (
                "switchyard_prefix_mean_matched_blocks",
                "Mean matched prefix length in blocks per counted request.",
                PrefixStats::mean_matched_blocks,
            ),
        ] {
            prom::family(out, name, "gauge", help);
            for (route, stats) in routes {
                prom::sample(out, name, &prom::labels(&[("route", route)]), get(stats));
            }
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_and_mean() {
        let s = PrefixStats::default();
        s.record(0, 10);
        s.record(6, 10);
        s.record(0, 0); // nothing hashed: not counted
        assert_eq!(s.match_share(), 0.5);
        assert_eq!(s.mean_matched_blocks(), 3.0);
        let mut out = String::new();
        PrefixStats::render_all(&mut out, &[("r\"1".to_owned(), Arc::new(s))]);
        assert!(
            out.contains("switchyard_prefix_matched_requests_total{route=\"r\\\"1\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("switchyard_prefix_match_ratio{route=\"r\\\"1\"} 0.5\n"),
            "{out}"
        );
    }
}
