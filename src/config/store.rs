//! `PolicyStore`: the running snapshot (one `ArcSwap`, read lock-free by every request) and a
//! bounded history of accepted versions for rollback. Writers (file watcher, admin API,
//! rollback) serialise on one mutex so versions are handed out in swap order.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::snapshot::{content_hash, PolicySnapshot};
use super::validate::{check_swap, parse_policy, FieldError};
use crate::backends::{LoadRegistry, PrefixIndex};
use crate::cache::ResponseCache;
use crate::cost::SpendLedger;
use crate::metrics::Metrics;
use crate::redis::SharedRedis;

/// Where a policy version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    Startup,
    File,
    Api,
    Rollback,
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicySource::Startup => "startup",
            PolicySource::File => "file",
            PolicySource::Api => "api",
            PolicySource::Rollback => "rollback",
        })
    }
}

/// One accepted version.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub version: u64,
    pub activated_at: SystemTime,
    pub source: PolicySource,
    pub reason: String,
    pub snapshot: Arc<PolicySnapshot>,
}

/// The result of an accepted change.
#[derive(Debug, Clone)]
pub struct Applied {
    pub snapshot: Arc<PolicySnapshot>,
    /// The content equals the running policy's: nothing was swapped, no version was spent.
    pub unchanged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("there is no earlier version in the history to roll back to")]
    NoPrevious,
    #[error("version {0} is not in the history (it holds {1})")]
    UnknownVersion(u64, String),
    #[error("the policy of version {version} no longer validates: {errors}")]
    Invalid { version: u64, errors: String },
}

struct Inner {
    /// Oldest first; the last entry is the running version.
    history: VecDeque<HistoryEntry>,
    next_version: u64,
}

pub struct PolicyStore {
    current: ArcSwap<PolicySnapshot>,
    inner: Mutex<Inner>,
    loads: LoadRegistry,
    prefix_index: Arc<PrefixIndex>,
    metrics: Arc<Metrics>,
    /// Follows the running policy's `[redis]` (reconnects when a swap changes it).
    redis: Arc<SharedRedis>,
    /// Budget and rate-limit counters; they outlive policy versions (a swap keeps the spend).
    spend: Arc<SpendLedger>,
    /// The response cache, sized by the start-up policy's `[cache]`; kept across versions.
    cache: Arc<ResponseCache>,
}

impl PolicyStore {
    /// Validates the start-up policy and makes it version 1.
    pub fn new(text: &str, metrics: Arc<Metrics>) -> Result<PolicyStore, Vec<FieldError>> {
        let policy = parse_policy(text)?;
        let loads = LoadRegistry::default();
        let prefix_index = Arc::new(PrefixIndex::default());
        let snapshot = Arc::new(PolicySnapshot::build(
            1,
            policy,
            text.to_owned(),
            &loads,
            &prefix_index,
            &metrics,
        ));
        metrics.policy_version.store(1, Ordering::Relaxed);
        let redis = Arc::new(SharedRedis::new());
        redis.configure(snapshot.policy.redis.as_ref());
        let cache = Arc::new(ResponseCache::new(snapshot.policy.cache, redis.clone()));
        let entry = HistoryEntry {
            version: 1,
            activated_at: SystemTime::now(),
            source: PolicySource::Startup,
            reason: "initial policy".to_owned(),
            snapshot: snapshot.clone(),
        };
        Ok(PolicyStore {
            current: ArcSwap::new(snapshot),
            inner: Mutex::new(Inner {
                history: VecDeque::from([entry]),
                next_version: 2,
            }),
            loads,
            prefix_index,
            metrics,
            redis,
            spend: Arc::new(SpendLedger::new()),
            cache,
        })
    }

    /// The running snapshot. A request calls this once and keeps the `Arc` to its end.
    pub fn current(&self) -> Arc<PolicySnapshot> {
        self.current.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The process's one Redis client (budgets, response cache, fleet), configured from the
    /// running policy.
    pub fn redis(&self) -> &Arc<SharedRedis> {
        &self.redis
    }

    /// The budget and rate-limit counters (admission, recording, `/admin/spend`).
    pub fn spend(&self) -> &Arc<SpendLedger> {
        &self.spend
    }

    /// The process's response cache.
    pub fn cache(&self) -> &Arc<ResponseCache> {
        &self.cache
    }

    /// Validates `text` and, when valid, swaps it in as a new version in one atomic store.
    /// On any error the running policy stays exactly as it was.
    pub fn apply(
        &self,
        text: &str,
        source: PolicySource,
        reason: &str,
    ) -> Result<Applied, Vec<FieldError>> {
        let mut inner = self.inner.lock();
        self.apply_locked(&mut inner, text, source, reason)
            .inspect_err(|_| {
                self.metrics.policy_rejected.fetch_add(1, Ordering::Relaxed);
            })
    }

    fn apply_locked(
        &self,
        inner: &mut Inner,
        text: &str,
        source: PolicySource,
        reason: &str,
    ) -> Result<Applied, Vec<FieldError>> {
        let running = self.current.load_full();
        if content_hash(text) == running.content_hash && text == running.source {
            return Ok(Applied {
                snapshot: running,
                unchanged: true,
            });
        }
        let policy = parse_policy(text)?;
        check_swap(&running.policy, &policy)?;
        let version = inner.next_version;
        let limit = policy.server.history_limit;
        let snapshot = Arc::new(PolicySnapshot::build(
            version,
            policy,
            text.to_owned(),
            &self.loads,
            &self.prefix_index,
            &self.metrics,
        ));
        inner.next_version += 1;
        inner.history.push_back(HistoryEntry {
            version,
            activated_at: SystemTime::now(),
            source,
            reason: reason.to_owned(),
            snapshot: snapshot.clone(),
        });
        while inner.history.len() > limit {
            inner.history.pop_front();
        }
        self.current.store(snapshot.clone());
        // Backends that left the policy must not attract traffic from what they once served.
        let live: std::collections::HashSet<_> = snapshot.loads.iter().map(|l| l.id()).collect();
        self.prefix_index
            .retain_backends(move |id| live.contains(&id));
        self.redis.configure(snapshot.policy.redis.as_ref());
        self.metrics
            .policy_version
            .store(version, Ordering::Relaxed);
        self.metrics.policy_swaps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version, %source, reason, "policy swapped in");
        Ok(Applied {
            snapshot,
            unchanged: false,
        })
    }

    /// Swaps back to an earlier version's content: `to`, or the version that was live before
    /// the running one. The restored content becomes a new version (sourced `rollback`), so the
    /// history reads as what actually ran, in order; rolling back twice undoes the rollback.
    pub fn rollback(&self, to: Option<u64>) -> Result<Applied, RollbackError> {
        let mut inner = self.inner.lock();
        let target = match to {
            Some(v) => inner
                .history
                .iter()
                .find(|e| e.version == v)
                .ok_or_else(|| {
                    let kept: Vec<String> = inner
                        .history
                        .iter()
                        .map(|e| e.version.to_string())
                        .collect();
                    RollbackError::UnknownVersion(v, kept.join(", "))
                })?,
            None => inner
                .history
                .iter()
                .rev()
                .nth(1)
                .ok_or(RollbackError::NoPrevious)?,
        };
        let (version, text) = (target.version, target.snapshot.source.clone());
        self.apply_locked(
            &mut inner,
            &text,
            PolicySource::Rollback,
            &format!("rollback to version {version}"),
        )
        .map_err(|errors| RollbackError::Invalid {
            version,
            errors: errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// The kept versions, oldest first; the last is running.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.inner.lock().history.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(weight_canary: u32) -> String {
        format!(
            r#"
            [server]
            history_limit = 3
            [[backends]]
            name = "a"
            url = "http://127.0.0.1:9"
            [[routes]]
            name = "r"
            models = ["m"]
              [[routes.arms]]
              name = "champion"
              backends = ["a"]
              weight = {}
              [[routes.arms]]
              name = "canary"
              backends = ["a"]
              weight = {weight_canary}
            "#,
            100 - weight_canary
        )
    }

    fn store() -> PolicyStore {
        PolicyStore::new(&policy(0), Arc::new(Metrics::default())).unwrap()
    }

    #[test]
    fn versions_swap_and_history_is_bounded() {
        let s = store();
        for w in 1..=4 {
            let applied = s.apply(&policy(w), PolicySource::Api, "ramp").unwrap();
            assert!(!applied.unchanged);
            assert_eq!(applied.snapshot.version, u64::from(w) + 1);
        }
        assert_eq!(s.current().version, 5);
        let kept: Vec<u64> = s.history().iter().map(|e| e.version).collect();
        assert_eq!(kept, vec![3, 4, 5]);
    }

    #[test]
    fn same_content_spends_no_version() {
        let s = store();
        let applied = s.apply(&policy(0), PolicySource::File, "touch").unwrap();
        assert!(applied.unchanged);
        assert_eq!(s.current().version, 1);
    }

    #[test]
    fn invalid_policy_keeps_the_running_one() {
        let s = store();
        let before = s.current();
        let errs = s
            .apply(
                &policy(0).replace("weight = 100", "weight = 90"),
                PolicySource::Api,
                "x",
            )
            .unwrap_err();
        assert!(errs[0]
            .to_string()
            .starts_with("routes[0].arms: weights sum to 90"));
        assert!(Arc::ptr_eq(&before, &s.current()));
        assert_eq!(s.metrics().policy_rejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rollback_to_previous_and_to_a_version() {
        let s = store();
        s.apply(&policy(10), PolicySource::Api, "canary 10")
            .unwrap();
        s.apply(&policy(50), PolicySource::Api, "canary 50")
            .unwrap();
        let back = s.rollback(None).unwrap();
        assert_eq!(back.snapshot.version, 4);
        assert_eq!(back.snapshot.source, policy(10));
        let entry = s.history().pop().unwrap();
        assert_eq!(entry.source, PolicySource::Rollback);
        assert_eq!(entry.reason, "rollback to version 2");
        // history_limit = 3 keeps versions 2..=4; version 1 has aged out.
        assert!(matches!(
            s.rollback(Some(1)),
            Err(RollbackError::UnknownVersion(1, _))
        ));
        let back = s.rollback(Some(3)).unwrap();
        assert_eq!(back.snapshot.source, policy(50));
        assert!(matches!(
            s.rollback(Some(99)),
            Err(RollbackError::UnknownVersion(99, _))
        ));
    }

    #[test]
    fn in_flight_counts_carry_across_versions() {
        let s = store();
        let guard = s.current().loads[0].enter();
        s.apply(&policy(5), PolicySource::Api, "x").unwrap();
        assert_eq!(s.current().loads[0].in_flight(), 1);
        drop(guard);
        assert_eq!(s.current().loads[0].in_flight(), 0);
    }
}
