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
