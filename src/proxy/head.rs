//! The response heads the gateway writes itself: a relayed answer's (the backend's end-to-end
//! headers) and a cache hit's, both with what the gateway tells about the request.
//!
//! Built as `http` parts and handed to pingora whole: its header builders turn every name into
//! a case-preserving copy and parse it back, an allocation and a validation per header on every
//! request; the names here are constants and the head goes out in canonical case.

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
    tell_names(headers, who.route, who.arm, who.backend)?;
    tell_policy(headers, who.tier, who.policy_version)
}

/// Adds route, arm and backend: what a cache entry knows of who answered.
pub(super) fn tell_names(
    headers: &mut HeaderMap,
    route: &str,
    arm: &str,
    backend: &str,
) -> pingora::Result<()> {
    headers.insert(ROUTE, text(route)?);
    headers.insert(ARM, text(arm)?);
    headers.insert(BACKEND, text(backend)?);
    Ok(())
}

/// Adds the backend's tier and the policy version: what the current policy says.
pub(super) fn tell_policy(
    headers: &mut HeaderMap,
    tier: Option<&str>,
    policy_version: u64,
) -> pingora::Result<()> {
    if let Some(tier) = tier {
        headers.insert(TIER, text(tier)?);
    }
    headers.insert(POLICY_VERSION, HeaderValue::from(policy_version));
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
