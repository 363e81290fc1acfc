//! A client connection between requests, and a plain request read straight from its bytes.
//!
//! pingora's HTTP/1 session turns every head into a request header of its own: two header maps
//! (values, and names as sent), the URI, the framing and authority checks. On a small request
//! that is most of what a cache hit costs (`benches/findings.md`). A request whose head is plain
//! can instead be parsed here into the few things the gateway decides on: HTTP/1.1, an
//! origin-form path without a query, no `transfer-encoding`, `expect`, `upgrade` or
//! `keep-alive` field, at most one `host` (without userinfo), its body framed by at most one
//! `content-length` and already read. Anything else, and any request the application does not
//! answer at once, goes to pingora's session with the bytes read so far, which parses them as if
//! it had read them itself: what pingora accepts, refuses or answers is unchanged.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::protocols::http::{ReusableHttpStream, ServerSession};
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

/// A connection between two requests: its stream, and the bytes already read from it that
/// belong to the next request (a pipelining client's).
pub struct Conn {
    pub(super) stream: Stream,
    pub(super) pending: BytesMut,
}

impl Conn {
    /// pingora's HTTP/1 session for the next request, parsing the pending bytes first. With
    /// pipelining on, a client that sends its next request before it has read the answer is
    /// served in order (pingora's default closes the connection, losing that request), and the
    /// bytes past the request are kept for the next session. Keep-alive has no timeout of
    /// pingora's: the listener's deadline covers the idle wait.
    pub fn session(self) -> ServerSession {
        let mut session = ServerSession::new_http1(self.stream);
        if let ServerSession::H1(h1) = &mut session {
            h1.set_pipelining_enabled(true);
            if !self.pending.is_empty() {
                h1.set_pipelined_prefix(self.pending);
            }
        }
        session.set_keepalive(Some(0));
        session
    }

    /// pingora's session for a plain request (read by `HeadWait::read_plain`) that the
    /// application does not answer itself: it parses the request's bytes again, then the rest.
    pub fn resume(mut self, request: PlainRequest) -> ServerSession {
        restore(&mut self.pending, &request.bytes);
        self.session()
    }

    /// The connection back from a session whose request is finished, when it can serve another.
    pub async fn after(session: ServerSession) -> Option<Conn> {
        let reused = session.finish().await.ok().flatten()?;
        Some(Conn::reused(reused))
    }

    /// The connection pingora's reuse handed back, with the bytes it read past the request.
    pub fn reused(reused: ReusableHttpStream) -> Conn {
        let (stream, pending) = reused.into_parts();
        Conn::new(stream, pending.unwrap_or_default())
    }

    /// A connection and the bytes read from it past the last request.
    pub fn new(stream: Stream, pending: BytesMut) -> Conn {
        Conn { stream, pending }
    }

    /// Writes `bytes` whole.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Closes the connection (its write side first, so the client reads all that was sent).
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Header fields a plain request can have at most (more: pingora's session reads it).
const MAX_FIELDS: usize = 32;

/// What reading a plain request found.
pub enum Early {
    /// A plain request, head and body, taken off the connection's pending bytes.
    Plain(PlainRequest),
    /// Not a plain request, or not yet all read: pingora's session reads it from the pending
    /// bytes on.
    Other,
    /// Nothing to answer (the client closed, the deadline passed, the service is stopping).
    Closed,
}

/// A plain request (see the module's notes), parsed.
pub struct PlainRequest {
    pub method: Method,
    pub headers: HeaderMap,
    /// The client asked to close the connection after this request (`connection: close`).
    pub close: bool,
    /// The head and the body, as read.
    bytes: Bytes,
    head_len: usize,
    path_len: usize,
}

impl PlainRequest {
    /// The request target: a path, without a query.
    pub fn path(&self) -> &str {
        let start = self.method.as_str().len() + 1;
        // Checked to be visible ASCII when parsed.
        std::str::from_utf8(&self.bytes[start..start + self.path_len]).unwrap_or("")
    }

    pub fn body(&self) -> Bytes {
        self.bytes.slice(self.head_len..)
    }
}

/// What [`parse`] found at the start of the pending bytes.
#[derive(Debug, PartialEq)]
pub(super) enum Parsed {
    /// A plain request of `len` bytes (head and body).
    Plain(Frame),
    /// The head is not complete yet.
    Partial,
    /// Not a plain request, or its body is not all here.
    Other,
}

/// Where a plain request's parts lie in the bytes.
#[derive(Debug, PartialEq)]
pub(super) struct Frame {
    method: Method,
    head_len: usize,
    len: usize,
    path_len: usize,
    close: bool,
    fields: usize,
}

/// Each field's name and value as `(start, end)` offsets into the request's bytes.
pub(super) type Spans = [(u32, u32, u32, u32); MAX_FIELDS];

/// Looks for a plain request at the start of `buf`, whose head may be at most `max_head` bytes;
/// its fields' places go to `spans`.
pub(super) fn parse(buf: &[u8], max_head: usize, spans: &mut Spans) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= max_head => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(method), Some(path)) = (req.version, req.method, req.path) else {
        return Parsed::Other;
    };
    let Ok(parsed_method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    // Origin form, no query: what `Endpoint::from_path` can name. The request line is
    // `METHOD SP path SP`, one space each (httparse accepts more; pingora's parse is left those).
    if !path.starts_with('/')
        || !path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        || !buf[method.len()..].starts_with(b" ")
        || !buf[method.len() + 1 + path.len()..].starts_with(b" ")
    {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let mut frame = Frame {
        method: parsed_method,
        head_len,
        len: head_len,
        path_len: path.len(),
        close: false,
        fields: req.headers.len(),
    };
    let mut content_length = None;
    let mut hosts = 0;
    for (i, field) in req.headers.iter().enumerate() {
        let name = field.name.as_bytes();
        let value = field.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            let digits =
                value.len() <= 18 && !value.is_empty() && value.iter().all(u8::is_ascii_digit);
            if content_length.is_some() || !digits {
                return Parsed::Other;
            }
            content_length = Some(value.iter().fold(0, |n, d| n * 10 + usize::from(d - b'0')));
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 || value.contains(&b'@') {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    frame.close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    return Parsed::Other;
                }
            }
        } else if [
            &b"transfer-encoding"[..],
            b"expect",
            b"upgrade",
            b"keep-alive",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Parsed::Other;
        }
        let name_start = offset(name);
        let value_start = offset(value);
        spans[i] = (
            name_start,
            name_start + name.len() as u32,
            value_start,
            value_start + value.len() as u32,
        );
    }
    frame.len = head_len + content_length.unwrap_or(0);
    if buf.len() < frame.len {
        return Parsed::Other;
    }
    Parsed::Plain(frame)
}

/// Takes the request `frame` and `spans` describe off the front of `pending` (`None`, every byte
/// left, when a field is one `http` does not take).
pub(super) fn take(pending: &mut BytesMut, frame: Frame, spans: &Spans) -> Option<PlainRequest> {
    let bytes = pending.split_to(frame.len).freeze();
    let mut headers = HeaderMap::with_capacity(frame.fields);
    for &(name_start, name_end, value_start, value_end) in &spans[..frame.fields] {
        let name = HeaderName::from_bytes(&bytes[name_start as usize..name_end as usize]);
        let value =
            HeaderValue::from_maybe_shared(bytes.slice(value_start as usize..value_end as usize));
        match (name, value) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => {
                // Not a field `http` takes: put the bytes back for pingora's session.
                restore(pending, &bytes);
                return None;
            }
        }
    }
    Some(PlainRequest {
        method: frame.method,
        headers,
        close: frame.close,
        bytes,
        head_len: frame.head_len,
        path_len: frame.path_len,
    })
}

/// Puts `taken` back in front of `pending`.
fn restore(pending: &mut BytesMut, taken: &[u8]) {
    let mut whole = BytesMut::with_capacity(taken.len() + pending.len());
    whole.extend_from_slice(taken);
    whole.extend_from_slice(pending);
    *pending = whole;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parsed(text: &str) -> Parsed {
        parse(text.as_bytes(), 1024, &mut Spans::default())
    }

    fn head(extra: &str) -> String {
        format!("POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-length: 2\r\n{extra}\r\n{{}}")
    }

    #[test]
    fn a_plain_request_is_taken_and_the_next_one_stays() {
        let next = "GET /v1/models HTTP/1.1\r\n";
        let mut pending = BytesMut::from((head("X-Key: Ab \r\n") + next).as_bytes());
        let mut spans = Spans::default();
        let Parsed::Plain(frame) = parse(&pending, 1024, &mut spans) else {
            panic!("plain")
        };
        let request = take(&mut pending, frame, &spans).expect("taken");
        assert_eq!(request.method, Method::POST);
        assert_eq!(request.path(), "/v1/chat/completions");
        assert_eq!(&request.body()[..], b"{}");
        assert_eq!(
            request.headers["x-key"], "Ab",
            "names lowercased, values trimmed"
        );
        assert_eq!(request.headers.len(), 3);
        assert!(!request.close);
        assert_eq!(
            &pending[..],
            next.as_bytes(),
            "the pipelined request is kept"
        );
    }

    #[test]
    fn connection_close_is_noticed_and_other_tokens_are_not_plain() {
        for (value, close) in [
            ("close", true),
            ("Keep-Alive, close", true),
            ("keep-alive", false),
        ] {
            match parsed(&head(&format!("connection: {value}\r\n"))) {
                Parsed::Plain(frame) => assert_eq!(frame.close, close, "{value}"),
                other => panic!("{value}: {other:?}"),
            }
        }
        assert_eq!(parsed(&head("connection: upgrade\r\n")), Parsed::Other);
    }

    #[test]
    fn an_unfinished_head_waits_until_it_is_too_long() {
        assert_eq!(
            parsed("POST /v1/chat/completions HTTP/1.1\r\nhost:"),
            Parsed::Partial
        );
        let long = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nx: {}",
            "a".repeat(2000)
        );
        assert_eq!(parsed(&long), Parsed::Other);
    }

    #[test]
    fn anything_unusual_is_left_to_pingora() {
        let cases = [
            (
                "a body not all here",
                head("").replace("content-length: 2", "content-length: 9"),
            ),
            ("two lengths", head("content-length: 2\r\n")),
            (
                "a signed length",
                head("").replace("length: 2", "length: +2"),
            ),
            ("chunked", head("transfer-encoding: chunked\r\n")),
            ("expect", head("expect: 100-continue\r\n")),
            ("two hosts", head("host: other\r\n")),
            ("userinfo", head("").replace("host: gw", "host: a@gw")),
            ("HTTP/1.0", head("").replace("HTTP/1.1", "HTTP/1.0")),
            (
                "a query",
                head("").replace("completions ", "completions?a=1 "),
            ),
            ("absolute form", head("").replace("/v1/", "http://gw/v1/")),
            ("two spaces", head("").replace("POST ", "POST  ")),
            ("33 fields", head(&"x: y\r\n".repeat(31))),
            ("not HTTP", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_owned()),
        ];
        for (what, text) in cases {
            assert_eq!(parsed(&text), Parsed::Other, "{what}");
        }
    }

    proptest! {
        /// Damaged and cut requests: no panic, and a request taken is exactly its bytes.
        #[test]
        fn damaged_requests_never_panic_and_take_what_they_frame(
            edits in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
            cut in 0usize..200,
        ) {
            let mut bytes = (head("connection: keep-alive\r\n") + "GET /").into_bytes();
            let len = bytes.len();
            for (at, byte) in edits {
                bytes[at % len] = byte;
            }
            bytes.truncate(cut.max(1).min(len));
            let mut spans = Spans::default();
            if let Parsed::Plain(frame) = parse(&bytes, 1024, &mut spans) {
                let (len, head_len) = (frame.len, frame.head_len);
                let mut pending = BytesMut::from(&bytes[..]);
                let request = take(&mut pending, frame, &spans);
                let taken = request.as_ref().map_or(0, |r| r.bytes.len());
                prop_assert_eq!(taken + pending.len(), bytes.len());
                if let Some(request) = request {
                    prop_assert!(request.path().starts_with('/'));
                    prop_assert_eq!(request.body().len(), len - head_len);
                }
            }
        }
    }
}
