//! The admin client verbs of the command line: `status`, `push`, `rollback`, `history`.
//!
//! Plain blocking HTTP/1.1 over one connection per call: these run from a terminal or a
//! pipeline step, where simplicity beats throughput.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An admin call's answer: status code and body.
pub struct AdminReply {
    pub status: u16,
    pub body: String,
}

/// Sends `method path` with `body` to the admin listener at `base` (`http://host:port`).
pub fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Result<AdminReply, String> {
    let url = url::Url::parse(base).map_err(|e| format!("admin URL `{base}`: {e}"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("admin URL `{base}` has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let mut stream = TcpStream::connect((host, port))
        .map_err(|e| format!("cannot reach the admin API at {base}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("sending to {base}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading from {base}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the admin API sent a malformed answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the admin API sent a malformed status line")?;
    Ok(AdminReply {
        status,
        body: body.to_owned(),
    })
}

/// Renders a JSON answer for a terminal: pretty-printed when it parses.
pub fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_owned())
}
