//! Guardrails: windowed histograms per (route, arm, backend) (`window`), rules and their pure
//! verdicts (`rules`), the progressive rollout's steps (`rollout`), and the evaluator that
//! turns verdicts into new policy versions (`evaluator`).

pub mod evaluator;
pub mod rollout;
pub mod rules;
pub mod window;

pub use evaluator::{
    Change, EvaluatorState, GuardrailRuntime, GuardrailTask, RolloutCommand, RuleStatus,
};
pub use rollout::{RolloutPhase, RolloutSpec, RolloutState};
pub use rules::{GuardrailAction, GuardrailMetric, GuardrailRule, Judgement, Verdict};
pub use window::{
    Clock, Dist, OutcomeClass, RequestFigures, Series, SeriesHandles, SeriesKey, SliceData,
    WindowConfig, Windows, OUTCOMES,
};

/// Longest stretch of an answer's text searched for refusal phrases: refusals come first, and
/// the search stays cheap whatever the answer's length.
pub const REFUSAL_SCAN_BYTES: usize = 4096;

/// Whether the start of `text` contains one of `patterns` (lower-cased phrases), ignoring case.
pub fn matches_refusal(patterns: &[String], text: Option<&str>) -> bool {
    let Some(text) = text.filter(|_| !patterns.is_empty()) else {
        return false;
    };
    let mut end = text.len().min(REFUSAL_SCAN_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = text[..end].to_lowercase();
    patterns.iter().any(|p| head.contains(p.as_str()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusals_match_without_case_on_the_answer_start() {
        let patterns = vec!["i can't help with".to_owned()];
        assert!(super::matches_refusal(
            &patterns,
            Some("Sorry, I CAN'T help with that.")
        ));
        assert!(!super::matches_refusal(
            &patterns,
            Some("Here is the answer.")
        ));
        assert!(!super::matches_refusal(&patterns, None));
        let late = format!("{}i can't help with", "x".repeat(super::REFUSAL_SCAN_BYTES));
        assert!(!super::matches_refusal(&patterns, Some(&late)));
    }
}
