//! The stream step: retrieval and prompt ([`Answerer::prepare`]), then the model's chunks into
//! the answer's log, until the model ends, fails or the log is cancelled.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use protocol::chat::{FinishReason, Source, Usage};
use protocol::error::ErrorCode;

use super::{Accepted, Prepared};
use crate::chat::log::{AnswerLog, LogEvent};
use crate::grounding::{AnswerError, AnswerRequest, Answerer};
use crate::llm::Chunk;
use crate::rag::QuestionReading;

/// What the stream produced, however it ended.
pub(super) struct Streamed {
    pub(super) finish_reason: FinishReason,
    /// The answer's text so far (all of it unless it was cancelled or failed).
    pub(super) text: String,
    pub(super) sources: Vec<Source>,
    /// As the model reported it at its end (zero if it did not get there).
    pub(super) usage: Usage,
    /// From the question's arrival to the first non-empty delta.
    pub(super) first_token: Option<Duration>,
    /// From the question's arrival to the end of the stream.
    pub(super) latency: Duration,
    /// Why the answer failed, if it did; already in the log as `Failed`.
    pub(super) failure: Option<(ErrorCode, String)>,
    /// What the retrieval learnt about the question, if it ran.
    pub(super) reading: Option<QuestionReading>,
}

/// Prepares the answer to `accepted` (unless `prepared` holds it already) and streams it into
/// `log`. A cancel of the log stops either part.
pub(super) async fn run(
    answerer: &Answerer,
    accepted: &Accepted,
    prepared: Prepared,
    log: &AnswerLog,
) -> Streamed {
    let request = AnswerRequest {
        question: accepted.question.clone(),
        history: accepted.history.clone(),
    };
    let mut streamed = Streamed {
        finish_reason: FinishReason::Stop,
        text: String::new(),
        sources: Vec::new(),
        usage: Usage::default(),
        first_token: None,
        latency: Duration::ZERO,
        failure: None,
        reading: None,
    };

    let prepared = match prepared {
        Some(prepared) => Some(prepared),
        None => tokio::select! {
            // A cancel that came first (even during an early model call) wins.
            biased;
            () = log.cancelled() => None,
            prepared = answerer.prepare(request) => Some(prepared),
        },
    };
    streamed.finish_reason = match prepared {
        None => FinishReason::Cancelled,
        Some(Err(e)) => {
            streamed.failure = Some((e.code, e.message));
            FinishReason::Error
        }
        Some(Ok(prepared)) => {
            streamed.sources = prepared.sources;
            streamed.reading = Some(prepared.reading);
            log.push(LogEvent::Sources {
                conversation_id: accepted.conversation_id,
                sources: streamed.sources.clone(),
            });
            drain(prepared.stream, accepted.asked_at, log, &mut streamed).await
        }
    };
    streamed.latency = accepted.asked_at.elapsed();

    if let Some((code, message)) = &streamed.failure {
        tracing::warn!(%code, "answer failed");
        log.push(LogEvent::Failed {
            code: *code,
            message: message.clone(),
        });
    }
    streamed
}

/// Copies the model's deltas into `log` (and `streamed`) until the model ends, fails or the log
/// is cancelled. The stream is dropped on return, which aborts the upstream request (no more
/// tokens are paid for).
async fn drain(
    mut stream: BoxStream<'static, Result<Chunk, AnswerError>>,
    asked_at: Instant,
    log: &AnswerLog,
    streamed: &mut Streamed,
) -> FinishReason {
    let mut seq = 0u64;
    loop {
        let item = tokio::select! {
            // A cancel wins over a chunk that is ready at the same moment.
            biased;
            () = log.cancelled() => return FinishReason::Cancelled,
            item = stream.next() => item,
        };
        match item {
            Some(Ok(Chunk::Delta(delta))) => {
                if delta.is_empty() {
                    continue;
                }
                streamed
                    .first_token
                    .get_or_insert_with(|| asked_at.elapsed());
                streamed.text.push_str(&delta);
                log.push(LogEvent::Delta { seq, text: delta });
                seq += 1;
            }
            Some(Ok(Chunk::Finished { usage })) => {
                streamed.usage = usage;
                return FinishReason::Stop;
            }
            Some(Err(e)) => {
                streamed.failure = Some((e.code, e.message));
                return FinishReason::Error;
            }
            None => return FinishReason::Stop,
        }
    }
}
