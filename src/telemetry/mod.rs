//! What the gateway tells operators about the requests it served: the Prometheus text
//! exposition (`prom`), and — fed once per request — the request's record; and how much of the
//! per-connection noise reaches its log (`log_limit`).

pub mod attempts;
pub mod log_limit;
pub mod prefix;
pub mod prom;
pub mod record;
pub mod usage;

pub use record::{Attempt, CacheStatus, Outcome, RequestRecord, Usage};
