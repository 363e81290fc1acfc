//! The cost of one answer: its token usage at the serving backend's per-million-token prices.
//! Prompt tokens the backend served from its prefix cache are billed at the cached-input price
//! when the backend has one.

use crate::config::policy::Price;
use crate::telemetry::Usage;

/// USD for `usage` at `price`; a backend with no price costs nothing.
pub fn cost_usd(price: Option<&Price>, usage: &Usage) -> f64 {
    let Some(p) = price else {
        return 0.0;
    };
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let fresh = usage.prompt_tokens - cached;
    let cached_price = p.cached_input_per_mtok.unwrap_or(p.input_per_mtok);
    (fresh as f64 * p.input_per_mtok
        + cached as f64 * cached_price
        + usage.completion_tokens as f64 * p.output_per_mtok)
        / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(prompt: u64, completion: u64, cached: u64) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: cached,
            estimated: false,
        }
    }

    #[test]
    fn cost_from_prices() {
        let p = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
            cached_input_per_mtok: None,
        };
        assert!((cost_usd(Some(&p), &usage(1_000_000, 500_000, 0)) - 2.0).abs() < 1e-9);
        assert_eq!(cost_usd(None, &usage(10, 10, 0)), 0.0);
    }

    #[test]
    fn cached_prompt_tokens_at_the_cached_price() {
        let p = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.3),
        };
        // 600k fresh × 3 + 400k cached × 0.3 + 100k × 15 = 1.8 + 0.12 + 1.5
        let got = cost_usd(Some(&p), &usage(1_000_000, 100_000, 400_000));
        assert!((got - 3.42).abs() < 1e-9, "{got}");
        // More cached than prompt tokens (a confused backend) bills no negative fresh tokens.
        let got = cost_usd(Some(&p), &usage(10, 0, 50));
        assert!((got - 10.0 * 0.3 / 1e6).abs() < 1e-15);
    }
}
