//! Reads the client's request body once, whole, within the policy's limit; after it, notices
//! when the client goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::protocols::http::ServerSession;

use crate::error::GatewayError;

/// Clients such as curl wait (a second, for curl) for "100 Continue" before sending a large
/// body; answer at once rather than let every big prompt pay that wait. Call it only once the
/// body is known to be wanted (a body declared too large gets its 413 instead).
pub async fn answer_expect_continue(session: &mut ServerSession) -> pingora::Result<()> {
    let expects = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects {
        session.write_continue_response().await?;
    }
    Ok(())
}

/// Reads the body within `deadline` (`408` past it: slow uploads must not pin a worker),
/// refusing it as soon as it is known to exceed `limit` bytes (from the `Content-Length` header
/// before reading anything, or while reading a chunked body).
pub async fn read_body(
    session: &mut ServerSession,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, GatewayError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    answer_expect_continue(session)
        .await
        .map_err(|e| GatewayError::BodyRead(e.etype().as_str().to_owned()))?;
    let capacity = declared.map_or(16 * 1024, |n| n as usize);
    let read = async {
        let mut buf = BytesMut::with_capacity(capacity);
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(GatewayError::BodyTooLarge { limit });
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(e) => return Err(GatewayError::BodyRead(e.etype().as_str().to_owned())),
            }
        }
    };
    // A body that came with its head is read at once: the timer is set only for one that did
    // not (setting one costs more than reading a small body from the buffer).
    let mut read = std::pin::pin!(read);
    if let Poll::Ready(body) = poll_once(read.as_mut()).await {
        return body;
    }
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(GatewayError::BodyTimeout(deadline.as_millis() as u64)))
}

/// Polls `f` once: its output if it is ready.
async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// Resolves when the client closes its connection (the request body is already read, so
/// anything else on the socket is the client's going away). Never resolves otherwise.
pub(super) async fn client_gone(session: &mut ServerSession) -> Box<pingora::Error> {
    match session.read_body_or_idle(true).await {
        Err(e) => e,
        Ok(_) => std::future::pending().await,
    }
}
