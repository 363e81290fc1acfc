//! The OpenAI wire format the sim speaks: request bodies it reads (only the
//! fields it acts on; everything else is ignored, as servers do) and the
//! response, SSE chunk and error bodies it writes, in the shapes vLLM uses.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's content: a plain string or a list of parts, of which only
/// the text parts matter to the sim.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Input,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Input,
}

/// A completion prompt or embedding input: text, texts, token ids, or lists
/// of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// What the sim needs from either generation endpoint.
#[derive(Debug)]
pub struct Generation {
    pub model: String,
    /// The prompt as the sim's tokenizer sees it.
    pub prompt: Vec<u8>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
}

fn include_usage(options: Option<&StreamOptions>) -> bool {
    options.and_then(|o| o.include_usage).unwrap_or(false)
}

impl From<ChatRequest> for Generation {
    /// The prompt is each message's role and text, one line each, standing
    /// in for a chat template.
    fn from(request: ChatRequest) -> Self {
        let mut prompt = Vec::new();
        for message in &request.messages {
            prompt.extend_from_slice(message.role.as_bytes());
            prompt.push(b'\n');
            match &message.content {
                Some(Content::Text(text)) => prompt.extend_from_slice(text.as_bytes()),
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter_map(|part| part.text.as_deref())
                    .for_each(|text| prompt.extend_from_slice(text.as_bytes())),
                None => {}
            }
            prompt.push(b'\n');
        }
        Generation {
            model: request.model,
            prompt,
            max_tokens: request.max_completion_tokens.or(request.max_tokens),
            stream: request.stream.unwrap_or(false),
            include_usage: include_usage(request.stream_options.as_ref()),
        }
    }
}

impl From<CompletionRequest> for Generation {
    /// Several prompts are answered as one, concatenated (one choice).
    fn from(request: CompletionRequest) -> Self {
        Generation {
            model: request.model,
            prompt: request.prompt.pieces().concat(),
            max_tokens: request.max_tokens,
            stream: request.stream.unwrap_or(false),
            include_usage: include_usage(request.stream_options.as_ref()),
        }
    }
}

impl Input {
    /// Each input's bytes; a token id becomes 4 bytes, i.e. exactly one
    /// token under the sim's tokenizer.
    pub fn pieces(&self) -> Vec<Cow<'_, [u8]>> {
        fn token_bytes(ids: &[u32]) -> Cow<'static, [u8]> {
            Cow::Owned(ids.iter().flat_map(|id| id.to_le_bytes()).collect())
        }
        match self {
            Input::Text(text) => vec![Cow::Borrowed(text.as_bytes())],
            Input::Texts(texts) => texts.iter().map(|t| Cow::Borrowed(t.as_bytes())).collect(),
            Input::Tokens(ids) => vec![token_bytes(ids)],
            Input::TokenLists(lists) => lists.iter().map(|ids| token_bytes(ids)).collect(),
        }
    }
}

/// The token accounting of an answer.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: u32, cached_tokens: u32, completion_tokens: u32) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// Which generation endpoint answers; decides the response shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

/// One answer's identity, repeated in every chunk of a stream.
#[derive(Debug)]
pub struct AnswerMeta {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub finish_reason: FinishReason,
}

/// Every generation body is this envelope; only the choices differ.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [Choice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Choice<'a> {
    Message {
        index: u32,
        message: Message<'a>,
        finish_reason: &'static str,
    },
    Delta {
        index: u32,
        delta: Delta<'a>,
        finish_reason: Option<&'static str>,
    },
    Text {
        index: u32,
        text: &'a str,
        logprobs: Option<()>,
        finish_reason: Option<&'static str>,
    },
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    content: &'a str,
}

/// Why an answer ended: the sim always generates exactly the requested length, and says
/// `content_filter` instead when `--content-filter-rate` drew the answer as filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Length,
    ContentFilter,
}

impl FinishReason {
    fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

impl AnswerMeta {
    fn envelope<'a>(
        &'a self,
        object: &'static str,
        choices: &'a [Choice<'a>],
        usage: Option<Usage>,
    ) -> Envelope<'a> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            choices,
            usage,
        }
    }

    /// The non-streaming answer body.
    pub fn answer(&self, text: &str, usage: Usage) -> Vec<u8> {
        let (object, choice) = match self.endpoint {
            Endpoint::Chat => (
                "chat.completion",
                Choice::Message {
                    index: 0,
                    message: Message {
                        role: "assistant",
                        content: text,
                    },
                    finish_reason: self.finish_reason.as_str(),
                },
            ),
            Endpoint::Completion => (
                "text_completion",
                text_choice(text, Some(self.finish_reason.as_str())),
            ),
        };
        to_json(&self.envelope(object, &[choice], Some(usage)))
    }

    /// The SSE event carrying one token; the first chat chunk also names the
    /// role, the last carries the finish reason.
    pub fn token_event(&self, token: &str, first: bool, last: bool) -> Bytes {
        let finish_reason = last.then_some(self.finish_reason.as_str());
        let choice = match self.endpoint {
            Endpoint::Chat => Choice::Delta {
                index: 0,
                delta: Delta {
                    role: first.then_some("assistant"),
                    content: token,
                },
                finish_reason,
            },
            Endpoint::Completion => text_choice(token, finish_reason),
        };
        sse_event(&self.envelope(self.chunk_object(), &[choice], None))
    }

    /// The final SSE event with `stream_options.include_usage`: no choices,
    /// only usage.
    pub fn usage_event(&self, usage: Usage) -> Bytes {
        sse_event(&self.envelope(self.chunk_object(), &[], Some(usage)))
    }

    fn chunk_object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        }
    }
}

fn text_choice<'a>(text: &'a str, finish_reason: Option<&'static str>) -> Choice<'a> {
    Choice::Text {
        index: 0,
        text,
        logprobs: None,
        finish_reason,
    }
}

/// The stream's terminator.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// `data: <json>\n\n`, serialized straight into one buffer.
pub fn sse_event(value: &impl Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value).expect("sim response types always serialize");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

pub fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("sim response types always serialize")
}

/// `{"error": {...}}`, the body of every error answer and of a mid-stream
/// error event.
#[derive(Serialize)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorBody<'a>,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub code: &'a str,
}

/// `GET /v1/models`.
pub fn model_list(models: &[String], created: u64) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Model<'a>>,
    }
    #[derive(Serialize)]
    struct Model<'a> {
        id: &'a str,
        object: &'static str,
        created: u64,
        owned_by: &'static str,
    }
    to_json(&List {
        object: "list",
        data: models
            .iter()
            .map(|id| Model {
                id,
                object: "model",
                created,
                owned_by: "switchyard-sim",
            })
            .collect(),
    })
}

/// `POST /v1/embeddings` answer.
pub fn embedding_list(model: &str, vectors: &[Vec<f32>], prompt_tokens: u32) -> Vec<u8> {
    #[derive(Serialize)]
    struct List<'a> {
        object: &'static str,
        data: Vec<Embedding<'a>>,
        model: &'a str,
        usage: EmbeddingUsage,
    }
    #[derive(Serialize)]
    struct Embedding<'a> {
        object: &'static str,
        index: usize,
        embedding: &'a [f32],
    }
    #[derive(Serialize)]
    struct EmbeddingUsage {
        prompt_tokens: u32,
        total_tokens: u32,
    }
    to_json(&List {
        object: "list",
        data: vectors
            .iter()
            .enumerate()
            .map(|(index, embedding)| Embedding {
                object: "embedding",
                index,
                embedding,
            })
            .collect(),
        model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn meta(endpoint: Endpoint) -> AnswerMeta {
        AnswerMeta {
            endpoint,
            id: "x-1".into(),
            created: 7,
            model: "m".into(),
            finish_reason: FinishReason::Length,
        }
    }

    fn event_json(event: &[u8]) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        let payload = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(payload).unwrap()
    }

    #[test]
    fn chat_prompt_joins_roles_and_text_parts() {
        let request: ChatRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
                {"role": "assistant", "content": null}
            ],
            "max_tokens": 5, "max_completion_tokens": 3,
            "stream": true, "stream_options": {"include_usage": true}
        }))
        .unwrap();
        let generation = Generation::from(request);
        assert_eq!(
            generation.prompt,
            b"system\nbe brief\nuser\nhi\nassistant\n\n"
        );
        assert_eq!(generation.max_tokens, Some(3), "max_completion_tokens wins");
        assert!(generation.stream && generation.include_usage);
    }

    #[test]
    fn completion_prompt_forms() {
        let tokens: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": [1, 2, 3]})).unwrap();
        assert_eq!(
            Generation::from(tokens).prompt.len(),
            12,
            "one 4-byte token per id"
        );
        let texts: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": ["ab", "cd"]})).unwrap();
        assert_eq!(Generation::from(texts).prompt, b"abcd");
    }

    #[test]
    fn chat_chunks_have_role_first_and_finish_reason_last() {
        let m = meta(Endpoint::Chat);
        let first = event_json(&m.token_event(" the", true, false));
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(
            first["choices"][0]["delta"],
            json!({"role": "assistant", "content": " the"})
        );
        assert_eq!(first["choices"][0]["finish_reason"], Value::Null);
        let last = event_json(&m.token_event(" end", false, true));
        assert_eq!(last["choices"][0]["delta"], json!({"content": " end"}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert!(last.get("usage").is_none());
    }

    #[test]
    fn content_filtered_answers_say_so_plain_and_streamed() {
        let chat = AnswerMeta {
            finish_reason: FinishReason::ContentFilter,
            ..meta(Endpoint::Chat)
        };
        let last = event_json(&chat.token_event(" end", false, true));
        assert_eq!(last["choices"][0]["finish_reason"], "content_filter");
        let middle = event_json(&chat.token_event(" mid", false, false));
        assert_eq!(middle["choices"][0]["finish_reason"], Value::Null);
        let plain: Value = serde_json::from_slice(&chat.answer("hi", Usage::new(1, 0, 1))).unwrap();
        assert_eq!(plain["choices"][0]["finish_reason"], "content_filter");
        let text = AnswerMeta {
            finish_reason: FinishReason::ContentFilter,
            ..meta(Endpoint::Completion)
        };
        let plain: Value = serde_json::from_slice(&text.answer("hi", Usage::new(1, 0, 1))).unwrap();
        assert_eq!(plain["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn usage_event_has_empty_choices() {
        let usage = event_json(&meta(Endpoint::Completion).usage_event(Usage::new(10, 4, 2)));
        assert_eq!(usage["object"], "text_completion");
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                   "prompt_tokens_details": {"cached_tokens": 4}})
        );
    }

    #[test]
    fn answers_have_openai_shapes() {
        let chat: Value =
            serde_json::from_slice(&meta(Endpoint::Chat).answer("hi", Usage::new(1, 0, 1)))
                .unwrap();
        assert_eq!(chat["object"], "chat.completion");
        assert_eq!(
            chat["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        let text: Value =
            serde_json::from_slice(&meta(Endpoint::Completion).answer("hi", Usage::new(1, 0, 1)))
                .unwrap();
        assert_eq!(text["choices"][0]["text"], "hi");
        assert_eq!(text["choices"][0]["logprobs"], Value::Null);
    }
}
