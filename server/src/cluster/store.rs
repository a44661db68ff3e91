//! The `live_sessions` table: every instance's live sessions, one row each, written by the
//! cluster writer and read by every instance's admin view.
//!
//! Each write that changes who is live also publishes the matching session events from inside
//! its transaction ([`notify_all`]), so a listener that reads the table after an event
//! sees the row. Rows carry `seen_at`; rows not refreshed for the staleness window belong to a
//! dead instance: readers skip them and [`sweep_stale`] deletes them.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool};
use protocol::admin::{AdminEvent, SessionInfo};
use uuid::Uuid;

use super::notify::notify_all;
use crate::chat::session_changes::Pending;

/// Live sessions of instances other than `instance_id`, skipping rows older than
/// `stale_after`, oldest first.
pub(super) async fn remote_sessions(
    db: &Pool,
    instance_id: Uuid,
    stale_after: Duration,
) -> anyhow::Result<Vec<SessionInfo>> {
    let client = db.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT session_id, user_id, username, connected_at, remote_addr, user_agent, \
                    asks, answering \
             FROM live_sessions \
             WHERE instance_id <> $1 AND seen_at > now() - make_interval(secs => $2) \
             ORDER BY connected_at",
        )
        .await?;
    let rows = client
        .query(&stmt, &[&instance_id, &stale_after.as_secs_f64()])
        .await?;
    Ok(rows
        .iter()
        .map(|row| SessionInfo {
            session_id: row.get("session_id"),
            user_id: row.get("user_id"),
            username: row.get("username"),
            connected_at: row.get("connected_at"),
            remote_addr: row.get("remote_addr"),
            user_agent: row.get("user_agent"),
            asks: u64::try_from(row.get::<_, i64>("asks")).unwrap_or(0),
            answering: u32::try_from(row.get::<_, i32>("answering")).unwrap_or(0),
        })
        .collect())
}

/// Writes a batch of `instance_id`'s session changes and publishes their events, in one
/// transaction.
pub(super) async fn write_batch(
    db: &Pool,
    instance_id: Uuid,
    batch: &HashMap<Uuid, Pending>,
) -> anyhow::Result<()> {
    let mut upserts = Vec::new();
    let mut closed = Vec::new();
    let mut events = Vec::new();
    for (session_id, change) in batch {
        match change {
            Pending::Upsert { session, opened } => {
                upserts.push(session);
                let session = session.clone();
                events.push(if *opened {
                    AdminEvent::SessionOpened { session }
                } else {
                    AdminEvent::SessionUpdated { session }
                });
            }
            Pending::Close => {
                closed.push(*session_id);
                events.push(AdminEvent::SessionClosed {
                    session_id: *session_id,
                });
            }
        }
    }
    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    upsert(&tx, instance_id, &upserts).await?;
    if !closed.is_empty() {
        let stmt = tx
            .prepare_cached("DELETE FROM live_sessions WHERE session_id = ANY($1)")
            .await?;
        tx.execute(&stmt, &[&closed]).await?;
    }
    notify_all(&tx, instance_id, events).await?;
    tx.commit().await?;
    Ok(())
}

/// Inserts or refreshes `sessions` as rows of `instance_id`, seen now.
async fn upsert(
    tx: &deadpool_postgres::Transaction<'_>,
    instance_id: Uuid,
    sessions: &[&SessionInfo],
) -> Result<(), tokio_postgres::Error> {
    if sessions.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = sessions.iter().map(|s| s.session_id).collect();
    let users: Vec<Uuid> = sessions.iter().map(|s| s.user_id).collect();
    let names: Vec<&str> = sessions.iter().map(|s| s.username.as_str()).collect();
    let connected: Vec<DateTime<Utc>> = sessions.iter().map(|s| s.connected_at).collect();
    let addrs: Vec<Option<&str>> = sessions.iter().map(|s| s.remote_addr.as_deref()).collect();
    let agents: Vec<Option<&str>> = sessions.iter().map(|s| s.user_agent.as_deref()).collect();
    let asks: Vec<i64> = sessions
        .iter()
        .map(|s| i64::try_from(s.asks).unwrap_or(i64::MAX))
        .collect();
    let answering: Vec<i32> = sessions
        .iter()
        .map(|s| i32::try_from(s.answering).unwrap_or(i32::MAX))
        .collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO live_sessions (session_id, instance_id, user_id, username, connected_at, \
                                        remote_addr, user_agent, asks, answering, seen_at) \
             SELECT s.session_id, $1, s.user_id, s.username, s.connected_at, s.remote_addr, \
                    s.user_agent, s.asks, s.answering, now() \
             FROM UNNEST($2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[], \
                         $7::text[], $8::bigint[], $9::integer[]) \
                  AS s(session_id, user_id, username, connected_at, remote_addr, user_agent, \
                       asks, answering) \
             ON CONFLICT (session_id) DO UPDATE SET instance_id = EXCLUDED.instance_id, \
                 asks = EXCLUDED.asks, answering = EXCLUDED.answering, seen_at = now()",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &instance_id,
            &ids,
            &users,
            &names,
            &connected,
            &addrs,
            &agents,
            &asks,
            &answering,
        ],
    )
    .await?;
    Ok(())
}

/// Marks `instance_id`'s rows as seen now; returns how many there were.
pub(super) async fn refresh_own_rows(
    client: &impl GenericClient,
    instance_id: Uuid,
) -> anyhow::Result<u64> {
    let stmt = client
        .prepare_cached("UPDATE live_sessions SET seen_at = now() WHERE instance_id = $1")
        .await?;
    Ok(client.execute(&stmt, &[&instance_id]).await?)
}

/// Makes `instance_id`'s rows exactly `live`.
pub(super) async fn rewrite_own_rows(
    db: &Pool,
    instance_id: Uuid,
    live: &[SessionInfo],
) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = live.iter().map(|s| s.session_id).collect();
    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    upsert(&tx, instance_id, &live.iter().collect::<Vec<_>>()).await?;
    let stmt = tx
        .prepare_cached(
            "DELETE FROM live_sessions WHERE instance_id = $1 AND NOT (session_id = ANY($2))",
        )
        .await?;
    tx.execute(&stmt, &[&instance_id, &ids]).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the rows not seen for `stale_after` (their instances died) and announces their
/// sessions closed to the other instances; returns those events (this instance ignores its own
/// notifications, so the caller tells its own subscribers).
pub(super) async fn sweep_stale(
    db: &Pool,
    instance_id: Uuid,
    stale_after: Duration,
) -> anyhow::Result<Vec<AdminEvent>> {
    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare_cached(
            "DELETE FROM live_sessions WHERE seen_at < now() - make_interval(secs => $1) \
             RETURNING session_id",
        )
        .await?;
    let rows = tx.query(&stmt, &[&stale_after.as_secs_f64()]).await?;
    let events: Vec<AdminEvent> = rows
        .iter()
        .map(|row| AdminEvent::SessionClosed {
            session_id: row.get(0),
        })
        .collect();
    notify_all(&tx, instance_id, events.clone()).await?;
    tx.commit().await?;
    Ok(events)
}

/// Deletes `instance_id`'s rows (at shutdown) and announces their sessions closed.
pub(super) async fn leave(db: &Pool, instance_id: Uuid) -> anyhow::Result<()> {
    let mut client = db.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare_cached("DELETE FROM live_sessions WHERE instance_id = $1 RETURNING session_id")
        .await?;
    let rows = tx.query(&stmt, &[&instance_id]).await?;
    let events = rows
        .iter()
        .map(|row| AdminEvent::SessionClosed {
            session_id: row.get(0),
        })
        .collect();
    notify_all(&tx, instance_id, events).await?;
    tx.commit().await?;
    Ok(())
}
