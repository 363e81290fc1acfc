//! Where shadow copies run: a runtime of their own (one thread) with a connection pool of its
//! own, shared by every gateway in the process.
//!
//! On the proxy's workers a copy's connect, send, read and comparison would take turns with
//! primary requests (tokio schedules cooperatively), and a burst of shadow answers could hold a
//! primary's response for the length of the burst. On their own thread the kernel schedules
//! them, and a primary woken by its backend does not wait behind them.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::runtime::{Builder, Runtime};

use crate::upstream::UpstreamPool;

struct Runner {
    runtime: Runtime,
    connector: Arc<UpstreamPool>,
}

fn runner() -> &'static Runner {
    static RUNNER: OnceLock<Runner> = OnceLock::new();
    RUNNER.get_or_init(|| Runner {
        runtime: Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("switchyard-shadow")
            .enable_all()
            .build()
            .expect("the shadow runtime starts"),
        connector: Arc::new(UpstreamPool::new()),
    })
}

/// Runs a shadow task on the shadow runtime.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    runner().runtime.spawn(task);
}

/// The pool shadow exchanges connect through (its connections belong to the shadow runtime).
pub fn connector() -> &'static UpstreamPool {
    &runner().connector
}
