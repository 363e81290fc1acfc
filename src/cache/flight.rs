//! Single flight: concurrent identical misses send one request upstream. The first becomes the
//! leader; the others follow, waiting (bounded) for its answer. A leader that fails, or whose
//! answer cannot be stored, releases its followers, who then go upstream themselves.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use super::key::CacheKey;
use super::record::CachedAnswer;

/// What followers see of a leader.
#[derive(Debug, Clone)]
pub enum FlightState {
    Pending,
    Done(Arc<CachedAnswer>),
    Failed,
}

/// The misses in flight, by key. Bounded by the requests in flight.
#[derive(Default)]
pub struct Flights {
    in_flight: Mutex<HashMap<CacheKey, watch::Sender<FlightState>>>,
}

/// A request's place in the flight for its key.
pub enum Joined {
    Leader(FlightGuard),
    Follower(watch::Receiver<FlightState>),
}

impl Flights {
    /// Leads the flight for `key`, or follows the one already under way.
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Joined {
        let mut map = self.in_flight.lock();
        if let Some(tx) = map.get(&key) {
            return Joined::Follower(tx.subscribe());
        }
        let (tx, _) = watch::channel(FlightState::Pending);
        map.insert(key, tx);
        Joined::Leader(FlightGuard {
            flights: self.clone(),
            key,
            done: false,
        })
    }

    fn end(&self, key: CacheKey, state: FlightState) {
        if let Some(tx) = self.in_flight.lock().remove(&key) {
            let _ = tx.send(state);
        }
    }

    /// Flights under way (admin, tests).
    pub fn len(&self) -> usize {
        self.in_flight.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Held by a leader; dropping it without [`FlightGuard::complete`] releases the followers.
pub struct FlightGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    done: bool,
}

impl FlightGuard {
    pub fn complete(mut self, answer: Arc<CachedAnswer>) {
        self.done = true;
        self.flights.end(self.key, FlightState::Done(answer));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.done {
            self.flights.end(self.key, FlightState::Failed);
        }
    }
}

/// Waits for a leader's outcome: its answer, or `None` when it failed or `rx` saw nothing
/// within the caller's bound (the caller applies the timeout).
pub async fn wait(mut rx: watch::Receiver<FlightState>) -> Option<Arc<CachedAnswer>> {
    loop {
        match &*rx.borrow_and_update() {
            FlightState::Done(a) => return Some(a.clone()),
            FlightState::Failed => return None,
            FlightState::Pending => {}
        }
        // The sender is dropped after its last send: a closed channel means the state above is
        // final, and it was not Done.
        if rx.changed().await.is_err() {
            return match &*rx.borrow() {
                FlightState::Done(a) => Some(a.clone()),
                _ => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::record::AnswerBody;

    fn answer() -> Arc<CachedAnswer> {
        Arc::new(CachedAnswer {
            route: "r".into(),
            arm: "a".into(),
            backend: "b".into(),
            stored_at_ms: 0,
            ttl_ms: 1,
            cost_usd: 0.0,
            body: AnswerBody::Plain {
                content_type: "application/json".into(),
                bytes: bytes::Bytes::from_static(b"{}"),
            },
            hit_head: crate::cache::HitHead::default(),
        })
    }

    #[tokio::test]
    async fn followers_get_the_leaders_answer() {
        let flights = Arc::new(Flights::default());
        let Joined::Leader(guard) = flights.join(CacheKey(1)) else {
            panic!("first is the leader")
        };
        let followers: Vec<_> = (0..5)
            .map(|_| match flights.join(CacheKey(1)) {
                Joined::Follower(rx) => tokio::spawn(wait(rx)),
                Joined::Leader(_) => panic!("only one leader"),
            })
            .collect();
        assert!(matches!(flights.join(CacheKey(2)), Joined::Leader(_)));
        guard.complete(answer());
        for f in followers {
            assert_eq!(f.await.unwrap(), Some(answer()));
        }
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_failed_leader_releases_its_followers() {
        let flights = Arc::new(Flights::default());
        let leader = flights.join(CacheKey(7));
        let Joined::Follower(rx) = flights.join(CacheKey(7)) else {
            panic!("second follows")
        };
        let waiting = tokio::spawn(wait(rx));
        drop(leader);
        assert_eq!(waiting.await.unwrap(), None);
        assert!(matches!(flights.join(CacheKey(7)), Joined::Leader(_)));
    }
}
