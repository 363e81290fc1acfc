//! Comparing a primary answer with its shadow: pure functions over two exchange records.
//!
//! LLM outputs are not deterministic, so nothing here is a verdict: the figures feed
//! distributions (agreement rates, similarity, latency and cost deltas) that an operator reads.

use std::collections::HashSet;
use std::time::Duration;

/// One side of a mirrored exchange, as measured by the gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExchangeRecord {
    /// The backend's name.
    pub backend: String,
    /// HTTP status; 0 when no response header arrived.
    pub status: u16,
    /// 2xx, and for streams: ended with `[DONE]` and no error event.
    pub ok: bool,
    pub latency: Duration,
    /// Time to the first response body bytes.
    pub ttft: Option<Duration>,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub text: Option<String>,
    pub cost_usd: f64,
}

/// How the shadow's answer relates to the primary's.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub same_status: bool,
    /// Both succeeded with the very same text.
    pub exact_match: bool,
    /// Token-set Jaccard similarity of the two texts, when both succeeded with text.
    pub similarity: Option<f64>,
    /// Shadow output tokens minus primary output tokens.
    pub length_delta: i64,
}

pub fn compare(primary: &ExchangeRecord, shadow: &ExchangeRecord) -> Comparison {
    let both_text = match (&primary.text, &shadow.text) {
        (Some(p), Some(s)) if primary.ok && shadow.ok => Some((p, s)),
        _ => None,
    };
    Comparison {
        same_status: primary.status == shadow.status,
        exact_match: both_text.is_some_and(|(p, s)| p == s),
        similarity: both_text.map(|(p, s)| jaccard(p, s)),
        length_delta: shadow.output_tokens as i64 - primary.output_tokens as i64,
    }
}

/// Jaccard similarity of the sets of normalised words (lower-case, punctuation trimmed).
/// Two empty texts are identical (1.0).
pub fn jaccard(a: &str, b: &str) -> f64 {
    fn words(t: &str) -> HashSet<String> {
        t.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    }
    let (a, b) = (words(a), words(b));
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: u16, text: &str, out: u64) -> ExchangeRecord {
        ExchangeRecord {
            status,
            ok: status == 200,
            text: Some(text.into()),
            output_tokens: out,
            ..ExchangeRecord::default()
        }
    }

    #[test]
    fn jaccard_normalises_words() {
        assert_eq!(jaccard("The cat sat.", "the CAT sat"), 1.0);
        assert_eq!(jaccard("a b c d", "a b x y"), 2.0 / 6.0);
        assert_eq!(jaccard("", ""), 1.0);
        assert_eq!(jaccard("a", ""), 0.0);
    }

    #[test]
    fn agreement_figures() {
        let c = compare(&rec(200, "same words", 2), &rec(200, "same words", 2));
        assert!(c.same_status && c.exact_match);
        assert_eq!((c.similarity, c.length_delta), (Some(1.0), 0));
        let c = compare(
            &rec(200, "one two three", 3),
            &rec(200, "one two four five", 4),
        );
        assert!(c.same_status && !c.exact_match);
        assert_eq!((c.similarity, c.length_delta), (Some(0.4), 1));
        let c = compare(&rec(200, "x", 1), &rec(500, "", 0));
        assert!(!c.same_status && !c.exact_match && c.similarity.is_none());
    }
}
