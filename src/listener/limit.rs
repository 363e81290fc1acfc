//! Open-connection limits per listener and the process's descriptor limit.
//!
//! Every accepted connection holds a descriptor (and, while proxied, a second one upstream).
//! Without a limit a flood of idle clients takes every descriptor the process has, and then the
//! admin listener, `/readyz` and the policy watcher fail too. Each listener therefore counts its
//! own connections: past its limit a new one is answered `503` with `Retry-After` at once and
//! closed, and the proxy's limit is capped below what the descriptor limit can hold, so a
//! reserve always stays for the admin listener, upstream sockets and files.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::GatewayError;

/// Descriptors kept out of the proxy listener's share: the admin listener, Redis, the policy
/// file, logs, the runtime's own.
pub const FD_RESERVE: u64 = 1_024;

/// How long a refused client is told to wait before it tries again.
const RETRY_AFTER_SECS: u64 = 1;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (when it is lower) and returns the soft
/// limit now in force; `None` when the limits cannot be read. Called once at start: the default
/// soft limit (often 1024) would cap the gateway far below the connection limits.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The most connections the proxy listener may hold with `fd_limit` descriptors: each may need
/// a second descriptor upstream, and [`FD_RESERVE`] plus the admin listener's share stay free.
pub fn proxy_connection_cap(fd_limit: u64, admin_max_connections: usize) -> usize {
    let usable = fd_limit.saturating_sub(FD_RESERVE + admin_max_connections as u64);
    (usable / 2).max(1) as usize
}

/// One listener's count of open connections.
#[derive(Debug, Default)]
pub struct OpenConnections {
    open: AtomicUsize,
}

/// Held for a connection's life; gives its place back when dropped.
#[derive(Debug)]
pub struct Slot {
    count: Arc<OpenConnections>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OpenConnections {
    /// Counts a new connection; `Err` (still counted until dropped) when it is one past `limit`.
    pub fn enter(self: &Arc<Self>, limit: usize) -> Result<Slot, Slot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = Slot {
            count: self.clone(),
        };
        if admits(open, limit) {
            Ok(slot)
        } else {
            Err(slot)
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Whether the `open`-th connection (counting itself) fits under `limit`.
pub fn admits(open: usize, limit: usize) -> bool {
    open <= limit
}

/// Answers a connection over the limit: the OpenAI-shaped 503 with `Retry-After`, written at
/// once without waiting for the request, then a short bounded drain so the close does not
/// reset the connection before the client has read the answer.
pub async fn refuse<S>(mut stream: S, limit: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let e = GatewayError::TooManyConnections {
        limit,
        retry_after: RETRY_AFTER_SECS,
    };
    let body = e.body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: {RETRY_AFTER_SECS}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(1), write).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // Unread request bytes at close would make the kernel send a reset, which can discard
    // the answer on the client's side: read (and drop) at most 64 KiB for at most 500 ms.
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_inclusive() {
        assert!(admits(1, 1));
        assert!(admits(10_000, 10_000));
        assert!(!admits(10_001, 10_000));
    }

    #[test]
    fn the_proxy_cap_leaves_the_reserve_and_a_second_descriptor_per_connection() {
        // 65 536 descriptors: (65 536 - 1 024 - 64) / 2
        assert_eq!(proxy_connection_cap(65_536, 64), 32_224);
        assert_eq!(proxy_connection_cap(1_024, 64), 1);
    }

    #[test]
    fn slots_are_given_back_when_dropped() {
        let count = Arc::new(OpenConnections::default());
        let a = count.enter(2).expect("first fits");
        let b = count.enter(2).expect("second fits");
        let refused = count.enter(2).expect_err("third is over");
        assert_eq!(count.open(), 3);
        drop(refused);
        drop(a);
        assert_eq!(count.open(), 1);
        let _c = count.enter(2).expect("a freed place is reused");
        drop(b);
    }

    #[tokio::test]
    async fn a_refused_client_reads_a_503_with_retry_after() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(refuse(server, 7));
        let mut client = client;
        let mut text = String::new();
        client.read_to_string(&mut text).await.unwrap();
        server.await.unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
        let body: serde_json::Value =
            serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
        assert_eq!(body["error"]["type"], "server_error");
    }
}
