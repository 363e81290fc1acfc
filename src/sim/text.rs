//! Deterministic output: the same prompt and `--seed` always give the same
//! completion text and the same embedding, so tests and shadow comparisons
//! can tell "same answer" from "different answer". Pure.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The vocabulary of generated text. Every word is 4 bytes (a space and
/// three letters), i.e. exactly one token under the sim's tokenizer.
const WORDS: [&str; 32] = [
    " the", " and", " for", " sim", " gpu", " kvs", " one", " two", " red", " sky", " sea", " big",
    " low", " new", " old", " way", " day", " art", " map", " key", " run", " set", " top", " end",
    " fix", " win", " use", " ask", " job", " log", " net", " raw",
];

/// SplitMix64: a tiny, well-mixed generator; a pure function of its state.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The output tokens for a prompt, one 4-byte word per token, endless;
/// `take(n)` of it is the answer of length `n`.
#[derive(Clone, Debug)]
pub struct TokenStream {
    state: u64,
}

impl TokenStream {
    pub fn new(seed: u64, prompt: &[u8]) -> Self {
        TokenStream {
            state: xxh3_64_with_seed(prompt, seed),
        }
    }
}

impl Iterator for TokenStream {
    type Item = &'static str;

    fn next(&mut self) -> Option<&'static str> {
        Some(WORDS[(splitmix64(&mut self.state) % WORDS.len() as u64) as usize])
    }
}

/// The whole answer of `tokens` tokens, for non-streaming responses.
pub fn completion_text(seed: u64, prompt: &[u8], tokens: u32) -> String {
    let mut text = String::with_capacity(tokens as usize * 4);
    text.extend(TokenStream::new(seed, prompt).take(tokens as usize));
    text
}

/// A unit-length vector of `dim` components derived from `input` and `seed`.
pub fn embedding(seed: u64, input: &[u8], dim: u32) -> Vec<f32> {
    let mut state = xxh3_64_with_seed(input, seed);
    let mut vector: Vec<f32> = (0..dim)
        .map(|_| {
            // 24 random bits → uniform in [-1, 1).
            (splitmix64(&mut state) >> 40) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::count_tokens;

    #[test]
    fn same_prompt_and_seed_give_the_same_text() {
        assert_eq!(
            completion_text(7, b"hello", 32),
            completion_text(7, b"hello", 32)
        );
        assert_ne!(
            completion_text(7, b"hello", 32),
            completion_text(8, b"hello", 32)
        );
        assert_ne!(
            completion_text(7, b"hello", 32),
            completion_text(7, b"hullo", 32)
        );
    }

    #[test]
    fn text_has_exactly_the_requested_tokens() {
        let text = completion_text(0, b"p", 50);
        assert_eq!(count_tokens(text.as_bytes()), 50);
        assert!(WORDS.iter().all(|w| w.len() == 4));
    }

    #[test]
    fn streamed_tokens_concatenate_to_the_whole_text() {
        let streamed: String = TokenStream::new(3, b"q").take(10).collect();
        assert_eq!(streamed, completion_text(3, b"q", 10));
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding(1, b"text", 16);
        assert_eq!(a.len(), 16);
        assert_eq!(a, embedding(1, b"text", 16));
        assert_ne!(a, embedding(1, b"other", 16));
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm was {norm}");
    }
}
