//! A pooled upstream connection on which the request head waits for the body, so that a request
//! leaves in one send.
//!
//! pingora's HTTP/1 client writes the request head and then flushes it on its own; the body
//! follows in a second send. On loopback every send runs the backend's TCP input and wakes it,
//! so a request costs the gateway an extra system call and the backend an extra wake-up (see
//! `benches/findings.md`). [`OneSendStream`] sits between pingora's client and the pooled
//! connection and swallows the flush that follows the head: the head is kept and goes out in
//! the same vectored write as the first bytes of the body (or at the next flush when there is
//! no body). Everything else — framing, timeouts, response parsing, keep-alive rules — stays
//! pingora's.
//!
//! It also counts the response bytes that came back, which is how an attempt tells a pooled
//! connection the backend had closed (nothing came back: safe to resend) from a backend that
//! began answering and then failed (not safe).

use std::fmt;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where the request head is in its way to the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Bytes written so far are the head: keep them.
    Collecting,
    /// The head is complete (its flush was swallowed): the next write carries it.
    Complete,
    /// The head is on the wire; writes and flushes pass through.
    Sent,
}

/// The connection pingora's HTTP/1 client writes to for one exchange. Wrap a connection from
/// the pool with [`OneSendStream::new`] before building the client session on it, and take the
/// connection back with [`OneSendStream::into_inner`] before returning it to the pool.
pub struct OneSendStream {
    inner: Stream,
    held: Vec<u8>,
    head: Head,
    received: u64,
}

impl OneSendStream {
    /// Wraps a connection for one request: the first bytes written up to the first flush are
    /// the request head.
    pub fn new(inner: Stream) -> OneSendStream {
        OneSendStream {
            inner,
            held: Vec::new(),
            head: Head::Collecting,
            received: 0,
        }
    }

    /// Response bytes read from the connection since it was wrapped.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The pooled connection, for the pool. Only call it once the exchange ended: a head still
    /// held is dropped.
    pub fn into_inner(self) -> Stream {
        self.inner
    }

    /// Writes what is left of the held head, alone.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        self.head = Head::Sent;
        Poll::Ready(Ok(()))
    }
}

impl fmt::Debug for OneSendStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneSendStream")
            .field("inner", &self.inner)
            .field("held", &self.held.len())
            .field("head", &self.head)
            .field("received", &self.received)
            .finish()
    }
}

impl AsyncWrite for OneSendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.head {
            Head::Collecting => {
                this.held.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            Head::Sent => Pin::new(&mut this.inner).poll_write(cx, buf),
            Head::Complete => {
                // The head and the first body bytes in one vectored write. Progress on the head
                // is kept in `held` across `Pending`, so a re-poll with the same `buf` resumes.
                while !this.held.is_empty() {
                    let slices = [IoSlice::new(&this.held), IoSlice::new(buf)];
                    let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
                    if n == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    if n >= this.held.len() {
                        let of_body = n - this.held.len();
                        this.held.clear();
                        this.head = Head::Sent;
                        if of_body > 0 {
                            return Poll::Ready(Ok(of_body));
                        }
                    } else {
                        this.held.drain(..n);
                    }
                }
                this.head = Head::Sent;
                Pin::new(&mut this.inner).poll_write(cx, buf)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.head {
            // The flush that ends the head: hold it for the body.
            Head::Collecting => {
                this.head = Head::Complete;
                Poll::Ready(Ok(()))
            }
            // A request without body bytes: the head goes alone.
            Head::Complete => {
                ready!(this.poll_write_held(cx))?;
                Pin::new(&mut this.inner).poll_flush(cx)
            }
            Head::Sent => Pin::new(&mut this.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl AsyncRead for OneSendStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.received += (buf.filled().len() - before) as u64;
        Poll::Ready(Ok(()))
    }
}

// What pingora asks of a connection besides reading and writing: the wrapped one answers.

#[async_trait]
impl Shutdown for OneSendStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for OneSendStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for OneSendStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for OneSendStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for OneSendStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for OneSendStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for OneSendStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use parking_lot::Mutex;
    use pingora::http::RequestHeader;
    use pingora::protocols::http::v1::client::HttpSession;

    /// What reached the "socket": one entry per write call that moved bytes, and the flushes.
    #[derive(Default)]
    struct Wire {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    /// A connection that records every write call, accepting at most `limit` bytes per call (as
    /// a full socket buffer does).
    #[derive(Debug)]
    struct Recorder {
        wire: Arc<Mutex<Wire>>,
        limit: usize,
    }

    impl fmt::Debug for Wire {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} writes", self.writes.len())
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.limit);
            self.wire.lock().writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut taken = Vec::new();
            for b in bufs {
                let room = self.limit - taken.len();
                taken.extend_from_slice(&b[..b.len().min(room)]);
            }
            let n = taken.len();
            self.wire.lock().writes.push(taken);
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.wire.lock().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            buf.put_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            Poll::Ready(Ok(()))
        }
    }

    #[async_trait]
    impl Shutdown for Recorder {
        async fn shutdown(&mut self) {}
    }
    impl UniqueID for Recorder {
        fn id(&self) -> UniqueIDType {
            7
        }
    }
    impl Ssl for Recorder {}
    impl GetTimingDigest for Recorder {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            Vec::new()
        }
    }
    impl GetProxyDigest for Recorder {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            None
        }
    }
    impl GetSocketDigest for Recorder {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            None
        }
    }
    impl Peek for Recorder {}

    /// Sends one request through pingora's HTTP/1 client over a [`OneSendStream`], as an
    /// attempt does, and returns what reached the wire and the request's bytes in order.
    async fn send(body: &[u8], limit: usize) -> (Wire, Vec<u8>) {
        let wire = Arc::new(Mutex::new(Wire::default()));
        let recorder = Recorder {
            wire: wire.clone(),
            limit,
        };
        let stream: Stream = Box::new(OneSendStream::new(Box::new(recorder)));
        let mut http = HttpSession::new(stream);
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        req.insert_header("host", "backend").unwrap();
        req.insert_header("content-length", body.len().to_string())
            .unwrap();
        let head = pingora::protocols::http::v1::client::http_req_header_to_wire(&req).unwrap();
        http.write_request_header(Box::new(req)).await.unwrap();
        if !body.is_empty() {
            http.write_body(&Bytes::copy_from_slice(body))
                .await
                .unwrap();
        }
        http.finish_body().await.unwrap();
        http.read_response().await.unwrap();
        assert_eq!(http.get_status().map(|s| s.as_u16()), Some(200));
        let received = http
            .stream()
            .as_any()
            .downcast_ref::<OneSendStream>()
            .map(OneSendStream::received);
        assert!(
            received.is_some_and(|n| n > 0),
            "response bytes are counted"
        );
        let mut expected = head.to_vec();
        expected.extend_from_slice(body);
        drop(http);
        let wire = Arc::try_unwrap(wire).unwrap().into_inner();
        (wire, expected)
    }

    #[tokio::test]
    async fn a_small_request_leaves_in_one_write() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let (wire, expected) = send(body, usize::MAX).await;
        assert_eq!(wire.writes.len(), 1, "head and body in one write: {wire:?}");
        assert_eq!(wire.writes[0], expected, "the bytes, in order");
    }

    #[tokio::test]
    async fn a_request_without_body_leaves_at_the_flush() {
        let (wire, expected) = send(b"", usize::MAX).await;
        assert_eq!(wire.writes.len(), 1, "{wire:?}");
        assert_eq!(wire.writes[0], expected);
        assert!(wire.flushes >= 1, "the head went out when flushed");
    }

    #[tokio::test]
    async fn a_large_body_starts_with_the_head_and_continues_in_order() {
        let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        // A socket that takes 100 bytes at a time: the head itself needs several writes, which
        // must resume where they stopped.
        let (wire, expected) = send(&body, 100).await;
        assert!(wire.writes.len() > 1);
        assert_eq!(wire.writes.concat(), expected, "every byte once, in order");
        let (wire, expected) = send(&body, 256 * 1024).await;
        assert_eq!(wire.writes.concat(), expected);
        assert_eq!(
            wire.writes.len(),
            expected.len().div_ceil(256 * 1024),
            "as few writes as the socket allows: the first carries the head and body"
        );
    }
}
