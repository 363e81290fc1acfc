//! Command-line flags of `switchyard sim`, shared with in-process use.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything a sim instance is configured with.
///
/// The same struct drives the CLI (`switchyard sim ...`) and in-process use
/// from tests and benches (`SimServer::start(SimArgs { tpot_ms: 50, ..Default::default() })`).
/// `Default` yields exactly the CLI defaults: listen on `127.0.0.1:0`, one
/// model `sim-model`, no delays, no faults.
#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Model name served; repeat to serve several names. Requests for any
    /// other model get 404 `model_not_found`, like vLLM.
    #[arg(long = "model", default_value = "sim-model")]
    pub models: Vec<String>,

    /// Value of the `x-sim-name` header on every response (default: the
    /// bound address), so tests can tell which sim answered.
    #[arg(long)]
    pub name: Option<String>,

    /// Seed of the generated text, embeddings and the `--error-rate` draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Base time to first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub ttft_ms: u64,

    /// Prefill cost per prompt token not found in the prefix cache, in
    /// microseconds; added to the time to first token.
    #[arg(long, default_value_t = 0)]
    pub prefill_us_per_token: u64,

    /// Time per output token after the first, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub tpot_ms: u64,

    /// Upper bound on output tokens, whatever the request asks for.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_output_tokens: u32,

    /// Tokens per KV-cache block; only whole blocks are cached.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_block_tokens: u32,

    /// Blocks the prefix cache holds before evicting the least recently
    /// used; 0 disables prefix caching.
    #[arg(long, default_value_t = 4096)]
    pub kv_cache_blocks: usize,

    /// Dimension of the vectors `/v1/embeddings` returns.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub embedding_dim: u32,

    /// Fraction (0..=1) of model requests answered with `--error-status`
    /// instead of a completion.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub error_rate: f64,

    /// HTTP status of the errors `--error-rate` injects.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(400..=599))]
    pub error_status: u16,

    /// `Retry-After` seconds sent with every 429 (injected or from
    /// `--max-concurrency`).
    #[arg(long, default_value_t = 1)]
    pub retry_after_s: u64,

    /// Hold every model request this long before generation starts:
    /// nothing is sent meanwhile, not even the response head (unlike
    /// `--ttft-ms`, which streams wait for after the head), and the request
    /// counts as waiting (vLLM's queue) in `/metrics`.
    #[arg(long, default_value_t = 0)]
    pub stall_ms: u64,

    /// Streaming only: close the TCP connection after this many SSE events,
    /// without `[DONE]` or the terminating chunk.
    #[arg(long)]
    pub drop_after_events: Option<u32>,

    /// Streaming only: after this many SSE events send a vLLM-style
    /// `data: {"error": ...}` event and `data: [DONE]` on the 200 stream.
    #[arg(long)]
    pub stream_error_after: Option<u32>,

    /// Begin every answer with this text (as its first streamed token): a model that refuses,
    /// for refusal-pattern guardrails.
    #[arg(long)]
    pub refusal: Option<String>,

    /// Fraction (0..=1) of answers, plain and streamed, that end with
    /// `finish_reason: "content_filter"` instead of `"length"`: a model whose safety filter cuts
    /// answers off, for content-filter guardrails. Drawn per answer from `(--seed, n)`.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub content_filter_rate: f64,

    /// Model requests in flight beyond this get 429 (OpenAI error shape).
    #[arg(long)]
    pub max_concurrency: Option<usize>,

    /// Worker threads of the CLI's runtime (ignored in-process, where the
    /// caller's runtime is used).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
}

impl SimArgs {
    pub(crate) fn ttft(&self) -> Duration {
        Duration::from_millis(self.ttft_ms)
    }

    pub(crate) fn prefill_per_token(&self) -> Duration {
        Duration::from_micros(self.prefill_us_per_token)
    }

    pub(crate) fn tpot(&self) -> Duration {
        Duration::from_millis(self.tpot_ms)
    }
}

impl Default for SimArgs {
    /// The CLI defaults, taken from the clap attributes so they live in one place.
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: SimArgs,
        }
        <Defaults as clap::Parser>::parse_from(["sim"]).args
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let value: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not within 0..=1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimArgs,
    }

    #[test]
    fn default_matches_cli_defaults() {
        let args = SimArgs::default();
        assert_eq!(args.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(args.models, vec!["sim-model".to_string()]);
        assert_eq!(args.kv_block_tokens, 16);
        assert_eq!(args.max_output_tokens, 4096);
        assert_eq!(args.error_status, 500);
        assert_eq!(args.threads, 1);
        assert_eq!(args.ttft(), Duration::ZERO);
    }

    #[test]
    fn model_is_repeatable_and_replaces_the_default() {
        let cli = Cli::parse_from(["sim", "--model", "a", "--model", "b"]);
        assert_eq!(cli.args.models, vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        assert!(Cli::try_parse_from(["sim", "--error-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--error-status", "200"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--kv-block-tokens", "0"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--error-rate", "0.25"]).is_ok());
        assert!(Cli::try_parse_from(["sim", "--content-filter-rate", "-0.1"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--content-filter-rate", "1"]).is_ok());
    }
}
