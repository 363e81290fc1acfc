//! The proxy and admin listeners' own defences, below pingora's HTTP handling: a deadline for
//! the whole request head and an idle timeout for keep-alive connections.
//!
//! pingora 0.9 bounds each *read* of a request head (60 s), not the whole head: a client that
//! sends one byte every few seconds keeps its socket forever, and an HTTP/1.1 keep-alive
//! connection waits for its next request without limit. Thousands of such clients exhaust the
//! process's file descriptors. [`HardenedListener`] runs each connection's HTTP/1 loop itself
//! (the same loop pingora's own `ServerApp` runs) and races every request against the head
//! deadline; the application reports that the head is complete by calling [`head_received`]
//! once the head is parsed, after which the request runs to its end undisturbed.

mod head;
mod limit;

pub use head::{check_head, head_bytes, HeadLimitExceeded};
pub use limit::{proxy_connection_cap, raise_fd_limit, OpenConnections, FD_RESERVE};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

use crate::config::PolicyStore;

tokio::task_local! {
    /// Set once the current request's head is read; scoped to one request of one connection.
    static HEAD_SEEN: Arc<AtomicBool>;
}

/// Tells the listener that the current request's head has been read completely, so the head
/// deadline no longer applies. Call it from the first code that runs after pingora parsed the
/// head (the proxy's `Gateway`, the admin's handler); outside a listener it does
/// nothing.
pub fn head_received() {
    let _ = HEAD_SEEN.try_with(|seen| seen.store(true, Ordering::Release));
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
    app: Arc<A>,
    store: Arc<PolicyStore>,
    role: Role,
    open: Arc<OpenConnections>,
}

impl<A> HardenedListener<A> {
    pub fn new(app: A, store: Arc<PolicyStore>, role: Role) -> HardenedListener<A> {
        HardenedListener {
            app: Arc::new(app),
            store,
            role,
            open: Arc::new(OpenConnections::default()),
        }
    }
}

impl<A: HttpServerApp + Send + Sync + 'static> HardenedListener<A> {
    /// Runs one request; `None` when the connection is done (closed, not reusable, or cut
    /// because its head did not arrive within `deadline`).
    /// `seen` is the connection's flag, cleared here for this request.
    async fn one_request(
        &self,
        session: ServerSession,
        shutdown: &ShutdownWatch,
        deadline: Duration,
        seen: &Arc<AtomicBool>,
    ) -> Option<ReusedHttpStream> {
        seen.store(false, Ordering::Release);
        let request = HEAD_SEEN.scope(seen.clone(), self.app.process_new_http(session, shutdown));
        tokio::pin!(request);
        tokio::select! {
            done = &mut request => return done,
            () = tokio::time::sleep(deadline) => {}
        }
        if seen.load(Ordering::Acquire) {
            request.await
        } else {
            // Dropping the request drops the session and with it the socket: no answer, since
            // a client that cannot send a head in time would not read one either.
            tracing::debug!(
                ?deadline,
                "request head not received in time; connection closed"
            );
            None
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
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for HardenedListener<A> {
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
        // A new connection has the head deadline from its accept; a reused one may first idle
        // for the keep-alive timeout.
        let mut deadline = head_timeout;
        let seen = Arc::new(AtomicBool::new(false));
        loop {
            // pingora's keep-alive timeout bounds the idle wait before the next request's
            // first byte; without it pingora waits forever on HTTP/1.1.
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(keepalive_secs));
            }
            let reused = self.one_request(session, shutdown, deadline, &seen).await?;
            let (stream, persistent) = reused.consume();
            session = http1(stream);
            if let Some(persistent) = persistent {
                persistent.apply_to_session(&mut session);
            }
            deadline = head_timeout + Duration::from_secs(keepalive_secs);
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}
