//! Shadow mirroring: a copy of a route's real traffic goes to a backend nobody sees the
//! answers of, and each shadow answer is compared with the primary's.
//!
//! Isolation is the contract. The copy is built from the body already read, sent from its own
//! task only after the primary request was dispatched, and bounded by the route's
//! `max_inflight` (beyond it the copy is dropped and counted, never queued). Its answer is read
//! to the end, bounded in time (`timeout_ms`) and size (only the text is kept, capped), and never
//! touches the primary's response. Shadow cost is recorded here only: it never counts against
//! a client's budget (budgets will read the primary's records, not these).

pub mod compare;
mod runner;
pub mod samples;
pub mod stats;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::RequestHeader;
use tokio::sync::oneshot;

pub use compare::ExchangeRecord;
pub use stats::{ShadowSlot, ShadowStats};

use crate::config::{BackendSpec, PolicySnapshot, ShadowSpec};
use crate::routing::{rewrite_model, RequestFacts, BUCKETS};
use crate::upstream::{
    attempt, release, upstream_request, AttemptError, ResponseCapture, UpstreamPool,
    CREDENTIAL_HEADERS,
};
use samples::SampleSpec;

/// The header every mirrored request carries, so backends and their logs can tell copies apart.
pub const SHADOW_HEADER: &str = "x-switchyard-shadow";

/// Hands the primary's record to the waiting shadow task. Dropping it without sending tells
/// the task the primary left no record.
pub struct PrimaryLink(oneshot::Sender<ExchangeRecord>);

impl PrimaryLink {
    pub fn send(self, record: ExchangeRecord) {
        let _ = self.0.send(record);
    }
}

/// A prepared copy of one request, launched once the primary is dispatched.
pub struct ShadowJob {
    backend: BackendSpec,
    request: RequestHeader,
    body: Bytes,
    timeout: Duration,
    prompt_estimate: u64,
    route: String,
    samples: Option<SampleSpec>,
    stats: Arc<ShadowStats>,
    slot: ShadowSlot,
    primary: oneshot::Receiver<ExchangeRecord>,
}

impl ShadowJob {
    /// Prepares the copy of a request the decision chose to mirror. `None` (and a counted drop)
    /// when the route's shadow is at `max_inflight`, or when the copy cannot be built.
    pub fn prepare(
        snapshot: &PolicySnapshot,
        route: usize,
        facts: &RequestFacts,
        client_request: &RequestHeader,
        body: &Bytes,
    ) -> Option<(ShadowJob, PrimaryLink)> {
        let spec: &ShadowSpec = snapshot.policy.routes[route].shadow.as_ref()?;
        let stats = snapshot.shadow_stats[route].clone()?;
        let slot = stats.try_enter(spec.max_inflight)?;
        let backend = snapshot.policy.backends[spec.backend].clone();
        let body = match spec
            .upstream_model
            .as_ref()
            .or(backend.upstream_model.as_ref())
        {
            Some(m) if *m != facts.model => rewrite_model(body, m).ok()?.into(),
            _ => body.clone(),
        };
        let mut request = upstream_request(client_request, &backend, body.len(), None).ok()?;
        request.insert_header(SHADOW_HEADER, "1").ok()?;
        if !(spec.copy_credentials || backend.trusted) {
            for name in CREDENTIAL_HEADERS {
                request.remove_header(name);
            }
        }
        let (tx, rx) = oneshot::channel();
        Some((
            ShadowJob {
                backend,
                request,
                body,
                timeout: spec.timeout,
                prompt_estimate: facts.prompt_tokens_estimate,
                route: snapshot.policy.routes[route].name.clone(),
                samples: spec.samples.clone(),
                stats,
                slot,
                primary: rx,
            },
            PrimaryLink(tx),
        ))
    }

    /// Starts the copy on the shadow runtime; the caller goes on at once.
    pub fn launch(self) {
        self.stats.mirrored.fetch_add(1, Ordering::Relaxed);
        runner::spawn(self.run());
    }

    async fn run(self) {
        let ShadowJob {
            backend,
            request,
            body,
            timeout,
            prompt_estimate,
            route,
            samples,
            stats,
            slot,
            primary,
        } = self;
        let started = Instant::now();
        let exchange = exchange(runner::connector(), &backend, &request, &body, started);
        let mut record = match tokio::time::timeout(timeout, exchange).await {
            Ok(record) => record,
            Err(_) => ExchangeRecord {
                latency: started.elapsed(),
                ..ExchangeRecord::default()
            },
        };
        drop(slot);
        record.backend = backend.name.clone();
        if record.prompt_tokens == 0 {
            record.prompt_tokens = prompt_estimate;
        }
        record.cost_usd = crate::cost::cost_usd(
            backend.price.as_ref(),
            &crate::telemetry::Usage {
                prompt_tokens: record.prompt_tokens,
                completion_tokens: record.output_tokens,
                ..Default::default()
            },
        );
        if !record.ok {
            tracing::debug!(backend = %backend.name, status = record.status, "shadow exchange failed");
        }
        // The primary's record arrives when the primary request ends (its link is dropped
        // with the request at the latest), so this wait is bounded by the primary's own life.
        let primary = primary.await.ok();
        stats.record(primary.as_ref(), &record);
        if let (Some(spec), Some(primary)) = (samples, primary) {
            if rand::random_range(0..BUCKETS) < spec.percent_bp {
                let line = samples::pair_line(&route, &primary, &record);
                let writer = stats.clone();
                let written =
                    tokio::task::spawn_blocking(move || writer.samples.append(&spec, &line)).await;
                match written {
                    Ok(Ok(())) => stats.sampled.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) => {
                        tracing::warn!(route, error = %e, "cannot write the shadow sample file");
                        stats.sample_errors.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => stats.sample_errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }
}

/// Sends the copy and reads the whole answer, keeping only what the comparison needs.
async fn exchange(
    connector: &UpstreamPool,
    backend: &BackendSpec,
    request: &RequestHeader,
    body: &Bytes,
    started: Instant,
) -> ExchangeRecord {
    let failed = |status: u16| ExchangeRecord {
        status,
        latency: started.elapsed(),
        ..ExchangeRecord::default()
    };
    let answer = match attempt(connector, backend, request, body, &mut || {}).await {
        Ok(answer) => answer,
        Err(AttemptError::Connect(_) | AttemptError::Timeout(_) | AttemptError::Failed(_)) => {
            return failed(0)
        }
    };
    let (mut http, peer) = (answer.http, answer.peer);
    let Some(header) = http.response_header() else {
        return failed(0);
    };
    let status = header.status.as_u16();
    let is_sse = header
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut capture = ResponseCapture::new(is_sse, true);
    let mut ttft = None;
    loop {
        match http.read_response_body().await {
            Ok(Some(chunk)) => {
                ttft.get_or_insert_with(|| started.elapsed());
                capture.feed(&chunk);
            }
            Ok(None) => break,
            Err(_) => {
                return ExchangeRecord {
                    status,
                    ttft,
                    ..failed(status)
                }
            }
        }
    }
    release(connector, http, &peer).await;
    let captured = capture.finish();
    ExchangeRecord {
        backend: String::new(),
        status,
        ok: (200..300).contains(&status) && !captured.stream_failed,
        latency: started.elapsed(),
        ttft,
        prompt_tokens: captured.usage.map_or(0, |u| u.prompt_tokens),
        output_tokens: captured
            .usage
            .map_or(captured.data_events, |u| u.completion_tokens),
        text: captured.text,
        cost_usd: 0.0,
    }
}
