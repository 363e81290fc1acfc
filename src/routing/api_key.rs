//! The client's API key as the gateway keeps it: never in clear. Plans (tier rules), budgets,
//! rate limits and per-tenant cache scopes all key on [`ApiKeyHash`], the SHA-256 of the
//! credential, so a leaked `/admin/spend` page or Redis dump names no usable key.

use std::fmt;

use http::HeaderName;
use sha2::{Digest, Sha256};

/// Where a client may put its key when it does not use `Authorization: Bearer`.
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// SHA-256 of a client credential, shown as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApiKeyHash(pub [u8; 32]);

impl ApiKeyHash {
    /// The hash of the credential a request carries: `Authorization: Bearer KEY` (the token
    /// after the scheme), else `x-api-key: KEY`. `None` when the request carries neither.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<ApiKeyHash> {
        let raw = match headers.get(http::header::AUTHORIZATION) {
            Some(v) => {
                let v = v.as_bytes();
                match v.iter().position(|&b| b == b' ') {
                    Some(i) if v[..i].eq_ignore_ascii_case(b"bearer") => v[i + 1..].trim_ascii(),
                    _ => v.trim_ascii(),
                }
            }
            None => headers.get(API_KEY_HEADER)?.as_bytes().trim_ascii(),
        };
        (!raw.is_empty()).then(|| ApiKeyHash::of(raw))
    }

    /// The hash of a credential given in clear.
    pub fn of(key: &[u8]) -> ApiKeyHash {
        ApiKeyHash(Sha256::digest(key).into())
    }

    /// Parses the 64 hex digits an operator writes in a policy.
    pub fn parse_hex(text: &str) -> Option<ApiKeyHash> {
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ApiKeyHash(out))
    }
}

impl fmt::Display for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeyHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_x_api_key_hash_the_same_key() {
        let mut a = http::HeaderMap::new();
        a.insert("authorization", "Bearer sk-test-1".parse().unwrap());
        let mut b = http::HeaderMap::new();
        b.insert("x-api-key", "sk-test-1".parse().unwrap());
        let (ha, hb) = (ApiKeyHash::from_headers(&a), ApiKeyHash::from_headers(&b));
        assert_eq!(ha, hb);
        // sha256("sk-test-1"), from `printf %s sk-test-1 | sha256sum`.
        let hex = ha.unwrap().to_string();
        assert_eq!(
            hex,
            "db567a0dd8d24a1a894b3f1ceac157727179c1d15c226c5554dd1972d0fed479"
        );
        assert_eq!(ApiKeyHash::parse_hex(&hex), ha);
        assert!(ApiKeyHash::from_headers(&http::HeaderMap::new()).is_none());
    }
}
