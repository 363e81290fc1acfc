//! Bearer-token check for the mutating admin calls.

use http::{Response, StatusCode};
use pingora::protocols::http::ServerSession;

use crate::config::PolicyStore;

/// `Ok` when the request carries the configured token. The variable is read at each call, so
/// rotating the token needs no restart.
pub fn check(session: &ServerSession, store: &PolicyStore) -> Result<(), Box<Response<Vec<u8>>>> {
    let snapshot = store.current();
    let Some(var) = snapshot.policy.server.admin_token_env.as_deref() else {
        return Err(Box::new(super::error(
            StatusCode::FORBIDDEN,
            "changes through the admin API are disabled: set server.admin_token_env to the name of an environment variable holding the token",
            "admin_disabled",
        )));
    };
    let expected = std::env::var(var).unwrap_or_default();
    if expected.is_empty() {
        return Err(Box::new(super::error(
            StatusCode::FORBIDDEN,
            &format!("changes through the admin API are disabled: the environment variable {var} is not set"),
            "admin_disabled",
        )));
    }
    let given = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Box::new(super::error(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` header is required",
            "unauthorized",
        )))
    }
}

/// Whether `given` equals `expected`, in time that depends on neither the position of the
/// first differing byte nor the token's length: both sides are hashed to 32-byte SHA-256
/// digests, which are compared with a fold over every byte. A length check first (as before)
/// would let a client learn the token's length from the answer time.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abd", b"abc"));
        // Different lengths go through the same digest comparison and still differ.
        assert!(!super::constant_time_eq(b"abc", b"ab"));
        assert!(!super::constant_time_eq(b"", b"abc"));
        assert!(!super::constant_time_eq(b"abc\0", b"abc"));
        assert!(super::constant_time_eq(b"", b""));
    }
}
