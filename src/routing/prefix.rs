//! Prompt-prefix block hashes, shared by the gateway (prefix-cache affinity) and the sim (its KV
//! cache model), so both cut and name a prompt's prefix the same way.
//!
//! The prompt is rendered deterministically — chat messages as `role\ntext\n` each (the text
//! parts of a message concatenated), a completion prompt as its text or its token ids as four
//! little-endian bytes each — and cut into blocks of `block_tokens` tokens of
//! [`BYTES_PER_TOKEN`] bytes. Block `i`'s hash is xxh3 of the block seeded with block `i-1`'s
//! hash, and block 0 is seeded with the model's identity: equal hashes mean equal prefixes of a
//! prompt to the same model, and one changed early byte changes every later hash.
//!
//! Like vLLM, the last prompt token is never cacheable (the model must compute at least one
//! token), so only whole blocks within the first `prompt_tokens - 1` tokens get a hash. Work and
//! memory are bounded by `max_blocks`: the hasher stops hashing once it has that many blocks and
//! only counts the remaining bytes.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Bytes per token of the sim's tokenizer and of the gateway's prompt-size estimate.
pub const BYTES_PER_TOKEN: usize = 4;

/// The seed of a prompt's first block: the model's identity, so the same text sent to two
/// models never shares a hash.
pub fn model_seed(model: &str) -> u64 {
    xxh3_64(model.as_bytes())
}

/// How a prompt is cut: block size and the most blocks hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockShape {
    /// Tokens per block (at least 1).
    pub block_tokens: u32,
    /// Blocks hashed at most; the rest of a longer prompt is only counted.
    pub max_blocks: usize,
}

/// Builds the block hashes of one prompt from its pieces, in prompt order, without ever holding
/// more than one block of it.
#[derive(Debug)]
pub struct BlockHasher {
    block_bytes: usize,
    max_blocks: usize,
    previous: u64,
    /// The bytes of the current, unfinished block (at most one block).
    pending: Vec<u8>,
    total_bytes: usize,
    hashes: Vec<u64>,
}

impl BlockHasher {
    /// A hasher for a prompt to the model whose [`model_seed`] is `seed`.
    pub fn new(seed: u64, shape: BlockShape) -> BlockHasher {
        let block_bytes = shape.block_tokens.max(1) as usize * BYTES_PER_TOKEN;
        BlockHasher {
            block_bytes,
            max_blocks: shape.max_blocks,
            previous: seed,
            pending: Vec::new(),
            total_bytes: 0,
            hashes: Vec::new(),
        }
    }

    /// Appends the next piece of the rendered prompt.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.total_bytes += bytes.len();
        while !bytes.is_empty() && self.hashes.len() < self.max_blocks {
            if self.pending.is_empty() && bytes.len() >= self.block_bytes {
                // Whole blocks straight from the input: no copy.
                let (block, rest) = bytes.split_at(self.block_bytes);
                self.push(block);
                bytes = rest;
                continue;
            }
            let take = (self.block_bytes - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() == self.block_bytes {
                let block = std::mem::take(&mut self.pending);
                self.push(&block);
                self.pending = block;
                self.pending.clear();
            }
        }
    }

    fn push(&mut self, block: &[u8]) {
        self.previous = xxh3_64_with_seed(block, self.previous);
        self.hashes.push(self.previous);
    }

    /// Renders one chat message (`role\ntext\n`); `texts` are its text parts in order.
    pub fn feed_message<'a>(&mut self, role: &[u8], texts: impl IntoIterator<Item = &'a [u8]>) {
        self.feed(role);
        self.feed(b"\n");
        for text in texts {
            self.feed(text);
        }
        self.feed(b"\n");
    }

    /// Renders token ids as the sim's tokenizer reads them: four little-endian bytes each.
    pub fn feed_token_ids(&mut self, ids: impl IntoIterator<Item = u32>) {
        for id in ids {
            self.feed(&id.to_le_bytes());
        }
    }

    /// The hashes of the prompt's cacheable blocks, in order.
    pub fn finish(mut self) -> Vec<u64> {
        let prompt_tokens = self.total_bytes.div_ceil(BYTES_PER_TOKEN);
        let cacheable = prompt_tokens.saturating_sub(1) / (self.block_bytes / BYTES_PER_TOKEN);
        self.hashes.truncate(cacheable);
        self.hashes
    }
}

/// The block hashes of an already rendered prompt (the sim's path).
pub fn block_hashes(seed: u64, prompt: &[u8], shape: BlockShape) -> Vec<u64> {
    let mut hasher = BlockHasher::new(seed, shape);
    hasher.feed(prompt);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: BlockShape = BlockShape {
        block_tokens: 4,
        max_blocks: 1024,
    };

    /// One 4-token block (16 bytes) per tag, plus a last token so every block is cacheable.
    fn prompt(tags: &[u8]) -> Vec<u8> {
        let mut p: Vec<u8> = tags.iter().flat_map(|&t| [t; 16]).collect();
        p.extend_from_slice(b"end.");
        p
    }

    #[test]
    fn same_prefix_gives_the_same_chain() {
        let a = block_hashes(1, &prompt(b"abcx"), SHAPE);
        let b = block_hashes(1, &prompt(b"abcy"), SHAPE);
        assert_eq!(a.len(), 4);
        assert_eq!(a[..3], b[..3], "the shared three blocks hash alike");
        assert_ne!(a[3], b[3]);
    }

    #[test]
    fn one_changed_early_byte_changes_every_later_block() {
        let base = prompt(b"abcdef");
        let mut changed = base.clone();
        changed[3] ^= 1;
        let a = block_hashes(1, &base, SHAPE);
        let b = block_hashes(1, &changed, SHAPE);
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_ne!(x, y, "block {i} must differ after a change in block 0");
        }
    }

    #[test]
    fn the_model_seeds_the_chain() {
        let p = prompt(b"ab");
        assert_ne!(
            block_hashes(model_seed("m1"), &p, SHAPE),
            block_hashes(model_seed("m2"), &p, SHAPE)
        );
    }

    #[test]
    fn the_last_prompt_token_is_never_cacheable() {
        assert_eq!(block_hashes(0, &[b'a'; 32], SHAPE).len(), 1, "8 tokens");
        assert_eq!(block_hashes(0, &[b'a'; 33], SHAPE).len(), 2, "9 tokens");
        assert!(block_hashes(0, b"", SHAPE).is_empty());
    }

    #[test]
    fn pieces_hash_like_the_whole() {
        let whole = prompt(b"abcdefg");
        let mut hasher = BlockHasher::new(9, SHAPE);
        for piece in whole.chunks(7) {
            hasher.feed(piece);
        }
        assert_eq!(hasher.finish(), block_hashes(9, &whole, SHAPE));
    }

    #[test]
    fn chat_rendering_is_role_and_text_lines() {
        let mut hasher = BlockHasher::new(0, SHAPE);
        hasher.feed_message(b"system", [&b"be "[..], b"brief"]);
        hasher.feed_message(b"user", [&b"hi there, how are you today?"[..]]);
        let rendered = b"system\nbe brief\nuser\nhi there, how are you today?\n";
        assert_eq!(hasher.finish(), block_hashes(0, rendered, SHAPE));
    }

    #[test]
    fn work_is_bounded_by_max_blocks() {
        let shape = BlockShape {
            block_tokens: 4,
            max_blocks: 3,
        };
        let huge = vec![b'z'; 1 << 20];
        let hashes = block_hashes(0, &huge, shape);
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes, block_hashes(0, &huge, SHAPE)[..3]);
    }

    #[test]
    fn token_ids_render_as_four_bytes_each() {
        let mut hasher = BlockHasher::new(0, SHAPE);
        hasher.feed_token_ids([1, 2, 3, 4, 5]);
        let bytes: Vec<u8> = [1u32, 2, 3, 4, 5]
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect();
        assert_eq!(hasher.finish(), block_hashes(0, &bytes, SHAPE));
    }
}
