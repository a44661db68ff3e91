//! The answer pipeline: one question in, one stored answer out, whoever asked (the socket, REST
//! or SSE). Retrieval and the prompt are the `Answerer`'s (the retrieval + prompt step); this
//! module runs the question through, in order:
//!
//! 1. `admit`: the question's length and the asks-per-minute limit (nothing stored yet);
//! 2. `accept`: the question stored, in its conversation or a new one, with the recent turns read
//!    for the prompt (or `reject`: the refusal written to the log); on the socket,
//!    `accept_and_prepare` runs a new conversation's retrieval and model call meanwhile. REST
//!    checks the question with `validate` and counts the limit in `accept`'s own statement
//!    (one round trip fewer);
//! 3. `generate`, in a task of its own (independent of whoever asked, so a disconnect does not
//!    stop it), in three steps:
//!    - `stream`: retrieval + prompt, then the model's deltas into the answer's [`AnswerLog`],
//!      which any number of readers follow, until the end, an error or a cancel;
//!    - `record`: the answer stored when it ends, whatever the ending (retried through a
//!      database outage by [`durable`](super::durable)), a complete one with the question's
//!      knowledge-gap signals in the same statement;
//!    - `metrics`: the answer counted by how it ended, with its latency and first-token time.
//!
//! `generate` takes the whole [`AppState`]: the record step hands it to `durable` and
//! `gaps::signals`.

mod metrics;
mod record;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use protocol::chat::{Done, FinishReason};
use protocol::error::ErrorCode;
use uuid::Uuid;

use super::log::{AnswerLog, LogEvent};
use super::sessions::SessionRegistry;
use super::{durable, store};
use crate::config::Config;
use crate::error::ApiError;
use crate::grounding::{AnswerError, AnswerRequest, Answerer, PreparedAnswer};
use crate::llm::Turn;
use crate::state::AppState;

/// Checks a question's text: not blank, not too long.
pub(crate) fn validate(config: &Config, question: &str) -> Result<(), ApiError> {
    if question.trim().is_empty() {
        return Err(ApiError::validation("message", "must not be empty"));
    }
    let max = config.max_question_chars;
    if question.chars().count() > max {
        return Err(ApiError::validation(
            "message",
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// The window of the asks-per-minute limit.
const ASK_WINDOW_SECS: u64 = 60;

/// The key of a user's asks-per-minute limit in `rate_logs`.
fn ask_key(user_id: Uuid) -> String {
    format!("asks:{user_id}")
}

/// The refusal of an ask over the asks-per-minute limit.
fn over_limit(per_minute: u32, retry_after_secs: u64) -> ApiError {
    ApiError::RateLimited {
        message: format!(
            "at most {per_minute} questions per minute; try again in {retry_after_secs} s"
        ),
        retry_after_secs,
    }
}

/// Checks a question and counts it against the user's asks-per-minute limit, shared by every
/// instance (`rate_logs`, one statement). If the database cannot be asked, this instance's own
/// count applies instead, so the limit never falls away entirely.
pub(crate) async fn admit(
    config: &Config,
    db: &Pool,
    sessions: &SessionRegistry,
    user_id: Uuid,
    question: &str,
) -> Result<(), ApiError> {
    validate(config, question)?;
    let per_minute = config.asks_per_minute;
    let key = ask_key(user_id);
    let started = Instant::now();
    let shared = async {
        let client = db.get().await?;
        crate::throttle::sliding_hit(&client, &key, per_minute, ASK_WINDOW_SECS).await
    };
    let shared = shared.await;
    crate::telemetry::ask_stage("limit", started.elapsed());
    let verdict = match shared {
        Ok(verdict) => verdict,
        Err(e) => {
            tracing::warn!(error = ?e, "shared ask limit unavailable; counting locally");
            sessions.check_rate(user_id, per_minute)
        }
    };
    verdict.map_err(|retry_after_secs| over_limit(per_minute, retry_after_secs))
}

/// A question that has been stored and is ready to be answered.
pub(crate) struct Accepted {
    user_id: Uuid,
    question: String,
    question_id: Uuid,
    conversation_id: Uuid,
    history: Vec<Turn>,
    asked_at: Instant,
}

/// Retrieval and the model call, when they ran while the question was being stored (see
/// [`accept_and_prepare`]).
pub(crate) type Prepared = Option<Result<PreparedAnswer, AnswerError>>;

/// Stores a question (see [`store::store_question`]). With `asks_per_minute`, the question is
/// also counted against the user's asks-per-minute limit in the same statement, and neither
/// counted nor stored if the limit is reached: for a caller that checked it with [`validate`]
/// instead of [`admit`]. (Without the database the question could not be stored either, so
/// [`admit`]'s local count has no use there.) With `stream`, the relay's stream row of the
/// answer is written in the same statement too (the socket's answers).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept(
    db: &Pool,
    instance_id: Uuid,
    history_turns: usize,
    user_id: Uuid,
    question: String,
    conversation_id: Option<Uuid>,
    asks_per_minute: Option<u32>,
    stream: Option<&store::StreamRow<'_>>,
) -> Result<Accepted, ApiError> {
    let asked_at = Instant::now();
    let key = ask_key(user_id);
    let limit = asks_per_minute.map(|max| store::AskLimit {
        key: &key,
        max,
        window_secs: ASK_WINDOW_SECS,
    });
    let stored = async {
        let client = db.get().await?;
        store::store_question(
            &client,
            instance_id,
            user_id,
            conversation_id,
            &question,
            history_turns,
            limit.as_ref(),
            stream,
        )
        .await
    }
    .await;
    crate::telemetry::ask_stage("store", asked_at.elapsed());
    let stored = match stored? {
        store::Stored::Question(stored) => stored,
        store::Stored::Limited { retry_after_secs } => {
            let per_minute = asks_per_minute.unwrap_or_default();
            return Err(over_limit(per_minute, retry_after_secs));
        }
    };
    Ok(Accepted {
        user_id,
        question,
        question_id: stored.question_id,
        conversation_id: stored.conversation_id,
        history: stored.history,
        asked_at,
    })
}

/// [`accept`], and for a question that opens a new conversation (its prompt needs no stored
/// turns) the answer's retrieval and model call at the same time: the database work hides
/// behind the model's wait for its first chunk instead of adding to it. The model is only
/// called for a question that passed [`admit`]; if storing fails, the call is dropped (which
/// aborts it) at once and the question is rejected as before. A cancel of `log` drops the call
/// too (the answer then ends `cancelled` in [`generate`]). `stream` as in [`accept`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn accept_and_prepare(
    answerer: &Answerer,
    log: &AnswerLog,
    db: &Pool,
    instance_id: Uuid,
    history_turns: usize,
    user_id: Uuid,
    question: String,
    conversation_id: Option<Uuid>,
    stream: Option<&store::StreamRow<'_>>,
) -> Result<(Accepted, Prepared), ApiError> {
    // A follow-up's prompt needs its stored turns: it is prepared after the store, in `generate`.
    let request = conversation_id.is_none().then(|| AnswerRequest {
        question: question.clone(),
        history: Vec::new(),
    });
    let accepting = accept(
        db,
        instance_id,
        history_turns,
        user_id,
        question,
        conversation_id,
        None,
        stream,
    );
    let Some(request) = request else {
        return Ok((accepting.await?, None));
    };
    let prepare = async {
        Ok::<_, ApiError>(tokio::select! {
            prepared = answerer.prepare(request) => Some(prepared),
            () = log.cancelled() => None,
        })
    };
    tokio::try_join!(accepting, prepare)
}

/// Pushes `Rejected` for an error that stopped a question before it was stored.
pub(crate) fn reject(log: &AnswerLog, error: &ApiError) {
    if error.status().is_server_error() {
        tracing::error!(error = ?error, "could not accept a question");
    }
    let body = error.body();
    log.push(LogEvent::Rejected {
        code: body.error.code,
        message: body.error.message,
    });
}

/// Ends the log if the generating task dies without doing so (a panic), so readers stop.
struct EndGuard(Arc<AnswerLog>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.push(LogEvent::Rejected {
            code: ErrorCode::Internal,
            message: "internal error".into(),
        });
    }
}

/// Generates the answer to `accepted` into `log` and stores it. Runs to the end even if nobody
/// reads the log any more; only the log's cancel token stops it early.
pub(crate) async fn generate(
    state: AppState,
    accepted: Accepted,
    prepared: Prepared,
    log: Arc<AnswerLog>,
) {
    let _end = EndGuard(Arc::clone(&log));
    let message_id = Uuid::new_v4();
    let mut streamed = stream::run(&state.answerer, &accepted, prepared, &log).await;

    // A complete answer is stored with its question's knowledge-gap signals, in one statement.
    let signals = match (streamed.finish_reason, streamed.reading.take()) {
        (FinishReason::Stop, Some(reading)) => {
            crate::gaps::signals(&state, reading, &streamed.text)
        }
        _ => None,
    };
    let record = record::answer_record(message_id, &accepted, &streamed, signals.as_ref());
    let written = record::first_write(&state, &record, &log, streamed.failure.is_some()).await;
    let finish_reason = match written {
        record::Written::Lost => FinishReason::Error,
        record::Written::Stored | record::Written::Deferred => streamed.finish_reason,
    };

    metrics::answer_ended(finish_reason, streamed.latency, streamed.first_token);
    log.push(LogEvent::Done(Done {
        message_id,
        conversation_id: accepted.conversation_id,
        finish_reason,
        usage: streamed.usage,
    }));
    if written == record::Written::Deferred {
        durable::retry_until_stored(&state, &record).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_generator_still_ends_the_log() {
        let log = AnswerLog::new();
        drop(EndGuard(Arc::clone(&log)));
        assert!(log.is_finished());
    }
}
