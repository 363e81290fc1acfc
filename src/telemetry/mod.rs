//! What the gateway tells operators about the requests it served: the Prometheus text
//! exposition (`prom`), and — fed once per request — the request's record.

pub mod prefix;
pub mod prom;
