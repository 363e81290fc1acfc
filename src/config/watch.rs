//! Reloads the policy file when its content changes on disk.
//!
//! Polling (default every second) rather than inotify: editors that write a temp file and rename
//! it, config-management tools and bind-mounted ConfigMaps all change the content, and the
//! content hash is what decides. An invalid file is logged and counted; the running policy stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::snapshot::content_hash;
use super::store::{PolicySource, PolicyStore};

pub struct PolicyFileWatcher {
    pub path: PathBuf,
    pub store: Arc<PolicyStore>,
    pub interval: Duration,
}

/// One poll: applies the file if its content differs from what was last seen on disk.
/// Returns the hash now on disk (unchanged on a read error, so the read is retried).
pub fn poll(path: &Path, store: &PolicyStore, last_seen: u64) -> u64 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the policy file; keeping the running policy");
            return last_seen;
        }
    };
    let hash = content_hash(&text);
    if hash == last_seen {
        return hash;
    }
    match store.apply(&text, PolicySource::File, "policy file changed") {
        Ok(applied) if applied.unchanged => {}
        Ok(applied) => tracing::info!(
            version = applied.snapshot.version,
            path = %path.display(),
            "policy file reloaded"
        ),
        Err(errors) => {
            for e in &errors {
                tracing::error!(path = %path.display(), "invalid policy, keeping the running one: {e}");
            }
        }
    }
    hash
}

#[async_trait]
impl BackgroundService for PolicyFileWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut last_seen = self.store.current().content_hash;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let (path, store) = (self.path.clone(), self.store.clone());
                    // File reads and validation (which may resolve host names) stay off the
                    // async workers.
                    last_seen = tokio::task::spawn_blocking(move || poll(&path, &store, last_seen))
                        .await
                        .unwrap_or(last_seen);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
