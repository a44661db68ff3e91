//! The admin API's own queries over the whole service: counts, the last hour minute by minute,
//! a user's recent questions.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use protocol::admin::{MinuteStats, RecentQuestion};
use protocol::chat::MessageStatus;
use uuid::Uuid;

/// Rows across the service, database-wide.
pub(super) struct Counts {
    pub users: i64,
    pub conversations: i64,
    pub messages: i64,
    /// Welcome mails waiting in the outbox.
    pub outbox_pending: i64,
    /// Welcome mails the outbox gave up on.
    pub outbox_failed: i64,
}

pub(super) async fn counts(client: &impl GenericClient) -> Result<Counts, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM conversations), \
                    (SELECT count(*) FROM messages), \
                    (SELECT count(*) FROM mail_outbox WHERE status = 'pending'), \
                    (SELECT count(*) FROM mail_outbox WHERE status = 'failed')",
        )
        .await?;
    let row = client.query_one(&stmt, &[]).await?;
    Ok(Counts {
        users: row.get(0),
        conversations: row.get(1),
        messages: row.get(2),
        outbox_pending: row.get(3),
        outbox_failed: row.get(4),
    })
}

/// Per-minute figures from the stored messages of every instance, for the minutes from `back`
/// minutes before the current one up to it that saw any message (in no order), with the current
/// minute by the database clock.
pub(super) async fn minute_stats(
    client: &impl GenericClient,
    back: i32,
) -> Result<(DateTime<Utc>, Vec<MinuteStats>), tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT date_trunc('minute', created_at) AS at, \
                    count(*) FILTER (WHERE role = 'user'), \
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) \
                      FILTER (WHERE role = 'assistant'), \
                    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) \
                      FILTER (WHERE role = 'assistant'), \
                    count(*) FILTER (WHERE role = 'assistant' AND status = 'error' \
                      AND error_code IN ('provider_unavailable', 'content_blocked')), \
                    date_trunc('minute', now()) \
             FROM messages \
             WHERE created_at >= date_trunc('minute', now()) - make_interval(mins => $1::int) \
             GROUP BY 1",
        )
        .await?;
    let rows = client.query(&stmt, &[&back]).await?;
    let now: DateTime<Utc> = match rows.first() {
        Some(row) => row.get(5),
        None => {
            let row = client
                .query_one("SELECT date_trunc('minute', now())", &[])
                .await?;
            row.get(0)
        }
    };
    let minutes = rows
        .iter()
        .map(|row| MinuteStats {
            at: row.get(0),
            asks: row.get(1),
            latency_p50_ms: row.get(2),
            latency_p95_ms: row.get(3),
            provider_errors: row.get(4),
        })
        .collect();
    Ok((now, minutes))
}

/// `user_id`'s latest `limit` questions with the first 300 characters of each answer, newest
/// first.
pub(super) async fn recent_questions(
    client: &impl GenericClient,
    user_id: Uuid,
    limit: i64,
) -> Result<Vec<RecentQuestion>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT q.created_at, q.content, a.status, left(a.content, 300) \
             FROM messages q LEFT JOIN messages a ON a.reply_to = q.id \
             WHERE q.user_id = $1 AND q.role = 'user' \
             ORDER BY q.created_at DESC, q.id DESC LIMIT $2",
        )
        .await?;
    let rows = client.query(&stmt, &[&user_id, &limit]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let status: Option<String> = row.get(2);
            RecentQuestion {
                asked_at: row.get(0),
                question: row.get(1),
                answer_status: status.as_deref().and_then(status_of),
                answer_excerpt: row.get(3),
            }
        })
        .collect())
}

fn status_of(s: &str) -> Option<MessageStatus> {
    match s {
        "pending" => Some(MessageStatus::Pending),
        "complete" => Some(MessageStatus::Complete),
        "cancelled" => Some(MessageStatus::Cancelled),
        "error" => Some(MessageStatus::Error),
        _ => None,
    }
}
