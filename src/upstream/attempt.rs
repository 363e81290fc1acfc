//! One attempt on one backend: connect through pingora's pooled connector, send the request,
//! and wait for the response header; and the pool release once its answer was read.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::time::fast_timeout::fast_timeout;
use pingora::upstreams::peer::HttpPeer;
use pingora::Error;

use crate::config::BackendSpec;

/// Attempts on one backend when pooled connections turn out to be stale.
const STALE_RETRIES: usize = 3;
/// How long an idle upstream connection stays in the pool. Below uvicorn's 5 s keep-alive
/// (vLLM's server) so the gateway usually drops a connection before the backend does.
const POOL_IDLE: Duration = Duration::from_secs(4);

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

pub async fn attempt(
    connector: &Connector,
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
        let (mut http, reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(AttemptError::Connect)?;
        let sent = async {
            http.write_request_header(Box::new(request.clone())).await?;
            http.write_request_body(body.clone(), true).await?;
            http.finish_request_body().await
        };
        let mut sent_at = Instant::now();
        let result = match sent.await {
            Ok(()) => {
                sent_at = Instant::now();
                on_sent();
                fast_timeout(backend.timeouts.first_byte, http.read_response_header())
                    .await
                    .map_err(|_| {
                        AttemptError::Timeout("no response header within first_byte_timeout_ms")
                    })
            }
            Err(e) => Ok(Err(e)),
        };
        match result {
            Ok(Ok(())) => {
                return Ok(Answer {
                    http,
                    peer,
                    sent_at,
                })
            }
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

/// Returns the connection to the pool when its response was read to the end; otherwise it is
/// dropped (closed), since unread bytes would corrupt the next exchange.
pub async fn release(connector: &Connector, http: HttpSession, peer: &HttpPeer) {
    let mut http = http;
    if http.response_done() {
        connector
            .release_http_session(http, peer, Some(POOL_IDLE))
            .await;
    }
}
