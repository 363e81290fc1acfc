//! Remembers what recent request bodies yielded, so that a repeated request (the cache's whole
//! business) is not parsed again: its request facts, and its cache key with the sampling facts
//! eligibility reads. Building a key costs a JSON parse into every named member, a canonical
//! rewrite and a hash, and the facts another parse; looking both up here costs one hash of the
//! raw bytes.
//!
//! An entry stands for "these exact bytes, under this policy version, sent to this endpoint"
//! (and for a key: on this route and arm, for this tenant). Everything else they depend on
//! comes from the policy, and any swap changes the version. Bounded: fixed tables of slots, each
//! holding the last body that hashed to it, so a memo never grows and a flood of distinct bodies
//! only overwrites slots.

use std::sync::Mutex;

use xxhash_rust::xxh3::{xxh3_128, xxh3_128_with_seed};

use super::key::{CacheKey, Sampling};
use crate::routing::{ApiKeyHash, Endpoint};

/// What a body's parse yielded that the cache plan needs again. `key` is `None` while the body
/// was only ever bypassed (its key was never built).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remembered {
    pub key: Option<CacheKey>,
    pub sampling: Sampling,
}

/// A 128-bit hash of a body in its context, the same strength as the cache key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigest(u128);

impl BodyDigest {
    /// `body` sent to `endpoint` under policy `version`: one pass over the body, seeded with
    /// its context (xxh3's one-shot form: its streaming state costs more to set up than a
    /// short body costs to hash).
    pub fn new(version: u64, endpoint: Endpoint, body: &[u8]) -> BodyDigest {
        // Distinct for every (version, endpoint) a running process can see (versions stay far
        // below 2^56); the constant keeps these digests apart from other xxh3 uses.
        let seed = (version << 8 | endpoint as u64) ^ 0x7377_6974_6368_7964;
        BodyDigest(xxh3_128_with_seed(body, seed))
    }

    /// The same body on `route`'s `arm`, for `tenant` (`None`: a globally scoped cache).
    pub fn within(self, route: usize, arm: usize, tenant: Option<&ApiKeyHash>) -> BodyDigest {
        let mut context = [0u8; 16 + 8 + 8 + 1 + 32];
        context[..16].copy_from_slice(&self.0.to_le_bytes());
        context[16..24].copy_from_slice(&(route as u64).to_le_bytes());
        context[24..32].copy_from_slice(&(arm as u64).to_le_bytes());
        if let Some(t) = tenant {
            context[32] = 1;
            context[33..].copy_from_slice(&t.0);
        }
        BodyDigest(xxh3_128(&context))
    }
}

/// A fixed table of `slots` (a power of two), each holding the value of the last digest that
/// indexed it.
pub struct SlotMemo<V> {
    slots: Box<[Slot<V>]>,
}

/// The digest last put in a slot, with its value.
type Slot<V> = Mutex<Option<(BodyDigest, V)>>;

impl<V: Clone> SlotMemo<V> {
    pub fn new(slots: usize) -> SlotMemo<V> {
        assert!(slots.is_power_of_two(), "memo slots must be a power of two");
        SlotMemo {
            slots: (0..slots).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn slot(&self, digest: BodyDigest) -> &Slot<V> {
        &self.slots[(digest.0 as usize) & (self.slots.len() - 1)]
    }

    pub fn get(&self, digest: BodyDigest) -> Option<V> {
        let slot = self.slot(digest).lock().ok()?;
        slot.as_ref()
            .filter(|(d, _)| *d == digest)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&self, digest: BodyDigest, value: V) {
        if let Ok(mut slot) = self.slot(digest).lock() {
            *slot = Some((digest, value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remembered(key: u128) -> Remembered {
        Remembered {
            key: Some(CacheKey(key)),
            sampling: Sampling::default(),
        }
    }

    #[test]
    fn a_body_is_remembered_only_in_its_own_context() {
        let memo = SlotMemo::new(4_096);
        let body = br#"{"model":"m","messages":[]}"#;
        let chat = Endpoint::ChatCompletions;
        let digest = BodyDigest::new(1, chat, body).within(0, 0, None);
        assert_eq!(memo.get(digest), None);
        memo.put(digest, remembered(7));
        assert_eq!(memo.get(digest), Some(remembered(7)));

        let tenant = ApiKeyHash([9; 32]);
        let others = [
            BodyDigest::new(2, chat, body).within(0, 0, None),
            BodyDigest::new(1, Endpoint::Completions, body).within(0, 0, None),
            BodyDigest::new(1, chat, body).within(1, 0, None),
            BodyDigest::new(1, chat, body).within(0, 1, None),
            BodyDigest::new(1, chat, body).within(0, 0, Some(&tenant)),
            BodyDigest::new(1, chat, br#"{"model": "m", "messages": []}"#).within(0, 0, None),
            BodyDigest::new(1, chat, body),
        ];
        for other in others {
            assert_ne!(other, digest);
            assert_eq!(memo.get(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_table_never_grows_past_its_slots() {
        let memo = SlotMemo::new(64);
        for i in 0..256u128 {
            let body = i.to_le_bytes();
            memo.put(
                BodyDigest::new(1, Endpoint::Embeddings, &body),
                remembered(i),
            );
        }
        assert_eq!(memo.slots.len(), 64);
        let last = BodyDigest::new(1, Endpoint::Embeddings, &255u128.to_le_bytes());
        assert_eq!(memo.get(last), Some(remembered(255)));
    }
}
