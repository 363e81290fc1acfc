//! Fault injection by flag: injected error answers, a stall before the first
//! token, and broken streams. The `--error-rate` draw for the n-th model
//! request is a pure function of `(--seed, n)`, so a run with the same
//! request order fails the same requests.

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
        }
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
