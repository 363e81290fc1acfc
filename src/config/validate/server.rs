//! `[server]`: listeners, limits and process settings.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::{positive, socket_addr, Errors};
use crate::config::policy::*;
use crate::config::raw::RawPolicy;

pub(super) fn validate_server(raw: &RawPolicy, errors: &mut Errors) -> ServerSettings {
    let s = &raw.server;
    let listen = socket_addr(
        "server.listen",
        s.listen.as_deref().unwrap_or(DEFAULT_LISTEN),
        errors,
    );
    let admin_listen = socket_addr(
        "server.admin_listen",
        s.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        errors,
    );
    if listen == admin_listen {
        errors.push(
            "server.admin_listen",
            "must differ from server.listen: the admin API never shares the proxy's socket",
        );
    }
    if let Some(env) = &s.admin_token_env {
        if env.is_empty() || env.contains('=') {
            errors.push(
                "server.admin_token_env",
                "must name an environment variable",
            );
        }
    }
    let threads = positive("server.threads", s.threads, default_threads(), errors);
    if threads > 256 {
        errors.push("server.threads", "must be at most 256");
    }
    let scrape_interval = match s.scrape_interval_ms.unwrap_or(DEFAULT_SCRAPE_INTERVAL_MS) {
        0 => None,
        ms @ 10..=60_000 => Some(std::time::Duration::from_millis(ms)),
        _ => {
            errors.push(
                "server.scrape_interval_ms",
                "must be 0 (off) or between 10 and 60000",
            );
            None
        }
    };
    ServerSettings {
        scrape_interval,
        debug_headers: s.debug_headers.unwrap_or(false),
        listen,
        admin_listen,
        admin_token_env: s.admin_token_env.clone(),
        max_body_bytes: positive(
            "server.max_body_bytes",
            s.max_body_bytes,
            DEFAULT_MAX_BODY_BYTES,
            errors,
        ) as usize,
        threads: threads as usize,
        history_limit: positive(
            "server.history_limit",
            s.history_limit,
            DEFAULT_HISTORY_LIMIT,
            errors,
        ) as usize,
        head_timeout: Duration::from_millis(bounded(
            "server.head_timeout_ms",
            s.head_timeout_ms,
            DEFAULT_HEAD_TIMEOUT_MS,
            100..=600_000,
            errors,
        )),
        keepalive_timeout_secs: bounded(
            "server.keepalive_timeout_secs",
            s.keepalive_timeout_secs,
            DEFAULT_KEEPALIVE_TIMEOUT_SECS,
            1..=3_600,
            errors,
        ),
        body_timeout: Duration::from_millis(bounded(
            "server.body_timeout_ms",
            s.body_timeout_ms,
            DEFAULT_BODY_TIMEOUT_MS,
            100..=3_600_000,
            errors,
        )),
        max_header_bytes: bounded(
            "server.max_header_bytes",
            s.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            1_024..=PINGORA_MAX_HEADER_BYTES,
            errors,
        ) as usize,
        max_headers: bounded(
            "server.max_headers",
            s.max_headers,
            DEFAULT_MAX_HEADERS,
            1..=PINGORA_MAX_HEADERS - 1,
            errors,
        ) as usize,
        max_connections: bounded(
            "server.max_connections",
            s.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            1..=1_000_000,
            errors,
        ) as usize,
        admin_max_connections: bounded(
            "server.admin_max_connections",
            s.admin_max_connections,
            DEFAULT_ADMIN_MAX_CONNECTIONS,
            1..=10_000,
            errors,
        ) as usize,
    }
}

/// `value` (or `default`) when inside `range`; otherwise an error naming the range.
fn bounded(
    path: &str,
    value: Option<u64>,
    default: u64,
    range: RangeInclusive<u64>,
    errors: &mut Errors,
) -> u64 {
    match value {
        Some(v) if !range.contains(&v) => {
            errors.push(path, format!("must be {}..={}", range.start(), range.end()));
            default
        }
        Some(v) => v,
        None => default,
    }
}

fn default_threads() -> u64 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u64)
}

#[cfg(test)]
mod tests {
    use crate::config::parse_policy;

    use crate::config::validate::ONE_ROUTE;

    #[test]
    fn listener_limits_default_to_room_for_real_clients() {
        let s = parse_policy(&format!("[server]\n{ONE_ROUTE}"))
            .expect("valid")
            .server;
        assert_eq!(s.head_timeout.as_millis(), 5_000);
        assert_eq!(s.keepalive_timeout_secs, 15);
        assert_eq!(s.body_timeout.as_millis(), 60_000);
        assert_eq!(s.max_header_bytes, 32 * 1024);
        assert_eq!(s.max_headers, 100);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.admin_max_connections, 64);
    }

    #[test]
    fn every_out_of_range_listener_limit_is_named() {
        let errors = parse_policy(&format!(
            "[server]\nhead_timeout_ms = 0\nkeepalive_timeout_secs = 0\nbody_timeout_ms = 99\nmax_header_bytes = 2000000\nmax_headers = 256\nmax_connections = 0\nadmin_max_connections = 10001\n{ONE_ROUTE}"
        ))
        .unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.head_timeout_ms",
                "server.keepalive_timeout_secs",
                "server.body_timeout_ms",
                "server.max_header_bytes",
                "server.max_headers",
                "server.max_connections",
                "server.admin_max_connections"
            ],
            "{errors:?}"
        );
        assert!(errors[4].message.contains("1..=255"), "{errors:?}");
    }
}
