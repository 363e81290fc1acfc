//! Per-request state shared by the steps of one request: the pinned snapshot, the request's record, and the
//! handles that must live exactly as long as the request.

use std::sync::Arc;
use std::time::Instant;

use crate::backends::InFlightGuard;
use crate::config::PolicySnapshot;
use crate::cost::Admitted;
use crate::shadow::PrimaryLink;
use crate::telemetry::RequestRecord;

pub struct RequestCtx {
    /// Pinned once at the start; the request sees this version to its end.
    pub snapshot: Option<Arc<PolicySnapshot>>,
    /// What happened, filled in as the request goes; handed to every consumer when the request ends.
    pub record: RequestRecord,
    /// The serving backend's in-flight count, held until the answer is relayed.
    pub(super) in_flight: Option<InFlightGuard>,
    /// Set when the request is mirrored: the shadow task waits for the primary's figures.
    pub(super) shadow_link: Option<PrimaryLink>,
    /// The primary's generated text, kept only for a mirrored request's comparison.
    pub(super) primary_text: Option<String>,
    /// The budget and rate-limit counters the request was admitted against; what it cost is
    /// added to them when it ends.
    pub(super) admitted: Option<Admitted>,
    /// Set on a cache miss whose answer may be stored; the relay records into it.
    pub(super) cache_fill: Option<super::fill::Fill>,
    /// `(matched, prompt)` prefix blocks of the answering backend, on prefix-balanced routes.
    pub prefix_match: Option<(usize, usize)>,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
        RequestCtx {
            snapshot: None,
            record: RequestRecord::new(Instant::now()),
            in_flight: None,
            shadow_link: None,
            primary_text: None,
            admitted: None,
            cache_fill: None,
            prefix_match: None,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}
