//! Grounding, the retrieval + prompt step of answering: retrieve passages for a question, build
//! the prompt that confines the model to them, and open the model's answer stream (or refuse
//! without a model call when nothing relevant was found).
//!
//! It produces the sources and the stream of one answer and keeps nothing; the chat's answer
//! pipeline ([`crate::chat::pipeline`]) stores, logs and relays them, and [`crate::eval`] scores
//! them.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use protocol::chat::{Source, Usage};
use protocol::error::ErrorCode;

use crate::config::Config;
use crate::llm::{ChatModel, Chunk, ContextBlock, Prompt, REFUSAL, SYSTEM_INSTRUCTION, Turn};
use crate::rag::{QuestionReading, Rag, RagError, Retrieved};
use crate::upstream::{ProviderError, ProviderErrorKind};

/// A question and the earlier turns of its conversation, oldest first.
#[derive(Debug, Clone)]
pub struct AnswerRequest {
    pub question: String,
    pub history: Vec<Turn>,
}

/// Why an answer could not be produced or was cut short.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AnswerError {
    /// `provider_unavailable`, `content_blocked`, `unavailable` (index not loaded) or `internal`.
    pub code: ErrorCode,
    /// Safe to show to the user: no keys, no upstream bodies verbatim.
    pub message: String,
}

impl From<ProviderError> for AnswerError {
    fn from(e: ProviderError) -> Self {
        let code = match e.kind {
            ProviderErrorKind::Blocked => ErrorCode::ContentBlocked,
            ProviderErrorKind::Unavailable => ErrorCode::ProviderUnavailable,
            // Our request was refused (bad key, model name): the user can do nothing about it,
            // but to them it is still the provider being unavailable.
            ProviderErrorKind::Rejected => ErrorCode::ProviderUnavailable,
        };
        Self {
            code,
            message: e.message,
        }
    }
}

impl From<RagError> for AnswerError {
    fn from(e: RagError) -> Self {
        if let RagError::Internal(inner) = &e {
            tracing::error!(error = format!("{inner:#}"), "retrieval failed");
        }
        Self {
            code: e.code(),
            message: e.public_message(),
        }
    }
}

/// Sources first, then the answer as a stream. Dropping the stream aborts the upstream request.
pub struct PreparedAnswer {
    pub sources: Vec<Source>,
    pub stream: BoxStream<'static, Result<Chunk, AnswerError>>,
    /// The question's vector and nearest chunk, from its retrieval (for the gap signals).
    pub reading: QuestionReading,
}

/// Characters of a passage shown as a source snippet.
const SNIPPET_CHARS: usize = 200;

/// Retrieval + prompt + model. Cheap to clone through `Arc`.
pub struct Answerer {
    rag: Arc<Rag>,
    model: Arc<dyn ChatModel>,
    top_k: usize,
    history_turns: usize,
}

impl Answerer {
    /// `top_k` and `history_turns` come from `RAG_TOP_K` and `HISTORY_TURNS`.
    pub fn new(rag: Arc<Rag>, model: Arc<dyn ChatModel>, config: &Config) -> Self {
        Self::with_limits(rag, model, config.rag_top_k, config.history_turns)
    }

    /// The whole pipeline as configured: the knowledge base loaded through the embedding cache
    /// in `db`, and the configured answer model.
    pub async fn start(config: &Config, db: deadpool_postgres::Pool) -> anyhow::Result<Self> {
        let rag = Rag::start(config, db).await?;
        let model: Arc<dyn ChatModel> = match config.llm_provider() {
            // The offline answerer ranks sentences with the embedder the knowledge base already
            // loaded.
            crate::config::LlmProvider::Offline => Arc::new(
                crate::llm::offline::OfflineChat::with_embedder(rag.embedder()),
            ),
            _ => crate::llm::build(config)?,
        };
        tracing::info!(model = %model.describe(), "answer model ready");
        Ok(Self::new(rag, model, config))
    }

    pub fn with_limits(
        rag: Arc<Rag>,
        model: Arc<dyn ChatModel>,
        top_k: usize,
        history_turns: usize,
    ) -> Self {
        Self {
            rag,
            model,
            top_k: top_k.max(1),
            history_turns,
        }
    }

    pub fn rag(&self) -> &Arc<Rag> {
        &self.rag
    }

    /// `provider:model` of the answer model, for logs and metrics.
    pub fn model_name(&self) -> String {
        self.model.describe()
    }

    /// The passages a question would be answered from (what `prepare` puts in the prompt).
    pub async fn retrieve(&self, request: &AnswerRequest) -> Result<Vec<Retrieved>, AnswerError> {
        Ok(self.retrieve_reading(request).await?.0)
    }

    /// [`retrieve`](Self::retrieve), with what the search learnt about the question alone.
    async fn retrieve_reading(
        &self,
        request: &AnswerRequest,
    ) -> Result<(Vec<Retrieved>, QuestionReading), AnswerError> {
        let (mut passages, reading) = self
            .rag
            .retrieve_reading(&request.question, self.top_k)
            .await?;
        // A follow-up ("and for gift cards?") may mean nothing alone: read it with the
        // previous question before giving up.
        if passages.is_empty()
            && let Some(last) = request.history.last()
        {
            let combined = format!("{} {}", last.question, request.question);
            passages = self.rag.retrieve(&combined, self.top_k).await?;
        }
        Ok((passages, reading))
    }

    /// Retrieves context (off the async workers) and opens the model stream. Provider retries
    /// happen inside, before the first delta; an error here means no delta was produced.
    pub async fn prepare(&self, request: AnswerRequest) -> Result<PreparedAnswer, AnswerError> {
        let (passages, reading) = self.retrieve_reading(&request).await?;
        if passages.is_empty() {
            // Nothing relevant: refuse without paying for a model call.
            metrics::counter!("answers_refused_total").increment(1);
            return Ok(PreparedAnswer {
                sources: Vec::new(),
                stream: refusal_stream(),
                reading,
            });
        }
        let sources = passages.iter().map(source_of).collect();
        let skip = request.history.len().saturating_sub(self.history_turns);
        let prompt = Prompt {
            system: SYSTEM_INSTRUCTION.to_owned(),
            history: request.history.into_iter().skip(skip).collect(),
            context: passages
                .into_iter()
                .map(|p| ContextBlock {
                    document: p.document,
                    heading: p.heading,
                    text: p.text,
                })
                .collect(),
            question: request.question,
        };
        let called = std::time::Instant::now();
        let mut upstream = self.model.stream(&prompt).await?;
        // The model implementations retry before the first delta; an error as the very first
        // item still means nothing was produced, so report it here, as the interface promises.
        let first = match upstream.next().await {
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(chunk)) => Some(Ok(chunk)),
            None => None,
        };
        crate::telemetry::ask_stage("model_first_chunk", called.elapsed());
        let stream = stream::iter(first)
            .chain(upstream.map(|item| item.map_err(AnswerError::from)))
            .boxed();
        Ok(PreparedAnswer {
            sources,
            stream,
            reading,
        })
    }
}

fn source_of(p: &Retrieved) -> Source {
    let snippet: String = p.text.chars().take(SNIPPET_CHARS).collect();
    Source {
        document: p.document.clone(),
        chunk: p.chunk,
        score: p.score,
        snippet,
        heading: Some(p.heading.clone()),
    }
}

/// The refusal, streamed like any answer.
fn refusal_stream() -> BoxStream<'static, Result<Chunk, AnswerError>> {
    let words: Vec<Result<Chunk, AnswerError>> = REFUSAL
        .split_inclusive(' ')
        .map(|w| Ok(Chunk::Delta(w.to_owned())))
        .chain(std::iter::once(Ok(Chunk::Finished {
            usage: Usage::default(),
        })))
        .collect();
    stream::iter(words).boxed()
}

/// Collects a prepared answer's text (for the non-streaming REST path, eval and tests).
pub async fn collect_text(
    stream: BoxStream<'static, Result<Chunk, AnswerError>>,
) -> Result<(String, Usage), AnswerError> {
    let mut text = String::new();
    let mut usage = Usage::default();
    let mut stream = stream;
    while let Some(item) = stream.next().await {
        match item? {
            Chunk::Delta(d) => text.push_str(&d),
            Chunk::Finished { usage: u } => usage = u,
        }
    }
    Ok((text, usage))
}

pub type SharedAnswerer = Arc<Answerer>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refusal_stream_spells_the_refusal() {
        let (text, usage) = collect_text(refusal_stream()).await.unwrap();
        assert_eq!(text, REFUSAL);
        assert_eq!(usage, Usage::default());
    }

    #[test]
    fn provider_errors_map_to_codes() {
        let e: AnswerError = ProviderError::blocked("no").into();
        assert_eq!(e.code, ErrorCode::ContentBlocked);
        let e: AnswerError = ProviderError::unavailable("busy").into();
        assert_eq!(e.code, ErrorCode::ProviderUnavailable);
        assert_eq!(e.message, "busy");
    }
}
