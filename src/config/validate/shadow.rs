//! `[routes.shadow]`: the mirrored backend, share, bounds and the optional pair file.

use std::collections::HashMap;
use std::time::Duration;

use super::{positive, weight_bp, Errors};
use crate::config::policy::*;
use crate::config::raw::RawShadow;

pub(super) fn validate_shadow(
    path: &str,
    s: &RawShadow,
    backend_index: &HashMap<&str, usize>,
    errors: &mut Errors,
) -> Option<ShadowSpec> {
    let backend = backend_index.get(s.backend.as_str()).copied();
    if backend.is_none() {
        errors.push(
            format!("{path}.backend"),
            format!("unknown backend `{}`", s.backend),
        );
    }
    let percent_bp = weight_bp(s.percent);
    if percent_bp.is_none() {
        errors.push(
            format!("{path}.percent"),
            format!(
                "{} must be a percentage between 0 and 100 with at most two decimals",
                s.percent
            ),
        );
    }
    if matches!(&s.model, Some(m) if m.is_empty()) {
        errors.push(format!("{path}.model"), "must not be empty when given");
    }
    let max_inflight = positive(
        &format!("{path}.max_inflight"),
        s.max_inflight,
        DEFAULT_SHADOW_MAX_INFLIGHT,
        errors,
    );
    if max_inflight > u64::from(u32::MAX) {
        errors.push(format!("{path}.max_inflight"), "is too large");
    }
    let timeout = Duration::from_millis(positive(
        &format!("{path}.timeout_ms"),
        s.timeout_ms,
        DEFAULT_SHADOW_TIMEOUT_MS,
        errors,
    ));
    let samples = match &s.sample_file {
        None => {
            if s.sample_percent.is_some() || s.sample_max_bytes.is_some() {
                errors.push(
                    format!("{path}.sample_file"),
                    "sample_percent and sample_max_bytes need a sample_file",
                );
            }
            None
        }
        Some(file) => {
            let file_path = std::path::PathBuf::from(file);
            let dir_ok = file_path
                .parent()
                .map(|d| d.as_os_str().is_empty() || d.is_dir())
                .unwrap_or(false);
            if file.is_empty() || !dir_ok {
                errors.push(
                    format!("{path}.sample_file"),
                    format!("`{file}` is not a file path in an existing directory"),
                );
            }
            let percent = weight_bp(s.sample_percent.unwrap_or(DEFAULT_SAMPLE_PERCENT));
            if percent.is_none() {
                errors.push(
                    format!("{path}.sample_percent"),
                    "must be a percentage between 0 and 100 with at most two decimals",
                );
            }
            let max_bytes = s.sample_max_bytes.unwrap_or(DEFAULT_SAMPLE_MAX_BYTES);
            if max_bytes < 4096 {
                errors.push(format!("{path}.sample_max_bytes"), "must be at least 4096");
            }
            Some(SampleSpec {
                path: file_path,
                percent_bp: percent.unwrap_or(0),
                max_bytes,
            })
        }
    };
    Some(ShadowSpec {
        samples,
        backend: backend?,
        percent_bp: percent_bp?,
        upstream_model: s.model.clone(),
        max_inflight: max_inflight.min(u64::from(u32::MAX)) as u32,
        timeout,
        mirror_streaming: s.mirror_streaming.unwrap_or(true),
        // Resolved against the backend's `trusted` by the caller's view of the backends.
        copy_credentials: s.copy_credentials.unwrap_or(false),
    })
}
