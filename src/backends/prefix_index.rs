//! The prefix index: which backends recently served which prompt blocks, so the next request
//! that shares a prefix (the next turn of a conversation, another user of the same system prompt)
//! can go where that prefix's KV cache most likely still is.
//!
//! It is a guess, not a mirror of the backends' caches: entries are written when a request is
//! dispatched, forgotten after `idle` without use or when the size bound pushes them out, and
//! dropped when their backend leaves the policy. A backend that evicted a prefix simply answers
//! with less cached; nothing breaks.
//!
//! Bounded work per request: only blocks at "ladder" positions are indexed — every block of the
//! first 16, then 8 positions per doubling of the length (16, 18, 20 … 32, 36 … 64, 72 …) — so a
//! 512-block prompt writes at most 56 entries, and the matched length it reports is exact up to
//! 16 blocks and within an eighth beyond. A write is skipped when the entry already names the
//! backend, so a warm conversation costs reads only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use xxhash_rust::xxh3::xxh3_64;

/// Stable identity of a backend across policy versions: its name and address.
pub type BackendId = u64;

/// The identity of the backend `name` at `addr`.
pub fn backend_id(name: &str, addr: std::net::SocketAddr) -> BackendId {
    xxh3_64(format!("{name}\u{0}{addr}").as_bytes())
}

/// Backends remembered per block: a hot prefix spread by the load bound sits on a few.
const HOLDERS: usize = 4;

/// Entries kept at most unless configured otherwise (about 100 bytes each).
pub const DEFAULT_MAX_ENTRIES: u64 = 262_144;

/// An entry unused this long is forgotten: backends' caches turn over within minutes under load.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy, Default)]
struct Holders {
    /// `(backend, stamp of its last write)`; stamp 0 marks an empty slot.
    slots: [(BackendId, u64); HOLDERS],
}

impl Holders {
    fn holds(&self, backend: BackendId) -> bool {
        self.slots.iter().any(|&(b, s)| s != 0 && b == backend)
    }

    /// Adds `backend`, replacing the stalest holder when full.
    fn with(mut self, backend: BackendId, stamp: u64) -> Holders {
        let slot = self
            .slots
            .iter()
            .position(|&(b, s)| s != 0 && b == backend)
            .unwrap_or_else(|| {
                (0..HOLDERS)
                    .min_by_key(|&i| self.slots[i].1)
                    .unwrap_or_default()
            });
        self.slots[slot] = (backend, stamp);
        self
    }
}

/// Whether block position `p` is indexed (see the module docs).
fn on_ladder(p: usize) -> bool {
    if p < 16 {
        return true;
    }
    let octave = usize::BITS - 1 - p.leading_zeros();
    p.is_multiple_of(1 << (octave - 3))
}

/// The process-wide prefix index, shared by every policy version.
pub struct PrefixIndex {
    entries: Cache<u64, Holders>,
    stamp: AtomicU64,
}

impl std::fmt::Debug for PrefixIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixIndex")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

impl Default for PrefixIndex {
    fn default() -> Self {
        PrefixIndex::new(DEFAULT_MAX_ENTRIES, DEFAULT_IDLE)
    }
}

impl PrefixIndex {
    /// An index of at most `max_entries` blocks, each forgotten after `idle` without use.
    pub fn new(max_entries: u64, idle: Duration) -> PrefixIndex {
        PrefixIndex {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .time_to_idle(idle)
                .support_invalidation_closures()
                .build(),
            stamp: AtomicU64::new(1),
        }
    }

    /// Notes that `backend` was sent a prompt with these block hashes. Called at dispatch, so
    /// the next turn finds it even while this one is still being answered.
    pub fn record(&self, backend: BackendId, blocks: &[u64]) {
        let stamp = self.stamp.fetch_add(1, Ordering::Relaxed);
        for (p, &hash) in blocks.iter().enumerate() {
            if !on_ladder(p) {
                continue;
            }
            if self.entries.get(&hash).is_some_and(|h| h.holds(backend)) {
                continue;
            }
            self.entries.entry(hash).and_upsert_with(|old| {
                old.map(|e| e.into_value())
                    .unwrap_or_default()
                    .with(backend, stamp)
            });
        }
    }

    /// For each of `backends`, how many leading blocks of `blocks` it is believed to hold.
    pub fn matches(&self, blocks: &[u64], backends: &[BackendId]) -> Vec<usize> {
        let mut matched = vec![0; backends.len()];
        for (p, &hash) in blocks.iter().enumerate() {
            if !on_ladder(p) {
                continue;
            }
            let Some(holders) = self.entries.get(&hash) else {
                break;
            };
            let mut any = false;
            for (i, &b) in backends.iter().enumerate() {
                // A backend's run must be unbroken from block 0.
                if holders.holds(b) && (p == 0 || matched[i] > 0) {
                    matched[i] = p + 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        matched
    }

    /// Drops every entry naming a backend for which `live` is false (it left the policy). The
    /// removal runs in the background of the cache; lookups filter by the caller's candidates
    /// meanwhile, so a gone backend is never chosen from a stale entry.
    pub fn retain_backends(&self, live: impl Fn(BackendId) -> bool + Send + Sync + 'static) {
        let result = self.entries.invalidate_entries_if(move |_, holders| {
            holders
                .slots
                .iter()
                .any(|&(b, stamp)| stamp != 0 && !live(b))
        });
        if let Err(error) = result {
            tracing::warn!(%error, "prefix index: could not drop entries of removed backends");
        }
    }

    /// Entries held now (approximate: the cache settles its counts in the background).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(seed: u64, n: usize) -> Vec<u64> {
        (0..n as u64)
            .map(|i| xxh3_64(&[seed, i].map(u64::to_le_bytes).concat()))
            .collect()
    }

    #[test]
    fn ladder_positions() {
        let ladder: Vec<usize> = (0..80).filter(|&p| on_ladder(p)).collect();
        assert_eq!(
            ladder,
            [
                (0..16).collect::<Vec<_>>(),
                vec![16, 18, 20, 22, 24, 26, 28, 30, 32, 36, 40, 44, 48, 52, 56, 60, 64, 72]
            ]
            .concat()
        );
        assert_eq!((0..512).filter(|&p| on_ladder(p)).count(), 56);
    }

    #[test]
    fn the_backend_that_served_a_prefix_matches_it() {
        let index = PrefixIndex::default();
        let turn1 = chain(1, 10);
        index.record(7, &turn1);
        let mut turn2 = turn1.clone();
        turn2.extend(chain(2, 5));
        assert_eq!(index.matches(&turn2, &[5, 7, 9]), vec![0, 10, 0]);
        assert_eq!(
            index.matches(&chain(3, 10), &[7]),
            vec![0],
            "another prompt"
        );
    }

    #[test]
    fn matches_are_exact_to_sixteen_blocks_and_within_an_eighth_beyond() {
        let index = PrefixIndex::default();
        let long = chain(1, 100);
        index.record(1, &long[..70]);
        let got = index.matches(&long, &[1])[0];
        assert!((64..=70).contains(&got), "{got}");
        index.record(2, &long[..13]);
        assert_eq!(index.matches(&long, &[2])[0], 13);
    }

    #[test]
    fn several_backends_can_hold_one_prefix_and_the_stalest_is_replaced() {
        let index = PrefixIndex::default();
        let p = chain(1, 4);
        for b in 1..=5 {
            index.record(b, &p);
        }
        let m = index.matches(&p, &[1, 2, 3, 4, 5]);
        assert_eq!(m, vec![0, 4, 4, 4, 4], "backend 1 was the stalest of five");
    }

    #[test]
    fn the_size_bound_holds() {
        let index = PrefixIndex::new(64, DEFAULT_IDLE);
        for seed in 0..100 {
            index.record(1, &chain(seed, 8));
        }
        assert!(index.entry_count() <= 64, "{}", index.entry_count());
    }

    #[test]
    fn idle_entries_expire() {
        let index = PrefixIndex::new(1000, Duration::from_millis(50));
        let p = chain(1, 4);
        index.record(1, &p);
        assert_eq!(index.matches(&p, &[1]), vec![4]);
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            index.matches(&p, &[1]),
            vec![0],
            "forgotten after the idle time"
        );
    }

    #[test]
    fn entries_of_removed_backends_are_dropped() {
        let index = PrefixIndex::default();
        let (a, b) = (chain(1, 4), chain(2, 4));
        index.record(1, &a);
        index.record(2, &b);
        index.retain_backends(|backend| backend != 1);
        assert_eq!(index.matches(&a, &[1]), vec![0]);
        assert_eq!(index.matches(&b, &[2]), vec![4]);
    }
}
