//! The sim's `/metrics`, under vLLM's metric names so load-aware routing
//! built against the sim reads real vLLM unchanged.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;

/// Counters and gauges, updated lock-free on the request path.
#[derive(Debug)]
pub struct Metrics {
    /// Model requests admitted and not yet finished (running + waiting).
    in_flight: AtomicUsize,
    /// Of those, requests held by `--stall-ms` (vLLM's queue).
    waiting: AtomicUsize,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    /// Responses by status code, indexed by the code.
    responses: Box<[AtomicU64]>,
}

/// What the prefix cache reports at render time.
#[derive(Clone, Copy, Debug)]
pub struct CacheFigures {
    pub usage: f64,
    pub queried_tokens: u64,
    pub hit_tokens: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            in_flight: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            responses: (0..1000).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Metrics {
    /// Admits a model request unless `limit` are already in flight; the
    /// guard keeps it counted until dropped (answer sent or stream ended).
    pub fn admit(self: &Arc<Self>, limit: Option<usize>) -> Option<InFlight> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(Arc::clone(self));
        match limit {
            Some(limit) if before >= limit => None,
            _ => Some(guard),
        }
    }

    /// Counts the caller as waiting (queued) until the guard drops.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self)
    }

    pub fn count_tokens(&self, prompt: u32, generated: u32) {
        self.prompt_tokens
            .fetch_add(u64::from(prompt), Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(u64::from(generated), Ordering::Relaxed);
    }

    pub fn count_response(&self, status: StatusCode) {
        if let Some(counter) = self.responses.get(usize::from(status.as_u16())) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition; `model` fills the `model_name` label
    /// (vLLM labels with its first served model name).
    pub fn render(&self, model: &str, cache: CacheFigures) -> String {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let waiting = self.waiting.load(Ordering::Relaxed).min(in_flight);
        let model = escape_label(model);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {value}\n"
            );
        };
        metric(
            "vllm:num_requests_running",
            "gauge",
            "Requests generating (after any stall).",
            &(in_flight - waiting),
        );
        metric(
            "vllm:num_requests_waiting",
            "gauge",
            "Requests waiting to start (held by --stall-ms).",
            &waiting,
        );
        metric(
            "vllm:kv_cache_usage_perc",
            "gauge",
            "Prefix cache usage as a fraction, 1 = full.",
            &cache.usage,
        );
        metric(
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            &cache.queried_tokens,
        );
        metric(
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            &cache.hit_tokens,
        );
        metric(
            "vllm:prompt_tokens_total",
            "counter",
            "Prompt tokens of admitted model requests.",
            &self.prompt_tokens.load(Ordering::Relaxed),
        );
        metric(
            "vllm:generation_tokens_total",
            "counter",
            "Output tokens planned for admitted model requests.",
            &self.generation_tokens.load(Ordering::Relaxed),
        );
        out.push_str(
            "# HELP switchyard_sim_responses_total Responses by HTTP status, any endpoint.\n\
             # TYPE switchyard_sim_responses_total counter\n",
        );
        for (code, counter) in self.responses.iter().enumerate() {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "switchyard_sim_responses_total{{model_name=\"{model}\",code=\"{code}\"}} {count}"
                );
            }
        }
        out
    }
}

/// A model request in flight; see [`Metrics::admit`].
#[derive(Debug)]
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in its stall; see [`Metrics::waiting`].
#[derive(Debug)]
pub struct Waiting<'a>(&'a Metrics);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CACHE: CacheFigures = CacheFigures {
        usage: 0.5,
        queried_tokens: 100,
        hit_tokens: 40,
    };

    #[test]
    fn admit_enforces_the_limit_and_releases_on_drop() {
        let metrics = Arc::new(Metrics::default());
        let first = metrics.admit(Some(1)).expect("first request fits");
        assert!(metrics.admit(Some(1)).is_none(), "second exceeds the limit");
        drop(first);
        assert!(metrics.admit(Some(1)).is_some(), "the slot was released");
        assert_eq!(metrics.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn render_uses_vllm_names_with_model_label() {
        let metrics = Arc::new(Metrics::default());
        let _running = metrics.admit(None);
        let _stalled = metrics.admit(None);
        let _waiting = metrics.waiting();
        metrics.count_response(StatusCode::NOT_FOUND);
        let text = metrics.render("m\"1", CACHE);
        for line in [
            "vllm:num_requests_running{model_name=\"m\\\"1\"} 1",
            "vllm:num_requests_waiting{model_name=\"m\\\"1\"} 1",
            "vllm:kv_cache_usage_perc{model_name=\"m\\\"1\"} 0.5",
            "vllm:prefix_cache_queries_total{model_name=\"m\\\"1\"} 100",
            "vllm:prefix_cache_hits_total{model_name=\"m\\\"1\"} 40",
            "switchyard_sim_responses_total{model_name=\"m\\\"1\",code=\"404\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
