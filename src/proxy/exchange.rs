//! The PRE-COMMIT exchange: try the decision's candidates in order until one gives an answer fit
//! to send. Nothing reaches the client here, which is what makes a fallback safe.
//!
//! For each candidate: connect, send, read the response head; for a stream, wait for its first
//! event (bounded by the route's TTFT timeout); for a plain answer, read it whole (bounded by
//! [`MAX_JSON_BYTES`]) so its usage and cost are known before the head goes out. A connect
//! error, a 429 (which also cools the backend down for its `Retry-After`), a 5xx, a first-byte
//! or TTFT timeout, or a connection broken before the answer was complete moves on to the next
//! candidate — when the route retries on that failure, the request has attempts left and the
//! route's retry budget has room. When it may not, the backend's own 429/5xx answer is relayed
//! as it is, or the gateway answers with the error.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header;
use pingora::http::RequestHeader;
use pingora::time::fast_timeout::fast_timeout;

use super::ctx::RequestCtx;
use crate::backends::InFlightGuard;
use crate::config::PolicySnapshot;
use crate::error::GatewayError;
use crate::routing::fallback::{self, AttemptFailure, Verdict};
use crate::routing::{rewrite_model, Candidate, RequestFacts};
use crate::telemetry::{Attempt, Outcome};
use crate::upstream::capture::MAX_JSON_BYTES;
use crate::upstream::{attempt, for_backend, Answer, AttemptError, ResponseCapture, UpstreamPool};

/// Cooldown after a 429 that names no `Retry-After` in seconds, and the longest one honoured.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(1);
const MAX_COOLDOWN: Duration = Duration::from_secs(60);

/// What one request's exchange works from.
pub(super) struct Exchange<'a> {
    pub snapshot: &'a PolicySnapshot,
    pub facts: &'a RequestFacts,
    /// The client's body, as read.
    pub body: &'a Bytes,
    /// The upstream request head without its per-backend `Host` and `Content-Length`.
    pub base: RequestHeader,
    pub connector: &'a UpstreamPool,
    /// The route the request matched (its retry settings govern every attempt).
    pub route: usize,
    pub keep_text: bool,
}

/// An answer chosen to go to the client. Nothing of it has been written downstream yet.
pub(super) struct Committed {
    pub answer: Answer,
    pub candidate: Candidate,
    pub guard: InFlightGuard,
    pub is_sse: bool,
    /// Body bytes already read from the backend, in order.
    pub buffered: Vec<Bytes>,
    /// The body was read to its end.
    pub finished: bool,
    pub capture: ResponseCapture,
    /// When the response head arrived.
    pub head_at: Instant,
    /// When the first body bytes arrived (streams: the first event).
    pub first_byte_at: Option<Instant>,
    /// When the last stream event arrived (for inter-token gaps).
    pub last_event_at: Option<Instant>,
}

/// Why one attempt did not serve: the trigger, the backend's own answer when there is one (a
/// 429 or 5xx that may still be relayed), and the error the gateway answers with otherwise.
struct Failed {
    kind: AttemptFailure,
    answer: Option<Box<Committed>>,
    error: GatewayError,
}

/// Runs the attempt loop over `candidates`. `on_sent` runs once the first request is on the
/// wire (the shadow copy leaves then).
pub(super) async fn precommit(
    x: &Exchange<'_>,
    ctx: &mut RequestCtx,
    candidates: &[Candidate],
    on_sent: &mut (dyn FnMut() + Send),
) -> Result<Committed, GatewayError> {
    let snapshot = x.snapshot;
    let route = &snapshot.policy.routes[x.route];
    let retries = &snapshot.route_retries[x.route];
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    retries.budget.record_request(second);
    // The backend's own failed answer, relayed if no later candidate serves.
    let mut held: Option<Box<Committed>> = None;
    let mut last_error = None;
    // One rewritten body per model name the candidates need (usually none or one).
    let mut rewritten: Option<(String, Bytes)> = None;
    let mut made = 0u32;
    for &candidate in candidates {
        let backend = &snapshot.policy.backends[candidate.backend];
        let load = &snapshot.loads[candidate.backend];
        // Load moved since the order was taken: skip rather than overload.
        if load.in_flight() >= backend.max_inflight || load.cooling(Instant::now()) {
            continue;
        }
        let guard = load.enter();
        let body = match upstream_model(snapshot, x, candidate) {
            Some(model) if model != x.facts.model => match &rewritten {
                Some((m, b)) if m == model => b.clone(),
                _ => {
                    let b: Bytes = rewrite_model(x.body, model)
                        .map_err(GatewayError::from)?
                        .into();
                    rewritten = Some((model.to_owned(), b.clone()));
                    b
                }
            },
            _ => x.body.clone(),
        };
        let request = for_backend(&x.base, backend, body.len())
            .map_err(|e| GatewayError::UpstreamFailed(e.to_string()))?;
        made += 1;
        let prefix = note_prefix(x, candidate);
        let failed = match try_candidate(x, candidate, guard, &request, &body, on_sent).await {
            Ok(committed) => {
                ctx.record.attempts.push(Attempt {
                    backend: candidate.backend,
                    failure: None,
                });
                if let Some((matched, blocks)) = prefix {
                    ctx.prefix_match = Some((matched, blocks));
                    if let Some(stats) = &snapshot.prefix_stats[candidate.route] {
                        stats.record(matched, blocks);
                    }
                }
                snapshot.backend_attempts[candidate.backend].record(None);
                load.health.on_success();
                return Ok(committed);
            }
            Err(failed) => failed,
        };
        ctx.record.attempts.push(Attempt {
            backend: candidate.backend,
            failure: Some(failed.kind),
        });
        snapshot.backend_attempts[candidate.backend].record(Some(failed.kind));
        // Every failed attempt counts toward ejection, also those a retry hides from the client.
        if let Some(ejection) =
            load.health
                .on_failure(failed.kind, &snapshot.policy.outlier, Instant::now())
        {
            tracing::warn!(backend = %backend.name, failure = failed.kind.as_str(), ejected_ms = ejection.length.as_millis() as u64, "backend ejected");
        }
        tracing::debug!(route = %route.name, backend = %backend.name, failure = failed.kind.as_str(), "attempt failed");
        let verdict = fallback::verdict(
            &route.retry,
            failed.kind,
            made,
            retries.budget.reading(second),
        );
        if failed.answer.is_some() {
            held = failed.answer;
        }
        ctx.record.outcome = outcome_of(failed.kind);
        last_error = Some(failed.error);
        match verdict {
            Verdict::Retry => {
                retries.budget.record_retry(second);
                retries.record_fallback(failed.kind);
            }
            Verdict::BudgetExhausted => {
                retries
                    .budget_exhausted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                break;
            }
            Verdict::NotRetried | Verdict::AttemptsExhausted => break,
        }
    }
    if let Some(answer) = held {
        return Ok(*answer);
    }
    Err(last_error.unwrap_or_else(|| {
        ctx.record.outcome = Outcome::Rejected;
        let arm = &route.arms.arms()[ctx.record.arm.unwrap_or(0)];
        GatewayError::BackendsSaturated {
            route: route.name.clone(),
            arm: arm.name.clone(),
        }
    }))
}

/// On a prefix-balanced candidate route: how much of the prompt's prefix the candidate's backend
/// was believed to hold, as `(matched, blocks)`; then notes that it now holds all of it. Written
/// at dispatch, before the answer: a burst sharing this prefix must see where it went.
fn note_prefix(x: &Exchange<'_>, candidate: Candidate) -> Option<(usize, usize)> {
    let snapshot = x.snapshot;
    let blocks = &x.facts.prefix_blocks;
    if blocks.is_empty() || snapshot.prefix_stats[candidate.route].is_none() {
        return None;
    }
    let matched = snapshot.matched_blocks(candidate.backend, blocks);
    snapshot
        .prefix_index
        .record(snapshot.loads[candidate.backend].id(), blocks);
    Some((matched, blocks.len()))
}

/// The model name the candidate's backend must receive: its own rewrite, else — for a fallback
/// route's candidate — that route's first model.
fn upstream_model<'a>(
    snapshot: &'a PolicySnapshot,
    x: &Exchange<'_>,
    candidate: Candidate,
) -> Option<&'a str> {
    let backend = &snapshot.policy.backends[candidate.backend];
    backend.upstream_model.as_deref().or_else(|| {
        (candidate.route != x.route)
            .then(|| snapshot.policy.routes[candidate.route].models.first())
            .flatten()
            .map(String::as_str)
    })
}

fn outcome_of(kind: AttemptFailure) -> Outcome {
    match kind {
        AttemptFailure::Connect => Outcome::ConnectError,
        AttemptFailure::RateLimited => Outcome::RateLimited,
        AttemptFailure::ServerError => Outcome::ServerError,
        AttemptFailure::FirstByteTimeout | AttemptFailure::TtftTimeout => Outcome::Timeout,
    }
}

/// One attempt on one backend, up to the point where its answer is fit to commit.
async fn try_candidate(
    x: &Exchange<'_>,
    candidate: Candidate,
    guard: InFlightGuard,
    request: &RequestHeader,
    body: &Bytes,
    on_sent: &mut (dyn FnMut() + Send),
) -> Result<Committed, Failed> {
    let snapshot = x.snapshot;
    let backend = &snapshot.policy.backends[candidate.backend];
    let route = &snapshot.policy.routes[x.route];
    let name = &backend.name;
    let answer = match attempt(x.connector, backend, request, body, on_sent).await {
        Ok(answer) => answer,
        Err(AttemptError::Connect(e)) => {
            tracing::warn!(route = %route.name, backend = %name, error = %e, "connect failed");
            return Err(Failed {
                kind: AttemptFailure::Connect,
                answer: None,
                error: GatewayError::BackendsUnavailable {
                    route: route.name.clone(),
                    arm: route.arms.arms()[candidate.arm.min(route.arms.arms().len() - 1)]
                        .name
                        .clone(),
                },
            });
        }
        Err(AttemptError::Timeout(what)) => {
            return Err(Failed {
                kind: AttemptFailure::FirstByteTimeout,
                answer: None,
                error: GatewayError::UpstreamTimeout(format!("{name}: {what}")),
            })
        }
        Err(AttemptError::Failed(e)) => {
            return Err(Failed {
                kind: AttemptFailure::ServerError,
                answer: None,
                error: GatewayError::UpstreamFailed(format!("{name}: {}", e.etype().as_str())),
            })
        }
    };
    let Some(head) = answer.http.response_header() else {
        return Err(Failed {
            kind: AttemptFailure::ServerError,
            answer: None,
            error: GatewayError::UpstreamFailed(format!("{name}: no response header")),
        });
    };
    let status = head.status.as_u16();
    let is_sse = head
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let retry_after = head
        .headers
        .get(header::RETRY_AFTER)
        .map(|v| v.as_bytes().to_vec());
    let mut committed = Committed {
        answer,
        candidate,
        guard,
        is_sse,
        buffered: Vec::new(),
        finished: false,
        capture: ResponseCapture::new(is_sse, x.keep_text),
        head_at: Instant::now(),
        first_byte_at: None,
        last_event_at: None,
    };
    let backend_said = |kind, committed: Committed| Failed {
        kind,
        error: GatewayError::UpstreamFailed(format!("{name} answered {status}")),
        answer: Some(Box::new(committed)),
    };
    if status == 429 {
        let wait = fallback::retry_after(retry_after.as_deref(), DEFAULT_COOLDOWN, MAX_COOLDOWN);
        snapshot.loads[candidate.backend].cool_down(Instant::now(), wait);
        return Err(backend_said(AttemptFailure::RateLimited, committed));
    }
    if status >= 500 {
        return Err(backend_said(AttemptFailure::ServerError, committed));
    }
    let sent_at = committed.answer.sent_at;
    let total = sent_at + backend.timeouts.total;
    if is_sse && (200..300).contains(&status) {
        // Wait for the first event: a stream that cannot start in time, or starts with an
        // error event, can still go elsewhere.
        let ttft_deadline = sent_at
            + route
                .retry
                .ttft_timeout
                .unwrap_or(backend.timeouts.first_byte)
                .min(backend.timeouts.total);
        while committed.capture.events() == 0 {
            let wait = ttft_deadline.saturating_duration_since(Instant::now());
            match fast_timeout(wait, committed.answer.http.read_response_body()).await {
                Ok(Ok(Some(chunk))) => {
                    committed.capture.feed(&chunk);
                    committed.buffered.push(chunk);
                }
                Ok(Ok(None)) => {
                    committed.finished = true;
                    return Err(backend_said(AttemptFailure::ServerError, committed));
                }
                Ok(Err(e)) => {
                    return Err(Failed {
                        kind: AttemptFailure::ServerError,
                        answer: None,
                        error: GatewayError::UpstreamFailed(format!(
                            "{name}: {}",
                            e.etype().as_str()
                        )),
                    })
                }
                Err(_) => {
                    return Err(Failed {
                        kind: AttemptFailure::TtftTimeout,
                        answer: None,
                        error: GatewayError::UpstreamTimeout(format!(
                            "{name}: no stream event within the TTFT timeout"
                        )),
                    })
                }
            }
        }
        committed.first_byte_at = Some(Instant::now());
        committed.last_event_at = committed.first_byte_at;
        if committed.capture.saw_error() {
            return Err(backend_said(AttemptFailure::ServerError, committed));
        }
        return Ok(committed);
    }
    // A plain answer (or a 4xx of any kind): read it whole, within bounds, so its figures are
    // known before its head goes out. A larger one is committed with what was read.
    let mut size = 0;
    while size <= MAX_JSON_BYTES {
        let wait = backend
            .timeouts
            .idle
            .min(total.saturating_duration_since(Instant::now()));
        match fast_timeout(wait, committed.answer.http.read_response_body()).await {
            Ok(Ok(Some(chunk))) => {
                committed.first_byte_at.get_or_insert_with(Instant::now);
                size += chunk.len();
                committed.capture.feed(&chunk);
                committed.buffered.push(chunk);
            }
            Ok(Ok(None)) => {
                committed.finished = true;
                break;
            }
            Ok(Err(e)) => {
                return Err(Failed {
                    kind: AttemptFailure::ServerError,
                    answer: None,
                    error: GatewayError::UpstreamFailed(format!(
                        "{name}: the answer broke off: {}",
                        e.etype().as_str()
                    )),
                })
            }
            Err(_) => {
                return Err(Failed {
                    kind: if size == 0 {
                        AttemptFailure::FirstByteTimeout
                    } else {
                        AttemptFailure::ServerError
                    },
                    answer: None,
                    error: GatewayError::UpstreamTimeout(format!(
                        "{name}: the answer stalled before it was complete"
                    )),
                })
            }
        }
    }
    Ok(committed)
}
