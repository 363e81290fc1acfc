//! The COMMITTED relay: the chosen answer goes to the client as it arrives. From the first byte
//! written here on there is no retry: a failure ends an SSE stream with an OpenAI-shaped error
//! event (then `[DONE]`), or cuts a plain answer short.
//!
//! Every chunk passes through the response capture (SSE scanner: error events, the usage chunk,
//! event timing), and the request's record is completed here: status, outcome, TTFB, TTFT,
//! inter-token gaps, usage (the backend's, or an estimate marked as such) and cost.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::time::fast_timeout::fast_timeout;
use pingora::{Error, ErrorType};

use super::body::client_gone;
use super::ctx::RequestCtx;
use super::exchange::{Committed, Exchange};
use super::head;
use super::Failure;
use crate::cost::cost_usd;
use crate::telemetry::{CacheStatus, Outcome, Usage};
use crate::upstream::sse::error_event;
use crate::upstream::{is_hop_header, release, Captured};

/// Sends `committed` to the client and completes the request's record.
pub(super) async fn relay(
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    x: &Exchange<'_>,
    committed: Committed,
) -> Result<(), Failure> {
    let Committed {
        answer,
        candidate,
        guard,
        is_sse,
        buffered,
        finished,
        capture,
        head_at,
        mut first_byte_at,
        mut last_event_at,
    } = committed;
    let snapshot = x.snapshot;
    let backend = &snapshot.policy.backends[candidate.backend];
    let sent_at = answer.sent_at;
    let (http, peer) = (answer.http, answer.peer);
    ctx.in_flight = Some(guard);
    let record = &mut ctx.record;
    record.backend = Some(candidate.backend);
    record.tier = Some(backend.tier_rank).filter(|_| !snapshot.policy.tiers.is_empty());
    record.ttfb = Some(head_at.saturating_duration_since(sent_at));

    let status = http.response_header().map_or(502, |h| h.status.as_u16());
    record.status = status;
    // A cache miss records the answer beside the capture; it never holds a chunk back.
    let mut recorder = ctx.cache_fill.as_ref().map(|f| f.recorder(is_sse));
    let content_type = recorder.as_ref().map(|_| {
        http.response_header()
            .and_then(|h| h.headers.get(header::CONTENT_TYPE))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    });
    // A plain answer read whole is settled before its head goes out, so the head can carry its
    // cost.
    let (settled, mut capture) = if finished && !is_sse {
        let cost = settle(ctx, x, candidate.backend, status, capture.finish(), false);
        (Some(cost), None)
    } else {
        (None, Some(capture))
    };
    let down =
        downstream_header(ctx, x, candidate.backend, &http, settled).map_err(Failure::Abort)?;
    // An answer read to its end goes back to the pool before the client has it, so the client's
    // next request finds the connection there.
    let mut http = if finished {
        release(x.connector, http, &peer).await;
        None
    } else {
        Some(http)
    };
    session
        .write_response_header(down)
        .await
        .map_err(|e| gone_failure(ctx, e))?;
    for chunk in buffered {
        if let Some(r) = recorder.as_mut() {
            r.feed(&chunk);
        }
        session
            .write_response_body(chunk, false)
            .await
            .map_err(|e| gone_failure(ctx, e))?;
    }

    let deadline = sent_at + backend.timeouts.total;
    let mut failure = None;
    if let Some(http) = http.as_mut() {
        failure = loop {
            let wait = backend
                .timeouts
                .idle
                .min(deadline.saturating_duration_since(Instant::now()));
            let read = tokio::select! {
                read = fast_timeout(wait, http.read_response_body()) => read,
                gone = client_gone(session) => {
                    ctx.record.ttft = first_byte_at.map(|t| t.saturating_duration_since(sent_at));
                    return Err(gone_failure(ctx, gone));
                }
            };
            match read {
                Ok(Ok(Some(chunk))) => {
                    let now = Instant::now();
                    first_byte_at.get_or_insert(now);
                    let events = capture.as_mut().map_or(0, |c| c.feed(&chunk));
                    if events > 0 {
                        if let Some(prev) = last_event_at {
                            ctx.record.push_gap(now.saturating_duration_since(prev));
                            for _ in 1..events {
                                ctx.record.push_gap(Duration::ZERO);
                            }
                        }
                        last_event_at = Some(now);
                    }
                    if let Some(r) = recorder.as_mut() {
                        r.feed(&chunk);
                    }
                    if let Err(e) = session.write_response_body(chunk, false).await {
                        // The upstream connection is dropped with `http`, not pooled, which
                        // also stops the backend generating for nobody.
                        ctx.record.ttft =
                            first_byte_at.map(|t| t.saturating_duration_since(sent_at));
                        return Err(gone_failure(ctx, e));
                    }
                }
                Ok(Ok(None)) => break None,
                Ok(Err(e)) => {
                    break Some((
                        "upstream_error",
                        format!(
                            "the backend connection failed mid-response: {}",
                            e.etype().as_str()
                        ),
                        Outcome::StreamError,
                    ))
                }
                Err(_) if Instant::now() >= deadline => {
                    break Some((
                        "upstream_timeout",
                        "the response exceeded total_timeout_ms".to_owned(),
                        Outcome::Timeout,
                    ))
                }
                Err(_) => {
                    break Some((
                        "upstream_timeout",
                        "the backend went silent for idle_timeout_ms".to_owned(),
                        Outcome::Timeout,
                    ))
                }
            }
        };
    }
    ctx.record.ttft = first_byte_at.map(|t| t.saturating_duration_since(sent_at));
    let broken = failure.is_some();
    if let Some(capture) = capture {
        settle(ctx, x, candidate.backend, status, capture.finish(), broken);
    }
    let fill = ctx.cache_fill.take().zip(recorder);
    match failure {
        None => {
            if let Some(http) = http {
                release(x.connector, http, &peer).await;
            }
            session
                .write_response_body(Bytes::new(), true)
                .await
                .map_err(|e| gone_failure(ctx, e))?;
            if let Some((fill, recorder)) = fill {
                let content_type = content_type.unwrap_or_default();
                fill.finish(recorder, status, true, &content_type, snapshot, &ctx.record);
            }
            Ok(())
        }
        Some((code, message, outcome)) => {
            if let Some((fill, recorder)) = fill {
                fill.finish(recorder, status, false, "", snapshot, &ctx.record);
            }
            ctx.record.outcome = if is_sse {
                outcome
            } else {
                Outcome::ServerError
            };
            tracing::warn!(backend = %backend.name, code, "{message}");
            if is_sse {
                session
                    .write_response_body(error_event(&message, code), true)
                    .await
                    .map_err(|e| gone_failure(ctx, e))?;
                Ok(())
            } else {
                Err(Failure::Abort(Error::explain(
                    ErrorType::ReadError,
                    message,
                )))
            }
        }
    }
}

/// Completes the record from what the answer said: outcome, usage and cost. Returns the cost.
fn settle(
    ctx: &mut RequestCtx,
    x: &Exchange<'_>,
    backend: usize,
    status: u16,
    captured: Captured,
    broken: bool,
) -> f64 {
    let record = &mut ctx.record;
    record.outcome = match status {
        429 => Outcome::RateLimited,
        500.. => Outcome::ServerError,
        400..=499 => Outcome::ClientError,
        _ if captured.stream_failed || broken => Outcome::StreamError,
        _ => Outcome::Success,
    };
    let usage = match captured.usage {
        Some(u) => Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            estimated: false,
        },
        None => Usage {
            prompt_tokens: x.facts.prompt_tokens_estimate,
            completion_tokens: captured.data_events,
            cached_tokens: 0,
            estimated: true,
        },
    };
    // A failed request costs what the backend reported, else nothing.
    let billable = !usage.estimated || record.outcome == Outcome::Success;
    let cost = if billable {
        cost_usd(x.snapshot.policy.backends[backend].price.as_ref(), &usage)
    } else {
        0.0
    };
    record.usage = Some(usage);
    record.cost_usd = cost;
    record.content_filtered = captured.content_filtered;
    record.refusal = crate::guardrails::matches_refusal(
        &x.snapshot.policy.routes[x.route].refusal_patterns,
        captured.text.as_deref(),
    );
    if x.keep_text {
        ctx.primary_text = captured.text;
    }
    cost
}

/// With `debug_headers`, on answers of prefix-balanced routes: `MATCHED/BLOCKS`, the prompt
/// blocks the answering backend was believed to hold, of the prompt's hashed blocks.
pub const PREFIX_MATCH_HEADER: &str = "x-switchyard-prefix-match";

/// The head the client gets: the backend's, less hop-by-hop headers, plus what the gateway
/// tells about the request (route, arm, backend, tier, policy version, and the cost of a plain
/// answer).
fn downstream_header(
    ctx: &RequestCtx,
    x: &Exchange<'_>,
    backend: usize,
    http: &pingora::protocols::http::client::HttpSession,
    cost: Option<f64>,
) -> pingora::Result<Box<ResponseHeader>> {
    let upstream = http
        .response_header()
        .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
    let mut down = head::parts(upstream.status.as_u16(), upstream.headers.len() + 7)?;
    let headers = &mut down.headers;
    for (name, value) in upstream.headers.iter() {
        if !is_hop_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if !upstream.headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    let policy = &x.snapshot.policy;
    let route = &policy.routes[x.route];
    let spec = &policy.backends[backend];
    head::tell(
        headers,
        &head::Answered {
            route: &route.name,
            arm: &route.arms.arms()[ctx.record.arm.unwrap_or(0)].name,
            backend: &spec.name,
            tier: spec.tier.as_deref(),
            policy_version: x.snapshot.version,
        },
    )?;
    if let Some(cost) = cost {
        headers.insert(head::COST_USD, head::usd(cost)?);
    }
    match ctx.record.cache {
        CacheStatus::Off | CacheStatus::Hit => {}
        CacheStatus::Miss => {
            headers.insert(head::CACHE, HeaderValue::from_static("miss"));
        }
        CacheStatus::Bypass => {
            headers.insert(head::CACHE, HeaderValue::from_static("bypass"));
        }
    }
    if let (true, Some((matched, blocks))) = (policy.server.debug_headers, ctx.prefix_match) {
        headers.insert(
            HeaderName::from_static(PREFIX_MATCH_HEADER),
            HeaderValue::from_str(&format!("{matched}/{blocks}")).map_err(head::invalid)?,
        );
    }
    Ok(head::finish(down))
}

/// The client went away (or its connection broke): the request ends here.
fn gone_failure(ctx: &mut RequestCtx, e: Box<Error>) -> Failure {
    ctx.record.outcome = Outcome::ClientAbort;
    Failure::Abort(e)
}
