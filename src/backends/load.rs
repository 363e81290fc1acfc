//! What the gateway knows of each backend's load: requests in flight, kept per backend identity
//! across policy versions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

/// Requests in flight to one backend. Shared by every snapshot that names the same backend
/// (same name and address), so load-aware choice sees requests begun under older versions.
#[derive(Debug, Default)]
pub struct BackendLoad {
    in_flight: AtomicU32,
}

impl BackendLoad {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
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
                let load = Arc::new(BackendLoad::default());
                *slot = Arc::downgrade(&load);
                load
            }
        }
    }
}
