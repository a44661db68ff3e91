//! Answers whose process died: no question stays "being answered" forever.
//!
//! Each process registers in `instances` at start and refreshes its `seen_at` every
//! `INSTANCE_HEARTBEAT_SECS`. Each stored question has a row in `answers_in_flight` naming the
//! process answering it, deleted when its answer is stored (`store::store_answer`). A row whose
//! process has not beaten for `INSTANCE_STALE_SECS` (killed, crashed, or stopped past its grace
//! period) belongs to an answer that will never come: [`sweep`] stores it as an `error` answer
//! with the code `interrupted`, which history and the conversation view then show, and the user
//! can simply ask again. The sweep runs at start, on every heartbeat and with the scheduled
//! cleanup; concurrent sweeps of several processes are harmless (each row is deleted once).
//!
//! A process that was only cut off from the database (not dead) may find its answer swept when
//! it gets back; its late write then replaces the `interrupted` marker (see `store_answer`).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::relay::Relay;

/// Rows of instances silent for this long, with nothing left in flight, are deleted.
const FORGET_INSTANCES_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Inserts or refreshes this process's heartbeat row.
pub async fn beat(db: &Pool, instance_id: Uuid) -> anyhow::Result<()> {
    let client = db.get().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO instances (instance_id) VALUES ($1) \
             ON CONFLICT (instance_id) DO UPDATE SET seen_at = now()",
        )
        .await?;
    client.execute(&stmt, &[&instance_id]).await?;
    Ok(())
}

/// Marks as `interrupted` the answers in flight on processes other than `instance_id` that
/// have not beaten for `stale_after`. Returns how many.
pub async fn sweep(db: &Pool, instance_id: Uuid, stale_after: Duration) -> anyhow::Result<u64> {
    let client = db.get().await?;
    let stmt = client
        .prepare_cached(
            "WITH orphans AS ( \
               DELETE FROM answers_in_flight f \
               WHERE f.instance_id <> $1 \
                 AND NOT EXISTS (SELECT 1 FROM instances i \
                                 WHERE i.instance_id = f.instance_id \
                                   AND i.seen_at > now() - make_interval(secs => $2)) \
               RETURNING f.question_id) \
             INSERT INTO messages (id, conversation_id, user_id, role, reply_to, content, status, \
                                   error_code) \
             SELECT gen_random_uuid(), q.conversation_id, q.user_id, 'assistant', q.id, '', \
                    'error', 'interrupted' \
             FROM orphans o JOIN messages q ON q.id = o.question_id \
             ON CONFLICT (reply_to) WHERE reply_to IS NOT NULL DO NOTHING",
        )
        .await?;
    let marked = client
        .execute(&stmt, &[&instance_id, &stale_after.as_secs_f64()])
        .await?;
    if marked > 0 {
        metrics::counter!("chat_answers_interrupted_total").increment(marked);
        tracing::warn!(
            answers = marked,
            "marked answers of stopped server processes as interrupted"
        );
    }
    let forget = client
        .prepare_cached(
            "DELETE FROM instances i WHERE i.seen_at < now() - make_interval(secs => $1) \
             AND NOT EXISTS (SELECT 1 FROM answers_in_flight f WHERE f.instance_id = i.instance_id)",
        )
        .await?;
    client
        .execute(&forget, &[&FORGET_INSTANCES_AFTER.as_secs_f64()])
        .await?;
    Ok(marked)
}

/// Registers this process and sweeps once (at start, before serving).
pub async fn start(db: &Pool, instance_id: Uuid, stale_after: Duration) -> anyhow::Result<()> {
    beat(db, instance_id).await?;
    sweep(db, instance_id, stale_after).await?;
    Ok(())
}

/// What the heartbeat works with.
pub struct Heartbeat {
    pub db: Pool,
    /// This process, as the cluster knows it.
    pub instance_id: Uuid,
    /// How often to beat and sweep (`INSTANCE_HEARTBEAT_SECS`).
    pub every: Duration,
    /// Processes silent for this long are dead (`INSTANCE_STALE_SECS`).
    pub stale_after: Duration,
    /// While it still publishes answers, a draining process beats on.
    pub relay: Arc<Relay>,
    pub shutdown: CancellationToken,
}

/// Beats and sweeps every heartbeat until shutdown. Failures (the database away) are logged
/// once per outage; the next tick tries again.
pub async fn run(heartbeat: Heartbeat) {
    let Heartbeat {
        db,
        instance_id,
        every,
        stale_after,
        relay,
        shutdown,
    } = heartbeat;
    let period = every.max(Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            // A draining instance beats on while its answers are still being published, so
            // readers on other instances do not take them for interrupted (the drain itself
            // is bounded by the shutdown grace period).
            () = shutdown.cancelled(), if !shutdown.is_cancelled() => continue,
            () = tokio::time::sleep(Duration::from_millis(100)), if shutdown.is_cancelled() => {
                if relay.publishing() == 0 {
                    break;
                }
                continue;
            }
            _ = ticks.tick() => {}
        }
        let result = async {
            beat(&db, instance_id).await?;
            sweep(&db, instance_id, stale_after).await
        }
        .await;
        match result {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("instance heartbeat: database reachable again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "instance heartbeat failed; retrying every heartbeat");
            }
            Err(_) => {}
        }
    }
}
