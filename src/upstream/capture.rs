//! What the gateway learns from a response body as it relays it: whether a stream ended well,
//! the usage figures, and — for mirrored requests — the generated text, all bounded.

use super::sse::{SseScanner, Usage, WireUsage};
use memchr::memmem;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Most of a plain (JSON) answer kept to read its usage; a larger answer is relayed without
/// its figures (its usage is then estimated).
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// Reads a response body as it passes.
#[derive(Debug)]
pub struct ResponseCapture {
    sse: Option<SseScanner>,
    /// A plain (JSON) body, up to [`MAX_JSON_BYTES`].
    json: Vec<u8>,
    json_overflow: bool,
    keep_text: bool,
}

/// What a finished response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The generated text, when it was kept and the response had any.
    pub text: Option<String>,
    /// The backend's own figures, when it sent them.
    pub usage: Option<Usage>,
    /// SSE events that carried data other than `[DONE]`: a count of output tokens when the
    /// backend sent no usage (one token per event, as vLLM streams).
    pub data_events: u64,
    /// An SSE stream that ended without `[DONE]` or carried an error event.
    pub stream_failed: bool,
    /// A choice ended with `finish_reason: "content_filter"`.
    pub content_filtered: bool,
}

impl ResponseCapture {
    /// `keep_text` when the answer will be compared with a shadow's.
    pub fn new(is_sse: bool, keep_text: bool) -> ResponseCapture {
        ResponseCapture {
            sse: is_sse.then(|| {
                if keep_text {
                    SseScanner::capturing()
                } else {
                    SseScanner::default()
                }
            }),
            json: Vec::new(),
            json_overflow: false,
            keep_text,
        }
    }

    /// Feeds the next bytes; returns how many SSE data events they completed.
    pub fn feed(&mut self, chunk: &[u8]) -> u64 {
        if let Some(sse) = self.sse.as_mut() {
            let before = sse.data_events;
            sse.feed(chunk);
            return sse.data_events - before;
        }
        if self.json.len() + chunk.len() <= MAX_JSON_BYTES {
            self.json.extend_from_slice(chunk);
        } else {
            self.json_overflow = true;
        }
        0
    }

    /// SSE events seen so far (any kind).
    pub fn events(&self) -> u64 {
        self.sse.as_ref().map_or(0, |s| s.events)
    }

    /// Whether a stream carried a vLLM error event.
    pub fn saw_error(&self) -> bool {
        self.sse.as_ref().is_some_and(|s| s.saw_error)
    }

    /// Whether this is a stream that has so far not ended properly.
    pub fn stream_failed(&self) -> bool {
        self.sse.as_ref().is_some_and(|s| !s.succeeded())
    }

    pub fn finish(self) -> Captured {
        let stream_failed = self.stream_failed();
        if let Some(sse) = self.sse {
            return Captured {
                text: sse.text.filter(|t| !t.is_empty()),
                usage: sse.usage,
                data_events: sse.data_events,
                stream_failed,
                content_filtered: sse.content_filtered,
            };
        }
        if self.json_overflow {
            return Captured::default();
        }
        parse_json_answer(&self.json, self.keep_text)
    }
}

fn parse_json_answer(body: &[u8], keep_text: bool) -> Captured {
    // Most answers are read for their usage alone: parsing the whole body for it cost several
    // thousand instructions per request. The whole body is parsed only when its text is wanted
    // or it may carry a content filter's finish reason.
    if !keep_text && memmem::find(body, b"\"content_filter\"").is_none() {
        return Captured {
            usage: usage_member(body),
            ..Captured::default()
        };
    }
    parse_whole_answer(body, keep_text)
}

/// The answer's top-level `usage`, read without parsing the rest. A quote inside a JSON string
/// is always escaped, so the bytes `"usage"` followed by a colon are a key; vLLM and OpenAI put
/// the top-level one after the choices, so the last such key is taken and its value parsed.
fn usage_member(body: &[u8]) -> Option<Usage> {
    let mut end = body.len();
    while let Some(at) = memmem::rfind(&body[..end], b"\"usage\"") {
        if let Some(value) = body[at + 7..].trim_ascii_start().strip_prefix(b":") {
            let mut value = serde_json::Deserializer::from_slice(value);
            return Option::<WireUsage>::deserialize(&mut value)
                .ok()
                .flatten()
                .map(Usage::from);
        }
        end = at;
    }
    None
}

fn parse_whole_answer(body: &[u8], keep_text: bool) -> Captured {
    // The choices' strings are kept as raw JSON slices of `body` (no allocation, no unescaping)
    // and only the wanted text is decoded.
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(default, borrow)]
        choices: Vec<Choice<'a>>,
        usage: Option<WireUsage>,
    }
    #[derive(serde::Deserialize)]
    struct Choice<'a> {
        #[serde(borrow)]
        message: Option<Message<'a>>,
        #[serde(borrow)]
        text: Option<&'a RawValue>,
        #[serde(borrow)]
        finish_reason: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        content: Option<&'a RawValue>,
    }
    /// A JSON string's text; `None` for `null` or anything else.
    fn text(raw: &RawValue) -> Option<String> {
        serde_json::from_str::<Option<String>>(raw.get())
            .ok()
            .flatten()
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return Captured::default();
    };
    let content_filtered = answer.choices.iter().any(|c| {
        c.finish_reason
            .is_some_and(|r| r.get() == "\"content_filter\"")
    });
    Captured {
        content_filtered,
        text: if keep_text {
            answer.choices.iter().find_map(|c| {
                c.message
                    .as_ref()
                    .and_then(|m| m.content)
                    .and_then(text)
                    .or_else(|| c.text.and_then(text))
            })
        } else {
            None
        },
        usage: answer.usage.map(Usage::from),
        data_events: 0,
        stream_failed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_answers_give_text_and_usage() {
        let mut c = ResponseCapture::new(false, true);
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"four words right here"}}],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#;
        c.feed(&body[..20]);
        c.feed(&body[20..]);
        let got = c.finish();
        assert_eq!(got.text.as_deref(), Some("four words right here"));
        let u = got.usage.unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (9, 4));
        assert!(!got.stream_failed);
    }

    #[test]
    fn plain_responses_nobody_compares_keep_only_usage() {
        let mut c = ResponseCapture::new(false, false);
        c.feed(br#"{"choices":[{"text":"x"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":4}}}"#);
        let got = c.finish();
        assert_eq!(got.text, None);
        assert_eq!(got.usage.map(|u| u.cached_tokens), Some(4));
    }

    #[test]
    fn plain_answers_decode_escaped_text_and_see_a_content_filter() {
        let mut c = ResponseCapture::new(false, true);
        c.feed(br#"{"choices":[{"message":{"content":null},"text":"line\n\"two\" \u00e9","finish_reason":"content_filter"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#);
        let got = c.finish();
        assert_eq!(got.text.as_deref(), Some("line\n\"two\" \u{e9}"));
        assert!(got.content_filtered);
        assert_eq!(got.usage.map(|u| u.completion_tokens), Some(2));

        let mut c = ResponseCapture::new(false, false);
        c.feed(br#"{"choices":[{"message":{"content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#);
        let got = c.finish();
        assert!(!got.content_filtered);
        assert_eq!(got.usage.map(|u| u.prompt_tokens), Some(3));
    }

    #[test]
    fn usage_is_the_top_level_key_not_a_word_in_the_text() {
        let usage = |body: &[u8]| {
            let mut c = ResponseCapture::new(false, false);
            c.feed(body);
            c.finish()
                .usage
                .map(|u| (u.prompt_tokens, u.completion_tokens))
        };
        // The text quotes the key, even with a colon after it; the real one follows.
        assert_eq!(
            usage(br#"{"choices":[{"message":{"content":"the \"usage\": field"}}], "usage" : {"prompt_tokens":7,"completion_tokens":3},"system_fingerprint":"x"}"#),
            Some((7, 3))
        );
        assert_eq!(
            usage(br#"{"choices":[{"message":{"content":"no \"usage\" here"}}]}"#),
            None
        );
        assert_eq!(usage(br#"{"choices":[],"usage":null}"#), None);
        assert_eq!(usage(br#"{"usage":{"prompt_tokens":"many"}}"#), None);
    }

    #[test]
    fn oversized_plain_answers_give_no_figures() {
        let mut c = ResponseCapture::new(false, false);
        c.feed(&vec![b' '; MAX_JSON_BYTES]);
        c.feed(br#"{"usage":{"prompt_tokens":5}}"#);
        assert_eq!(c.finish(), Captured::default());
    }

    #[test]
    fn streams_count_text_events_without_usage() {
        let mut c = ResponseCapture::new(true, true);
        c.feed(b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\" b\"}]}\n\n");
        assert!(c.stream_failed(), "no [DONE] yet");
        c.feed(b"data: [DONE]\n\n");
        let got = c.finish();
        assert_eq!((got.text.as_deref(), got.data_events), (Some("a b"), 2));
        assert!(!got.stream_failed);
    }
}
