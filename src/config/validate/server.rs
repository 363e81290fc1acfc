//! `[server]`: listeners, limits and process settings.

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
    }
}

fn default_threads() -> u64 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u64)
}
