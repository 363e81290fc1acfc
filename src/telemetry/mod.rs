//! What the gateway tells operators about the requests it served: the Prometheus text
//! exposition (`prom`), and — fed once per request — the request's record.

pub mod attempts;
pub mod prefix;
pub mod prom;
pub mod record;
pub mod usage;

pub use record::{Attempt, CacheStatus, Outcome, RequestRecord, Usage};
