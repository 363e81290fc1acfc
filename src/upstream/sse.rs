//! Watches a server-sent-events stream as it passes through, without holding it up.
//!
//! vLLM reports a failure after streaming began as `data: {"error": {...}}` then `data: [DONE]`
//! on an HTTP 200, so the status alone cannot tell success. The scanner sees every event and
//! remembers whether the stream ended properly, whether it carried an error, and the usage
//! figures of the final chunk. Its buffer holds at most one partial event, bounded by
//! [`MAX_EVENT_BYTES`]; a longer event is skipped (and counted), never buffered without end.
//!
//! A scanner made with [`SseScanner::capturing`] also keeps the generated text (the `delta`
//! contents of chat chunks, the `text` of completion chunks), up to [`MAX_CAPTURE_BYTES`], for
//! comparing a primary answer with its shadow.

use memchr::memmem;

/// Longest single event the scanner will look inside.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Most generated text a capturing scanner keeps; the rest is counted, not stored.
pub const MAX_CAPTURE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Debug, Default)]
pub struct SseScanner {
    partial: Vec<u8>,
    skipping: bool,
    /// While skipping: the last byte seen was `\n`, so a `\n` first in the next chunk ends
    /// the skipped event.
    skip_newline: bool,
    pub events: u64,
    pub oversized_events: u64,
    pub saw_done: bool,
    pub saw_error: bool,
    pub usage: Option<Usage>,
    /// Generated text, when capturing.
    pub text: Option<String>,
    /// Events that carried generated text (counted when capturing).
    pub content_events: u64,
    /// Events with data other than `[DONE]`.
    pub data_events: u64,
    /// A choice ended with `finish_reason: "content_filter"` (a safety signal for guardrails).
    pub content_filtered: bool,
}

impl SseScanner {
    /// A scanner that also keeps the generated text.
    pub fn capturing() -> SseScanner {
        SseScanner {
            text: Some(String::new()),
            ..SseScanner::default()
        }
    }

    /// Feeds the next bytes of the stream, in any chunking: what the scanner finds does not
    /// depend on where the chunks are cut. Events end at a blank line (`\n\n`, as vLLM, TGI
    /// and SGLang write them); an event longer than [`MAX_EVENT_BYTES`] is counted in
    /// `oversized_events` and not looked inside, however it arrives.
    pub fn feed(&mut self, bytes: &[u8]) {
        let bytes = if self.skipping {
            // The blank line ending the skipped event may straddle two chunks.
            let end = if self.skip_newline && bytes.first() == Some(&b'\n') {
                Some(1)
            } else {
                memmem::find(bytes, b"\n\n").map(|e| e + 2)
            };
            match end {
                Some(end) => {
                    self.skipping = false;
                    self.skip_newline = false;
                    &bytes[end..]
                }
                None => {
                    if let Some(last) = bytes.last() {
                        self.skip_newline = *last == b'\n';
                    }
                    return;
                }
            }
        } else {
            bytes
        };
        // A delimiter may straddle the previous chunk and this one.
        let mut from = self.partial.len().saturating_sub(1);
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = memmem::find(&buf[from..], b"\n\n") {
            let end = from + pos;
            if end - start > MAX_EVENT_BYTES {
                self.oversized_events += 1;
            } else {
                self.on_event(&buf[start..end]);
            }
            start = end + 2;
            from = start;
        }
        buf.drain(..start);
        self.partial = buf;
        // Past this the event is certainly oversized (its last byte may still begin the blank
        // line): stop buffering it, and free what it took.
        if self.partial.len() > MAX_EVENT_BYTES + 1 {
            self.skip_newline = self.partial.last() == Some(&b'\n');
            self.partial = Vec::new();
            self.oversized_events += 1;
            self.skipping = true;
        }
    }

    /// Bytes held of an event not yet complete: at most [`MAX_EVENT_BYTES`] + 1.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    fn on_event(&mut self, event: &[u8]) {
        self.events += 1;
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                self.saw_done = true;
                continue;
            }
            if !data.is_empty() {
                self.data_events += 1;
            }
            if self.text.is_some()
                || memmem::find(data, b"\"error\"").is_some()
                || memmem::find(data, b"\"usage\"").is_some()
                || memmem::find(data, b"\"content_filter\"").is_some()
            {
                self.inspect_json(data);
            }
        }
    }

    fn inspect_json(&mut self, data: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Chunk {
            error: Option<serde::de::IgnoredAny>,
            usage: Option<WireUsage>,
            #[serde(default)]
            choices: Vec<Choice>,
        }
        #[derive(serde::Deserialize)]
        struct Choice {
            delta: Option<Delta>,
            text: Option<String>,
            finish_reason: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Delta {
            content: Option<String>,
        }
        let Ok(chunk) = serde_json::from_slice::<Chunk>(data) else {
            return;
        };
        if chunk.error.is_some() {
            self.saw_error = true;
        }
        if chunk
            .choices
            .iter()
            .any(|c| c.finish_reason.as_deref() == Some("content_filter"))
        {
            self.content_filtered = true;
        }
        if let Some(text) = self.text.as_mut() {
            let piece = chunk.choices.into_iter().find_map(|c| {
                c.delta
                    .and_then(|d| d.content)
                    .or(c.text)
                    .filter(|t| !t.is_empty())
            });
            if let Some(piece) = piece {
                self.content_events += 1;
                if text.len() + piece.len() <= MAX_CAPTURE_BYTES {
                    text.push_str(&piece);
                }
            }
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u.into());
        }
    }

    /// The stream ended with `[DONE]` and carried no error event.
    pub fn succeeded(&self) -> bool {
        self.saw_done && !self.saw_error
    }
}

/// `usage` as OpenAI-compatible servers write it, in plain answers and in a stream's usage chunk.
#[derive(serde::Deserialize)]
pub(super) struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<WireUsageDetails>,
}

#[derive(serde::Deserialize)]
pub(super) struct WireUsageDetails {
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            prompt_tokens: u.prompt_tokens.unwrap_or(0),
            completion_tokens: u.completion_tokens.unwrap_or(0),
            cached_tokens: u
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
        }
    }
}

/// The event the gateway appends when the backend fails after streaming began, in vLLM's shape,
/// so clients see an error instead of a silently truncated answer.
pub fn error_event(message: &str, code: &str) -> bytes::Bytes {
    let body = crate::error::openai_error_body(message, "server_error", code);
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn every_chunking_gives_the_same_reading() {
        for split in 1..STREAM.len() {
            let mut s = SseScanner::default();
            s.feed(&STREAM[..split]);
            s.feed(&STREAM[split..]);
            assert_eq!(s.events, 3, "split at {split}");
            assert!(s.succeeded(), "split at {split}");
            assert_eq!(
                s.usage,
                Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 3,
                    cached_tokens: 8
                })
            );
        }
        let mut s = SseScanner::default();
        for b in STREAM {
            s.feed(std::slice::from_ref(b));
        }
        assert!(s.succeeded() && s.events == 3);
    }

    #[test]
    fn capturing_keeps_the_generated_text() {
        let mut s = SseScanner::capturing();
        s.feed(
            b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"}}]}\n\n",
        );
        s.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\ndata: {\"choices\":[{\"text\":\"!\"}]}\n\n");
        s.feed(STREAM);
        assert_eq!(s.text.as_deref(), Some("Hello world!hi"));
        assert_eq!(s.content_events, 4);
        let mut plain = SseScanner::default();
        plain.feed(STREAM);
        assert_eq!((plain.text, plain.content_events), (None, 0));
    }

    #[test]
    fn error_event_marks_failure_even_with_done() {
        let mut s = SseScanner::default();
        s.feed(b"data: {\"choices\":[]}\n\n");
        s.feed(&error_event("boom", "upstream_error"));
        assert!(s.saw_done && s.saw_error && !s.succeeded());
    }

    #[test]
    fn truncated_stream_is_not_success() {
        let mut s = SseScanner::default();
        s.feed(&STREAM[..40]);
        assert!(!s.succeeded());
    }

    #[test]
    fn oversized_event_is_skipped_not_buffered() {
        let mut s = SseScanner::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        s.feed(b"data: ");
        s.feed(&big);
        assert!(s.partial.is_empty());
        s.feed(&big);
        s.feed(b"\n\ndata: [DONE]\n\n");
        assert_eq!(s.oversized_events, 1);
        assert!(s.saw_done);
    }

    /// Found while writing the SSE fuzz harness (`tests/fuzz.rs`): a skipped event whose blank line was
    /// split across two chunks was never seen to end, so the next events — `[DONE]` here —
    /// were lost and a good stream counted as failed.
    #[test]
    fn oversized_event_ending_across_chunks_is_still_ended() {
        let mut s = SseScanner::default();
        s.feed(b"data: ");
        s.feed(&vec![b'x'; MAX_EVENT_BYTES + 10]);
        s.feed(b"x\n");
        s.feed(b"\ndata: [DONE]\n\n");
        assert_eq!(s.oversized_events, 1);
        assert!(s.saw_done, "the event after the oversized one was lost");
    }

    /// Found while writing the SSE fuzz harness: an oversized event arriving whole was looked inside,
    /// the same event in pieces was skipped, so the reading depended on the chunking.
    #[test]
    fn oversized_event_is_skipped_however_it_arrives() {
        let mut stream = b"data: {\"error\":{\"message\":\"".to_vec();
        stream.extend(vec![b'x'; MAX_EVENT_BYTES]);
        stream.extend_from_slice(b"\"}}\n\ndata: [DONE]\n\n");
        let mut whole = SseScanner::default();
        whole.feed(&stream);
        let mut pieces = SseScanner::default();
        for piece in stream.chunks(4096) {
            pieces.feed(piece);
        }
        for s in [&whole, &pieces] {
            assert_eq!((s.oversized_events, s.events, s.saw_error), (1, 1, false));
            assert!(s.succeeded());
        }
    }
}
