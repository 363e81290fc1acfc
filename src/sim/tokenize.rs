//! vLLM's tokenization endpoints, as routers in the wild call them to compute prefix hashes
//! over real token ids: `POST /tokenize`, `POST /detokenize` and
//! `POST /v1/chat/completions/render` (the chat template applied, with the prompt's
//! `token_ids`). The sim's tokenizer is four bytes per token, so a token id is simply those four
//! bytes read little-endian (the last one zero-padded), and detokenizing gives the bytes back.

use serde::{Deserialize, Serialize};

use super::model::BYTES_PER_TOKEN;
use super::openai::{ChatRequest, Generation};

/// `POST /tokenize`: a completion prompt or chat messages.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TokenizeRequest {
    Chat(ChatRequest),
    Prompt { model: String, prompt: String },
}

impl TokenizeRequest {
    /// The model asked for, and the prompt as the sim renders it.
    pub fn into_prompt(self) -> (String, Vec<u8>) {
        match self {
            TokenizeRequest::Chat(chat) => {
                let generation = Generation::from(chat);
                (generation.model, generation.prompt)
            }
            TokenizeRequest::Prompt { model, prompt } => (model, prompt.into_bytes()),
        }
    }
}

/// `POST /detokenize`.
#[derive(Debug, Deserialize)]
pub struct DetokenizeRequest {
    pub model: String,
    pub tokens: Vec<u32>,
}

/// The answer of `/tokenize`, in vLLM's shape.
#[derive(Debug, Serialize)]
pub struct Tokenized {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    pub token_strs: Option<Vec<String>>,
}

/// The answer of `/v1/chat/completions/render`: the rendered prompt and its token ids.
#[derive(Debug, Serialize)]
pub struct Rendered {
    pub model: String,
    pub prompt: String,
    pub token_ids: Vec<u32>,
}

/// Token ids of `prompt` under the sim's tokenizer.
pub fn token_ids(prompt: &[u8]) -> Vec<u32> {
    prompt
        .chunks(BYTES_PER_TOKEN)
        .map(|chunk| {
            let mut word = [0u8; BYTES_PER_TOKEN];
            word[..chunk.len()].copy_from_slice(chunk);
            u32::from_le_bytes(word)
        })
        .collect()
}

/// The text of `ids`: their bytes, the last token's zero padding dropped.
pub fn detokenize(ids: &[u32]) -> String {
    let mut bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let keep = bytes.len()
        - bytes
            .iter()
            .rev()
            .take(BYTES_PER_TOKEN - 1)
            .take_while(|&&b| b == 0)
            .count();
    bytes.truncate(keep);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::model::count_tokens;

    #[test]
    fn ids_count_like_the_tokenizer_and_round_trip() {
        for text in ["", "abc", "abcd", "hello, world", "héllo wörld!"] {
            let ids = token_ids(text.as_bytes());
            assert_eq!(ids.len() as u32, count_tokens(text.as_bytes()), "{text:?}");
            assert_eq!(detokenize(&ids), text);
        }
    }

    #[test]
    fn chat_requests_render_like_generation() {
        let request: TokenizeRequest = serde_json::from_value(serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap();
        assert_eq!(
            request.into_prompt(),
            ("m".to_owned(), b"user\nhi\n".to_vec())
        );
        let request: TokenizeRequest =
            serde_json::from_value(serde_json::json!({"model": "m", "prompt": "abcdefgh"}))
                .unwrap();
        assert_eq!(token_ids(&request.into_prompt().1).len(), 2);
    }
}
