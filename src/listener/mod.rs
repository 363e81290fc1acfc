//! The proxy and admin listeners' own defences, below their applications: a connection limit,
//! and one deadline for each request head that also bounds the keep-alive idle wait.
//!
//! pingora 0.9 bounds each *read* of a request head (60 s), not the whole head: a client that
//! sends one byte every few seconds keeps its socket forever, and an HTTP/1.1 keep-alive
//! connection waits for its next request without limit. Thousands of such clients exhaust the
//! process's file descriptors. [`HardenedListener`] runs each connection's HTTP/1 loop itself
//! and hands every request to its application ([`HttpApp`]) with a [`HeadWait`]: the
//! application reads the head through it, against the deadline and the service's stop, and then
//! serves the request undisturbed. pingora's own per-read timeout on heads is turned off, so a
//! request waits on one timer, not two.

mod head;
mod limit;

pub use head::{check_head, head_bytes, HeadLimitExceeded};
pub use limit::{proxy_connection_cap, raise_fd_limit, OpenConnections, FD_RESERVE};

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream, ServerApp};
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
    /// Serves one request of `session`, its head read through `head`; the connection back when
    /// it can serve another request, `None` when it is done.
    fn serve_one(
        &self,
        session: ServerSession,
        head: HeadWait<'_>,
    ) -> impl Future<Output = Option<ReusedHttpStream>> + Send;
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
    /// Reads `session`'s request head.
    pub async fn read(self, session: &mut ServerSession) -> Head {
        let read = tokio::select! {
            // Biased: a request already buffered is served, not dropped, when shutdown begins.
            biased;
            head = session.read_request() => head,
            () = self.stopping.wait() => Ok(false),
            () = tokio::time::sleep_until(self.deadline) => {
                tracing::debug!("request head not received in time; connection closed");
                Ok(false)
            }
        };
        match read {
            Ok(true) => {
                if *self.shutdown.borrow() {
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
                // Rate-limited with pingora's own connection errors (`log_limit`).
                tracing::warn!(
                    target: CLIENT_ERRORS,
                    "client connection failed before its request head was read: {e}"
                );
                Head::Closed
            }
        }
    }
}

/// Gives `session`'s connection back for the next request when it can serve one.
pub async fn reuse(session: ServerSession) -> Option<ReusedHttpStream> {
    let settings = HttpPersistentSettings::for_session(&session);
    let reused = session.finish().await.ok().flatten()?;
    Some(ReusedHttpStream::from_reusable_stream(reused, settings))
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

/// An HTTP/1 session on `stream`, with pipelining on: a client that sends its next request
/// before it has read the answer is served in order (pingora's default closes the connection,
/// losing that request), and an answer written straight onto the connection (a cache hit) can
/// take it back through pingora's reuse with those bytes kept.
fn http1(stream: Stream) -> ServerSession {
    let mut session = ServerSession::new_http1(stream);
    if let ServerSession::H1(h1) = &mut session {
        h1.set_pipelining_enabled(true);
    }
    session
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
        let mut session = http1(stream);
        // A new connection's first head is due `head_timeout` after the accept; on a kept-alive
        // one the next head is due `keepalive` after the previous answer: the idle wait and the
        // head under one deadline.
        let mut wait = head_timeout;
        let keepalive = Duration::from_secs(keepalive_secs);
        loop {
            // pingora's keep-alive timeout would put a second timer, per read, on the head:
            // `Some(0)` keeps the connection reusable with none.
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(0));
            }
            let head = HeadWait {
                deadline: Instant::now() + wait,
                stopping: &self.stopping,
                shutdown,
            };
            let reused = self.app.serve_one(session, head).await?;
            let (stream, persistent) = reused.consume();
            session = http1(stream);
            if let Some(persistent) = persistent {
                persistent.apply_to_session(&mut session);
            }
            wait = keepalive;
        }
    }

    /// Requests waiting for their head on idle keep-alive connections give up.
    async fn cleanup(&self) {
        self.stopping.stop();
    }
}
