//! One upstream exchange: try the decision's backends in order until one accepts a connection,
//! send the request, and relay the answer to the client chunk by chunk as it arrives.
//!
//! Retries happen only before anything reached the client: a connect failure moves on to the
//! arm's next backend, and a pooled connection the backend had already closed is replaced by a
//! fresh one. Once the response header has been written downstream the exchange is committed;
//! a failure after that ends an SSE stream with an error event, or cuts a plain response short.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use super::ctx::RequestCtx;
use super::sse::{error_event, SseScanner};
use crate::config::{BackendSpec, PolicySnapshot};
use crate::error::GatewayError;
use crate::metrics::Outcome;
use crate::routing::{rewrite_model, Decision, RequestFacts};

/// How long an idle upstream connection stays in the pool. Below uvicorn's 5 s keep-alive
/// (vLLM's server) so the gateway usually drops a connection before the backend does.
const POOL_IDLE: Duration = Duration::from_secs(4);
/// Attempts on one backend when pooled connections turn out to be stale.
const STALE_RETRIES: usize = 3;

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

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the ones the gateway
/// sets itself.
fn is_hop_header(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn upstream_request(
    client: &RequestHeader,
    backend: &BackendSpec,
    body_len: usize,
    client_addr: Option<String>,
) -> pingora::Result<RequestHeader> {
    let path = client
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut req = RequestHeader::build(client.method.clone(), path.as_bytes(), None)?;
    for (name, value) in client.headers.iter() {
        if is_hop_header(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
        {
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    req.insert_header(header::HOST, backend.authority.as_str())?;
    req.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    if let Some(addr) = client_addr {
        req.append_header("x-forwarded-for", addr)?;
    }
    Ok(req)
}

/// The upstream leg after the response header arrived.
struct Answer {
    http: HttpSession,
    peer: HttpPeer,
}

enum AttemptError {
    /// No connection could be made: safe to try another backend.
    Connect(Box<Error>),
    Timeout(&'static str),
    Failed(Box<Error>),
}

async fn attempt(
    connector: &Connector,
    backend: &BackendSpec,
    request: &RequestHeader,
    body: &Bytes,
) -> Result<Answer, AttemptError> {
    let mut peer = HttpPeer::new(backend.addr, false, String::new());
    peer.options.connection_timeout = Some(backend.timeouts.connect);
    peer.options.total_connection_timeout = Some(backend.timeouts.connect);
    let mut tries = 0;
    loop {
        tries += 1;
        let (mut http, reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(AttemptError::Connect)?;
        let sent = async {
            http.write_request_header(Box::new(request.clone())).await?;
            http.write_request_body(body.clone(), true).await?;
            http.finish_request_body().await
        };
        let result = match sent.await {
            Ok(()) => {
                tokio::time::timeout(backend.timeouts.first_byte, http.read_response_header())
                    .await
                    .map_err(|_| {
                        AttemptError::Timeout("no response header within first_byte_timeout_ms")
                    })
            }
            Err(e) => Ok(Err(e)),
        };
        match result {
            Ok(Ok(())) => return Ok(Answer { http, peer }),
            // The backend closed a pooled connection before reading our request: nothing was
            // processed, so a fresh connection is safe.
            Ok(Err(e)) if reused && tries < STALE_RETRIES => {
                tracing::debug!(backend = %backend.name, error = %e, "stale pooled connection, retrying");
            }
            Ok(Err(e)) => return Err(AttemptError::Failed(e)),
            Err(timeout) => return Err(timeout),
        }
    }
}

/// Sends the request to the first reachable backend of the decision and relays the answer.
pub async fn forward(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &Connector,
    snapshot: &PolicySnapshot,
    decision: &Decision,
    facts: &RequestFacts,
    body: Bytes,
) -> Result<(), Failure> {
    let route = &snapshot.policy.routes[decision.route];
    let arm = &route.arms.arms()[decision.arm];
    let client_addr = session.client_addr().map(|a| match a.as_inet() {
        Some(inet) => inet.ip().to_string(),
        None => a.to_string(),
    });
    for &b in &decision.backends {
        let backend = &snapshot.policy.backends[b];
        let guard = snapshot.loads[b].enter();
        let upstream_body = match &backend.upstream_model {
            Some(m) if *m != facts.model => rewrite_model(&body, m)
                .map_err(|e| GatewayError::InvalidJson(e.to_string()))?
                .into(),
            _ => body.clone(),
        };
        let request = upstream_request(
            session.req_header(),
            backend,
            upstream_body.len(),
            client_addr.clone(),
        )
        .map_err(|e| GatewayError::UpstreamFailed(e.to_string()))?;
        match attempt(connector, backend, &request, &upstream_body).await {
            Ok(answer) => {
                ctx.backend = Some(b);
                ctx.in_flight = Some(guard);
                return relay(session, ctx, connector, snapshot, decision, backend, answer).await;
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
async fn relay(
    session: &mut Session,
    ctx: &mut RequestCtx,
    connector: &Connector,
    snapshot: &PolicySnapshot,
    decision: &Decision,
    backend: &BackendSpec,
    answer: Answer,
) -> Result<(), Failure> {
    let Answer { mut http, peer } = answer;
    let upstream = http
        .response_header()
        .cloned()
        .ok_or_else(|| GatewayError::UpstreamFailed("no response header".into()))?;
    let status = upstream.status.as_u16();
    ctx.status = status;
    let is_sse = upstream
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));

    let route = &snapshot.policy.routes[decision.route];
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
    let mut scanner = is_sse.then(SseScanner::default);
    let failure = loop {
        let wait = backend
            .timeouts
            .idle
            .min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, http.read_response_body()).await {
            Ok(Ok(Some(chunk))) => {
                ctx.first_byte.get_or_insert_with(|| ctx.started.elapsed());
                if let Some(s) = scanner.as_mut() {
                    s.feed(&chunk);
                }
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

    match failure {
        None => {
            ctx.outcome = Some(match status {
                500.. => Outcome::Error,
                400..=499 => Outcome::ClientError,
                _ if scanner.as_ref().is_some_and(|s| !s.succeeded()) => Outcome::Error,
                _ => Outcome::Success,
            });
            session
                .write_response_body(None, true)
                .await
                .map_err(Failure::Abort)?;
            if http.response_done() {
                connector
                    .release_http_session(http, &peer, Some(POOL_IDLE))
                    .await;
            }
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
    }
}
