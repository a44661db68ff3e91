//! The record step: the answer's row, written once when the answer ends, whatever the ending.
//! A database outage does not fail an answer that is complete in memory: its write is deferred,
//! the answer is reported as usual and the write retried after the `done` (see
//! [`durable`](crate::chat::durable)).

use std::time::Duration;

use protocol::chat::MessageStatus;
use protocol::error::ErrorCode;
use uuid::Uuid;

use super::Accepted;
use super::stream::Streamed;
use crate::chat::durable::{self, FirstWrite};
use crate::chat::log::{AnswerLog, LogEvent};
use crate::chat::store::{AnswerRecord, QuestionSignals};
use crate::state::AppState;

/// How the first write of an answer went, as the rest of its task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Stored,
    /// Failed in a way that may pass: retry after the `done`.
    Deferred,
    /// Failed for good: the answer ends in `error`.
    Lost,
}

/// The row of the answer `id` to `accepted`, as streamed, with the question's `signals`.
pub(super) fn answer_record<'a>(
    id: Uuid,
    accepted: &Accepted,
    streamed: &'a Streamed,
    signals: Option<&'a QuestionSignals>,
) -> AnswerRecord<'a> {
    AnswerRecord {
        id,
        conversation_id: accepted.conversation_id,
        user_id: accepted.user_id,
        reply_to: accepted.question_id,
        content: &streamed.text,
        status: MessageStatus::from(streamed.finish_reason),
        sources: &streamed.sources,
        usage: streamed.usage,
        first_token_ms: streamed.first_token.map(millis),
        latency_ms: millis(streamed.latency),
        error_code: streamed.failure.as_ref().map(|(code, _)| code.as_str()),
        signals,
    }
}

/// Writes `record` once. A write that failed for good is logged, counted as lost and reported in
/// `log` (unless the answer had failed already, which the log says).
pub(super) async fn first_write(
    state: &AppState,
    record: &AnswerRecord<'_>,
    log: &AnswerLog,
    already_failed: bool,
) -> Written {
    match durable::store_answer(state, record).await {
        FirstWrite::Stored => Written::Stored,
        FirstWrite::Deferred => Written::Deferred,
        FirstWrite::Failed(e) => {
            tracing::error!(error = ?e, "could not store an answer");
            durable::lost(record);
            if !already_failed {
                log.push(LogEvent::Failed {
                    code: ErrorCode::Internal,
                    message: "the answer could not be stored".into(),
                });
            }
            Written::Lost
        }
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
