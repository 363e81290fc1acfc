//! Reads the client's request body once, whole, within the policy's limit.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use crate::error::GatewayError;

/// How long a client may take to send its whole body: slow uploads must not pin a worker.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads the body, refusing it as soon as it is known to exceed `limit` bytes (from the
/// `Content-Length` header before reading anything, or while reading a chunked body).
pub async fn read_body(session: &mut Session, limit: usize) -> Result<Bytes, GatewayError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
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
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(GatewayError::BodyTimeout(BODY_TIMEOUT.as_secs())))
}
