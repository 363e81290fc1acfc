//! One upstream exchange: try the decision's backends in order until one accepts a connection,
//! send the request, and relay the answer to the client chunk by chunk as it arrives.
//!
//! Retries happen only before anything reached the client: a connect failure moves on to the
//! arm's next backend, and a pooled connection the backend had already closed is replaced by a
//! fresh one. Once the response header has been written downstream the exchange is committed;
//! a failure after that ends an SSE stream with an error event, or cuts a plain response short.

use std::time::Instant;

use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::time::fast_timeout::fast_timeout;
use pingora::{Error, ErrorType};

use super::ctx::RequestCtx;
use crate::config::{BackendSpec, PolicySnapshot};
use crate::error::GatewayError;
use crate::metrics::Outcome;
use crate::routing::{rewrite_model, Decision, RequestFacts};
use crate::shadow::{compare, ExchangeRecord, ShadowJob};
use crate::upstream::sse::error_event;
use crate::upstream::{
    attempt, is_hop_header, release, upstream_request, Answer, AttemptError, ResponseCapture,
    UpstreamPool,
};

/// Why an exchange ended without a normal response.
pub enum Failure {
    /// Nothing was sent to the client yet: answer with this error.
    Respond(GatewayError),
    /// The response had begun (or the client went away): the connection can only be closed.
    Abort(Box<Error>),
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Failure::Respond(e)
    }
}

/// Sends the request to the first reachable backend of the decision and relays the answer.
pub async fn forward(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &UpstreamPool,
    snapshot: &PolicySnapshot,
    decision: &Decision,
    facts: &RequestFacts,
    body: Bytes,
) -> Result<(), Failure> {
    let route = &snapshot.policy.routes[decision.route];
    let arm = &route.arms.arms()[decision.arm];
    // The copy leaves only once the primary request is on the wire (`on_sent` below).
    let mut shadow = None;
    if decision.mirror {
        if let Some((job, link)) =
            ShadowJob::prepare(snapshot, decision.route, facts, session.req_header(), &body)
        {
            shadow = Some(job);
            ctx.shadow_link = Some(link);
        }
    }
    let mut on_sent = || {
        if let Some(job) = shadow.take() {
            job.launch();
        }
    };
    let client_addr = session.client_addr().map(|a| match a.as_inet() {
        Some(inet) => inet.ip().to_string(),
        None => a.to_string(),
    });
    for &b in &decision.backends {
        let backend = &snapshot.policy.backends[b];
        let guard = snapshot.loads[b].enter();
        let upstream_body = match &backend.upstream_model {
            Some(m) if *m != facts.model => {
                rewrite_model(&body, m).map_err(GatewayError::from)?.into()
            }
            _ => body.clone(),
        };
        let request = upstream_request(
            session.req_header(),
            backend,
            upstream_body.len(),
            client_addr.clone(),
        )
        .map_err(|e| GatewayError::UpstreamFailed(e.to_string()))?;
        match attempt(connector, backend, &request, &upstream_body, &mut on_sent).await {
            Ok(answer) => {
                ctx.backend = Some(b);
                ctx.in_flight = Some(guard);
                return relay(
                    session, ctx, connector, snapshot, decision, facts, backend, answer,
                )
                .await;
            }
            Err(AttemptError::Connect(e)) => {
                tracing::warn!(route = %route.name, arm = %arm.name, backend = %backend.name, error = %e, "connect failed, trying the arm's next backend");
            }
            Err(AttemptError::Timeout(what)) => {
                ctx.backend = Some(b);
                return Err(
                    GatewayError::UpstreamTimeout(format!("{}: {what}", backend.name)).into(),
                );
            }
            Err(AttemptError::Failed(e)) => {
                ctx.backend = Some(b);
                return Err(GatewayError::UpstreamFailed(format!(
                    "{}: {}",
                    backend.name,
                    e.etype().as_str()
                ))
                .into());
            }
        }
    }
    Err(GatewayError::BackendsUnavailable {
        route: route.name.clone(),
        arm: arm.name.clone(),
    }
    .into())
}

/// Writes the backend's answer downstream as it arrives.
#[allow(clippy::too_many_arguments)]
async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &UpstreamPool,
    snapshot: &PolicySnapshot,
    decision: &Decision,
    facts: &RequestFacts,
    backend: &BackendSpec,
    answer: Answer,
) -> Result<(), Failure> {
    let Answer { mut http, peer } = answer;
    // Built from a borrow of the upstream header: nothing of it is cloned but the values kept.
    let (mut down, is_sse) = {
        let upstream = http
            .response_header()
            .ok_or_else(|| GatewayError::UpstreamFailed("no response header".into()))?;
        ctx.status = upstream.status.as_u16();
        let is_sse = upstream
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let mut down = ResponseHeader::build(upstream.status, Some(upstream.headers.len() + 5))
            .map_err(Failure::Abort)?;
        for (name, value) in upstream.headers.iter() {
            if !is_hop_header(name) {
                down.append_header(name.clone(), value.clone())
                    .map_err(Failure::Abort)?;
            }
        }
        if !upstream.headers.contains_key(header::CONTENT_LENGTH) {
            down.insert_header(header::TRANSFER_ENCODING, "chunked")
                .map_err(Failure::Abort)?;
        }
        (down, is_sse)
    };
    let status = ctx.status;
    let route = &snapshot.policy.routes[decision.route];
    let tags = [
        ("x-switchyard-route", route.name.as_str()),
        (
            "x-switchyard-arm",
            route.arms.arms()[decision.arm].name.as_str(),
        ),
        ("x-switchyard-backend", backend.name.as_str()),
    ];
    for (name, value) in tags {
        down.insert_header(name, value).map_err(Failure::Abort)?;
    }
    down.insert_header("x-switchyard-policy-version", snapshot.version.to_string())
        .map_err(Failure::Abort)?;
    session
        .write_response_header(Box::new(down), false)
        .await
        .map_err(Failure::Abort)?;

    let deadline = ctx.started + backend.timeouts.total;
    let mut capture = ResponseCapture::new(is_sse, ctx.shadow_link.is_some());
    let failure = loop {
        let wait = backend
            .timeouts
            .idle
            .min(deadline.saturating_duration_since(Instant::now()));
        match fast_timeout(wait, http.read_response_body()).await {
            Ok(Ok(Some(chunk))) => {
                ctx.first_byte.get_or_insert_with(|| ctx.started.elapsed());
                capture.feed(&chunk);
                if let Err(e) = session.write_response_body(Some(chunk), false).await {
                    // The client went away; the upstream connection is dropped, not pooled.
                    ctx.outcome = Some(Outcome::Error);
                    return Err(Failure::Abort(e));
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
                ))
            }
            Err(_) if Instant::now() >= deadline => {
                break Some((
                    "upstream_timeout",
                    "the response exceeded total_timeout_ms".to_owned(),
                ))
            }
            Err(_) => {
                break Some((
                    "upstream_timeout",
                    "the backend went silent for idle_timeout_ms".to_owned(),
                ))
            }
        }
    };

    let result = match failure {
        None => {
            ctx.outcome = Some(match status {
                500.. => Outcome::Error,
                400..=499 => Outcome::ClientError,
                _ if capture.stream_failed() => Outcome::Error,
                _ => Outcome::Success,
            });
            session
                .write_response_body(None, true)
                .await
                .map_err(Failure::Abort)?;
            release(connector, http, &peer).await;
            Ok(())
        }
        Some((code, message)) => {
            ctx.outcome = Some(Outcome::Error);
            tracing::warn!(backend = %backend.name, code, "{message}");
            if is_sse {
                session
                    .write_response_body(Some(error_event(&message, code)), true)
                    .await
                    .map_err(Failure::Abort)?;
                Ok(())
            } else {
                Err(Failure::Abort(Error::explain(
                    ErrorType::ReadError,
                    message,
                )))
            }
        }
    };
    if ctx.shadow_link.is_some() {
        ctx.primary_record = Some(primary_record(ctx, facts, backend, capture));
    }
    result
}

/// The primary's side of a mirrored exchange, for the shadow comparison.
fn primary_record(
    ctx: &RequestCtx,
    facts: &RequestFacts,
    backend: &BackendSpec,
    capture: ResponseCapture,
) -> ExchangeRecord {
    let captured = capture.finish();
    let prompt_tokens = captured
        .prompt_tokens
        .unwrap_or(facts.prompt_tokens_estimate);
    let output_tokens = captured.output_tokens.unwrap_or(0);
    ExchangeRecord {
        backend: backend.name.clone(),
        status: ctx.status,
        ok: ctx.outcome == Some(Outcome::Success),
        latency: ctx.started.elapsed(),
        ttft: ctx.first_byte,
        prompt_tokens,
        output_tokens,
        text: captured.text,
        cost_usd: compare::cost(backend.price.as_ref(), prompt_tokens, output_tokens),
    }
}
