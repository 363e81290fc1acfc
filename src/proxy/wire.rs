//! A cache hit written straight onto the client's connection.
//!
//! Everything a hit sends is known before its first byte: the entry's head, the few headers of
//! this request, the body. pingora's response writer would take the head as a header map, add
//! `date` and `connection`, look through it again for its framing headers, serialise it, and
//! then pass the body through its body writer: close to a third of a whole hit's instructions
//! (`benches/findings.md`). Here the entry's part of the head is kept beside it in wire form,
//! this hit's lines are appended, and head and body leave in one write.
//!
//! The request was read whole, either as a plain request straight from the connection's bytes
//! (`listener::Conn`), or through pingora's session, which then hands its connection back
//! through pingora's own reuse before anything is written: it decides keep-alive and keeps the
//! bytes of a pipelined next request for the next session.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName};
use pingora::protocols::http::date::get_cached_date;
use pingora::protocols::http::ServerSession;
use pingora::{Error, ErrorType, OrErr};

use crate::listener::Conn;

/// A hit's answer, ready but for the connection-dependent lines.
pub(super) struct Hit {
    head: BytesMut,
    body: HitBody,
}

pub(super) enum HitBody {
    /// Sent with the `content-length` already in the head.
    Whole(Bytes),
    /// A stream's events, one chunk each (the head says `transfer-encoding: chunked`).
    Events(Vec<Bytes>),
}

impl Hit {
    /// A 200 whose head starts with `fixed` (lines from [`Lines`]); add this request's own
    /// lines with [`Hit::line`] and [`Hit::number`].
    pub fn new(fixed: &[u8], body: HitBody) -> Hit {
        let body_len = match &body {
            HitBody::Whole(bytes) => bytes.len(),
            HitBody::Events(events) => events.iter().map(|e| e.len() + 12).sum::<usize>() + 5,
        };
        let mut head = BytesMut::with_capacity(STATUS.len() + fixed.len() + 256 + body_len);
        head.put_slice(STATUS);
        head.put_slice(fixed);
        Hit { head, body }
    }

    /// Adds `name: value`; `value` must be a valid header value (see [`checked`]).
    pub fn line(&mut self, name: &HeaderName, value: &[u8]) {
        put_line(&mut self.head, name, value);
    }

    pub fn number(&mut self, name: &HeaderName, value: u64) {
        self.line(name, itoa::Buffer::new().format(value).as_bytes());
    }

    /// The whole answer: the head closed with `date` and `connection`, then the body.
    fn into_wire(self, keepalive: bool) -> BytesMut {
        let Hit { mut head, body } = self;
        put_line(&mut head, &header::DATE, get_cached_date().as_bytes());
        let connection: &[u8] = if keepalive { b"keep-alive" } else { b"close" };
        put_line(&mut head, &header::CONNECTION, connection);
        head.put_slice(b"\r\n");
        match body {
            HitBody::Whole(bytes) => head.put_slice(&bytes),
            HitBody::Events(events) => {
                let mut hex = [0u8; 16];
                for event in events.iter().filter(|e| !e.is_empty()) {
                    head.put_slice(hex_len(event.len(), &mut hex));
                    head.put_slice(b"\r\n");
                    head.put_slice(event);
                    head.put_slice(b"\r\n");
                }
                head.put_slice(b"0\r\n\r\n");
            }
        }
        head
    }

    /// Writes the answer for a request read through pingora's session, and gives the
    /// connection back for the next request when it can serve one (`Ok(None)`: it was closed,
    /// as the request or the shutdown asked).
    pub async fn send(self, session: ServerSession) -> pingora::Result<Option<Conn>> {
        let ServerSession::H1(mut h1) = session else {
            return Error::e_explain(
                ErrorType::InternalError,
                "a cache hit on a non-HTTP/1 session",
            );
        };
        // With pipelining on, pingora's reuse keeps the bytes read past this request (the start
        // of the next one) instead of refusing the connection.
        let keepalive = h1.is_body_done() && h1.will_keepalive() && h1.pipelining_enabled();
        let conn = if keepalive {
            let Some(reusable) = h1.reuse().await? else {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "a kept-alive session not reusable",
                );
            };
            Conn::reused(reusable)
        } else {
            Conn::new(h1.into_inner(), BytesMut::new())
        };
        self.write(conn, keepalive).await
    }

    /// Writes the answer on `conn`: the connection back when `keepalive`, else closed.
    pub async fn write(self, mut conn: Conn, keepalive: bool) -> pingora::Result<Option<Conn>> {
        let wire = self.into_wire(keepalive);
        conn.write_all(&wire)
            .await
            .or_err(ErrorType::WriteError, "writing a cache hit")
            .map_err(|mut e| {
                e.as_down();
                e
            })?;
        if keepalive {
            return Ok(Some(conn));
        }
        conn.close().await;
        Ok(None)
    }
}

const STATUS: &[u8] = b"HTTP/1.1 200 OK\r\n";

/// Header lines in wire form, for the part of a hit's head kept with its entry.
#[derive(Default)]
pub(crate) struct Lines(BytesMut);

impl Lines {
    /// Adds `name: value`, refusing a value a header cannot carry (a control character, a line
    /// break): an entry read back from Redis is not trusted to be well formed.
    pub fn text(&mut self, name: &HeaderName, value: &str) -> pingora::Result<()> {
        put_line(&mut self.0, name, checked(value)?);
        Ok(())
    }

    pub fn number(&mut self, name: &HeaderName, value: u64) {
        put_line(
            &mut self.0,
            name,
            itoa::Buffer::new().format(value).as_bytes(),
        );
    }

    pub fn done(self) -> Bytes {
        self.0.freeze()
    }
}

/// `value` as header bytes, if every byte is visible ASCII, a space or a tab (what
/// `http::HeaderValue::from_str` accepts).
pub(super) fn checked(value: &str) -> pingora::Result<&[u8]> {
    let bytes = value.as_bytes();
    if bytes
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        Ok(bytes)
    } else {
        Error::e_explain(
            ErrorType::InvalidHTTPHeader,
            format!("not a header value: {value:?}"),
        )
    }
}

fn put_line(buf: &mut BytesMut, name: &HeaderName, value: &[u8]) {
    buf.put_slice(name.as_str().as_bytes());
    buf.put_slice(b": ");
    buf.put_slice(value);
    buf.put_slice(b"\r\n");
}

/// `len` in lowercase hex, for a chunk's size line.
fn hex_len(mut len: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[len & 0xf];
        len >>= 4;
        if len == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_hit_is_one_chunk_per_event_and_a_last_chunk() {
        let events = vec![
            Bytes::from_static(b"data: {\"a\":1}\n\n"),
            Bytes::new(),
            Bytes::from(vec![b'x'; 300]),
        ];
        let mut hit = Hit::new(b"x-switchyard-cache: hit\r\n", HitBody::Events(events));
        hit.number(&header::AGE, 7);
        let wire = hit.into_wire(false);
        let text = String::from_utf8_lossy(&wire);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nx-switchyard-cache: hit\r\nage: 7\r\n"));
        assert!(head.contains("\r\ndate: ") && head.ends_with("\r\nconnection: close"));
        let expected = format!(
            "f\r\ndata: {{\"a\":1}}\n\n\r\n12c\r\n{}\r\n0\r\n\r\n",
            "x".repeat(300)
        );
        assert_eq!(
            body, expected,
            "the empty event is no chunk (it would end the body)"
        );
    }

    #[test]
    fn a_value_with_a_line_break_is_refused() {
        let mut lines = Lines::default();
        assert!(lines
            .text(&header::CONTENT_TYPE, "text/plain\r\nset-cookie: a=b")
            .is_err());
        assert!(lines
            .text(&header::CONTENT_TYPE, "application/json; charset=utf-8")
            .is_ok());
        assert_eq!(
            &lines.done()[..],
            b"content-type: application/json; charset=utf-8\r\n"
        );
    }
}
