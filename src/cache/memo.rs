//! Remembers the keys of recent request bodies, so that a repeated request (the cache's whole
//! business) is not parsed and written out canonically again to find the key it had a moment
//! ago. Building a key costs a JSON parse into every named member, a canonical rewrite and a
//! hash; looking one up here costs one hash of the raw bytes.
//!
//! A memo entry stands for "these exact bytes, under this policy version, route, arm, endpoint
//! and tenant": everything else that goes into a key comes from the policy, and any swap
//! changes the version. Bounded: a fixed table of slots, each holding the last body that hashed
//! to it, so the memo never grows and a flood of distinct bodies only overwrites slots.

use std::sync::Mutex;

use xxhash_rust::xxh3::Xxh3;

use super::key::{CacheKey, Sampling};
use crate::routing::{ApiKeyHash, Endpoint};

/// Slots in the table (a power of two). 4 096 × ~64 bytes: a quarter MiB.
const SLOTS: usize = 4_096;

/// What a body's parse yielded that the plan needs again. `key` is `None` while the body was
/// only ever bypassed (its key was never built).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Remembered {
    pub key: Option<CacheKey>,
    pub sampling: Sampling,
}

/// Where a body was seen: everything, besides its bytes, that its key and sampling depend on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub version: u64,
    pub route: usize,
    pub arm: usize,
    pub endpoint: Endpoint,
    pub tenant: Option<&'a ApiKeyHash>,
}

/// The digest of a body in its context: a 128-bit hash, the same strength as the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigest(u128);

impl BodyDigest {
    pub fn new(context: &Context<'_>, body: &[u8]) -> BodyDigest {
        let mut h = Xxh3::new();
        h.update(b"switchyard-key-memo/1\0");
        h.update(&context.version.to_le_bytes());
        h.update(&(context.route as u64).to_le_bytes());
        h.update(&(context.arm as u64).to_le_bytes());
        h.update(&[context.endpoint as u8]);
        match context.tenant {
            Some(t) => {
                h.update(b"\x01");
                h.update(&t.0);
            }
            None => h.update(b"\x00"),
        }
        h.update(body);
        BodyDigest(h.digest128())
    }

    fn slot(self) -> usize {
        (self.0 as usize) & (SLOTS - 1)
    }
}

/// The table.
pub struct KeyMemo {
    slots: Box<[Mutex<Option<(BodyDigest, Remembered)>>]>,
}

impl Default for KeyMemo {
    fn default() -> KeyMemo {
        KeyMemo {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl KeyMemo {
    pub fn get(&self, digest: BodyDigest) -> Option<Remembered> {
        let slot = self.slots[digest.slot()].lock().ok()?;
        slot.filter(|(d, _)| *d == digest).map(|(_, r)| r)
    }

    pub fn put(&self, digest: BodyDigest, remembered: Remembered) {
        if let Ok(mut slot) = self.slots[digest.slot()].lock() {
            *slot = Some((digest, remembered));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(version: u64) -> Context<'static> {
        Context {
            version,
            route: 0,
            arm: 0,
            endpoint: Endpoint::ChatCompletions,
            tenant: None,
        }
    }

    fn remembered(key: u128) -> Remembered {
        Remembered {
            key: Some(CacheKey(key)),
            sampling: Sampling::default(),
        }
    }

    #[test]
    fn a_body_is_remembered_only_in_its_own_context() {
        let memo = KeyMemo::default();
        let body = br#"{"model":"m","messages":[]}"#;
        let digest = BodyDigest::new(&context(1), body);
        assert_eq!(memo.get(digest), None);
        memo.put(digest, remembered(7));
        assert_eq!(memo.get(digest), Some(remembered(7)));

        let tenant = ApiKeyHash([9; 32]);
        let others = [
            Context {
                version: 2,
                ..context(1)
            },
            Context {
                route: 1,
                ..context(1)
            },
            Context {
                arm: 1,
                ..context(1)
            },
            Context {
                endpoint: Endpoint::Completions,
                ..context(1)
            },
            Context {
                tenant: Some(&tenant),
                ..context(1)
            },
        ];
        for other in others {
            assert_eq!(memo.get(BodyDigest::new(&other, body)), None, "{other:?}");
        }
        let spaced = br#"{"model": "m", "messages": []}"#;
        assert_eq!(memo.get(BodyDigest::new(&context(1), spaced)), None);
    }

    #[test]
    fn the_table_never_grows_past_its_slots() {
        let memo = KeyMemo::default();
        for i in 0..(SLOTS as u128 * 4) {
            let body = i.to_le_bytes();
            memo.put(BodyDigest::new(&context(1), &body), remembered(i));
        }
        assert_eq!(memo.slots.len(), SLOTS);
        let last = (SLOTS as u128 * 4) - 1;
        let digest = BodyDigest::new(&context(1), &last.to_le_bytes());
        assert_eq!(memo.get(digest), Some(remembered(last)));
    }
}
