//! The request a backend receives: the client's request line and end-to-end headers, with the
//! gateway's own `Host`, `Content-Length` and `x-forwarded-for`.

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

/// The client's request as every backend gets it, built once per request: the request line and
/// end-to-end headers, less `Host`, `Content-Length` and `Expect` (set per backend by
/// [`for_backend`]), plus `x-forwarded-for`.
pub fn upstream_base(
    client: &RequestHeader,
    client_addr: Option<String>,
) -> pingora::Result<RequestHeader> {
    let path = client.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(
        client.method.clone(),
        path.as_bytes(),
        Some(client.headers.len() + 3),
    )?;
    for (name, value) in client.headers.iter() {
        if is_hop_header(name)
            || name == header::HOST
            || name == header::CONTENT_LENGTH
            || name == header::EXPECT
        {
            continue;
        }
        req.append_header(name.clone(), value.clone())?;
    }
    if let Some(addr) = client_addr {
        req.append_header("x-forwarded-for", addr)?;
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
