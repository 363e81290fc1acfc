//! One attempt on one backend: take a connection from the pool (or open one), send the request
//! in one write, and wait for the response header; and the pool release once its answer was
//! read.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::TransportConnector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::protocols::Stream;
use pingora::time::fast_timeout::fast_timeout;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};

use super::one_send::OneSendStream;
use crate::config::BackendSpec;

/// Attempts on one backend when pooled connections turn out to be stale.
const STALE_RETRIES: usize = 3;
/// How long an idle upstream connection stays in the pool. Below uvicorn's 5 s keep-alive
/// (vLLM's server) so the gateway usually drops a connection before the backend does.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// The pool of upstream connections an exchange draws from: pingora's transport connector
/// (connect with its timeouts, keep idle connections, drop the ones the backend closed).
///
/// One per runtime that uses it (the proxy's, the shadow runtime's), since an idle connection
/// is watched by a task of the runtime that released it.
pub struct UpstreamPool {
    transport: TransportConnector,
}

impl UpstreamPool {
    pub fn new() -> UpstreamPool {
        UpstreamPool {
            transport: TransportConnector::new(None),
        }
    }
}

impl Default for UpstreamPool {
    fn default() -> Self {
        UpstreamPool::new()
    }
}

/// The upstream leg after the response header arrived.
pub struct Answer {
    pub http: HttpSession,
    pub peer: HttpPeer,
    /// When the whole request had been written upstream: the origin of the first-byte, TTFT
    /// and total deadlines (the client's own upload time is not the backend's).
    pub sent_at: Instant,
}

pub enum AttemptError {
    /// No connection could be made: safe to try another backend.
    Connect(Box<Error>),
    Timeout(&'static str),
    Failed(Box<Error>),
}

/// Sends `request` with `body` to `backend` and waits (up to its first-byte timeout) for the
/// response header. The head and the body leave in one write (a large body continues in more).
/// `on_sent` runs once the request is on the wire, before the wait.
///
/// A pooled connection the backend had closed (the write fails, or the connection ends before
/// any byte of a response) is replaced by a fresh one: the backend processed nothing.
pub async fn attempt(
    pool: &UpstreamPool,
    backend: &BackendSpec,
    request: &RequestHeader,
    body: &Bytes,
    on_sent: &mut (dyn FnMut() + Send),
) -> Result<Answer, AttemptError> {
    let mut peer = HttpPeer::new(backend.addr, false, String::new());
    peer.options.connection_timeout = Some(backend.timeouts.connect);
    peer.options.total_connection_timeout = Some(backend.timeouts.connect);
    let mut tries = 0;
    loop {
        tries += 1;
        let (stream, reused) = pool
            .transport
            .get_stream(&peer)
            .await
            .map_err(AttemptError::Connect)?;
        let stream: Stream = Box::new(OneSendStream::new(stream));
        let mut http = Http1Session::new_with_options(stream, &peer);
        let sent = async {
            http.write_request_header(Box::new(request.clone())).await?;
            if !body.is_empty() {
                http.write_body(body).await?;
            }
            http.finish_body().await
        };
        let failure = match sent.await {
            Ok(_) => {
                let sent_at = Instant::now();
                on_sent();
                match fast_timeout(backend.timeouts.first_byte, http.read_response()).await {
                    Ok(Ok(_)) => {
                        return Ok(Answer {
                            http: HttpSession::H1(http),
                            peer,
                            sent_at,
                        })
                    }
                    Ok(Err(e)) => e,
                    Err(_) => {
                        return Err(AttemptError::Timeout(
                            "no response header within first_byte_timeout_ms",
                        ))
                    }
                }
            }
            Err(e) => e,
        };
        if reused && tries < STALE_RETRIES && nothing_came_back(&http, &failure) {
            tracing::debug!(backend = %backend.name, error = %failure, "stale pooled connection, retrying");
            continue;
        }
        return Err(AttemptError::Failed(failure));
    }
}

/// Whether a failed exchange looks like a pooled connection the backend had already closed: the
/// write failed or the connection ended, and not one byte of a response came back.
fn nothing_came_back(http: &Http1Session, failure: &Error) -> bool {
    let received = http
        .stream()
        .as_any()
        .downcast_ref::<OneSendStream>()
        .map_or(u64::MAX, OneSendStream::received);
    received == 0
        && matches!(
            failure.etype(),
            ErrorType::WriteError | ErrorType::ConnectionClosed | ErrorType::ReadError
        )
}

/// Returns the connection to the pool when its response was read to the end and the backend
/// keeps it open; otherwise it is closed, since unread bytes would corrupt the next exchange.
pub async fn release(pool: &UpstreamPool, http: HttpSession, peer: &HttpPeer) {
    let HttpSession::H1(mut http) = http else {
        return;
    };
    http.respect_keepalive();
    let Some(stream) = http.reuse().await else {
        return;
    };
    if let Ok(wrapped) = stream.into_any().downcast::<OneSendStream>() {
        pool.transport
            .release_stream(wrapped.into_inner(), peer.reuse_hash(), Some(POOL_IDLE));
    }
}
