//! `Gateway`: the proxy listener's HTTP application. One call per request: read the head,
//! serve the request, answer its error if it failed, hand its record on, and give the
//! connection back for the next request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, Method};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorSource, ErrorType};
use rand::Rng;

use super::body::{client_gone, read_body};
use super::cache;
use super::ctx::RequestCtx;
use super::exchange::{precommit, Exchange};
use super::relay::relay;
use super::wire::Hit;
use super::{observe, Failure};
use crate::config::{PolicySnapshot, PolicyStore};
use crate::error::GatewayError;
use crate::listener::{check_head, head_bytes, Conn, Early, Head, HeadWait, HttpApp, PlainRequest};
use crate::routing::tier::start_tier;
use crate::routing::{
    candidates, choose_arm, match_route, plan_for, ArmChoice, Draws, Endpoint, RequestFacts,
    BUCKETS,
};
use crate::shadow::ShadowJob;
use crate::telemetry::Outcome;
use crate::upstream::{upstream_base, UpstreamPool};

pub struct Gateway {
    store: Arc<PolicyStore>,
    connector: UpstreamPool,
    rotation: AtomicUsize,
}

impl Gateway {
    pub fn new(store: Arc<PolicyStore>) -> Gateway {
        Gateway {
            store,
            connector: UpstreamPool::new(),
            rotation: AtomicUsize::new(0),
        }
    }

    /// Serves one request read through pingora's session to its end, but for a cache hit's
    /// answer, which the caller writes. `Err(Respond)` means nothing was written yet and the
    /// caller must answer with the error.
    async fn serve(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<Served, Failure> {
        let snapshot = self.store.current();
        ctx.snapshot = Some(snapshot.clone());
        if session.req_header().method == Method::CONNECT {
            // A tunnel's framing is not a request's: refused, and the connection closed.
            session.set_keepalive(None);
            return Err(method_not_allowed(session).into());
        }
        let req = session.req_header();
        let limits = &snapshot.policy.server;
        check_head(
            req.headers.len(),
            head_bytes(req.method.as_str(), req.raw_path(), &req.headers),
            limits.max_headers,
            limits.max_header_bytes,
        )
        .map_err(|e| GatewayError::HeadersTooLarge(e.to_string()))?;
        let path = req.uri.path();
        if path == "/v1/models" {
            if req.method != Method::GET {
                return Err(method_not_allowed(session).into());
            }
            let body = models_body(snapshot.models());
            return write_json(session, 200, body, None)
                .await
                .map(|()| Served::Written)
                .map_err(Failure::Abort);
        }
        let Some(endpoint) = Endpoint::from_path(path) else {
            return Err(GatewayError::UnknownPath {
                method: req.method.to_string(),
                path: path.to_owned(),
            }
            .into());
        };
        if req.method != Method::POST {
            return Err(method_not_allowed(session).into());
        }
        let body = read_body(session, limits.max_body_bytes, limits.body_timeout).await?;
        let headers = &session.req_header().headers;
        match self.decide(ctx, snapshot, endpoint, headers, body).await? {
            Decided::Hit(hit) => Ok(Served::Hit(hit)),
            // Boxed, so that the future every request moves into its connection's stays small
            // (a hit's, of about a kilobyte, instead of several).
            Decided::Upstream(routed) => Box::pin(self.upstream(session, ctx, routed)).await,
        }
    }

    /// A plain request read straight from the connection (`listener::Conn`): answered here when
    /// it is a cache hit, else handed to pingora's session with what was decided for it.
    /// Anything [`Gateway::serve`] would refuse or answer before its body goes to the session
    /// undecided, to be served as if it had been read there.
    async fn serve_plain(
        &self,
        conn: Conn,
        request: PlainRequest,
        head: HeadWait<'_>,
    ) -> Option<Conn> {
        let snapshot = self.store.current();
        let limits = &snapshot.policy.server;
        let endpoint = Endpoint::from_path(request.path()).filter(|_| {
            request.method == Method::POST
                && request.body().len() <= limits.max_body_bytes
                && check_head(
                    request.headers.len(),
                    head_bytes(
                        request.method.as_str(),
                        request.path().as_bytes(),
                        &request.headers,
                    ),
                    limits.max_headers,
                    limits.max_header_bytes,
                )
                .is_ok()
        });
        let Some(endpoint) = endpoint else {
            return self.serve_session(conn.resume(request), head).await;
        };
        let mut ctx = RequestCtx::new();
        ctx.snapshot = Some(snapshot.clone());
        let decided = self
            .decide(
                &mut ctx,
                snapshot,
                endpoint,
                &request.headers,
                request.body(),
            )
            .await;
        let routed = match decided {
            Ok(Decided::Hit(hit)) => {
                let keepalive = !request.close && !head.shutting_down();
                return self.hit_sent(ctx, hit.write(conn, keepalive).await);
            }
            Ok(Decided::Upstream(routed)) => Ok(routed),
            Err(failure) => Err(failure),
        };
        // pingora's session takes the request over: it parses the bytes again and reads the
        // body (already here) past, so that its framing and keep-alive are its own.
        let mut session = conn.resume(request);
        let resumed = match head.read(&mut session).await {
            Head::Request => drain_body(&mut session).await,
            Head::Closed | Head::Malformed(_) => false,
        };
        if !resumed {
            // Cannot happen for what `read_plain` takes: ended as a request gone wrong.
            ctx.record.outcome = Outcome::Rejected;
            self.end(&mut ctx);
            return None;
        }
        let served = match routed {
            Ok(routed) => Box::pin(self.upstream(&mut session, &mut ctx, routed)).await,
            Err(failure) => Err(failure),
        };
        self.finish(session, ctx, served).await
    }

    /// A request read through pingora's session, from its head on.
    async fn serve_session(&self, mut session: ServerSession, head: HeadWait<'_>) -> Option<Conn> {
        match head.read(&mut session).await {
            Head::Request => {}
            Head::Closed => return None,
            Head::Malformed(why) => {
                session.set_keepalive(None);
                let _ = write_error(&mut session, &GatewayError::MalformedHead(why)).await;
                session.shutdown().await;
                return None;
            }
        }
        let mut ctx = RequestCtx::new();
        let served = self.serve(&mut session, &mut ctx).await;
        self.finish(session, ctx, served).await
    }

    /// What a POST to `endpoint` gets, from its body on: admission, the arm, and the cache step.
    async fn decide(
        &self,
        ctx: &mut RequestCtx,
        snapshot: Arc<PolicySnapshot>,
        endpoint: Endpoint,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Decided, Failure> {
        let (facts, digest) = cache::request_facts(self.store.cache(), &snapshot, endpoint, &body)?;
        ctx.record.endpoint = Some(endpoint);
        ctx.record.stream = facts.stream;

        let route_index = match_route(&snapshot, &facts).map_err(GatewayError::from)?;
        ctx.record.route = Some(route_index);
        let route = &snapshot.policy.routes[route_index];
        // Budgets and rate limits, before anything is spent on the request (local counters;
        // Redis only for a key this process has not seen in the window).
        let admitted = self
            .store
            .spend()
            .admit(
                &snapshot,
                route_index,
                headers,
                self.store.redis(),
                SystemTime::now(),
            )
            .await
            .map_err(GatewayError::from)?;
        let downgrade = admitted.downgrade;
        ctx.admitted = Some(admitted);
        let draws = {
            let mut rng = rand::rng();
            Draws {
                arm_bucket: rng.random_range(0..BUCKETS),
                shadow_bucket: rng.random_range(0..BUCKETS),
                rotation: self.rotation.fetch_add(1, Ordering::Relaxed),
                explore: rng.random_range(0..10_000),
                pick: rng.random::<u32>() as usize,
            }
        };
        let choice = choose_arm(route, &facts, headers, draws).map_err(GatewayError::from)?;
        ctx.record.arm = Some(choice.arm);
        // The lookup sits after the arm choice (the key names the arm and its models) and
        // before candidate ordering: a hit needs no backend at all.
        let cache_plan = crate::cache::plan(
            &snapshot,
            route_index,
            choice.arm,
            &facts,
            headers,
            crate::cache::SeenBody {
                bytes: &body,
                digest,
            },
            self.store.cache().key_memo(),
        );
        if let cache::Step::Hit(hit) =
            cache::before_upstream(self.store.cache(), ctx, &snapshot, route_index, cache_plan)
                .await?
        {
            return Ok(Decided::Hit(hit));
        }
        Ok(Decided::Upstream(Routed {
            snapshot,
            route: route_index,
            choice,
            facts,
            body,
            downgrade,
            draws,
        }))
    }

    /// The upstream exchange of a request routed to `routed`'s arm, and its relay.
    async fn upstream(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        routed: Routed,
    ) -> Result<Served, Failure> {
        let Routed {
            snapshot,
            route: route_index,
            choice,
            facts,
            body,
            downgrade,
            draws,
        } = routed;
        let route = &snapshot.policy.routes[route_index];
        let headers = &session.req_header().headers;
        let plan = plan_for(&snapshot, headers);
        // A spent `downgrade` budget: the cheapest tier, whatever the rules would pick.
        let start = if downgrade {
            0
        } else {
            start_tier(
                &route.tiering,
                &snapshot.policy.tiers,
                &facts,
                headers,
                plan,
            )
        };
        let now = Instant::now();
        let candidates = candidates(
            &snapshot,
            route_index,
            choice.arm,
            start,
            &facts,
            headers,
            plan,
            draws,
            |b| snapshot.backend_view(b, now, &facts),
        )
        .map_err(GatewayError::from)?;
        let _arm_in_flight = snapshot.arm_stats[route_index][choice.arm].enter();

        // The copy leaves only once the primary request is on the wire (`on_sent`).
        let mut shadow = None;
        if choice.mirror {
            if let Some((job, link)) =
                ShadowJob::prepare(&snapshot, route_index, &facts, session.req_header(), &body)
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
        let base = upstream_base(session.req_header(), client_addr)
            .map_err(|e| GatewayError::UpstreamFailed(e.to_string()))?;
        let exchange = Exchange {
            snapshot: &snapshot,
            facts: &facts,
            body: &body,
            base,
            connector: &self.connector,
            route: route_index,
            // Refusal patterns are matched on the answer's text, so the text is kept (bounded).
            keep_text: ctx.shadow_link.is_some()
                || !snapshot.policy.routes[route_index]
                    .refusal_patterns
                    .is_empty(),
        };
        // A client that leaves while the backend prepares its answer stops the exchange: the
        // upstream connection is dropped, which stops the backend generating for nobody.
        // The upstream legs are boxed: held inline, they would make this future several
        // kilobytes larger.
        let attempts = Box::pin(precommit(&exchange, ctx, &candidates, &mut on_sent));
        let committed = match first_of(attempts, client_gone(session)).await {
            Either::Left(committed) => committed?,
            Either::Right(gone) => {
                ctx.record.outcome = Outcome::ClientAbort;
                return Err(Failure::Abort(gone));
            }
        };
        Box::pin(relay(session, ctx, &exchange, committed))
            .await
            .map(|()| Served::Written)
    }

    /// The request's record, completed and handed on.
    fn end(&self, ctx: &mut RequestCtx) {
        ctx.in_flight.take();
        ctx.record.latency = ctx.record.started.elapsed();
        observe::request_ended(ctx, self.store.metrics(), self.store.spend());
    }

    /// Ends a request answered from the cache: the connection back when it can serve another.
    fn hit_sent(&self, mut ctx: RequestCtx, sent: pingora::Result<Option<Conn>>) -> Option<Conn> {
        let reused = sent.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "client left before its answer was complete");
            ctx.record.outcome = Outcome::ClientAbort;
            None
        });
        self.end(&mut ctx);
        reused
    }

    /// Ends a request served through `session`: answers its error if it failed, hands its
    /// record on, and gives the connection back when it can serve another request.
    async fn finish(
        &self,
        mut session: ServerSession,
        mut ctx: RequestCtx,
        served: Result<Served, Failure>,
    ) -> Option<Conn> {
        let reusable = match served {
            Ok(Served::Written) => true,
            Ok(Served::Hit(hit)) => return self.hit_sent(ctx, hit.send(session).await),
            Err(Failure::Respond(e)) => refuse(&mut session, &mut ctx, &e).await,
            Err(Failure::Abort(e)) => {
                abort(&mut session, &e).await;
                false
            }
        };
        self.end(&mut ctx);
        if !reusable {
            return None;
        }
        Conn::after(session).await
    }
}

/// What a request takes to its upstream exchange, decided before the cache step.
struct Routed {
    snapshot: Arc<PolicySnapshot>,
    route: usize,
    choice: ArmChoice,
    facts: Arc<RequestFacts>,
    body: Bytes,
    downgrade: bool,
    draws: Draws,
}

/// What `decide` found for a request.
enum Decided {
    /// Answered from the cache.
    Hit(Hit),
    /// To its arm's backends.
    Upstream(Routed),
}

/// How `serve` left a request.
enum Served {
    /// Answered through the session.
    Written,
    /// A cache hit, to be written straight onto the connection ([`Hit::send`]).
    Hit(Hit),
}

enum Either<L, R> {
    Left(L),
    Right(R),
}

/// Whichever of `a` and `b` finishes first; the other is dropped (cancelled).
async fn first_of<L, R>(
    a: impl std::future::Future<Output = L>,
    b: impl std::future::Future<Output = R>,
) -> Either<L, R> {
    tokio::select! {
        l = a => Either::Left(l),
        r = b => Either::Right(r),
    }
}

fn method_not_allowed(session: &ServerSession) -> GatewayError {
    let req = session.req_header();
    GatewayError::MethodNotAllowed {
        method: req.method.to_string(),
        path: req.uri.path().to_owned(),
    }
}

fn models_body<'a>(models: impl Iterator<Item = &'a str>) -> Bytes {
    let data: Vec<_> = models
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "switchyard"}))
        .collect();
    Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
}

/// A JSON answer written whole, with `Retry-After` when given.
async fn write_json(
    session: &mut ServerSession,
    status: u16,
    body: Bytes,
    retry_after: Option<u64>,
) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build_no_case(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(secs) = retry_after {
        resp.insert_header(header::RETRY_AFTER, secs.to_string())?;
    }
    session.write_response_header(Box::new(resp)).await?;
    session.write_response_body(body, true).await
}

/// The gateway's own error answer, with `Retry-After` for refusals that end with a window.
async fn write_error(session: &mut ServerSession, e: &GatewayError) -> pingora::Result<()> {
    write_json(session, e.status(), e.body(), e.retry_after()).await
}

impl HttpApp for Gateway {
    /// One request of a downstream HTTP/1 connection: its head, the whole answer, its record,
    /// and the connection back for the next request when it can be reused. Where any route
    /// caches, a plain request is read straight from the connection, so that a hit costs no
    /// more than it must.
    async fn serve_one(&self, mut conn: Conn, head: HeadWait<'_>) -> Option<Conn> {
        let (caches, max_head) = {
            let snapshot = self.store.current();
            (snapshot.caches(), snapshot.policy.server.max_header_bytes)
        };
        if caches {
            match head.read_plain(&mut conn, max_head).await {
                Early::Plain(request) => return self.serve_plain(conn, request, head).await,
                Early::Other => {}
                Early::Closed => return None,
            }
        }
        self.serve_session(conn.session(), head).await
    }
}

/// Reads a request body that is already buffered past; false when the session cannot.
async fn drain_body(session: &mut ServerSession) -> bool {
    loop {
        match session.read_request_body().await {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Answers with `e` (nothing was written yet); true when the connection may serve another
/// request.
async fn refuse(session: &mut ServerSession, ctx: &mut RequestCtx, e: &GatewayError) -> bool {
    ctx.record.status = e.status();
    ctx.record.error_code = Some(e.code());
    // Failures after routing already set their outcome (timeout, connect error, …); before
    // it, the gateway refused the request itself.
    if ctx.record.attempts.is_empty() {
        ctx.record.outcome = Outcome::Rejected;
    }
    // An unread body would be taken for the next request, and after a framing error (bad
    // chunk, oversized head) the rest of the stream cannot be trusted: close.
    if e.closes_connection() || !session.is_body_done() {
        session.set_keepalive(None);
    }
    write_error(session, e).await.is_ok()
}

/// The request ended without its answer: a client that left gets nothing; one still there
/// that has no answer yet gets a 500. The connection is closed either way.
async fn abort(session: &mut ServerSession, e: &Error) {
    let client_gone = matches!(e.esource(), ErrorSource::Downstream)
        && matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        );
    if client_gone {
        tracing::debug!(error = %e, "client left before its answer was complete");
        return;
    }
    tracing::warn!(error = %e, "request aborted");
    if session.response_written().is_none() {
        session.set_keepalive(None);
        let _ = write_error(session, &GatewayError::Internal(e.to_string())).await;
    }
}
