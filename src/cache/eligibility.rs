//! Whether a request may be answered from the cache, and whether its answer may be stored.
//!
//! Pure: the route's `[routes.cache]`, what the body says about sampling, and the client's
//! cache headers in, a verdict out.

use std::time::Duration;

use http::{HeaderMap, HeaderName};

use super::key::Sampling;
use crate::config::policy::{CacheRequests, RouteCacheSpec};
use crate::routing::Endpoint;

/// The header a client sets to ask for a shorter or longer lifetime (seconds), up to the
/// route's `max_ttl_s`.
pub const TTL_HEADER: HeaderName = HeaderName::from_static("x-switchyard-cache-ttl");

/// What the client asked for with `cache-control` and [`TTL_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientControl {
    /// `cache-control: no-cache`: do not answer from the cache, but the fresh answer may be
    /// stored.
    pub no_cache: bool,
    /// `cache-control: no-store`: neither look up nor store.
    pub no_store: bool,
    /// A valid [`TTL_HEADER`] value, in seconds.
    pub ttl_s: Option<u64>,
}

impl ClientControl {
    pub fn from_headers(headers: &HeaderMap) -> ClientControl {
        let mut control = ClientControl::default();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            for directive in value.split(',') {
                let directive = directive.trim();
                if directive.eq_ignore_ascii_case("no-store") {
                    control.no_store = true;
                } else if directive.eq_ignore_ascii_case("no-cache") {
                    control.no_cache = true;
                }
            }
        }
        control.ttl_s = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        control
    }
}

/// Why a request on a cached route does not use the cache at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BypassReason {
    /// The answer depends on sampling and the route caches deterministic requests only.
    NotDeterministic,
    /// `cache-control: no-store`.
    NoStore,
    /// The route scopes entries by API key and the request carries none.
    NoApiKey,
    /// The body could not be read as a JSON object.
    Unreadable,
}

impl BypassReason {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BypassReason::NotDeterministic => "not_deterministic",
            BypassReason::NoStore => "no_store",
            BypassReason::NoApiKey => "no_api_key",
            BypassReason::Unreadable => "unreadable",
        }
    }
}

/// What the cache may do for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Bypass(BypassReason),
    Use {
        /// Answer from the cache when an entry exists.
        lookup: bool,
        /// Store the upstream answer when it is a complete success. `false` when the client
        /// asked for a lifetime of 0.
        store: bool,
        ttl: Duration,
    },
}

/// Decides what the cache may do for a request to `endpoint` on a route with `spec`.
pub fn verdict(
    spec: &RouteCacheSpec,
    endpoint: Endpoint,
    sampling: &Sampling,
    control: &ClientControl,
) -> Verdict {
    if control.no_store {
        return Verdict::Bypass(BypassReason::NoStore);
    }
    if spec.requests == CacheRequests::Deterministic && !is_deterministic(endpoint, sampling) {
        return Verdict::Bypass(BypassReason::NotDeterministic);
    }
    let ttl = match control.ttl_s {
        Some(s) => Duration::from_secs(s).min(spec.max_ttl),
        None => spec.ttl,
    };
    Verdict::Use {
        lookup: !control.no_cache,
        store: !ttl.is_zero(),
        ttl,
    }
}

/// Embeddings are deterministic by nature; generations are when greedy (temperature 0) or
/// seeded. OpenAI's default temperature is 1, so an absent one is not deterministic.
pub fn is_deterministic(endpoint: Endpoint, sampling: &Sampling) -> bool {
    endpoint == Endpoint::Embeddings || sampling.temperature == Some(0.0) || sampling.seeded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::CacheScope;

    fn spec(requests: CacheRequests) -> RouteCacheSpec {
        RouteCacheSpec {
            ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(600),
            max_entry_bytes: 1 << 20,
            requests,
            scope: CacheScope::Global,
            ignore_fields: vec![],
            charge_hits: false,
        }
    }

    fn sampling(temperature: Option<f64>, seeded: bool) -> Sampling {
        Sampling {
            temperature,
            seeded,
            ..Sampling::default()
        }
    }

    fn headers(pairs: &[(HeaderName, &'static str)]) -> ClientControl {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, http::HeaderValue::from_static(v));
        }
        ClientControl::from_headers(&h)
    }

    const USE: Verdict = Verdict::Use {
        lookup: true,
        store: true,
        ttl: Duration::from_secs(60),
    };

    #[test]
    fn deterministic_by_default() {
        let s = spec(CacheRequests::Deterministic);
        let none = ClientControl::default();
        let chat = Endpoint::ChatCompletions;
        assert_eq!(verdict(&s, chat, &sampling(Some(0.0), false), &none), USE);
        assert_eq!(verdict(&s, chat, &sampling(Some(0.7), true), &none), USE);
        assert_eq!(
            verdict(&s, chat, &sampling(Some(0.7), false), &none),
            Verdict::Bypass(BypassReason::NotDeterministic)
        );
        assert_eq!(
            verdict(&s, Endpoint::Completions, &sampling(None, false), &none),
            Verdict::Bypass(BypassReason::NotDeterministic)
        );
        assert_eq!(
            verdict(&s, Endpoint::Embeddings, &sampling(None, false), &none),
            USE
        );
        let all = spec(CacheRequests::All);
        assert_eq!(verdict(&all, chat, &sampling(Some(1.0), false), &none), USE);
    }

    #[test]
    fn client_cache_control() {
        let s = spec(CacheRequests::All);
        let greedy = sampling(Some(0.0), false);
        let chat = Endpoint::ChatCompletions;
        assert_eq!(
            verdict(
                &s,
                chat,
                &greedy,
                &headers(&[(http::header::CACHE_CONTROL, "No-Cache")])
            ),
            Verdict::Use {
                lookup: false,
                store: true,
                ttl: Duration::from_secs(60)
            }
        );
        assert_eq!(
            verdict(
                &s,
                chat,
                &greedy,
                &headers(&[(http::header::CACHE_CONTROL, "max-age=0, no-store")])
            ),
            Verdict::Bypass(BypassReason::NoStore)
        );
        let ttl = |v| match verdict(&s, chat, &greedy, &headers(&[(TTL_HEADER, v)])) {
            Verdict::Use { ttl, store, .. } => (ttl.as_secs(), store),
            other => panic!("{other:?}"),
        };
        assert_eq!(ttl("5"), (5, true));
        assert_eq!(ttl("86400"), (600, true), "capped at max_ttl");
        assert_eq!(ttl("0"), (0, false));
        assert_eq!(ttl("soon"), (60, true), "an unreadable value is ignored");
    }
}
