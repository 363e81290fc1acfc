//! `[[backends]]`: address, model rewrite, tier, price, limits and deadlines.

use std::net::ToSocketAddrs;
use std::time::Duration;

use super::{positive, Errors};
use crate::config::policy::*;
use crate::config::raw::RawBackend;

pub(super) fn validate_backend(
    path: &str,
    b: &RawBackend,
    tiers: &[String],
    errors: &mut Errors,
) -> Option<BackendSpec> {
    if b.name.is_empty() {
        errors.push(format!("{path}.name"), "must not be empty");
    }
    let url_path = format!("{path}.url");
    let target = match url::Url::parse(&b.url) {
        Err(e) => {
            errors.push(&url_path, format!("`{}` is not a URL: {e}", b.url));
            None
        }
        Ok(u) if u.scheme() != "http" => {
            errors.push(
                &url_path,
                format!("scheme `{}` is not supported; use http://", u.scheme()),
            );
            None
        }
        Ok(u) if u.path() != "/" || u.query().is_some() => {
            errors.push(
                &url_path,
                "must be scheme://host:port with no path or query",
            );
            None
        }
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                match (host, port).to_socket_addrs().map(|mut a| a.next()) {
                    Ok(Some(addr)) => {
                        let authority = match u.port() {
                            Some(p) => format!("{}:{p}", u.host_str().unwrap_or(host)),
                            None => u.host_str().unwrap_or(host).to_owned(),
                        };
                        Some((addr, authority))
                    }
                    _ => {
                        errors.push(&url_path, format!("host `{host}` does not resolve"));
                        None
                    }
                }
            }
            _ => {
                errors.push(&url_path, "must include a host");
                None
            }
        },
    };
    if matches!(&b.model, Some(m) if m.is_empty()) {
        errors.push(format!("{path}.model"), "must not be empty when given");
    }
    if let Some(p) = &b.price {
        for (field, v) in [
            ("input_per_mtok", Some(p.input_per_mtok)),
            ("output_per_mtok", Some(p.output_per_mtok)),
            ("cached_input_per_mtok", p.cached_input_per_mtok),
        ] {
            let Some(v) = v else { continue };
            if !v.is_finite() || v < 0.0 {
                errors.push(
                    format!("{path}.price.{field}"),
                    "must be a finite number ≥ 0",
                );
            }
        }
    }
    let max_inflight = positive(
        &format!("{path}.max_inflight"),
        b.max_inflight,
        DEFAULT_MAX_INFLIGHT,
        errors,
    );
    if max_inflight > u64::from(u32::MAX) {
        errors.push(format!("{path}.max_inflight"), "is too large");
    }
    let ms = |field: &str, v: Option<u64>, default: u64, errors: &mut Errors| {
        Duration::from_millis(positive(&format!("{path}.{field}"), v, default, errors))
    };
    let timeouts = BackendTimeouts {
        connect: ms(
            "connect_timeout_ms",
            b.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
            errors,
        ),
        first_byte: ms(
            "first_byte_timeout_ms",
            b.first_byte_timeout_ms,
            DEFAULT_FIRST_BYTE_TIMEOUT_MS,
            errors,
        ),
        idle: ms(
            "idle_timeout_ms",
            b.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
            errors,
        ),
        total: ms(
            "total_timeout_ms",
            b.total_timeout_ms,
            DEFAULT_TOTAL_TIMEOUT_MS,
            errors,
        ),
    };
    // With declared tiers every backend names one; without, the name is a free-form label.
    let tier_rank = match (&b.tier, tiers.is_empty()) {
        (_, true) => 0,
        (Some(t), false) => {
            super::cost::tier_index(&format!("{path}.tier"), t, tiers, errors).unwrap_or(0)
        }
        (None, false) => {
            errors.push(
                format!("{path}.tier"),
                format!("the policy declares tiers {tiers:?}; name the backend's tier"),
            );
            0
        }
    };
    let health_check = super::health::validate_health_check(path, b.health_check.as_ref(), errors);
    let (addr, authority) = target?;
    Some(BackendSpec {
        name: b.name.clone(),
        url: b.url.clone(),
        addr,
        authority,
        upstream_model: b.model.clone(),
        tier: b.tier.clone(),
        tier_rank,
        price: b.price.as_ref().map(|p| Price {
            input_per_mtok: p.input_per_mtok,
            output_per_mtok: p.output_per_mtok,
            cached_input_per_mtok: p.cached_input_per_mtok,
        }),
        max_inflight: max_inflight.min(u64::from(u32::MAX)) as u32,
        timeouts,
        trusted: b.trusted.unwrap_or(false),
        health_check,
    })
}
