//! The request a backend receives: the client's request line and end-to-end headers, with the
//! gateway's own `Host`, `Content-Length` and `x-forwarded-for`.
//!
//! Never forwarded: hop-by-hop headers, including every header the client's `Connection`
//! header names (RFC 9110 §7.6.1), and every `x-switchyard-*` header a client sends — those are
//! the gateway's to set, and a backend must be able to trust them.

use http::header;
use pingora::http::RequestHeader;

use crate::config::BackendSpec;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the ones the gateway
/// sets itself.
pub fn is_hop_header(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers under this prefix are the gateway's: a client's are dropped.
pub const GATEWAY_HEADER_PREFIX: &str = "x-switchyard-";

/// The client's credentials, which a shadow backend gets only when trusted.
pub const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "x-api-key",
    "proxy-authorization",
];

/// The client's request as every backend gets it, built once per request: the request line and
/// end-to-end headers, less `Host`, `Content-Length` and `Expect` (set per backend by
/// [`for_backend`]), plus `x-forwarded-for`.
pub fn upstream_base(
    client: &RequestHeader,
    client_addr: Option<String>,
) -> pingora::Result<RequestHeader> {
    let path = client.uri.path_and_query().map_or("/", |p| p.as_str());
    // No case map: header names go out in their canonical form (HTTP/1 names are
    // case-insensitive), which spares an allocation per header here and in every clone.
    let mut req = RequestHeader::build_no_case(
        client.method.clone(),
        path.as_bytes(),
        Some(client.headers.len() + 3),
    )?;
    let named_hops: Vec<String> = client
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let mut forwarded_for: Option<String> = None;
    for (name, value) in client.headers.iter() {
        if is_hop_header(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
            || name.as_str().starts_with(GATEWAY_HEADER_PREFIX)
            || named_hops.iter().any(|h| h == name.as_str())
        {
            continue;
        }
        if name.as_str() == "x-forwarded-for" {
            // One comma-joined list, as RFC 7239's predecessors expect, not repeated lines.
            let v = String::from_utf8_lossy(value.as_bytes());
            forwarded_for = Some(match forwarded_for {
                Some(prev) => format!("{prev}, {v}"),
                None => v.into_owned(),
            });
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    let forwarded_for = match (forwarded_for, client_addr) {
        (Some(prev), Some(addr)) => Some(format!("{prev}, {addr}")),
        (prev, addr) => prev.or(addr),
    };
    if let Some(list) = forwarded_for {
        req.insert_header("x-forwarded-for", list)?;
    }
    Ok(req)
}

/// `base` addressed to `backend` with a body of `body_len` bytes.
pub fn for_backend(
    base: &RequestHeader,
    backend: &BackendSpec,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let mut req = base.clone();
    req.insert_header(header::HOST, backend.authority.as_str())?;
    req.insert_header(header::CONTENT_LENGTH, body_len.to_string())?;
    Ok(req)
}

/// The client's request for one backend (the shadow's copy; the proxy builds the base once and
/// addresses it per attempt).
pub fn upstream_request(
    client: &RequestHeader,
    backend: &BackendSpec,
    body_len: usize,
    client_addr: Option<String>,
) -> pingora::Result<RequestHeader> {
    for_backend(&upstream_base(client, client_addr)?, backend, body_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_named_and_gateway_headers_are_not_forwarded() {
        let mut client = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("x-switchyard-shadow", "1"),
            ("x-switchyard-backend", "evil"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("authorization", "Bearer k"),
            ("x-team", "a"),
        ] {
            client.append_header(k, v).unwrap();
        }
        let up = upstream_base(&client, Some("127.0.0.1".into())).unwrap();
        let names: Vec<&str> = up.headers.keys().map(|k| k.as_str()).collect();
        assert!(
            !names.contains(&"x-secret-hop") && !names.contains(&"connection"),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|n| n.starts_with("x-switchyard-")),
            "{names:?}"
        );
        assert_eq!(up.headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            up.headers["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 127.0.0.1"
        );
        assert_eq!(up.headers["authorization"], "Bearer k");
        assert_eq!(up.headers["x-team"], "a");
    }
}
