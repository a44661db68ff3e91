//! The history cleanup: deletes messages older than the retention age, then conversations
//! left with no messages, in small batches, at most one run at a time across every process
//! sharing the database, each run recorded in `cleanup_runs`.

use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool};
use protocol::admin::{CleanupRun, CleanupTrigger};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Key of the session-level advisory lock that makes runs exclusive across processes.
pub const CLEANUP_LOCK_KEY: i64 = 0x5eed_c4a7_0004;

/// Rows per delete statement. Each statement is its own short transaction, so row locks are
/// held for milliseconds and chatting never waits long behind a run over millions of rows.
pub const BATCH_SIZE: i64 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Another run (in this or another process) holds the lock; nothing was done.
    #[error("a history cleanup is already running")]
    AlreadyRunning,
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

impl From<CleanupError> for ApiError {
    fn from(e: CleanupError) -> Self {
        match e {
            CleanupError::AlreadyRunning => Self::Conflict(e.to_string()),
            CleanupError::Pool(e) => Self::Pool(e),
            CleanupError::Database(e) => Self::Database(e),
        }
    }
}

/// Runs the cleanup now and returns its record. `Err(AlreadyRunning)` if another run is in
/// progress. A run that starts and then fails part-way is still `Ok`: its record carries the
/// error and what was deleted before it.
pub async fn run(
    db: &Pool,
    retention_days: u32,
    trigger: CleanupTrigger,
) -> Result<CleanupRun, CleanupError> {
    run_until(db, retention_days, trigger, &CancellationToken::new()).await
}

/// [`run`], stopping between batches once `cancel` fires (the record then says so).
pub async fn run_until(
    db: &Pool,
    retention_days: u32,
    trigger: CleanupTrigger,
    cancel: &CancellationToken,
) -> Result<CleanupRun, CleanupError> {
    let lock = AdvisoryLock::try_acquire(db)
        .await?
        .ok_or(CleanupError::AlreadyRunning)?;
    let result = run_locked(lock.client(), retention_days, trigger, cancel).await;
    lock.release().await;
    let run = result?;
    metrics::counter!("cleanup_runs_total", "trigger" => trigger_str(trigger)).increment(1);
    metrics::counter!("cleanup_rows_deleted_total", "table" => "messages")
        .increment(u64::try_from(run.messages_deleted).unwrap_or(0));
    metrics::counter!("cleanup_rows_deleted_total", "table" => "conversations")
        .increment(u64::try_from(run.conversations_deleted).unwrap_or(0));
    match &run.error {
        None => tracing::info!(
            id = run.id,
            trigger = %trigger_str(trigger),
            messages = run.messages_deleted,
            conversations = run.conversations_deleted,
            "history cleanup finished"
        ),
        Some(error) => tracing::error!(
            id = run.id,
            trigger = %trigger_str(trigger),
            messages = run.messages_deleted,
            conversations = run.conversations_deleted,
            %error,
            "history cleanup failed"
        ),
    }
    Ok(run)
}

/// The most recent runs, newest first.
pub async fn list_runs(db: &Pool, limit: i64) -> Result<Vec<CleanupRun>, CleanupError> {
    let client = db.get().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM cleanup_runs ORDER BY started_at DESC, id DESC LIMIT $1"
        ))
        .await?;
    let rows = client.query(&stmt, &[&limit.clamp(0, 1000)]).await?;
    Ok(rows.iter().map(run_of_row).collect())
}

const RUN_COLUMNS: &str =
    "id, trigger, started_at, finished_at, messages_deleted, conversations_deleted, error";

fn run_of_row(row: &tokio_postgres::Row) -> CleanupRun {
    CleanupRun {
        id: row.get("id"),
        trigger: if row.get::<_, &str>("trigger") == "manual" {
            CleanupTrigger::Manual
        } else {
            CleanupTrigger::Scheduled
        },
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        messages_deleted: row.get("messages_deleted"),
        conversations_deleted: row.get("conversations_deleted"),
        error: row.get("error"),
    }
}

fn trigger_str(trigger: CleanupTrigger) -> &'static str {
    match trigger {
        CleanupTrigger::Scheduled => "scheduled",
        CleanupTrigger::Manual => "manual",
    }
}

async fn run_locked(
    client: &tokio_postgres::Client,
    retention_days: u32,
    trigger: CleanupTrigger,
    cancel: &CancellationToken,
) -> Result<CleanupRun, CleanupError> {
    // Holding the lock, no other run can be in progress: an unfinished row is one whose
    // process died mid-run.
    client
        .execute(
            "UPDATE cleanup_runs SET finished_at = now(), \
             error = 'interrupted: the process running it stopped' \
             WHERE finished_at IS NULL",
            &[],
        )
        .await?;
    let days = i32::try_from(retention_days).unwrap_or(i32::MAX);
    // One cutoff for the whole run, so batches agree on what "old" means.
    let row = client
        .query_one(
            "INSERT INTO cleanup_runs (trigger, retention_days, cutoff) \
             VALUES ($1, $2, now() - make_interval(days => $2)) RETURNING id, cutoff",
            &[&trigger_str(trigger), &days],
        )
        .await?;
    let id: i64 = row.get("id");
    let cutoff: DateTime<Utc> = row.get("cutoff");
    tracing::info!(id, trigger = %trigger_str(trigger), retention_days, %cutoff, "history cleanup started");

    let deleted = match delete_in_batches(client, id, cutoff, cancel).await {
        Ok(()) => prune_auth_leftovers(client, cancel).await,
        Err(e) => Err(e),
    };
    let error = match deleted {
        Ok(()) if cancel.is_cancelled() => {
            Some("interrupted: the server is shutting down".to_owned())
        }
        Ok(()) => None,
        Err(e) => Some(format!("database error: {e}")),
    };
    let row = client
        .query_one(
            &format!(
                "UPDATE cleanup_runs SET finished_at = now(), error = $2 \
                 WHERE id = $1 RETURNING {RUN_COLUMNS}"
            ),
            &[&id, &error],
        )
        .await?;
    Ok(run_of_row(&row))
}

/// Deletes old messages, then emptied old conversations, batch by batch. Each batch is one
/// statement that also adds its count to the run's record, so the record is exact even for a
/// run that is interrupted (or whose process dies) part-way.
async fn delete_in_batches(
    client: &tokio_postgres::Client,
    run_id: i64,
    cutoff: DateTime<Utc>,
    cancel: &CancellationToken,
) -> Result<(), tokio_postgres::Error> {
    // Answers cascade with their question; deleting them in the same statement makes the count
    // exact (the cascade then finds nothing left to delete).
    let messages = client
        .prepare(
            "WITH batch AS ( \
               SELECT id FROM messages WHERE created_at < $1 LIMIT $2 \
             ), gone AS ( \
               DELETE FROM messages WHERE id IN ( \
                 SELECT id FROM batch \
                 UNION SELECT m.id FROM messages m JOIN batch b ON m.reply_to = b.id \
               ) RETURNING 1 \
             ) \
             UPDATE cleanup_runs SET messages_deleted = messages_deleted + (SELECT count(*) FROM gone) \
             WHERE id = $3 RETURNING (SELECT count(*) FROM gone)",
        )
        .await?;
    // Only conversations untouched since the cutoff: the chat updates `updated_at` (locking
    // the row) in the transaction that adds a message, so a conversation getting a new
    // message concurrently is re-checked by PostgreSQL after that commit and kept.
    let conversations = client
        .prepare(
            "WITH gone AS ( \
               DELETE FROM conversations c \
               WHERE c.id IN ( \
                 SELECT id FROM conversations WHERE created_at < $1 AND updated_at < $1 \
                   AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = conversations.id) \
                 LIMIT $2 \
               ) \
               AND c.updated_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id) \
               RETURNING 1 \
             ) \
             UPDATE cleanup_runs SET conversations_deleted = conversations_deleted + (SELECT count(*) FROM gone) \
             WHERE id = $3 RETURNING (SELECT count(*) FROM gone)",
        )
        .await?;
    for stmt in [&messages, &conversations] {
        while !cancel.is_cancelled() {
            let n: i64 = client
                .query_one(stmt, &[&cutoff, &BATCH_SIZE, &run_id])
                .await?
                .get(0);
            if n == 0 {
                break;
            }
            // Let other work on this runtime (and the database) breathe between batches.
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

/// How long expired refresh tokens are kept: an expired refresh token is refused by its own
/// `exp` before its row is read, so a day is generous; keeping a little lets an operator look
/// at a recent attack.
const AUTH_LEFTOVERS_KEPT: &str = "1 day";

/// Deletes what authentication leaves behind and never reads again: throttle counters whose
/// window has ended (sign-ups, login failures) and refresh tokens long expired (login prunes
/// them only for the user logging in). Same batching
/// as the history, so the tables are never locked for long.
async fn prune_auth_leftovers(
    client: &tokio_postgres::Client,
    cancel: &CancellationToken,
) -> Result<(), tokio_postgres::Error> {
    let statements = [
        (
            "rate_limits",
            "DELETE FROM rate_limits WHERE ctid IN ( \
               SELECT ctid FROM rate_limits WHERE window_end < now() LIMIT $1)"
                .to_owned(),
        ),
        (
            "refresh_tokens",
            format!(
                "DELETE FROM refresh_tokens WHERE id IN ( \
                   SELECT id FROM refresh_tokens \
                   WHERE expires_at < now() - interval '{AUTH_LEFTOVERS_KEPT}' LIMIT $1)"
            ),
        ),
    ];
    for (table, sql) in &statements {
        let stmt = client.prepare(sql).await?;
        let mut total = 0;
        while !cancel.is_cancelled() {
            let n = client.execute(&stmt, &[&BATCH_SIZE]).await?;
            total += n;
            if n == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        if total > 0 {
            tracing::info!(table, rows = total, "pruned authentication leftovers");
        }
    }
    Ok(())
}

/// The run's exclusive lock: a session-level advisory lock on a pooled connection that the
/// run keeps (and does its deletes on) until it ends.
struct AdvisoryLock {
    /// `None` once released.
    conn: Option<Object>,
}

impl AdvisoryLock {
    async fn try_acquire(db: &Pool) -> Result<Option<Self>, CleanupError> {
        let conn = db.get().await?;
        let row = conn
            .query_one("SELECT pg_try_advisory_lock($1)", &[&CLEANUP_LOCK_KEY])
            .await?;
        // Not locked: the connection goes back to the pool untouched (no guard, no close).
        let locked: bool = row.get(0);
        Ok(locked.then(|| Self { conn: Some(conn) }))
    }

    fn client(&self) -> &tokio_postgres::Client {
        match &self.conn {
            Some(conn) => conn,
            // `conn` is only taken by `release` and `drop`, which consume the guard.
            None => unreachable!("advisory lock used after release"),
        }
    }

    async fn release(mut self) {
        let Some(conn) = self.conn.take() else { return };
        if conn
            .execute("SELECT pg_advisory_unlock($1)", &[&CLEANUP_LOCK_KEY])
            .await
            .is_err()
        {
            // Unsure whether the lock is still held: closing the session frees it for certain.
            drop(Object::take(conn));
        }
    }
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        // Dropped unreleased (the run's future was cancelled): the lock belongs to the
        // session, so returning the connection to the pool would keep it held forever.
        // Closing the connection is the synchronous way to free it.
        if let Some(conn) = self.conn.take() {
            drop(Object::take(conn));
        }
    }
}
