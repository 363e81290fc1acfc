//! `RequestRecord`: what happened to one request, filled in by the exchange as it goes and
//! handed once, when the request is over, to every consumer (metrics, cost and spend, shadow
//! comparison, guardrails, the access log). Consumers read it with the snapshot the request
//! pinned: the indexes below point into that snapshot's policy.

use std::time::{Duration, Instant};

use crate::routing::fallback::AttemptFailure;
use crate::routing::Endpoint;

/// Most inter-token gaps one record keeps; a longer stream keeps its first ones (the counts
/// and the last gap are still right).
pub const MAX_GAPS: usize = 4096;

/// What happened to one request, by class. Guardrails and metrics count these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// A 2xx answer that completed (streams: ended with `[DONE]` and no error event).
    Success,
    /// The backend answered 4xx (other than 429): the client's fault, not the arm's.
    ClientError,
    /// The backend answered 429 and no other backend took the request.
    RateLimited,
    /// The backend answered 5xx, or broke the connection before its answer was complete.
    ServerError,
    /// No backend accepted a connection.
    ConnectError,
    /// A first-byte, time-to-first-token, idle or total deadline passed.
    Timeout,
    /// A stream that carried a vLLM error event or ended without `[DONE]`.
    StreamError,
    /// The client went away before the answer was complete.
    ClientAbort,
    /// The gateway answered the request itself with an error (bad request, unknown model,
    /// budget, saturation) before any backend saw it.
    Rejected,
}

impl Outcome {
    /// Counts against the arm's error rate: the backend (or the way to it) failed.
    pub fn is_backend_error(self) -> bool {
        matches!(
            self,
            Outcome::RateLimited
                | Outcome::ServerError
                | Outcome::ConnectError
                | Outcome::Timeout
                | Outcome::StreamError
        )
    }

    /// The label value used in metrics and the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::StreamError => "stream_error",
            Outcome::ClientAbort => "client_abort",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One attempt on one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Index into the snapshot's backends.
    pub backend: usize,
    /// `None` for the attempt whose answer went to the client.
    pub failure: Option<AttemptFailure>,
}

/// Token counts of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens the backend served from its prefix cache.
    pub cached_tokens: u64,
    /// The backend reported no usage: prompt tokens are the gateway's estimate from the body and
    /// completion tokens the count of streamed text events (0 for a plain answer).
    pub estimated: bool,
}

/// Whether and how the response cache answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheStatus {
    /// The route does not cache.
    #[default]
    Off,
    Hit,
    Miss,
    Bypass,
}

/// What happened to one request. Built by the proxy; read-only for consumers.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// When the request header was read.
    pub started: Instant,
    pub endpoint: Option<Endpoint>,
    pub stream: bool,
    /// Index into the snapshot's routes (the route the model matched).
    pub route: Option<usize>,
    /// Index into that route's arms.
    pub arm: Option<usize>,
    /// Index into the snapshot's backends: the one whose answer the client got.
    pub backend: Option<usize>,
    /// Index into the snapshot's tiers: the serving backend's tier.
    pub tier: Option<usize>,
    /// Every attempt in order, the serving one last.
    pub attempts: Vec<Attempt>,
    /// The status the client got; 0 when nothing was answered.
    pub status: u16,
    pub outcome: Outcome,
    /// The gateway's error code when it answered with an error itself.
    pub error_code: Option<&'static str>,
    /// From the serving attempt's request sent upstream to its response header.
    pub ttfb: Option<Duration>,
    /// From the serving attempt's request sent upstream to the first body bytes (streams: the
    /// first event).
    pub ttft: Option<Duration>,
    /// Gaps between successive stream events after the first, at most [`MAX_GAPS`].
    pub gaps: Vec<Duration>,
    pub usage: Option<Usage>,
    /// What the request cost at the serving backend's price.
    pub cost_usd: f64,
    pub cache: CacheStatus,
    /// A choice ended with `finish_reason: "content_filter"`.
    pub content_filtered: bool,
    /// The answer matched one of the route's refusal patterns.
    pub refusal: bool,
    /// From `started` to the last byte written (set when the request ends).
    pub latency: Duration,
}

impl RequestRecord {
    pub fn new(started: Instant) -> RequestRecord {
        RequestRecord {
            started,
            endpoint: None,
            stream: false,
            route: None,
            arm: None,
            backend: None,
            tier: None,
            attempts: Vec::new(),
            status: 0,
            outcome: Outcome::Rejected,
            error_code: None,
            ttfb: None,
            ttft: None,
            gaps: Vec::new(),
            usage: None,
            cost_usd: 0.0,
            cache: CacheStatus::Off,
            content_filtered: false,
            refusal: false,
            latency: Duration::ZERO,
        }
    }

    /// Attempts that failed before the one that served (or before giving up).
    pub fn fallbacks(&self) -> usize {
        self.attempts.iter().filter(|a| a.failure.is_some()).count()
    }

    /// Records a gap between two stream events, keeping at most [`MAX_GAPS`].
    pub fn push_gap(&mut self, gap: Duration) {
        if self.gaps.len() < MAX_GAPS {
            self.gaps.push(gap);
        }
    }
}
