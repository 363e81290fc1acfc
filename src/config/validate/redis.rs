//! `[redis]`: the shared Redis every replica uses for budget counters, the response cache and
//! fleet policy. Only the address form is checked here; whether Redis answers is a runtime
//! matter (it may be down at start-up and come later: the gateway serves meanwhile).

use std::time::Duration;

use super::{positive, Errors};
use crate::config::policy::*;
use crate::config::raw::RawRedis;
use crate::redis::RedisSettings;

/// Longest command timeout accepted: beyond it a slow Redis would hold requests noticeably.
const MAX_COMMAND_TIMEOUT_MS: u64 = 5_000;

pub(super) fn validate_redis(raw: &RawRedis, errors: &mut Errors) -> Option<RedisSettings> {
    let before = errors.0.len();
    match url::Url::parse(&raw.url) {
        Ok(u) if u.scheme() != "redis" => errors.push(
            "redis.url",
            format!(
                "scheme `{}` is not supported; use redis://host:port",
                u.scheme()
            ),
        ),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => {
            errors.push("redis.url", "must name a host: redis://host:port")
        }
        Ok(_) => {}
        Err(e) => errors.push(
            "redis.url",
            format!(
                "`{}` is not a URL like redis://127.0.0.1:6379 ({e})",
                raw.url
            ),
        ),
    }
    let command_timeout_ms = positive(
        "redis.command_timeout_ms",
        raw.command_timeout_ms,
        DEFAULT_REDIS_COMMAND_TIMEOUT_MS,
        errors,
    );
    if command_timeout_ms > MAX_COMMAND_TIMEOUT_MS {
        errors.push(
            "redis.command_timeout_ms",
            format!(
                "must be at most {MAX_COMMAND_TIMEOUT_MS}: Redis must never hold a request long"
            ),
        );
    }
    let connect_timeout_ms = positive(
        "redis.connect_timeout_ms",
        raw.connect_timeout_ms,
        DEFAULT_REDIS_CONNECT_TIMEOUT_MS,
        errors,
    );
    let key_prefix = raw
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_REDIS_KEY_PREFIX.to_owned());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        errors.push(
            "redis.key_prefix",
            "must be 1–64 characters of letters, digits, `-`, `_`, `.` or `:`",
        );
    }
    (errors.0.len() == before).then(|| RedisSettings {
        url: raw.url.clone(),
        command_timeout: Duration::from_millis(command_timeout_ms),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        key_prefix,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse_policy;

    use crate::config::validate::ONE_ROUTE;

    #[test]
    fn defaults_apply_to_a_bare_url() {
        let policy = parse_policy(&format!(
            "{ONE_ROUTE}\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n"
        ))
        .expect("valid");
        let redis = policy.redis.expect("redis configured");
        assert_eq!(redis.url, "redis://127.0.0.1:6379");
        assert_eq!(redis.command_timeout.as_millis(), 100);
        assert_eq!(redis.connect_timeout.as_millis(), 500);
        assert_eq!(redis.key_prefix, "switchyard");
        assert!(parse_policy(ONE_ROUTE).unwrap().redis.is_none());
    }

    #[test]
    fn every_bad_field_is_named() {
        let errors = parse_policy(&format!(
            "{ONE_ROUTE}\n[redis]\nurl = \"http://x\"\ncommand_timeout_ms = 0\nconnect_timeout_ms = 0\nkey_prefix = \"a b\"\n"
        ))
        .unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "redis.url",
                "redis.command_timeout_ms",
                "redis.connect_timeout_ms",
                "redis.key_prefix"
            ],
            "{errors:?}"
        );
        let errors = parse_policy(&format!(
            "{ONE_ROUTE}\n[redis]\nurl = \"not a url\"\ncommand_timeout_ms = 60000\n"
        ))
        .unwrap_err();
        let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["redis.url", "redis.command_timeout_ms"],
            "{errors:?}"
        );
    }
}
