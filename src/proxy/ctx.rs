//! Per-request state shared by the hooks: the pinned snapshot, the decision, and what the
//! `logging` hook needs to record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backends::InFlightGuard;
use crate::config::PolicySnapshot;
use crate::metrics::Outcome;
use crate::routing::Decision;
use crate::shadow::{ExchangeRecord, PrimaryLink};

pub struct RequestCtx {
    pub started: Instant,
    /// Pinned once at the start; the request sees this version to its end.
    pub snapshot: Option<Arc<PolicySnapshot>>,
    pub decision: Option<Decision>,
    /// The backend that answered (index into the snapshot's backends).
    pub backend: Option<usize>,
    pub status: u16,
    /// Time from `started` to the first response body bytes from the backend.
    pub first_byte: Option<Duration>,
    pub outcome: Option<Outcome>,
    /// Error code when the gateway answered the request itself.
    pub rejected: Option<&'static str>,
    pub(super) in_flight: Option<InFlightGuard>,
    /// Set when the request is mirrored: the shadow task waits for the primary's record.
    pub(super) shadow_link: Option<PrimaryLink>,
    pub(super) primary_record: Option<ExchangeRecord>,
    /// `(matched, prompt)` prefix blocks of the answering backend, on prefix-balanced routes.
    pub prefix_match: Option<(usize, usize)>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            decision: None,
            backend: None,
            status: 0,
            first_byte: None,
            outcome: None,
            rejected: None,
            in_flight: None,
            shadow_link: None,
            primary_record: None,
            prefix_match: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
