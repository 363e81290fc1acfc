//! The admin listener: health, metrics, and the policy API (get, put, history, rollback).
//!
//! It runs on its own socket, never the proxy's. Reads are open; changes need
//! `Authorization: Bearer <token>` where the token is the value of the environment variable the
//! running policy names in `server.admin_token_env`. With no token configured, changes are
//! refused outright rather than left open.

mod auth;
mod backends;
mod guardrails;

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::config::{HistoryEntry, PolicySource, PolicyStore, RollbackError};
use crate::error::openai_error_body;
use crate::guardrails::GuardrailRuntime;
use crate::listener::{Conn, Head, HeadWait, HttpApp};

/// Counters listed per budget or rate limit by `/admin/spend` (the largest first): the page
/// stays bounded however many keys spend.
pub const MAX_SPEND_ROWS: usize = 1_000;

/// Largest policy the API accepts.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

pub struct AdminApp {
    store: Arc<PolicyStore>,
    guardrails: Arc<GuardrailRuntime>,
}

impl AdminApp {
    /// `guardrails` is the evaluator's runtime, shared with its background task.
    pub fn new(store: Arc<PolicyStore>, guardrails: Arc<GuardrailRuntime>) -> AdminApp {
        AdminApp { store, guardrails }
    }

    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_owned();
        let query = req.uri.query().unwrap_or("").to_owned();
        match (method.clone(), path.as_str()) {
            (Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (Method::GET, "/readyz") => {
                let version = self.store.current().version;
                json_response(
                    StatusCode::OK,
                    &json!({"ready": true, "policy_version": version}),
                )
            }
            (Method::GET, "/metrics") => Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "text/plain; version=0.0.4")
                .body(self.metrics_text().into_bytes())
                .unwrap_or_default(),
            (Method::GET, "/admin/config") => self.get_config(&query),
            (Method::GET, "/admin/config/history") => {
                let history = self.store.history();
                let live = history.last().map(|e| e.version);
                let entries: Vec<_> = history
                    .iter()
                    .rev()
                    .map(|e| entry_json(e, Some(e.version) == live))
                    .collect();
                json_response(StatusCode::OK, &json!({"versions": entries}))
            }
            (Method::GET, "/admin/shadow") => self.shadow_report(),
            (Method::GET, "/admin/spend") => json_response(
                StatusCode::OK,
                &self.store.spend().report(
                    &self.store.current(),
                    self.store.redis(),
                    std::time::SystemTime::now(),
                    MAX_SPEND_ROWS,
                ),
            ),
            (Method::GET, "/admin/cache") => {
                json_response(StatusCode::OK, &self.store.cache().report())
            }
            (Method::DELETE, "/admin/cache") => {
                if let Err(denied) = auth::check(session, &self.store) {
                    return *denied;
                }
                // Only L1 is cleared: Redis entries are shared with other replicas and expire
                // by their TTL.
                let route = query_param(&query, "route").map(percent_decode);
                let removed = self.store.cache().clear(route.as_deref());
                json_response(StatusCode::OK, &json!({"removed": removed, "route": route}))
            }
            (Method::GET, "/admin/backends") => backends::report(&self.store.current()),
            (Method::GET, "/admin/guardrails") => {
                guardrails::report(&self.store, &self.guardrails, &query)
            }
            (Method::POST, p) if p.starts_with("/admin/rollout/") => {
                if let Err(denied) = auth::check(session, &self.store) {
                    return *denied;
                }
                guardrails::rollout(&self.guardrails, &p["/admin/rollout/".len()..])
            }
            (Method::PUT, "/admin/config") => {
                if let Err(denied) = auth::check(session, &self.store) {
                    return *denied;
                }
                self.put_config(session, &query).await
            }
            (Method::POST, "/admin/rollback") => {
                if let Err(denied) = auth::check(session, &self.store) {
                    return *denied;
                }
                self.rollback(&query)
            }
            (
                _,
                "/healthz"
                | "/readyz"
                | "/metrics"
                | "/admin/config"
                | "/admin/config/history"
                | "/admin/shadow"
                | "/admin/spend"
                | "/admin/backends"
                | "/admin/rollback"
                | "/admin/cache",
            ) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("Method {method} is not allowed on {path}."),
                "method_not_allowed",
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                &format!("Invalid URL ({method} {path})."),
                "unknown_url",
            ),
        }
    }

    /// Everything `/metrics` shows: the request series, then the shared Redis client's.
    fn metrics_text(&self) -> String {
        let mut out = self.store.metrics().render();
        crate::backends::health::render(&self.store.current(), Instant::now(), &mut out);
        self.store.redis().render(&mut out);
        self.store.spend().render(&mut out);
        self.store.cache().render(&mut out);
        out
    }

    /// Per route: the running shadow configuration (if any) and everything mirrored so far
    /// (figures outlive policy versions; a route that stopped mirroring keeps its history).
    fn shadow_report(&self) -> Response<Vec<u8>> {
        let snapshot = self.store.current();
        let routes: Vec<_> = self
            .store
            .metrics()
            .shadows()
            .into_iter()
            .map(|(route, stats)| {
                let spec = snapshot
                    .policy
                    .routes
                    .iter()
                    .find(|r| r.name == route)
                    .and_then(|r| r.shadow.as_ref());
                let mut report = stats.report();
                report["route"] = json!(route);
                report["shadow"] = match spec {
                    Some(s) => json!({
                        "backend": snapshot.policy.backends[s.backend].name,
                        "percent": f64::from(s.percent_bp) / 100.0,
                        "max_inflight": s.max_inflight,
                        "timeout_ms": s.timeout.as_millis() as u64,
                        "mirror_streaming": s.mirror_streaming,
                    }),
                    None => serde_json::Value::Null,
                };
                report
            })
            .collect();
        json_response(StatusCode::OK, &json!({"routes": routes}))
    }

    fn get_config(&self, query: &str) -> Response<Vec<u8>> {
        let history = self.store.history();
        let Some(live) = history.last() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no policy is loaded",
                "no_policy",
            );
        };
        if query_param(query, "format") == Some("toml") {
            return Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/toml")
                .header("x-switchyard-policy-version", live.version.to_string())
                .body(live.snapshot.source.clone().into_bytes())
                .unwrap_or_default();
        }
        let mut body = entry_json(live, true);
        body["policy"] = json!(live.snapshot.source);
        json_response(StatusCode::OK, &body)
    }

    async fn put_config(&self, session: &mut ServerSession, query: &str) -> Response<Vec<u8>> {
        if let Err(e) = crate::proxy::body::answer_expect_continue(session).await {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("reading the body failed: {e}"),
                "incomplete_body",
            );
        }
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_POLICY_BYTES => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("a policy is at most {MAX_POLICY_BYTES} bytes"),
                        "request_too_large",
                    );
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        &format!("reading the body failed: {e}"),
                        "incomplete_body",
                    )
                }
            }
        }
        let Ok(text) = std::str::from_utf8(&body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "the policy must be UTF-8 TOML",
                "invalid_policy",
            );
        };
        let reason = query_param(query, "reason")
            .map(percent_decode)
            .or_else(|| header(session, "x-switchyard-reason"))
            .unwrap_or_else(|| "pushed through the admin API".to_owned());
        match self.store.apply(text, PolicySource::Api, &reason) {
            Ok(applied) => json_response(
                StatusCode::OK,
                &json!({"version": applied.snapshot.version, "unchanged": applied.unchanged}),
            ),
            Err(errors) => {
                let list: Vec<_> = errors
                    .iter()
                    .map(|e| json!({"path": e.path, "message": e.message}))
                    .collect();
                let message = errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({
                        "error": {"message": format!("the policy was rejected, the running one is kept: {message}"),
                                  "type": "invalid_request_error", "code": "invalid_policy"},
                        "errors": list,
                    }),
                )
            }
        }
    }

    fn rollback(&self, query: &str) -> Response<Vec<u8>> {
        let to = match query_param(query, "to").map(str::parse::<u64>) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "`to` must be a version number",
                    "invalid_version",
                )
            }
        };
        match self.store.rollback(to) {
            Ok(applied) => json_response(
                StatusCode::OK,
                &json!({"version": applied.snapshot.version, "unchanged": applied.unchanged,
                        "reason": self.store.history().last().map(|e| e.reason.clone())}),
            ),
            Err(e @ RollbackError::UnknownVersion(..)) => {
                error(StatusCode::NOT_FOUND, &e.to_string(), "unknown_version")
            }
            Err(e @ RollbackError::NoPrevious) => {
                error(StatusCode::CONFLICT, &e.to_string(), "no_previous_version")
            }
            Err(e @ RollbackError::Invalid { .. }) => {
                error(StatusCode::CONFLICT, &e.to_string(), "invalid_policy")
            }
        }
    }
}

impl HttpApp for AdminApp {
    /// One request: its head, the whole answer, and the connection back when it can be reused.
    async fn serve_one(&self, conn: Conn, head: HeadWait<'_>) -> Option<Conn> {
        let mut session = conn.session();
        // A malformed head closes the connection without an answer, as pingora's server did.
        let Head::Request = head.read(&mut session).await else {
            return None;
        };
        let (parts, body) = self.route(&mut session).await.into_parts();
        let mut head = ResponseHeader::from(parts);
        let sent = async {
            head.insert_header(http::header::CONTENT_LENGTH, body.len())?;
            session.write_response_header(Box::new(head)).await?;
            session.write_response_body(body.into(), true).await
        };
        if let Err(e) = sent.await {
            tracing::debug!(error = %e, "admin answer not delivered");
            return None;
        }
        Conn::after(session).await
    }
}

fn entry_json(e: &HistoryEntry, live: bool) -> serde_json::Value {
    json!({
        "version": e.version,
        "activated_at": humantime::format_rfc3339_seconds(e.activated_at).to_string(),
        "source": e.source.to_string(),
        "reason": e.reason,
        "diff": e.diff,
        "content_hash": format!("{:016x}", e.snapshot.content_hash),
        "live": live,
    })
}

fn header(session: &ServerSession, name: &str) -> Option<String> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn text(status: StatusCode, body: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body.as_bytes().to_vec())
        .unwrap_or_default()
}

pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .unwrap_or_default()
}

pub(crate) fn error(status: StatusCode, message: &str, code: &str) -> Response<Vec<u8>> {
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(openai_error_body(message, kind, code).to_vec())
        .unwrap_or_default()
}
