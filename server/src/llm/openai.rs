//! OpenAI-compatible chat completions (Ollama, vLLM, llama.cpp server): `/v1/chat/completions`
//! with `stream: true`.

use std::time::Duration;

use futures::future::BoxFuture;
use protocol::chat::Usage;
use serde::Deserialize;
use serde_json::json;

use super::stream::{self, Chunks, StreamEvent};
use super::{ChatModel, ChatStream, Prompt};
use crate::config::Secret;
use crate::upstream::sse::{self, SseData};
use crate::upstream::{ProviderError, http};

const PROVIDER: &str = "openai";
/// Low temperature: answers restate the context rather than paraphrase creatively.
const TEMPERATURE: f32 = 0.2;

pub struct OpenAiChatOptions {
    /// Server root without `/v1`.
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub model: String,
    pub max_output_tokens: u32,
    pub first_token_timeout: Duration,
}

pub struct OpenAiChat {
    client: reqwest::Client,
    options: OpenAiChatOptions,
}

impl OpenAiChat {
    pub fn new(client: reqwest::Client, options: OpenAiChatOptions) -> Self {
        Self { client, options }
    }

    /// The request body: system instruction, earlier turns, then context and question.
    pub fn body(&self, prompt: &Prompt) -> serde_json::Value {
        let mut messages = vec![json!({"role": "system", "content": prompt.system})];
        for turn in &prompt.history {
            messages.push(json!({"role": "user", "content": turn.question}));
            messages.push(json!({"role": "assistant", "content": turn.answer}));
        }
        messages.push(json!({"role": "user", "content": prompt.user_message()}));
        json!({
            "model": self.options.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": TEMPERATURE,
            "max_tokens": self.options.max_output_tokens,
        })
    }

    async fn open_once(&self, body: &serde_json::Value) -> Result<ChatStream, ProviderError> {
        let url = format!(
            "{}/v1/chat/completions",
            self.options.base_url.trim_end_matches('/')
        );
        let mut request = self.client.post(url).json(body);
        if let Some(key) = &self.options.api_key {
            request = request.bearer_auth(key.expose());
        }
        let response = http::send_once(PROVIDER, request).await?;
        Ok(parse_stream(sse::data(PROVIDER, response)))
    }
}

impl ChatModel for OpenAiChat {
    fn describe(&self) -> String {
        format!("openai:{}", self.options.model)
    }

    fn stream<'a>(
        &'a self,
        prompt: &'a Prompt,
    ) -> BoxFuture<'a, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let body = self.body(prompt);
            stream::open_with_retry(self.options.first_token_timeout, || self.open_once(&body))
                .await
        })
    }
}

#[derive(Debug, Deserialize)]
struct StreamChunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ApiUsage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// Only `content` is answer text; `reasoning` / `reasoning_content` are ignored by not being
/// read at all.
#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
struct ApiUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
    #[serde(default)]
    total_tokens: u32,
}

fn parse_stream(events: SseData) -> ChatStream {
    stream::chat_stream::<StreamChunk>(events)
}

impl StreamEvent for StreamChunk {
    const PROVIDER: &'static str = PROVIDER;
    /// Ends the stream normally, with the usage seen so far.
    const END_MARKER: Option<&'static str> = Some("[DONE]");

    fn read(self, out: &mut Chunks) {
        if let Some(u) = self.usage {
            out.usage(Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.total_tokens,
            });
        }
        let Some(choice) = self.choices.into_iter().next() else {
            return;
        };
        if let Some(text) = choice.delta.and_then(|d| d.content) {
            out.delta(text);
        }
        match choice.finish_reason.as_deref() {
            None | Some("") => {}
            Some("content_filter") => out.fail(ProviderError::blocked(
                "the answer was stopped by the answer service's content filter",
            )),
            // `stop`, `length`, and anything else a compatible server invents end normally; usage
            // may still follow before `[DONE]`.
            Some(_) => out.finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::stream::{self, StreamExt};

    use super::*;
    use crate::llm::Chunk;

    #[tokio::test]
    async fn reasoning_is_skipped_and_usage_arrives_after_finish() {
        let events = vec![
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"hmm"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
            "[DONE]",
        ];
        let events: Vec<Result<String, ProviderError>> =
            events.into_iter().map(|e| Ok(e.to_owned())).collect();
        let out: Vec<Chunk> = parse_stream(stream::iter(events).boxed())
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(
            out,
            vec![
                Chunk::Delta("Hel".into()),
                Chunk::Finished {
                    usage: Usage {
                        prompt_tokens: 3,
                        completion_tokens: 1,
                        total_tokens: 4
                    }
                }
            ]
        );
    }
}
