//! `Gateway`: the `ProxyHttp` implementation. Each hook only delegates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method};
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use rand::Rng;

use super::body::read_body;
use super::ctx::RequestCtx;
use super::forward::{forward, Failure};
use crate::config::PolicyStore;
use crate::error::GatewayError;
use crate::routing::{decide, Draws, Endpoint, RequestFacts, BUCKETS};
use crate::shadow::ExchangeRecord;
use crate::upstream::UpstreamPool;

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

    /// Serves one request to its end. `Err` means nothing was written yet and the caller must
    /// answer with the error.
    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Failure> {
        let snapshot = self.store.current();
        ctx.snapshot = Some(snapshot.clone());
        let req = session.req_header();
        let path = req.uri.path();
        if path == "/v1/models" {
            if req.method != Method::GET {
                return Err(method_not_allowed(session).into());
            }
            let body = models_body(snapshot.models());
            return write_json(session, 200, body).await.map_err(Failure::Abort);
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
        let body = read_body(session, snapshot.policy.server.max_body_bytes).await?;
        let facts = RequestFacts::parse(endpoint, &body).map_err(GatewayError::from)?;
        let draws = {
            let mut rng = rand::rng();
            Draws {
                arm_bucket: rng.random_range(0..BUCKETS),
                shadow_bucket: rng.random_range(0..BUCKETS),
                rotation: self.rotation.fetch_add(1, Ordering::Relaxed),
            }
        };
        let decision = decide(&snapshot, &facts, &session.req_header().headers, draws)
            .map_err(GatewayError::from)?;
        ctx.decision = Some(decision.clone());
        let _in_flight = snapshot.arm_stats[decision.route][decision.arm].enter();
        forward(
            session,
            ctx,
            &self.connector,
            &snapshot,
            &decision,
            &facts,
            body,
        )
        .await
    }
}

fn method_not_allowed(session: &Session) -> GatewayError {
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

async fn write_json(session: &mut Session, status: u16, body: Bytes) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    /// Called once the request header is read. The whole exchange happens here (see the
    /// module docs of `proxy`); returning `Ok(true)` tells pingora the response is written.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        match self.serve(session, ctx).await {
            Ok(()) => Ok(true),
            Err(Failure::Respond(e)) => {
                ctx.status = e.status();
                if ctx.decision.is_none() {
                    ctx.rejected = Some(e.code());
                } else {
                    ctx.outcome = Some(crate::metrics::Outcome::Error);
                }
                // An unread body would be taken for the next request: close instead.
                if !session.is_body_done() {
                    session.set_keepalive(None);
                }
                write_json(session, e.status(), e.body()).await?;
                Ok(true)
            }
            Err(Failure::Abort(e)) => Err(e),
        }
    }

    /// Never reached: `request_filter` answers every request.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::InternalError,
            "every request is answered in request_filter",
        )
    }

    /// Called when the request is over, whatever happened: records its metrics.
    async fn logging(&self, _session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.in_flight.take();
        if let Some(link) = ctx.shadow_link.take() {
            let backend = match (&ctx.snapshot, ctx.backend) {
                (Some(s), Some(b)) => s.policy.backends[b].name.clone(),
                _ => String::new(),
            };
            link.send(ctx.primary_record.take().unwrap_or_else(|| ExchangeRecord {
                backend,
                status: ctx.status,
                latency: ctx.started.elapsed(),
                ..ExchangeRecord::default()
            }));
        }
        let (Some(snapshot), Some(decision)) = (&ctx.snapshot, &ctx.decision) else {
            if let Some(code) = ctx.rejected {
                self.store.metrics().record_rejected(code);
            }
            return;
        };
        let outcome = match (ctx.outcome, error) {
            (Some(o), _) => o,
            (None, _) => crate::metrics::Outcome::Error,
        };
        snapshot.arm_stats[decision.route][decision.arm].record(
            outcome,
            ctx.started.elapsed(),
            ctx.first_byte,
        );
        tracing::debug!(
            target: "switchyard::access",
            route = %snapshot.policy.routes[decision.route].name,
            status = ctx.status,
            ?outcome,
            latency_ms = ctx.started.elapsed().as_secs_f64() * 1e3,
            version = snapshot.version,
        );
    }
}
