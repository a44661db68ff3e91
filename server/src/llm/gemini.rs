//! Gemini (Generative Language API v1beta): `models/{model}:streamGenerateContent?alt=sse`.

use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use protocol::chat::Usage;
use serde::{Deserialize, Serialize};

use super::stream::{self, Chunks, StreamEvent};
use super::{ChatModel, ChatStream, Prompt};
use crate::config::Secret;
use crate::upstream::sse::{self, SseData};
use crate::upstream::{ProviderError, http};

const PROVIDER: &str = "gemini";
/// Low temperature: answers restate the context rather than paraphrase creatively.
const TEMPERATURE: f32 = 0.2;

pub struct GeminiChatOptions {
    /// API root without `/v1beta`.
    pub base_url: String,
    pub api_key: Secret,
    pub model: String,
    pub thinking_budget: i32,
    pub max_output_tokens: u32,
    pub first_token_timeout: Duration,
}

pub struct GeminiChat {
    client: reqwest::Client,
    options: GeminiChatOptions,
    /// The model's `streamGenerateContent` address, parsed once.
    url: reqwest::Url,
}

/// A `generateContent` request, serialised straight from the prompt's text (no JSON tree of
/// copies in between).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    contents: Vec<RequestContent<'a>>,
    system_instruction: RequestContent<'a>,
    generation_config: GenerationConfig,
}

#[derive(Serialize)]
struct RequestContent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: [TextPart<'a>; 1],
}

impl<'a> RequestContent<'a> {
    fn new(role: Option<&'static str>, text: &'a str) -> Self {
        Self {
            role,
            parts: [TextPart { text }],
        }
    }
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    temperature: f32,
    max_output_tokens: u32,
    thinking_config: ThinkingConfig,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: i32,
}

impl GeminiChat {
    /// Fails if the base URL and model do not make a valid address.
    pub fn new(client: reqwest::Client, options: GeminiChatOptions) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&format!(
            "{}/v1beta/models/{}:streamGenerateContent?alt=sse",
            options.base_url.trim_end_matches('/'),
            options.model
        ))
        .context("the Gemini base URL and model do not make a valid address")?;
        Ok(Self {
            client,
            options,
            url,
        })
    }

    /// The request body: earlier turns as `user`/`model` contents, the grounding instruction as
    /// `systemInstruction`, the context and question (`user_message`, see
    /// [`Prompt::user_message`]) as the last user turn.
    fn body<'a>(&self, prompt: &'a Prompt, user_message: &'a str) -> GenerateRequest<'a> {
        let mut contents = Vec::with_capacity(prompt.history.len() * 2 + 1);
        for turn in &prompt.history {
            contents.push(RequestContent::new(Some("user"), &turn.question));
            contents.push(RequestContent::new(Some("model"), &turn.answer));
        }
        contents.push(RequestContent::new(Some("user"), user_message));
        GenerateRequest {
            contents,
            system_instruction: RequestContent::new(None, &prompt.system),
            generation_config: GenerationConfig {
                temperature: TEMPERATURE,
                max_output_tokens: self.options.max_output_tokens,
                thinking_config: ThinkingConfig {
                    thinking_budget: self.options.thinking_budget,
                },
            },
        }
    }

    async fn open_once(&self, body: &GenerateRequest<'_>) -> Result<ChatStream, ProviderError> {
        // Retries happen one level up, in `open_with_retry`, so that a stream that breaks before
        // its first delta is retried too.
        let request = self
            .client
            .post(self.url.clone())
            .header("x-goog-api-key", self.options.api_key.expose())
            .json(body);
        let response = http::send_once(PROVIDER, request).await?;
        Ok(parse_stream(sse::data(PROVIDER, response)))
    }
}

impl ChatModel for GeminiChat {
    fn describe(&self) -> String {
        format!("gemini:{}", self.options.model)
    }

    fn stream<'a>(
        &'a self,
        prompt: &'a Prompt,
    ) -> BoxFuture<'a, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let user_message = prompt.user_message();
            let body = self.body(prompt, &user_message);
            stream::open_with_retry(self.options.first_token_timeout, || self.open_once(&body))
                .await
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    prompt_feedback: Option<PromptFeedback>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
    /// Reasoning ("thought") parts are not answer text.
    #[serde(default)]
    thought: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    #[serde(default)]
    block_reason: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    total_token_count: u32,
}

/// Turns the SSE `data` payloads into answer chunks. The stream ends with `Finished` only when
/// a candidate carried a normal `finishReason`; a connection that closes before that is an error.
fn parse_stream(events: SseData) -> ChatStream {
    stream::chat_stream::<StreamResponse>(events)
}

impl StreamEvent for StreamResponse {
    const PROVIDER: &'static str = PROVIDER;

    fn read(self, out: &mut Chunks) {
        if let Some(u) = self.usage_metadata {
            out.usage(Usage {
                prompt_tokens: u.prompt_token_count,
                completion_tokens: u.candidates_token_count,
                total_tokens: u.total_token_count,
            });
        }
        // One candidate is asked for; only the first is read.
        let Some(candidate) = self.candidates.into_iter().next() else {
            if let Some(reason) = self.prompt_feedback.and_then(|f| f.block_reason) {
                tracing::info!(provider = PROVIDER, reason = %reason, "prompt blocked");
                out.fail(ProviderError::blocked(
                    "the question was blocked by the answer service's safety filters",
                ));
            }
            return;
        };
        for part in candidate.content.into_iter().flat_map(|c| c.parts) {
            if let Some(text) = part.text
                && !part.thought
            {
                out.delta(text);
            }
        }
        match candidate.finish_reason.as_deref() {
            None | Some("") | Some("FINISH_REASON_UNSPECIFIED") => {}
            Some("STOP") => out.finish(),
            Some("MAX_TOKENS") => {
                tracing::info!(provider = PROVIDER, "answer hit the output token limit");
                out.finish();
            }
            Some(reason) => {
                tracing::info!(
                    provider = PROVIDER,
                    reason,
                    "answer stopped by the provider"
                );
                out.fail(ProviderError::blocked(
                    "the answer was stopped by the answer service's safety filters",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::stream::{self, StreamExt};

    use super::*;
    use crate::llm::Chunk;

    async fn run(events: Vec<&str>) -> Vec<Result<Chunk, ProviderError>> {
        let events: Vec<Result<String, ProviderError>> =
            events.into_iter().map(|e| Ok(e.to_owned())).collect();
        parse_stream(stream::iter(events).boxed()).collect().await
    }

    #[tokio::test]
    async fn thoughts_are_skipped_and_usage_is_the_last() {
        let out = run(vec![
            r#"{"candidates":[{"content":{"parts":[{"text":"plan","thought":true},{"text":"Hel"}],"role":"model"}}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1,"totalTokenCount":6}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"lo"}],"role":"model"},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":2,"totalTokenCount":7}}"#,
        ])
        .await;
        let out: Vec<Chunk> = out.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            out,
            vec![
                Chunk::Delta("Hel".into()),
                Chunk::Delta("lo".into()),
                Chunk::Finished {
                    usage: Usage {
                        prompt_tokens: 5,
                        completion_tokens: 2,
                        total_tokens: 7
                    }
                }
            ]
        );
    }

    #[tokio::test]
    async fn blocked_prompt_is_an_error() {
        let out = run(vec![r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#]).await;
        assert_eq!(out.len(), 1);
        let err = out[0].as_ref().unwrap_err();
        assert_eq!(err.kind, crate::upstream::ProviderErrorKind::Blocked);
    }

    #[tokio::test]
    async fn missing_finish_reason_is_a_cut_off() {
        let out = run(vec![
            r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}]}}]}"#,
        ])
        .await;
        assert!(matches!(out[0], Ok(Chunk::Delta(_))));
        assert!(out[1].is_err());
    }
}
