//! The response heads the gateway writes itself: a relayed answer's (the backend's end-to-end
//! headers) with what the gateway tells about the request, and the header names a cache hit's
//! head (`wire`) shares with it.
//!
//! Built as `http` parts and handed to pingora whole: its header builders turn every name into
//! a case-preserving copy and parse it back, an allocation and a validation per header on every
//! request; the names here are constants and the head goes out in canonical case.

use std::borrow::Cow;

use http::header::{HeaderName, HeaderValue, InvalidHeaderValue};
use http::response::Parts;
use http::HeaderMap;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType};

pub(super) const ROUTE: HeaderName = HeaderName::from_static("x-switchyard-route");
pub(super) const ARM: HeaderName = HeaderName::from_static("x-switchyard-arm");
pub(super) const BACKEND: HeaderName = HeaderName::from_static("x-switchyard-backend");
pub(super) const TIER: HeaderName = HeaderName::from_static("x-switchyard-tier");
pub(super) const POLICY_VERSION: HeaderName =
    HeaderName::from_static("x-switchyard-policy-version");
pub(super) const COST_USD: HeaderName = HeaderName::from_static("x-switchyard-cost-usd");
/// `hit`, `miss` or `bypass`: what the cache did.
pub(super) const CACHE: HeaderName = HeaderName::from_static("x-switchyard-cache");
/// On a hit: `l1`, `l2` or `flight`, where the answer came from.
pub(super) const CACHE_LAYER: HeaderName = HeaderName::from_static("x-switchyard-cache-layer");

/// Who answered a request, as the client is told in `x-switchyard-*` headers.
pub(super) struct Answered<'a> {
    pub route: &'a str,
    pub arm: &'a str,
    pub backend: &'a str,
    pub tier: Option<&'a str>,
    pub policy_version: u64,
}

/// An empty head with `status`, room for `capacity` headers.
pub(super) fn parts(status: u16, capacity: usize) -> pingora::Result<Parts> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(status)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "response status", e))?;
    parts.headers.reserve(capacity);
    Ok(parts)
}

/// Adds route, arm, backend, tier and policy version.
pub(super) fn tell(headers: &mut HeaderMap, who: &Answered<'_>) -> pingora::Result<()> {
    headers.insert(ROUTE, text(who.route)?);
    headers.insert(ARM, text(who.arm)?);
    headers.insert(BACKEND, text(who.backend)?);
    if let Some(tier) = who.tier {
        headers.insert(TIER, text(tier)?);
    }
    headers.insert(POLICY_VERSION, HeaderValue::from(who.policy_version));
    Ok(())
}

fn text(s: &str) -> pingora::Result<HeaderValue> {
    HeaderValue::from_str(s).map_err(invalid)
}

/// A name from the policy that is not a valid header value (validation keeps them printable,
/// so this is a bug, reported as one).
pub(super) fn invalid(e: InvalidHeaderValue) -> Box<Error> {
    Error::because(ErrorType::InvalidHTTPHeader, "gateway header value", e)
}

/// The finished head, without pingora's case map.
pub(super) fn finish(parts: Parts) -> Box<ResponseHeader> {
    Box::new(ResponseHeader::from(parts))
}

/// A cost in USD as a header value (`x-switchyard-cost-usd`).
pub(super) fn usd(cost: f64) -> pingora::Result<HeaderValue> {
    match usd_text(cost) {
        Cow::Borrowed(zero) => Ok(HeaderValue::from_static(zero)),
        Cow::Owned(text) => HeaderValue::from_str(&text).map_err(invalid),
    }
}

/// A cost in USD as header text: digits and a point, or `NaN` / `inf`.
pub(super) fn usd_text(cost: f64) -> Cow<'static, str> {
    if cost == 0.0 {
        // Every cache hit that is not billed.
        return Cow::Borrowed("0");
    }
    Cow::Owned(format_usd(cost))
}

/// USD with enough decimals for a single small request (nano-dollars), trailing zeros trimmed.
fn format_usd(cost: f64) -> String {
    // Whole nano-dollars through integer formatting: float formatting at a fixed precision
    // showed up in the per-request profile.
    let nanos = (cost * 1e9).round();
    if !(0.0..1e18).contains(&nanos) {
        let text = format!("{cost:.9}");
        let text = text.trim_end_matches('0');
        return text.strip_suffix('.').unwrap_or(text).to_owned();
    }
    let nanos = nanos as u64;
    let (whole, frac) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::format_usd;

    #[test]
    fn usd_is_exact_to_the_nano_dollar() {
        assert_eq!(format_usd(0.000_123_4), "0.0001234");
        assert_eq!(format_usd(2.0), "2");
        assert_eq!(format_usd(0.0), "0");
        assert_eq!(format_usd(1.25), "1.25");
        assert_eq!(format_usd(0.000_000_001), "0.000000001");
        assert_eq!(format_usd(12.000_000_5), "12.0000005");
        assert_eq!(format_usd(f64::NAN), "NaN");
    }
}
