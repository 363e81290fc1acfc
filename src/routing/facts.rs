//! `RequestFacts`: what every later stage needs to know about a request, parsed once from the
//! body. Only the fields below are looked at; everything else is passed upstream untouched.

use std::borrow::Cow;

use serde::Deserialize;

use super::prefix::{model_seed, BlockHasher, BlockShape};

/// The OpenAI endpoints the gateway routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The endpoint a `POST` to `path` addresses, if it is one the gateway routes.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestFacts {
    pub endpoint: Endpoint,
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage`: the backend appends a usage chunk before `[DONE]`.
    pub include_usage: bool,
    /// `max_tokens`, or `max_completion_tokens` when only that is given.
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub user: Option<String>,
    /// Rough prompt size in tokens: text bytes / 4 rounded up, or the count of token ids when
    /// the prompt is given as ids. Good enough for routing and budgeting, not for billing.
    pub prompt_tokens_estimate: u64,
    /// Number of chat messages (0 for completions and embeddings).
    pub message_count: usize,
    /// The prompt's prefix block hashes (see [`super::prefix`]), computed in the same parse when
    /// the route's balance needs them; empty otherwise, and for embeddings.
    pub prefix_blocks: Vec<u64>,
    /// The request offers tools (a non-empty `tools` or legacy `functions` list).
    pub tools: bool,
    /// `response_format` asks for JSON (`json_object` or `json_schema`).
    pub json_mode: bool,
}

/// Why a body could not be turned into [`RequestFacts`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("the request body is not valid JSON: {0}")]
    Malformed(String),
    #[error("the request body must include a non-empty `model` string")]
    MissingModel,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow)]
    prompt: Option<PromptField<'a>>,
    #[serde(borrow)]
    input: Option<PromptField<'a>>,
    tools: Option<Vec<serde::de::IgnoredAny>>,
    functions: Option<Vec<serde::de::IgnoredAny>>,
    #[serde(borrow)]
    response_format: Option<ResponseFormat<'a>>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<Content<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// `prompt` (completions) and `input` (embeddings): text, texts, token ids or lists of ids.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptField<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Texts(#[serde(borrow)] Vec<Cow<'a, str>>),
    Tokens(Vec<u64>),
    TokenLists(Vec<Vec<u64>>),
}

fn tokens_of_text(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

impl PromptField<'_> {
    fn tokens(&self) -> u64 {
        match self {
            PromptField::Text(t) => tokens_of_text(t.len()),
            PromptField::Texts(ts) => ts.iter().map(|t| tokens_of_text(t.len())).sum(),
            PromptField::Tokens(ids) => ids.len() as u64,
            PromptField::TokenLists(lists) => lists.iter().map(|l| l.len() as u64).sum(),
        }
    }
}

impl PromptField<'_> {
    fn render(&self, hasher: &mut BlockHasher) {
        match self {
            PromptField::Text(t) => hasher.feed(t.as_bytes()),
            PromptField::Texts(ts) => ts.iter().for_each(|t| hasher.feed(t.as_bytes())),
            // The sim's tokenizer reads ids as 32-bit; larger ids do not occur in vocabularies.
            PromptField::Tokens(ids) => hasher.feed_token_ids(ids.iter().map(|&id| id as u32)),
            PromptField::TokenLists(lists) => lists
                .iter()
                .for_each(|l| hasher.feed_token_ids(l.iter().map(|&id| id as u32))),
        }
    }
}

fn render_messages(messages: &[Message<'_>], hasher: &mut BlockHasher) {
    for m in messages {
        let role = m.role.as_deref().unwrap_or("").as_bytes();
        match &m.content {
            Some(Content::Text(t)) => hasher.feed_message(role, [t.as_bytes()]),
            Some(Content::Parts(parts)) => hasher.feed_message(
                role,
                parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .map(str::as_bytes),
            ),
            None => hasher.feed_message(role, []),
        }
    }
}

impl RequestFacts {
    /// Parses the body of a request to `endpoint`, without prefix hashes.
    pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<RequestFacts, FactsError> {
        Self::parse_with_prefix(endpoint, body, |_| None)
    }

    /// Parses the body of a request to `endpoint` in one pass; once the model is known,
    /// `shape_for(model)` says whether (and how) to hash the prompt's prefix blocks — the
    /// gateway answers from the route serving the model, so routes that do not balance by prefix
    /// pay nothing for it.
    pub fn parse_with_prefix(
        endpoint: Endpoint,
        body: &[u8],
        shape_for: impl FnOnce(&str) -> Option<BlockShape>,
    ) -> Result<RequestFacts, FactsError> {
        let wire: Wire<'_> =
            serde_json::from_slice(body).map_err(|e| FactsError::Malformed(e.to_string()))?;
        let model = match wire.model {
            Some(m) if !m.is_empty() => m.into_owned(),
            _ => return Err(FactsError::MissingModel),
        };
        let message_count = wire.messages.as_ref().map_or(0, Vec::len);
        let message_tokens: u64 = wire
            .messages
            .iter()
            .flatten()
            .filter_map(|m| m.content.as_ref())
            .map(|c| match c {
                Content::Text(t) => tokens_of_text(t.len()),
                Content::Parts(parts) => parts
                    .iter()
                    .filter_map(|p| p.text.as_ref())
                    .map(|t| tokens_of_text(t.len()))
                    .sum(),
            })
            .sum();
        let prompt_tokens_estimate = message_tokens
            + wire.prompt.as_ref().map_or(0, PromptField::tokens)
            + wire.input.as_ref().map_or(0, PromptField::tokens);
        let prefix_blocks = match shape_for(&model) {
            Some(shape) if endpoint != Endpoint::Embeddings => {
                let mut hasher = BlockHasher::new(model_seed(&model), shape);
                if let Some(messages) = &wire.messages {
                    render_messages(messages, &mut hasher);
                }
                if let Some(prompt) = &wire.prompt {
                    prompt.render(&mut hasher);
                }
                hasher.finish()
            }
            _ => Vec::new(),
        };
        Ok(RequestFacts {
            endpoint,
            model,
            stream: wire.stream.unwrap_or(false),
            include_usage: wire
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            max_tokens: wire.max_tokens.or(wire.max_completion_tokens),
            temperature: wire.temperature,
            user: wire.user.map(Cow::into_owned),
            prompt_tokens_estimate,
            message_count,
            prefix_blocks,
            tools: wire.tools.is_some_and(|t| !t.is_empty())
                || wire.functions.is_some_and(|f| !f.is_empty()),
            json_mode: wire
                .response_format
                .and_then(|f| f.kind)
                .is_some_and(|k| k == "json_object" || k == "json_schema"),
        })
    }
}

/// Returns `body` with its top-level `model` replaced, every other member kept byte for byte
/// and in order. Used when a backend serves the model under another name.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Vec<u8>, FactsError> {
    let mut members: indexmap::IndexMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(body).map_err(|e| FactsError::Malformed(e.to_string()))?;
    let value =
        serde_json::value::to_raw_value(model).map_err(|e| FactsError::Malformed(e.to_string()))?;
    members.insert("model".to_owned(), value);
    serde_json::to_vec(&members).map_err(|e| FactsError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_facts() {
        let body = br#"{"model":"llama","stream":true,"stream_options":{"include_usage":true},
            "max_tokens":32,"temperature":0.2,"user":"u-1","extra":{"x":[1,2]},
            "messages":[{"role":"system","content":"You are terse."},
                        {"role":"user","content":[{"type":"text","text":"hello there"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let f = RequestFacts::parse(Endpoint::ChatCompletions, body).unwrap();
        assert_eq!(f.model, "llama");
        assert!(f.stream && f.include_usage);
        assert_eq!(f.max_tokens, Some(32));
        assert_eq!(f.temperature, Some(0.2));
        assert_eq!(f.user.as_deref(), Some("u-1"));
        assert_eq!(f.message_count, 2);
        // "You are terse." = 14 bytes → 4, "hello there" = 11 bytes → 3
        assert_eq!(f.prompt_tokens_estimate, 7);
        assert!(!f.tools && !f.json_mode);
    }

    #[test]
    fn tools_and_json_mode() {
        let f = RequestFacts::parse(
            Endpoint::ChatCompletions,
            br#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}],
                "response_format":{"type":"json_schema","json_schema":{"name":"x"}}}"#,
        )
        .unwrap();
        assert!(f.tools && f.json_mode);
        let f = RequestFacts::parse(
            Endpoint::ChatCompletions,
            br#"{"model":"m","tools":[],"response_format":{"type":"text"}}"#,
        )
        .unwrap();
        assert!(!f.tools && !f.json_mode);
    }

    #[test]
    fn completion_and_embedding_prompts() {
        let f = RequestFacts::parse(
            Endpoint::Completions,
            br#"{"model":"m","prompt":["abcd","abcdefgh"],"max_completion_tokens":5}"#,
        )
        .unwrap();
        assert_eq!((f.prompt_tokens_estimate, f.max_tokens), (3, Some(5)));
        let f = RequestFacts::parse(
            Endpoint::Embeddings,
            br#"{"model":"m","input":[[1,2,3],[4]]}"#,
        )
        .unwrap();
        assert_eq!(f.prompt_tokens_estimate, 4);
        assert!(!f.stream);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            RequestFacts::parse(Endpoint::ChatCompletions, b"{\"model\": "),
            Err(FactsError::Malformed(_))
        ));
        assert!(matches!(
            RequestFacts::parse(Endpoint::ChatCompletions, b"[1,2]"),
            Err(FactsError::Malformed(_))
        ));
        assert_eq!(
            RequestFacts::parse(Endpoint::ChatCompletions, br#"{"messages":[]}"#),
            Err(FactsError::MissingModel)
        );
        assert_eq!(
            RequestFacts::parse(Endpoint::ChatCompletions, br#"{"model":""}"#),
            Err(FactsError::MissingModel)
        );
        assert!(matches!(
            RequestFacts::parse(Endpoint::ChatCompletions, br#"{"model":7}"#),
            Err(FactsError::Malformed(_))
        ));
    }

    const SHAPE: BlockShape = BlockShape {
        block_tokens: 4,
        max_blocks: 64,
    };

    #[test]
    fn prefix_blocks_match_the_rendered_prompt() {
        let body = br#"{"model":"llama","messages":[
            {"role":"system","content":"You are a terse assistant for the docs."},
            {"role":"user","content":[{"type":"text","text":"hello "},{"type":"text","text":"there"}]}]}"#;
        let f = RequestFacts::parse_with_prefix(Endpoint::ChatCompletions, body, |_| Some(SHAPE))
            .unwrap();
        let rendered = b"system\nYou are a terse assistant for the docs.\nuser\nhello there\n";
        assert_eq!(
            f.prefix_blocks,
            super::super::prefix::block_hashes(model_seed("llama"), rendered, SHAPE)
        );
        assert!(!f.prefix_blocks.is_empty());
    }

    #[test]
    fn prefix_blocks_only_when_asked_and_never_for_embeddings() {
        let body =
            br#"{"model":"m","prompt":"a prompt long enough to fill some blocks of four tokens"}"#;
        let mut asked = None;
        let f = RequestFacts::parse_with_prefix(Endpoint::Completions, body, |m| {
            asked = Some(m.to_owned());
            None
        })
        .unwrap();
        assert!(f.prefix_blocks.is_empty());
        assert_eq!(asked.as_deref(), Some("m"), "the shape is chosen by model");
        let f =
            RequestFacts::parse_with_prefix(Endpoint::Completions, body, |_| Some(SHAPE)).unwrap();
        assert_eq!(f.prefix_blocks.len(), 3);
        let e =
            br#"{"model":"m","input":"a prompt long enough to fill some blocks of four tokens"}"#;
        let f = RequestFacts::parse_with_prefix(Endpoint::Embeddings, e, |_| Some(SHAPE)).unwrap();
        assert!(f.prefix_blocks.is_empty());
    }

    #[test]
    fn rewrite_keeps_other_members_verbatim() {
        let body = br#"{"stream":true,"model":"public","messages":[{"role":"user","content":"h\u00e9  llo"}],"n":1.50}"#;
        let out = rewrite_model(body, "internal-v2").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream":true,"model":"internal-v2","messages":[{"role":"user","content":"h\u00e9  llo"}],"n":1.50}"#
        );
    }
}
