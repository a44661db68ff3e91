//! The final write of an answer, made to survive a database outage.
//!
//! The answer is complete in memory (and in the resume buffer) when its write is due, so a
//! database that is unreachable at that moment must not turn it into an error for the person
//! who just watched it stream. [`store_answer`] tries once; on a failure that may pass (see
//! [`crate::db::faults::is_transient`]) the caller reports the answer as usual and then calls
//! [`retry_until_stored`], which retries with capped exponential backoff until the write lands
//! or `ANSWER_WRITE_RETRY_SECS` have passed. It runs inside the answer's task, which is on the
//! application's `TaskTracker`, so a graceful shutdown waits for it; once shutdown has begun it
//! gives up at the end of the grace period at the latest.
//!
//! An answer that is never stored is logged at error level with its message id and counted in
//! `chat_answer_writes_lost_total`; its question stays in `answers_in_flight` and the orphan
//! sweep (`chat::orphans`) marks it `interrupted` once this process is gone.
//!
//! Both entry points take any state that holds the pool (and, for the retries, the config and
//! the shutdown token) as sub-states ([`FromRef`]), not the application state itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRef;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use super::store;
use crate::config::Config;
use crate::error::ApiError;

/// First wait after a failed write; doubled per attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How the first attempt went.
pub(crate) enum FirstWrite {
    Stored,
    /// Failed in a way that may pass: report the answer, then [`retry_until_stored`].
    Deferred,
    /// Failed for good (e.g. the conversation was deleted meanwhile).
    Failed(ApiError),
}

/// Whether `error` may go away by retrying.
pub(crate) fn is_transient(error: &ApiError) -> bool {
    match error {
        ApiError::Pool(e) => crate::db::faults::is_transient_pool(e),
        ApiError::Database(e) => crate::db::faults::is_transient(e),
        _ => false,
    }
}

async fn write(db: &Pool, record: &store::AnswerRecord<'_>) -> Result<(), ApiError> {
    let client = db.get().await?;
    store::store_answer(&client, record).await
}

/// Stores the answer once.
pub(crate) async fn store_answer<S>(state: &S, record: &store::AnswerRecord<'_>) -> FirstWrite
where
    Pool: FromRef<S>,
{
    match write(&Pool::from_ref(state), record).await {
        Ok(()) => FirstWrite::Stored,
        Err(e) if is_transient(&e) => {
            tracing::warn!(
                message_id = %record.id,
                error = %e,
                "could not store an answer; retrying in the background"
            );
            metrics::counter!("chat_answer_writes_deferred_total").increment(1);
            FirstWrite::Deferred
        }
        Err(e) => FirstWrite::Failed(e),
    }
}

/// Retries the write of an answer whose first attempt failed transiently, until it lands, the
/// retry window closes, or the shutdown grace period ends. True when stored.
pub(crate) async fn retry_until_stored<S>(state: &S, record: &store::AnswerRecord<'_>) -> bool
where
    Pool: FromRef<S>,
    Arc<Config>: FromRef<S>,
    CancellationToken: FromRef<S>,
{
    let (db, config) = (Pool::from_ref(state), Arc::<Config>::from_ref(state));
    let shutdown = CancellationToken::from_ref(state);
    let started = Instant::now();
    let mut deadline = started + Duration::from_secs(config.answer_write_retry_secs);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let mut shutting_down = false;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 1u32;
    metrics::gauge!("chat_answer_writes_pending").increment(1.0);
    let stored = loop {
        let now = Instant::now();
        if now >= deadline {
            break false;
        }
        let wait = backoff.min(deadline - now);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // Leave a second of the grace period for the rest of the shutdown.
            () = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                deadline = deadline.min(Instant::now() + grace.saturating_sub(Duration::from_secs(1)));
                continue;
            }
        }
        attempts += 1;
        match write(&db, record).await {
            Ok(()) => break true,
            // Our earlier attempt committed although we did not hear back.
            Err(ApiError::Database(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
            {
                break true;
            }
            Err(e) if is_transient(&e) => {
                tracing::debug!(message_id = %record.id, attempts, error = %e, "answer write still failing");
            }
            Err(e) => {
                tracing::error!(message_id = %record.id, error = ?e, "answer write failed for good");
                break false;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    metrics::gauge!("chat_answer_writes_pending").decrement(1.0);
    if stored {
        tracing::info!(
            message_id = %record.id,
            attempts,
            waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "answer stored after the database came back"
        );
    } else {
        lost(record);
    }
    stored
}

/// Logs and counts an answer that could not be stored.
pub(crate) fn lost(record: &store::AnswerRecord<'_>) {
    metrics::counter!("chat_answer_writes_lost_total").increment(1);
    tracing::error!(
        message_id = %record.id,
        question_id = %record.reply_to,
        conversation_id = %record.conversation_id,
        status = record.status.as_str(),
        "answer lost: it could not be stored"
    );
}
