//! The sim's prefix KV cache: which leading blocks of earlier prompts a
//! server still holds, so a repeated prefix skips prefill and is reported as
//! `cached_tokens`. Modelled on vLLM's automatic prefix caching: blocks of a
//! fixed token count, identified by a hash chained over all blocks before
//! them, evicted least-recently-used. Pure: no clocks, no I/O.

use std::collections::{BTreeMap, HashMap};

use crate::routing::prefix::{block_hashes as shared_block_hashes, model_seed, BlockShape};

/// Hashes of the prompt's cacheable blocks to `model`, in prompt order, cut as the gateway cuts
/// them (see [`crate::routing::prefix`]). Block `i`'s hash covers blocks `0..=i`, so equal
/// hashes mean equal prefixes. The sim hashes every block: its body limit bounds the work.
pub fn block_hashes(model: &str, prompt: &[u8], block_tokens: u32) -> Vec<u64> {
    shared_block_hashes(
        model_seed(model),
        prompt,
        BlockShape {
            block_tokens,
            max_blocks: usize::MAX,
        },
    )
}

/// A bounded LRU set of block hashes plus vLLM's prefix-cache counters.
#[derive(Debug)]
pub struct PrefixCache {
    capacity: usize,
    block_tokens: u32,
    /// Block hash → the stamp of its last use.
    stamps: HashMap<u64, u64>,
    /// Stamp of last use → block hash; the first entry is the eviction victim.
    by_age: BTreeMap<u64, u64>,
    clock: u64,
    queried_tokens: u64,
    hit_tokens: u64,
}

impl PrefixCache {
    /// A cache of `capacity` blocks of `block_tokens` tokens; capacity 0
    /// never hits.
    pub fn new(capacity: usize, block_tokens: u32) -> Self {
        PrefixCache {
            capacity,
            block_tokens,
            stamps: HashMap::with_capacity(capacity.min(1 << 16)),
            by_age: BTreeMap::new(),
            clock: 0,
            queried_tokens: 0,
            hit_tokens: 0,
        }
    }

    /// Serves one prompt: counts its cached leading blocks, then caches all
    /// its blocks. Returns the cached prompt tokens.
    ///
    /// `prompt_tokens` feeds the query counter (vLLM counts queries in
    /// tokens); `hashes` come from [`block_hashes`].
    pub fn admit(&mut self, prompt_tokens: u32, hashes: &[u64]) -> u32 {
        let hit_blocks = hashes
            .iter()
            .take_while(|hash| self.stamps.contains_key(hash))
            .count();
        // Touch the tail first so the prompt's leading blocks end up most
        // recently used: a prompt longer than the cache then keeps its head
        // (the part other prompts share), as vLLM's evictor does.
        for &hash in hashes.iter().rev() {
            self.touch(hash);
        }
        let cached = u32::try_from(hit_blocks)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.block_tokens);
        self.queried_tokens += u64::from(prompt_tokens);
        self.hit_tokens += u64::from(cached);
        cached
    }

    fn touch(&mut self, hash: u64) {
        if self.capacity == 0 {
            return;
        }
        self.clock += 1;
        if let Some(old) = self.stamps.insert(hash, self.clock) {
            self.by_age.remove(&old);
        } else if self.stamps.len() > self.capacity {
            if let Some((_, victim)) = self.by_age.pop_first() {
                self.stamps.remove(&victim);
            }
        }
        self.by_age.insert(self.clock, hash);
    }

    /// Fraction (0..=1) of the capacity in use, vLLM's `kv_cache_usage_perc`.
    pub fn usage(&self) -> f64 {
        if self.capacity == 0 {
            0.0
        } else {
            self.stamps.len() as f64 / self.capacity as f64
        }
    }

    /// Prompt tokens looked up so far (`vllm:prefix_cache_queries_total`).
    pub fn queried_tokens(&self) -> u64 {
        self.queried_tokens
    }

    /// Prompt tokens served from the cache so far (`vllm:prefix_cache_hits_total`).
    pub fn hit_tokens(&self) -> u64 {
        self.hit_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 4-token block (16 bytes) per tag, plus a last token so that every
    /// block is cacheable.
    fn prompt(tags: &[u8]) -> Vec<u8> {
        let mut p: Vec<u8> = tags.iter().flat_map(|&t| [t; 16]).collect();
        p.extend_from_slice(b"end.");
        p
    }

    fn admit(cache: &mut PrefixCache, p: &[u8]) -> u32 {
        cache.admit(crate::sim::model::count_tokens(p), &block_hashes("m", p, 4))
    }

    #[test]
    fn the_same_prompt_to_another_model_shares_nothing() {
        let mut cache = PrefixCache::new(100, 4);
        let p = prompt(b"ab");
        cache.admit(9, &block_hashes("m1", &p, 4));
        assert_eq!(cache.admit(9, &block_hashes("m2", &p, 4)), 0);
    }

    #[test]
    fn repeated_prompt_hits_its_whole_blocks() {
        let mut cache = PrefixCache::new(100, 4);
        let p = prompt(b"abc");
        assert_eq!(admit(&mut cache, &p), 0, "cold cache");
        assert_eq!(admit(&mut cache, &p), 12);
        assert_eq!(cache.queried_tokens(), 26);
        assert_eq!(cache.hit_tokens(), 12);
        assert!((cache.usage() - 0.03).abs() < 1e-9);
    }

    #[test]
    fn shared_prefix_hits_up_to_the_first_difference() {
        let mut cache = PrefixCache::new(100, 4);
        admit(&mut cache, &prompt(b"abcd"));
        assert_eq!(admit(&mut cache, &prompt(b"abxd")), 8);
        assert_eq!(
            admit(&mut cache, &prompt(b"xbcd")),
            0,
            "a different first block hides the rest"
        );
    }

    #[test]
    fn least_recently_used_blocks_are_evicted() {
        let mut cache = PrefixCache::new(2, 4);
        admit(&mut cache, &prompt(b"a"));
        admit(&mut cache, &prompt(b"b"));
        admit(&mut cache, &prompt(b"a")); // a is now more recent than b
        admit(&mut cache, &prompt(b"c")); // evicts b
        assert_eq!(admit(&mut cache, &prompt(b"a")), 4);
        assert_eq!(
            admit(&mut cache, &prompt(b"b")),
            0,
            "b was the least recently used"
        );
        assert!((cache.usage() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn a_prompt_longer_than_the_cache_keeps_its_head() {
        let mut cache = PrefixCache::new(2, 4);
        admit(&mut cache, &prompt(b"abcd"));
        assert_eq!(
            admit(&mut cache, &prompt(b"abcd")),
            8,
            "blocks a and b survived"
        );
    }

    #[test]
    fn zero_capacity_never_hits() {
        let mut cache = PrefixCache::new(0, 4);
        admit(&mut cache, &prompt(b"ab"));
        assert_eq!(admit(&mut cache, &prompt(b"ab")), 0);
        assert_eq!(cache.usage(), 0.0);
    }
}
