//! Server-sent events, split from a body that arrives in arbitrary chunks.
//!
//! The harness only needs to know *when* each event arrived and what kind it
//! is (a token chunk, an in-stream error, or the `[DONE]` terminator), so the
//! parser keeps the `data:` payload and drops the other fields.

/// One complete event (the lines up to a blank line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `data:` lines joined with `\n`, as the SSE spec says.
    pub data: Vec<u8>,
}

impl SseEvent {
    /// The OpenAI stream terminator.
    pub fn is_done(&self) -> bool {
        self.data.trim_ascii() == b"[DONE]"
    }

    /// A failure reported inside a 200 stream (`data: {"error": {...}}`), the
    /// way vLLM ends a stream that broke after it began.
    pub fn is_error(&self) -> bool {
        let d = self.data.trim_ascii_start();
        d.starts_with(b"{") && d[1..].trim_ascii_start().starts_with(b"\"error\"")
    }
}

/// Incremental splitter: feed chunks as they come off the socket, collect the
/// events that each chunk completed. Lines may end in `\n`, `\r\n` or `\r`.
#[derive(Debug, Default)]
pub struct SseSplitter {
    /// Bytes of the line not yet terminated.
    line: Vec<u8>,
    /// `data:` payload of the event being assembled.
    data: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended in `\r`, so a leading `\n` belongs to it.
    after_cr: bool,
}

impl SseSplitter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one chunk; every event it completes is appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.line.extend_from_slice(&rest[..pos]);
            let was_cr = rest[pos] == b'\r';
            rest = &rest[pos + 1..];
            if was_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            self.end_line(out);
        }
        self.line.extend_from_slice(rest);
    }

    /// Bytes held back waiting for a line end; non-zero at the end of a body
    /// means the stream was cut mid-event.
    pub fn pending(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>) {
        let Self {
            line,
            data,
            has_data,
            ..
        } = self;
        if line.is_empty() {
            if *has_data {
                out.push(SseEvent {
                    data: std::mem::take(data),
                });
                *has_data = false;
            }
            return;
        }
        // Comments (`:`), `event:`, `id:`, `retry:` carry no timing information.
        if let Some(value) = line.strip_prefix(b"data") {
            let value = match value {
                [b':', b' ', v @ ..] | [b':', v @ ..] => Some(v),
                [] => Some(value),
                _ => None, // a field that merely starts with "data"
            };
            if let Some(value) = value {
                if *has_data {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                *has_data = true;
            }
        }
        line.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b": keep-alive\n\ndata: {\"id\":1}\n\ndata: {\"id\":2}\r\n\r\nevent: x\ndata: a\ndata: b\n\ndata: [DONE]\n\n";

    fn split_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut s = SseSplitter::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        assert_eq!(
            s.pending(),
            0,
            "nothing may be left over after a full stream"
        );
        out
    }

    fn expected() -> Vec<SseEvent> {
        [&b"{\"id\":1}"[..], b"{\"id\":2}", b"a\nb", b"[DONE]"]
            .iter()
            .map(|d| SseEvent { data: d.to_vec() })
            .collect()
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_eq!(split_all(&[STREAM]), expected());
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let got = split_all(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(got, expected(), "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(split_all(&chunks), expected());
    }

    #[test]
    fn bare_cr_line_endings_split_across_chunks() {
        let got = split_all(&[b"data: x\r", b"\r", b"data: y\r\r"]);
        let want: Vec<SseEvent> = [b"x", b"y"]
            .iter()
            .map(|d| SseEvent { data: d.to_vec() })
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn cut_stream_leaves_pending_bytes() {
        let mut s = SseSplitter::new();
        let mut out = Vec::new();
        s.push(b"data: {\"id\":1}\n\ndata: {\"id\"", &mut out);
        assert_eq!(out.len(), 1);
        assert!(s.pending() > 0, "a half event must show as pending");
    }

    #[test]
    fn classifies_done_and_error_events() {
        let ev = |d: &[u8]| SseEvent { data: d.to_vec() };
        assert!(ev(b"[DONE]").is_done());
        assert!(!ev(b"{\"choices\":[]}").is_done());
        assert!(ev(b"{\"error\": {\"message\": \"boom\"}}").is_error());
        assert!(ev(b"{ \"error\":{}}").is_error());
        assert!(!ev(b"{\"choices\":[{\"delta\":{\"content\":\"error\"}}]}").is_error());
    }
}
