//! What the gateway learns from a response body as it relays it: whether a stream ended well,
//! the usage figures, and — for mirrored requests — the generated text, all bounded.

use super::sse::{SseScanner, MAX_CAPTURE_BYTES};

/// Reads a response body as it passes. Costs nothing for a plain response nobody compares.
#[derive(Debug)]
pub struct ResponseCapture {
    sse: Option<SseScanner>,
    /// A plain (JSON) body kept for comparison, up to [`MAX_CAPTURE_BYTES`].
    json: Option<Vec<u8>>,
    json_overflow: bool,
}

/// What a finished response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The generated text, when it was kept and the response had any.
    pub text: Option<String>,
    pub prompt_tokens: Option<u64>,
    /// From `usage`, else the count of SSE events that carried text.
    pub output_tokens: Option<u64>,
    /// An SSE stream that ended without `[DONE]` or carried an error event.
    pub stream_failed: bool,
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
            json: (!is_sse && keep_text).then(Vec::new),
            json_overflow: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        if let Some(sse) = self.sse.as_mut() {
            sse.feed(chunk);
        } else if let Some(json) = self.json.as_mut() {
            if json.len() + chunk.len() <= MAX_CAPTURE_BYTES {
                json.extend_from_slice(chunk);
            } else {
                self.json_overflow = true;
            }
        }
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
                prompt_tokens: sse.usage.map(|u| u.prompt_tokens),
                output_tokens: sse
                    .usage
                    .map(|u| u.completion_tokens)
                    .or((sse.content_events > 0).then_some(sse.content_events)),
                stream_failed,
            };
        }
        match self.json.filter(|_| !self.json_overflow) {
            Some(body) => parse_json_answer(&body),
            None => Captured::default(),
        }
    }
}

fn parse_json_answer(body: &[u8]) -> Captured {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        choices: Vec<Choice>,
        usage: Option<Usage>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        message: Option<Message>,
        text: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        content: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Usage {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return Captured::default();
    };
    Captured {
        text: answer
            .choices
            .into_iter()
            .find_map(|c| c.message.and_then(|m| m.content).or(c.text)),
        prompt_tokens: answer.usage.as_ref().and_then(|u| u.prompt_tokens),
        output_tokens: answer.usage.as_ref().and_then(|u| u.completion_tokens),
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
        assert_eq!((got.prompt_tokens, got.output_tokens), (Some(9), Some(4)));
        assert!(!got.stream_failed);
    }

    #[test]
    fn plain_responses_nobody_compares_keep_nothing() {
        let mut c = ResponseCapture::new(false, false);
        c.feed(br#"{"choices":[{"text":"x"}]}"#);
        assert_eq!(c.finish(), Captured::default());
    }

    #[test]
    fn streams_count_text_events_without_usage() {
        let mut c = ResponseCapture::new(true, true);
        c.feed(b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: {\"choices\":[{\"text\":\" b\"}]}\n\n");
        assert!(c.stream_failed(), "no [DONE] yet");
        c.feed(b"data: [DONE]\n\n");
        let got = c.finish();
        assert_eq!(
            (got.text.as_deref(), got.output_tokens),
            (Some("a b"), Some(2))
        );
        assert!(!got.stream_failed);
    }
}
