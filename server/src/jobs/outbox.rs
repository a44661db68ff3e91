//! The mail outbox: mail is written to `mail_outbox` in the transaction of the change that
//! causes it, and a worker delivers it.
//!
//! # Delivery guarantees
//!
//! A worker claims one due row with `SELECT ... FOR UPDATE SKIP LOCKED` and keeps that row
//! lock, in the same transaction, while it sends, then marks the row `sent` (or reschedules it)
//! and commits. Holding the lock instead of committing a lease first means:
//! - several workers, in one process or many, never send one row at the same time: the others
//!   skip it while it is locked and see it `sent` afterwards;
//! - a worker that dies or is stopped between claim and send (or mid-send) loses its
//!   connection or rolls back, so the row is claimable again at once, with no lease to expire;
//! - the price is one pooled connection and an open transaction per worker for the length of
//!   one SMTP exchange, bounded by the SMTP timeout.
//!
//! Delivery is at least once, not exactly once: if the relay accepted the mail and the commit
//! that marks it sent is then lost (crash, connection drop), the mail is sent again. For a
//! welcome mail a rare duplicate is far better than a lost one.
//!
//! Failed attempts are retried with exponential backoff (`attempts`, `next_attempt_at`) up to
//! [`RetryPolicy::max_attempts`]; then the row is marked `failed` with the reason in
//! `last_error`. Nothing is dropped silently.
//!
//! The worker wakes on `NOTIFY mail_outbox` (sent by the enqueuing transaction, delivered at
//! its commit) and also polls, because notifications sent while the listening connection is
//! down are lost.
//!
//! Why one file: the delivery guarantee below is one transaction (claim, send, mark or reschedule)
//! plus the worker loop that runs it; splitting the SQL from the loop would separate the lock from
//! the code that relies on it.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use protocol::auth::User;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::mailer::{Mail, MailError, Mailer};

/// The NOTIFY channel that wakes outbox workers.
pub const CHANNEL: &str = "mail_outbox";

/// Queues the welcome mail for `user` inside the signup transaction, so that the mail exists
/// if and only if the user does.
pub async fn enqueue_welcome(
    tx: &tokio_postgres::Transaction<'_>,
    user: &User,
) -> Result<(), tokio_postgres::Error> {
    let mail = welcome_mail(user);
    enqueue(tx, "welcome", Some(user), &mail).await
}

/// Queues `mail` inside `tx` and wakes the workers when `tx` commits.
pub async fn enqueue(
    tx: &tokio_postgres::Transaction<'_>,
    kind: &str,
    user: Option<&User>,
    mail: &Mail,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO mail_outbox (kind, user_id, recipient, subject, body) \
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &kind,
            &user.map(|u| u.id),
            &mail.to,
            &mail.subject,
            &mail.body,
        ],
    )
    .await?;
    // PostgreSQL holds the notification until commit and drops it on rollback.
    tx.batch_execute(&format!("NOTIFY {CHANNEL}")).await
}

/// The welcome mail: a real message, addressed to the account's email, naming the user.
pub fn welcome_mail(user: &User) -> Mail {
    let name = &user.username;
    Mail {
        to: user.email.clone(),
        subject: "Welcome to Northwind Support".to_owned(),
        body: format!(
            "Hello {name},\n\
             \n\
             Welcome to Northwind Support! Your account \"{name}\" is ready.\n\
             \n\
             Sign in any time to ask our support assistant about orders, shipping, returns,\n\
             warranties and your account. Its answers come from our help center, with the\n\
             articles they are based on, and you can pick up earlier conversations where you\n\
             left them.\n\
             \n\
             If you did not create this account, reply to this message and we will close it.\n\
             \n\
             The Northwind Support team\n"
        ),
    }
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; after the last failure the row is `failed`.
    pub max_attempts: i32,
    /// Wait after the first failure; doubles after each further one.
    pub base_delay: Duration,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 10 attempts over about 35 minutes: 2 s, 4 s, 8 s, ... 512 s between them.
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30 * 60),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `attempts`-th failed attempt (1-based).
    pub fn delay_after(&self, attempts: i32) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(30);
        self.base_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// What one [`try_execute_task`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutionOutcome {
    /// Nothing was due.
    EmptyQueue,
    Sent {
        id: i64,
    },
    /// The attempt failed; the row will be tried again at `retry_in` from now.
    Retrying {
        id: i64,
        attempts: i32,
        retry_in: Duration,
        reason: String,
    },
    /// The attempt failed and no more will be made.
    Failed {
        id: i64,
        attempts: i32,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
}

/// Claims one due message, tries to deliver it and records the result, in one transaction
/// (see the module docs). Tests call this to drain the queue deterministically.
pub async fn try_execute_task(
    db: &Pool,
    mailer: &dyn Mailer,
) -> Result<ExecutionOutcome, OutboxError> {
    try_execute_task_with(db, mailer, &RetryPolicy::default()).await
}

/// [`try_execute_task`] with an explicit retry policy.
pub async fn try_execute_task_with(
    db: &Pool,
    mailer: &dyn Mailer,
    policy: &RetryPolicy,
) -> Result<ExecutionOutcome, OutboxError> {
    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    let claim = tx
        .prepare_cached(
            "SELECT id, recipient, subject, body, attempts FROM mail_outbox \
             WHERE status = 'pending' AND next_attempt_at <= now() \
             ORDER BY next_attempt_at, id \
             LIMIT 1 \
             FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let Some(row) = tx.query_opt(&claim, &[]).await? else {
        return Ok(ExecutionOutcome::EmptyQueue);
    };
    let id: i64 = row.get("id");
    let attempts = row.get::<_, i32>("attempts").saturating_add(1);
    let mail = Mail {
        to: row.get("recipient"),
        subject: row.get("subject"),
        body: row.get("body"),
    };

    let outcome = match mailer.send(&mail).await {
        Ok(()) => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE mail_outbox SET status = 'sent', sent_at = now(), attempts = $2, \
                     last_error = NULL WHERE id = $1",
                )
                .await?;
            tx.execute(&stmt, &[&id, &attempts]).await?;
            ExecutionOutcome::Sent { id }
        }
        Err(e) if e.is_permanent() || attempts >= policy.max_attempts => {
            let reason = failure_reason(&e, attempts);
            let stmt = tx
                .prepare_cached(
                    "UPDATE mail_outbox SET status = 'failed', attempts = $2, last_error = $3 \
                     WHERE id = $1",
                )
                .await?;
            tx.execute(&stmt, &[&id, &attempts, &reason]).await?;
            ExecutionOutcome::Failed {
                id,
                attempts,
                reason,
            }
        }
        Err(e) => {
            let reason = e.to_string();
            let retry_in = policy.delay_after(attempts);
            let stmt = tx
                .prepare_cached(
                    "UPDATE mail_outbox SET attempts = $2, last_error = $3, \
                     next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                )
                .await?;
            tx.execute(&stmt, &[&id, &attempts, &reason, &retry_in.as_secs_f64()])
                .await?;
            ExecutionOutcome::Retrying {
                id,
                attempts,
                retry_in,
                reason,
            }
        }
    };
    tx.commit().await?;

    match &outcome {
        ExecutionOutcome::Sent { id } => {
            metrics::counter!("outbox_sent_total").increment(1);
            tracing::info!(id, to = %mail.to, "mail sent");
        }
        ExecutionOutcome::Retrying {
            id,
            attempts,
            retry_in,
            reason,
        } => {
            metrics::counter!("outbox_retries_total").increment(1);
            tracing::warn!(id, attempts, retry_in_secs = retry_in.as_secs(), %reason, "mail not sent; will retry");
        }
        ExecutionOutcome::Failed {
            id,
            attempts,
            reason,
        } => {
            metrics::counter!("outbox_failed_total").increment(1);
            tracing::error!(id, attempts, %reason, "mail not sent; giving up");
        }
        ExecutionOutcome::EmptyQueue => {}
    }
    Ok(outcome)
}

fn failure_reason(error: &MailError, attempts: i32) -> String {
    if error.is_permanent() {
        error.to_string()
    } else {
        format!("gave up after {attempts} attempts: {error}")
    }
}

/// Counts for the admin view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
}

pub async fn stats(db: &Pool) -> Result<OutboxStats, OutboxError> {
    let client = db.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE status = 'sent'), \
                    count(*) FILTER (WHERE status = 'failed') \
             FROM mail_outbox",
        )
        .await?;
    let row = client.query_one(&stmt, &[]).await?;
    Ok(OutboxStats {
        pending: row.get(0),
        sent: row.get(1),
        failed: row.get(2),
    })
}

/// How a worker paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSettings {
    /// Fallback poll when no notification arrives (missed ones, retries coming due).
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
        }
    }
}

/// Delivers outbox mail until `shutdown` is cancelled: drains what is due, then sleeps until a
/// notification or the next poll. A delivery in progress at shutdown is finished (bounded by
/// the SMTP timeout); dropping this future instead rolls the claim back.
pub async fn run_worker(
    db: Pool,
    database_url: String,
    mailer: Arc<dyn Mailer>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    tracing::info!(mailer = %mailer.describe(), "outbox worker started");
    // Permits are kept when nobody waits, so a notification arriving mid-drain is not lost.
    let wake = Arc::new(Notify::new());
    let listener = listen(database_url, wake.clone(), shutdown.clone());
    let deliver = async {
        while !shutdown.is_cancelled() {
            let idle = match try_execute_task_with(&db, mailer.as_ref(), &settings.retry).await {
                Ok(ExecutionOutcome::EmptyQueue) => true,
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox: delivery round failed; retrying after the poll interval");
                    true
                }
            };
            if idle {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = wake.notified() => {}
                    () = tokio::time::sleep(settings.poll_interval) => {}
                }
            }
        }
    };
    tokio::join!(listener, deliver);
    tracing::info!("outbox worker stopped");
}

/// Keeps a `LISTEN` connection open (reconnecting after failures) and turns notifications
/// into wake-ups until `shutdown`.
async fn listen(database_url: String, wake: Arc<Notify>, shutdown: CancellationToken) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    let mut backoff = FIRST_BACKOFF;
    while !shutdown.is_cancelled() {
        let mut listening = false;
        match listen_once(&database_url, &wake, &shutdown, &mut listening).await {
            Ok(()) => return,
            Err(e) => {
                // A connection that worked starts the next outage's backoff from the beginning.
                if listening {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(error = %e, "outbox: LISTEN connection lost; polling until it is back");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Returns `Ok` only on shutdown; any end of the connection is an error to reconnect after.
async fn listen_once(
    database_url: &str,
    wake: &Notify,
    shutdown: &CancellationToken,
    listening: &mut bool,
) -> anyhow::Result<()> {
    // Not `db::connect`: its connection driver discards notifications, and this one needs them.
    let (client, mut connection) = crate::db::connect_raw(database_url).await?;
    let (notified_tx, mut notified_rx) = tokio::sync::mpsc::channel::<()>(1);
    // Drives the connection; aborted with this function so it never outlives the worker.
    let mut driver = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(_) = message? {
                // Full means a wake-up is already pending: coalescing is fine.
                let _ = notified_tx.try_send(());
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    }));
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    *listening = true;
    // Whatever was written while nobody listened is found by this first drain.
    wake.notify_one();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            Some(()) = notified_rx.recv() => wake.notify_one(),
            ended = &mut driver => {
                return match ended {
                    Ok(Err(e)) => Err(e.into()),
                    Ok(Ok(())) => Err(anyhow::anyhow!("the server closed the connection")),
                    Err(e) => Err(anyhow::anyhow!("the connection driver stopped: {e}")),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let policy = RetryPolicy::default();
        let secs: Vec<u64> = (1..=12).map(|n| policy.delay_after(n).as_secs()).collect();
        assert_eq!(secs[..4], [2, 4, 8, 16]);
        assert_eq!(secs[9], 1024);
        assert_eq!(secs[11], 30 * 60, "capped at max_delay");
        assert_eq!(policy.delay_after(i32::MAX), policy.max_delay);
    }

    #[test]
    fn the_welcome_mail_is_addressed_and_names_the_user() {
        let user = User {
            id: uuid::Uuid::new_v4(),
            username: "zoe".to_owned(),
            email: "zoe@example.com".to_owned(),
            role: protocol::auth::Role::User,
            created_at: chrono::Utc::now(),
        };
        let mail = welcome_mail(&user);
        assert_eq!(mail.to, "zoe@example.com");
        assert!(mail.subject.contains("Welcome"));
        assert!(mail.body.starts_with("Hello zoe,\n"));
        assert!(mail.body.contains("account \"zoe\" is ready"));
    }
}
