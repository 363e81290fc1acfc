//! Guardrails: windowed histograms per (route, arm, backend) (`window`), rules and their pure
//! verdicts (`rules`), the progressive rollout's steps (`rollout`), and the evaluator that
//! turns verdicts into new policy versions (`evaluator`).

pub mod rollout;
pub mod rules;
pub mod window;

pub use rollout::RolloutSpec;
pub use rules::{GuardrailAction, GuardrailMetric, GuardrailRule, Judgement, Verdict};
pub use window::{
    Dist, OutcomeClass, RequestFigures, Series, SeriesKey, SliceData, WindowConfig, Windows,
};
