//! What the gateway knows of each backend's load: requests in flight, any cooldown a 429 asked
//! for, and its last `/metrics` scrape, kept per backend identity across policy versions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::clock::millis_since_epoch;
use super::health::BackendHealth;
use super::prefix_index::{backend_id, BackendId};
use super::scrape::ScrapeRecord;
use crate::routing::ScrapeView;

/// Requests in flight to one backend, and its last scrape. Shared by every snapshot that names
/// the same backend (same name and address), so load-aware choice sees requests begun under
/// older versions.
#[derive(Debug, Default)]
pub struct BackendLoad {
    in_flight: AtomicU32,
    id: BackendId,
    /// Written by the scraper, read by requests: one atomic pointer, no lock.
    scrape: ArcSwapOption<ScrapeRecord>,
    /// Milliseconds since the process's epoch (`clock`) until which the backend asked not to be sent requests.
    cool_until_ms: AtomicU64,
    /// Active-check verdict and passive ejection.
    pub health: BackendHealth,
}

impl BackendLoad {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The backend's identity in the prefix index.
    pub fn id(&self) -> BackendId {
        self.id
    }

    /// Stores the result of a scrape (the scraper's side).
    pub fn set_scrape(&self, record: ScrapeRecord) {
        self.scrape.store(Some(Arc::new(record)));
    }

    /// The last scrape, if any (for display).
    pub fn last_scrape(&self) -> Option<Arc<ScrapeRecord>> {
        self.scrape.load_full()
    }

    /// What a decision at `now` may believe of the backend's scraped load.
    pub fn scrape_view(&self, now: Instant, stale_after: Duration) -> ScrapeView {
        match &*self.scrape.load() {
            Some(record) => record.view(now, stale_after),
            None => ScrapeView::Unknown,
        }
    }

    /// Keeps the backend out of candidate lists until `now + wait` (a 429's `Retry-After`).
    /// A later cooldown never shortens an earlier one.
    pub fn cool_down(&self, now: Instant, wait: Duration) {
        self.cool_until_ms
            .fetch_max(millis_since_epoch(now + wait), Ordering::Relaxed);
    }

    /// Whether the backend is still cooling down at `now`.
    pub fn cooling(&self, now: Instant) -> bool {
        self.cool_until_ms.load(Ordering::Relaxed) > millis_since_epoch(now)
    }

    /// Counts a request against the backend until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }
}

/// Holds one unit of a backend's in-flight count.
#[derive(Debug)]
pub struct InFlightGuard(Arc<BackendLoad>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps one [`BackendLoad`] per live backend identity across snapshots.
#[derive(Default)]
pub struct LoadRegistry {
    loads: Mutex<HashMap<(String, SocketAddr), Weak<BackendLoad>>>,
}

impl LoadRegistry {
    pub fn get(&self, name: &str, addr: SocketAddr) -> Arc<BackendLoad> {
        let mut loads = self.loads.lock();
        loads.retain(|_, w| w.strong_count() > 0);
        let slot = loads.entry((name.to_owned(), addr)).or_default();
        match slot.upgrade() {
            Some(load) => load,
            None => {
                let load = Arc::new(BackendLoad {
                    id: backend_id(name, addr),
                    ..BackendLoad::default()
                });
                *slot = Arc::downgrade(&load);
                load
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_lasts_its_time_and_never_shrinks() {
        let load = BackendLoad::default();
        let now = Instant::now();
        assert!(!load.cooling(now));
        load.cool_down(now, Duration::from_secs(5));
        load.cool_down(now, Duration::from_secs(1));
        assert!(load.cooling(now + Duration::from_secs(4)));
        assert!(!load.cooling(now + Duration::from_secs(6)));
    }
}
