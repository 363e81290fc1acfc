//! The proxy and admin listeners' own defences, below their applications: a connection limit,
//! and one deadline for each request head that also bounds the keep-alive idle wait.
//!
//! pingora 0.9 bounds each *read* of a request head (60 s), not the whole head: a client that
//! sends one byte every few seconds keeps its socket forever, and an HTTP/1.1 keep-alive
//! connection waits for its next request without limit. Thousands of such clients exhaust the
//! process's file descriptors. [`HardenedListener`] runs each connection's HTTP/1 loop itself
//! and hands every request to its application ([`HttpApp`]) as the connection ([`Conn`]) and a
//! [`HeadWait`]: the application reads the head through it, against the deadline and the
//! service's stop (through pingora's session, or as a plain request straight from the
//! connection's bytes), and then serves the request undisturbed. pingora's own per-read timeout
//! on heads is turned off, so a request waits on one timer, not two.

mod conn;
mod head;
mod limit;

pub use conn::{Conn, Early, PlainRequest};
pub use head::{check_head, head_bytes, HeadLimitExceeded};
pub use limit::{proxy_connection_cap, raise_fd_limit, OpenConnections, FD_RESERVE};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::PolicyStore;
use crate::telemetry::log_limit::CLIENT_ERRORS;

/// An HTTP/1 application behind a [`HardenedListener`] (the proxy's `Gateway`, the admin API).
pub trait HttpApp: Send + Sync + 'static {
    /// Serves one request of `conn`, its head read through `head`; the connection back when it
    /// can serve another request, `None` when it is done.
    fn serve_one(
        &self,
        conn: Conn,
        head: HeadWait<'_>,
    ) -> impl Future<Output = Option<Conn>> + Send;
}

/// The wait for one request's head: until its deadline, or the service's stop.
pub struct HeadWait<'a> {
    deadline: Instant,
    stopping: &'a Stopping,
    shutdown: &'a ShutdownWatch,
}

/// What [`HeadWait::read`] found.
pub enum Head {
    /// A request to serve (on a server shutting down, its connection closes after it).
    Request,
    /// Nothing to answer: the client closed the connection, its head was not complete by the
    /// deadline (a client that cannot send a head in time would not read an answer either),
    /// the service is stopping before a head arrived, or the connection broke (logged).
    Closed,
    /// pingora's parser refused the head, for this reason (without the raw head, which its
    /// error text repeats, credentials and all).
    Malformed(String),
}

impl HeadWait<'_> {
    /// Whether the server is shutting down: the connection closes after this request.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// `read`'s output, unless the deadline passes or the service stops first.
    async fn within<T>(&self, read: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            // Biased: a request already buffered is served, not dropped, when shutdown begins.
            biased;
            read = read => Some(read),
            () = self.stopping.wait() => None,
            () = tokio::time::sleep_until(self.deadline) => {
                tracing::debug!("request head not received in time; connection closed");
                None
            }
        }
    }

    /// Reads `session`'s request head.
    pub async fn read(self, session: &mut ServerSession) -> Head {
        let read = self
            .within(session.read_request())
            .await
            .unwrap_or(Ok(false));
        match read {
            Ok(true) => {
                if self.shutting_down() {
                    session.set_keepalive(None);
                }
                Head::Request
            }
            Ok(false) => Head::Closed,
            Err(e) if matches!(e.etype(), ErrorType::InvalidHTTPHeader) => {
                // The parser's reason where there is one; without one, the context is pingora's
                // explanation ("Request header larger than …").
                Head::Malformed(match (&e.cause, &e.context) {
                    (Some(cause), _) => cause.to_string(),
                    (None, Some(context)) => context.to_string(),
                    (None, None) => e.etype().as_str().to_owned(),
                })
            }
            Err(e) => {
                broken(&e);
                Head::Closed
            }
        }
    }

    /// Reads from `conn` until it holds a whole head, and takes a plain request off it (see
    /// [`conn`]'s notes), its head at most `max_head` bytes. [`Early::Other`] leaves every byte
    /// read for pingora's session ([`Conn::session`]), which [`HeadWait::read`] then reads
    /// against the same deadline.
    pub async fn read_plain(&self, conn: &mut Conn, max_head: usize) -> Early {
        use tokio::io::AsyncReadExt;
        let mut spans = conn::Spans::default();
        loop {
            if !conn.pending.is_empty() {
                match conn::parse(&conn.pending, max_head, &mut spans) {
                    conn::Parsed::Plain(frame) => {
                        return conn::take(&mut conn.pending, frame, &spans)
                            .map_or(Early::Other, Early::Plain)
                    }
                    conn::Parsed::Other => return Early::Other,
                    conn::Parsed::Partial => {}
                }
            }
            conn.pending.reserve(READ_SIZE);
            match self.within(conn.stream.read_buf(&mut conn.pending)).await {
                None | Some(Ok(0)) => return Early::Closed,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    broken(&e);
                    return Early::Closed;
                }
            }
        }
    }
}

/// How much room a read of a head asks for (pingora's first read asks as much).
const READ_SIZE: usize = 4096;

/// A connection that broke before its request head was read: rate-limited with pingora's own
/// connection errors (`log_limit`).
fn broken(e: &dyn std::fmt::Display) {
    tracing::warn!(
        target: CLIENT_ERRORS,
        "client connection failed before its request head was read: {e}"
    );
}

/// Set, and its waiters woken, when the service stops: connections idle between requests close.
#[derive(Default)]
struct Stopping {
    stopped: AtomicBool,
    notify: Notify,
}

impl Stopping {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        let stop = self.notify.notified();
        if !self.stopped.load(Ordering::Acquire) {
            stop.await;
        }
    }
}

/// Which listener a [`HardenedListener`] serves: each has its own connection limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `[server].max_connections`, capped by what the descriptor limit holds.
    Proxy { fd_cap: usize },
    /// `[server].admin_max_connections`.
    Admin,
}

/// Wraps an HTTP application (the proxy or the admin API) with the connection limit, the head
/// deadline and the keep-alive idle timeout of the running policy's `[server]` settings, read
/// per connection.
pub struct HardenedListener<A> {
    app: A,
    store: Arc<PolicyStore>,
    role: Role,
    open: Arc<OpenConnections>,
    stopping: Stopping,
}

impl<A> HardenedListener<A> {
    pub fn new(app: A, store: Arc<PolicyStore>, role: Role) -> HardenedListener<A> {
        HardenedListener {
            app,
            store,
            role,
            open: Arc::new(OpenConnections::default()),
            stopping: Stopping::default(),
        }
    }
}

#[async_trait]
impl<A: HttpApp> ServerApp for HardenedListener<A> {
    /// Called by pingora for every accepted connection: serves its HTTP/1 requests one after
    /// the other until the client or a limit ends it.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (head_timeout, keepalive_secs, limit) = {
            let snapshot = self.store.current();
            let s = &snapshot.policy.server;
            let limit = match self.role {
                Role::Proxy { fd_cap } => s.max_connections.min(fd_cap),
                Role::Admin => s.admin_max_connections,
            };
            (s.head_timeout, s.keepalive_timeout_secs, limit)
        };
        // Held until the connection ends, whichever way.
        let _slot = match self.open.enter(limit) {
            Ok(slot) => slot,
            Err(_over) => {
                tracing::debug!(limit, "connection limit reached; answered 503");
                limit::refuse(stream, limit).await;
                return None;
            }
        };
        let mut conn = Conn::new(stream, BytesMut::new());
        // A new connection's first head is due `head_timeout` after the accept; on a kept-alive
        // one the next head is due `keepalive` after the previous answer: the idle wait and the
        // head under one deadline.
        let mut wait = head_timeout;
        let keepalive = Duration::from_secs(keepalive_secs);
        loop {
            let head = HeadWait {
                deadline: Instant::now() + wait,
                stopping: &self.stopping,
                shutdown,
            };
            conn = self.app.serve_one(conn, head).await?;
            wait = keepalive;
        }
    }

    /// Requests waiting for their head on idle keep-alive connections give up.
    async fn cleanup(&self) {
        self.stopping.stop();
    }
}
