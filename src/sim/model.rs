//! The sim's model of an inference server: how prompts count as tokens and
//! how long an answer takes. Pure: no clocks, no I/O; the server gives it the
//! facts (prompt tokens, prefix-cache hits, tokens to generate) and gets back
//! a [`Plan`] it then acts out.

use std::time::Duration;

/// The sim's tokenizer: every started run of 4 bytes of prompt text is one
/// token (roughly what BPE tokenizers average on English). Chosen because it
/// is trivially fast on multi-MiB prompts and gives token boundaries for the
/// prefix cache's blocks. Generated text uses 4-byte words, so feeding an
/// answer back as a prompt counts the same number of tokens.
pub use crate::routing::prefix::BYTES_PER_TOKEN;

/// Output length when the request names neither `max_tokens` nor
/// `max_completion_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// Prompt tokens of `bytes` under the sim's tokenizer (see [`BYTES_PER_TOKEN`]).
pub fn count_tokens(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len().div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX)
}

/// Tokens to generate: what the request asked for (or the default), capped
/// by the sim's `--max-output-tokens`.
pub fn output_tokens(requested: Option<u32>, cap: u32) -> u32 {
    requested.unwrap_or(DEFAULT_MAX_TOKENS).min(cap)
}

/// The latency knobs of a sim (`--ttft-ms`, `--prefill-us-per-token`, `--tpot-ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyModel {
    /// Fixed part of the time to first token.
    pub ttft: Duration,
    /// Added to the time to first token for every prompt token that is not
    /// served from the prefix cache.
    pub prefill_per_token: Duration,
    /// Gap between consecutive output tokens.
    pub tpot: Duration,
}

/// How one request will be answered: token counts for `usage` and the
/// timeline, relative to the moment generation starts (after any stall).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub prompt_tokens: u32,
    /// Prompt tokens found in the prefix cache
    /// (`usage.prompt_tokens_details.cached_tokens`).
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    /// When the first output token is ready.
    pub ttft: Duration,
    /// Gap between consecutive output tokens.
    pub per_token: Duration,
}

impl LatencyModel {
    /// Plans an answer. Only uncached prompt tokens cost prefill time.
    pub fn plan(&self, prompt_tokens: u32, cached_tokens: u32, completion_tokens: u32) -> Plan {
        let cached_tokens = cached_tokens.min(prompt_tokens);
        let uncached = prompt_tokens - cached_tokens;
        Plan {
            prompt_tokens,
            cached_tokens,
            completion_tokens,
            ttft: self.ttft + self.prefill_per_token * uncached,
            per_token: self.tpot,
        }
    }
}

impl Plan {
    /// When output token `index` (0-based) is ready: the first at the time
    /// to first token, each later one `per_token` after its predecessor.
    pub fn token_due(&self, index: u32) -> Duration {
        self.ttft + self.per_token * index
    }

    /// When the whole answer is ready; a non-streaming answer waits this long.
    pub fn total(&self) -> Duration {
        self.token_due(self.completion_tokens.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    #[test]
    fn tokens_are_started_four_byte_runs() {
        assert_eq!(count_tokens(b""), 0);
        assert_eq!(count_tokens(b"a"), 1);
        assert_eq!(count_tokens(b"abcd"), 1);
        assert_eq!(count_tokens(b"abcde"), 2);
        assert_eq!(count_tokens(&[0u8; 4096]), 1024);
    }

    #[test]
    fn output_tokens_default_and_cap() {
        assert_eq!(output_tokens(None, 4096), DEFAULT_MAX_TOKENS);
        assert_eq!(output_tokens(Some(100), 4096), 100);
        assert_eq!(output_tokens(Some(100), 10), 10);
    }

    #[test]
    fn only_uncached_tokens_cost_prefill() {
        let model = LatencyModel {
            ttft: 20 * MS,
            prefill_per_token: 10 * US,
            tpot: 5 * MS,
        };
        let cold = model.plan(1000, 0, 4);
        assert_eq!(cold.ttft, 20 * MS + 10_000 * US);
        let warm = model.plan(1000, 800, 4);
        assert_eq!(warm.cached_tokens, 800);
        assert_eq!(warm.ttft, 20 * MS + 2_000 * US);
        assert_eq!(warm.per_token, 5 * MS);
    }

    #[test]
    fn cached_tokens_never_exceed_the_prompt() {
        let plan = LatencyModel::default().plan(10, 50, 1);
        assert_eq!(
            plan.cached_tokens, 10,
            "cache hits are capped by the prompt length"
        );
    }

    #[test]
    fn timeline_puts_first_token_at_ttft_and_spaces_the_rest() {
        let model = LatencyModel {
            ttft: 100 * MS,
            prefill_per_token: Duration::ZERO,
            tpot: 50 * MS,
        };
        let plan = model.plan(10, 0, 3);
        assert_eq!(plan.token_due(0), 100 * MS);
        assert_eq!(plan.token_due(2), 200 * MS);
        assert_eq!(plan.total(), 200 * MS);
        assert_eq!(
            model.plan(10, 0, 0).total(),
            100 * MS,
            "an empty answer still waits for prefill"
        );
    }
}
