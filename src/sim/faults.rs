//! Fault injection by flag: injected error answers, a stall before the first
//! token, broken streams, and answers cut off by a content filter. The
//! `--error-rate` draw for the n-th model request (and the
//! `--content-filter-rate` draw for the n-th answer) is a pure function of
//! `(--seed, n)`, so a run with the same request order fails the same requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;

use super::args::SimArgs;
use super::stream::StreamFault;
use super::text::splitmix64;

/// The faults one sim injects, from its flags.
#[derive(Debug)]
pub struct Faults {
    error_rate: f64,
    error_status: StatusCode,
    seed: u64,
    /// Model requests drawn for `--error-rate` so far.
    draws: AtomicU64,
    pub stall: Duration,
    pub stream_fault: Option<StreamFault>,
    content_filter_rate: f64,
    /// Answers drawn for `--content-filter-rate` so far; its own sequence, so
    /// filtering does not shift which requests `--error-rate` fails.
    filter_draws: AtomicU64,
}

impl Faults {
    pub fn new(args: &SimArgs) -> Self {
        Faults {
            error_rate: args.error_rate,
            error_status: StatusCode::from_u16(args.error_status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            seed: args.seed,
            draws: AtomicU64::new(0),
            stall: Duration::from_millis(args.stall_ms),
            stream_fault: stream_fault(args.drop_after_events, args.stream_error_after),
            content_filter_rate: args.content_filter_rate,
            filter_draws: AtomicU64::new(0),
        }
    }

    /// Draws for the next answer: whether it ends with
    /// `finish_reason: "content_filter"`.
    pub fn content_filtered(&self) -> bool {
        if self.content_filter_rate <= 0.0 {
            return false;
        }
        let n = self.filter_draws.fetch_add(1, Ordering::Relaxed);
        unit_draw(self.seed ^ FILTER_SEED_SALT, n) < self.content_filter_rate
    }

    /// Draws for the next model request: the status to fail it with, if any.
    pub fn injected_error(&self) -> Option<StatusCode> {
        if self.error_rate <= 0.0 {
            return None;
        }
        let n = self.draws.fetch_add(1, Ordering::Relaxed);
        (unit_draw(self.seed, n) < self.error_rate).then_some(self.error_status)
    }
}

/// Separates the content-filter sequence from the error sequence under the same seed: with
/// both rates at 0.5 they would otherwise pick exactly the same requests.
const FILTER_SEED_SALT: u64 = 0x6A09_E667_F3BC_C908;

/// With both stream faults configured, the one due first wins; on a tie
/// the drop, the harsher failure.
fn stream_fault(drop_after: Option<u32>, error_after: Option<u32>) -> Option<StreamFault> {
    match (drop_after, error_after) {
        (Some(d), Some(e)) if e < d => Some(StreamFault::ErrorAfter(e)),
        (Some(d), _) => Some(StreamFault::DropAfter(d)),
        (None, e) => e.map(StreamFault::ErrorAfter),
    }
}

/// A uniform value in `[0, 1)` for draw `n` under `seed`: the n-th output
/// of the SplitMix64 sequence started at `seed`.
fn unit_draw(seed: u64, n: u64) -> f64 {
    let mut state = seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(error_rate: f64, seed: u64) -> Faults {
        Faults::new(&SimArgs {
            error_rate,
            error_status: 429,
            seed,
            ..SimArgs::default()
        })
    }

    fn failures(faults: &Faults, requests: usize) -> Vec<bool> {
        (0..requests)
            .map(|_| faults.injected_error().is_some())
            .collect()
    }

    #[test]
    fn error_rate_is_roughly_honoured() {
        let failed = failures(&faults(0.25, 1), 10_000)
            .iter()
            .filter(|&&f| f)
            .count();
        assert!(
            (2_200..2_800).contains(&failed),
            "{failed} of 10000 failed at rate 0.25"
        );
    }

    #[test]
    fn rates_zero_and_one_are_exact() {
        assert!(failures(&faults(0.0, 1), 1000).iter().all(|&f| !f));
        assert!(failures(&faults(1.0, 1), 1000).iter().all(|&f| f));
        assert_eq!(
            faults(1.0, 1).injected_error(),
            Some(StatusCode::TOO_MANY_REQUESTS)
        );
    }

    #[test]
    fn same_seed_fails_the_same_requests() {
        assert_eq!(
            failures(&faults(0.5, 9), 200),
            failures(&faults(0.5, 9), 200)
        );
        assert_ne!(
            failures(&faults(0.5, 9), 200),
            failures(&faults(0.5, 10), 200)
        );
    }

    #[test]
    fn content_filter_rate_is_roughly_honoured_and_independent_of_errors() {
        let both = Faults::new(&SimArgs {
            error_rate: 0.5,
            content_filter_rate: 0.5,
            seed: 3,
            ..SimArgs::default()
        });
        let draws: Vec<(bool, bool)> = (0..10_000)
            .map(|_| (both.injected_error().is_some(), both.content_filtered()))
            .collect();
        let filtered = draws.iter().filter(|(_, f)| *f).count();
        assert!((4_700..5_300).contains(&filtered), "{filtered} of 10000");
        let same = draws.iter().filter(|(e, f)| e == f).count();
        assert!(
            (4_700..5_300).contains(&same),
            "the two draws agree on {same} of 10000: correlated"
        );
        let none = faults(0.0, 3);
        assert!((0..1000).all(|_| !none.content_filtered()));
        let all = Faults::new(&SimArgs {
            content_filter_rate: 1.0,
            ..SimArgs::default()
        });
        assert!((0..1000).all(|_| all.content_filtered()));
    }

    #[test]
    fn earlier_stream_fault_wins() {
        assert_eq!(
            stream_fault(Some(3), Some(1)),
            Some(StreamFault::ErrorAfter(1))
        );
        assert_eq!(
            stream_fault(Some(1), Some(3)),
            Some(StreamFault::DropAfter(1))
        );
        assert_eq!(
            stream_fault(Some(2), Some(2)),
            Some(StreamFault::DropAfter(2))
        );
        assert_eq!(
            stream_fault(None, Some(2)),
            Some(StreamFault::ErrorAfter(2))
        );
        assert_eq!(stream_fault(None, None), None);
    }
}
