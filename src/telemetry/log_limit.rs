//! Rate-limited logging of per-connection errors.
//!
//! A line is written for every client connection that breaks before its request head is read
//! (the gateway's own, target [`CLIENT_ERRORS`]; pingora's "HTTP server fails to read from
//! downstream", …). One such line says something; twenty thousand of them during a flood of
//! broken clients bury every other line and cost disk and CPU. [`ConnectionErrorFilter`] lets
//! the first few of them through per interval and counts the rest; a summary line
//! ("N similar connection errors suppressed in the last Ns") is written once per interval by
//! [`ConnectionErrorLog::spawn_summaries`]. Every other event passes untouched.
//!
//! The decision ([`LogLimiter`]) is a pure function of the time it is given, so it is tested
//! without clocks; the filter only reads the clock and the event.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Connection errors written per interval before the rest are only counted.
pub const DEFAULT_BURST: u32 = 5;
/// The length of one interval, and how often the summary of suppressed lines is written.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Lines suppressed since the last summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    pub count: u64,
    /// From the first suppressed line's interval start to the summary.
    pub over: Duration,
}

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} similar connection errors suppressed in the last {}s",
            self.count,
            self.over.as_secs_f64().round() as u64
        )
    }
}

/// Lets `burst` lines through per `interval` and counts the rest. Times are offsets from any
/// fixed origin (the caller's clock); they must not go backwards.
#[derive(Debug, Clone)]
pub struct LogLimiter {
    interval: Duration,
    burst: u32,
    window_start: Option<Duration>,
    logged: u32,
    suppressed: u64,
    /// The start of the interval of the first line counted since the last summary.
    suppressed_since: Duration,
}

impl LogLimiter {
    pub fn new(burst: u32, interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            burst,
            window_start: None,
            logged: 0,
            suppressed: 0,
            suppressed_since: Duration::ZERO,
        }
    }

    /// Whether a line at `now` is written (`true`) or only counted (`false`).
    pub fn admit(&mut self, now: Duration) -> bool {
        let start = match self.window_start {
            Some(start) if now < start + self.interval => start,
            _ => {
                self.window_start = Some(now);
                self.logged = 0;
                now
            }
        };
        if self.logged < self.burst {
            self.logged += 1;
            return true;
        }
        if self.suppressed == 0 {
            self.suppressed_since = start;
        }
        self.suppressed += 1;
        false
    }

    /// The summary to write at `now`, at most one per interval: `Some` once lines were counted
    /// and a whole interval has passed since the first of them; the count starts over then.
    pub fn take_summary(&mut self, now: Duration) -> Option<Suppressed> {
        if self.suppressed == 0 || now < self.suppressed_since + self.interval {
            return None;
        }
        let summary = Suppressed {
            count: self.suppressed,
            over: now.saturating_sub(self.suppressed_since),
        };
        self.suppressed = 0;
        Some(summary)
    }
}

/// The target of the gateway's own lines about a client connection that broke.
pub const CLIENT_ERRORS: &str = "switchyard::client";

/// Whether a log line is a per-connection error: an ERROR or WARN under [`CLIENT_ERRORS`], or
/// from a `pingora*` module about the downstream side (the client's connection). Upstream and
/// internal errors are not rate-limited: they are about the gateway or its backends.
pub fn is_connection_error(level: Level, target: &str, message: &str) -> bool {
    if level > Level::WARN {
        return false;
    }
    if target == CLIENT_ERRORS {
        return true;
    }
    if !target.starts_with("pingora") {
        return false;
    }
    // Short messages: a case-insensitive search without allocating per event would need a
    // crate; lower-casing one line is cheap next to formatting it.
    message.to_ascii_lowercase().contains("downstream")
}

/// The shared state of the filter and the summary writer.
#[derive(Clone)]
pub struct ConnectionErrorLog {
    limiter: Arc<Mutex<LogLimiter>>,
    epoch: Instant,
}

impl ConnectionErrorLog {
    pub fn new(burst: u32, interval: Duration) -> ConnectionErrorLog {
        ConnectionErrorLog {
            limiter: Arc::new(Mutex::new(LogLimiter::new(burst, interval))),
            epoch: Instant::now(),
        }
    }

    /// The per-layer filter to put on the log output layer.
    pub fn filter(&self) -> ConnectionErrorFilter {
        ConnectionErrorFilter { log: self.clone() }
    }

    /// Starts the thread that writes the summary of suppressed lines (a WARN event, target
    /// `switchyard::connections`) once per interval while there are any. Called once, after
    /// the subscriber is installed; the thread lives as long as the process.
    pub fn spawn_summaries(&self, interval: Duration) -> std::io::Result<()> {
        let log = self.clone();
        std::thread::Builder::new()
            .name("conn-log-summary".into())
            .spawn(move || loop {
                // Half the interval: a summary is at most half an interval late.
                std::thread::sleep(interval / 2);
                let summary = log.limiter.lock().take_summary(log.epoch.elapsed());
                if let Some(summary) = summary {
                    tracing::warn!(
                        target: "switchyard::connections",
                        suppressed = summary.count,
                        "{summary}"
                    );
                }
            })
            .map(|_| ())
    }
}

/// Drops per-connection errors beyond the limiter's burst; see the module documentation.
pub struct ConnectionErrorFilter {
    log: ConnectionErrorLog,
}

impl<S> Filter<S> for ConnectionErrorFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        // The decision needs the event's message: made in `event_enabled`.
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let mut fields = LineFields::default();
        event.record(&mut fields);
        // Lines bridged from the `log` crate (all of pingora's) carry their module in
        // `log.target`; native tracing events in their metadata.
        let target = fields.log_target.as_deref().unwrap_or(meta.target());
        if !is_connection_error(*meta.level(), target, &fields.message) {
            return true;
        }
        self.log.limiter.lock().admit(self.log.epoch.elapsed())
    }
}

#[derive(Default)]
struct LineFields {
    message: String,
    log_target: Option<String>,
}

impl Visit for LineFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_owned(),
            "log.target" => self.log_target = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_lines_of_an_interval_pass_and_the_rest_are_counted() {
        let mut l = LogLimiter::new(3, 10 * SEC);
        let passed = (0..1000)
            .filter(|i| l.admit(Duration::from_millis(*i)))
            .count();
        assert_eq!(passed, 3);
        assert_eq!(l.take_summary(SEC), None, "not before the interval is over");
        assert_eq!(
            l.take_summary(10 * SEC),
            Some(Suppressed {
                count: 997,
                over: 10 * SEC
            })
        );
        assert_eq!(l.take_summary(30 * SEC), None, "the count started over");
    }

    #[test]
    fn a_new_interval_lets_a_new_burst_through() {
        let mut l = LogLimiter::new(2, 10 * SEC);
        assert!(l.admit(Duration::ZERO));
        assert!(l.admit(SEC));
        assert!(!l.admit(2 * SEC));
        assert!(l.admit(10 * SEC), "a new interval begins at 10 s");
        assert!(l.admit(11 * SEC));
        assert!(!l.admit(12 * SEC));
        assert_eq!(
            l.take_summary(12 * SEC),
            Some(Suppressed {
                count: 2,
                over: 12 * SEC
            }),
            "counted over both intervals, from the first one's start"
        );
    }

    #[test]
    fn a_flood_over_a_minute_writes_a_bounded_number_of_lines() {
        // 20 000 errors spread over 60 s, summaries taken every 5 s as the writer does.
        let mut l = LogLimiter::new(5, 10 * SEC);
        let (mut written, mut suppressed, mut summaries) = (0u64, 0u64, 0u64);
        for i in 0..20_000u64 {
            let now = Duration::from_micros(i * 3_000);
            if l.admit(now) {
                written += 1;
            }
            if i % 1_666 == 0 {
                if let Some(s) = l.take_summary(now) {
                    summaries += 1;
                    suppressed += s.count;
                }
            }
        }
        if let Some(s) = l.take_summary(Duration::from_secs(3600)) {
            summaries += 1;
            suppressed += s.count;
        }
        assert_eq!(
            written + suppressed,
            20_000,
            "every line written or counted"
        );
        assert!(written <= 5 * 7, "{written} lines written");
        assert!(summaries <= 8, "{summaries} summaries");
    }

    #[test]
    fn a_quiet_limiter_has_nothing_to_report() {
        let mut l = LogLimiter::new(5, 10 * SEC);
        assert!(l.admit(Duration::ZERO));
        assert_eq!(l.take_summary(100 * SEC), None);
    }

    #[test]
    fn the_summary_says_how_many_and_over_how_long() {
        let s = Suppressed {
            count: 19_995,
            over: Duration::from_millis(10_400),
        };
        assert_eq!(
            s.to_string(),
            "19995 similar connection errors suppressed in the last 10s"
        );
    }

    #[test]
    fn the_gateways_client_errors_and_pingoras_downstream_errors_are_connection_errors() {
        assert!(is_connection_error(
            Level::WARN,
            CLIENT_ERRORS,
            "client connection failed before its request head was read: Downstream ConnectionClosed"
        ));
        let proxy = "pingora_proxy";
        assert!(is_connection_error(
            Level::ERROR,
            proxy,
            "Fail to proxy: Downstream ConnectionClosed context: Peer closed, downstream session type: HTTP/1.1"
        ));
        assert!(is_connection_error(
            Level::ERROR,
            "pingora_core::apps::http_app",
            "HTTP server fails to read from downstream: ReadTimedout"
        ));
        assert!(!is_connection_error(
            Level::ERROR,
            proxy,
            "Fail to proxy: Upstream ConnectRefused context: backend down"
        ));
        assert!(!is_connection_error(
            Level::INFO,
            proxy,
            "Downstream ConnectionClosed"
        ));
        assert!(!is_connection_error(
            Level::ERROR,
            "switchyard::proxy",
            "downstream gone"
        ));
    }
}
