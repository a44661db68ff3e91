//! What several server instances behind one load balancer share, through PostgreSQL only.
//!
//! - Every process has a random instance id ([`Cluster::instance_id`]).
//! - Events go out on one NOTIFY channel and come in on a dedicated `LISTEN` connection that
//!   reconnects after failures; an instance ignores its own events (it has already acted on
//!   them locally). See [`notify`].
//! - Knowledge-base reloads: a reload asked of one instance publishes [`ClusterEvent::KbChanged`];
//!   the others reload their own index (cheap: embeddings are cached in PostgreSQL) and tell
//!   their own admin subscribers. A reload caused by a notification publishes nothing, so two
//!   instances never bounce reloads back and forth.
//! - Live sessions: the [`SessionRegistry`] records each open/update/close in
//!   [`SessionChanges`] (a coalescing map, so a socket never waits on the database); a writer
//!   task turns them into rows of `live_sessions` and session events, at most one write per
//!   [`SESSION_WRITE_GAP`], one transaction per batch (notifications are delivered at commit, so
//!   a listener that then reads the table sees the row). A heartbeat refreshes this instance's
//!   rows; rows of instances silent for longer than the staleness window are ignored by readers
//!   and deleted (with a `session_closed` event) by the next heartbeat of any instance. A
//!   graceful shutdown deletes this instance's rows.
//!
//! - Cancels: a `cancel` frame for an answer another instance generates is published as
//!   [`ClusterEvent::CancelAnswer`]; the instance holding the answer stops it. (Answers
//!   themselves travel through tables, not notifications: see [`crate::chat::relay`].)
//!
//! Readers ([`all_sessions`]) take this instance's sessions from memory and the other
//! instances' from the table: the local list is the source the table is written from, so it is
//! never behind, and a session is listed as soon as its socket is ready.
//!
//! Notifications sent while the listening connection is down are lost; after a reconnect the
//! knowledge base is reloaded in case a change was missed. Admin consoles may miss session
//! events of other instances during such a gap (their next snapshot is right again).
//!
//! # Layout
//! - this file: the [`Cluster`] handle and the background tasks ([`run`]): the reloader, and the
//!   session writer with its heartbeat.
//! - [`notify`]: the event envelope and its payload limit, publishing, and the `LISTEN`
//!   connection with its reconnects.
//! - `store`: the `live_sessions` queries.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use protocol::admin::{AdminEvent, SessionInfo};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::chat::session_changes::SessionChanges;
use crate::chat::sessions::SessionRegistry;
use crate::rag::{Rag, RagError};

pub mod notify;
mod store;

pub use notify::{CHANNEL, ClusterEvent, Envelope};

/// Wait before retrying a reload that found another one in progress (which may have started
/// before the change it was told about).
const RELOAD_RETRY: Duration = Duration::from_millis(500);

/// Shortest time between two writes of session changes. Each ask changes its session twice
/// (answering, then done), so writing every change at once cost a transaction per change: at
/// 50 sockets asking, more statements than the answers' own. A quarter second still looks
/// live on an admin console; changes of one session within it make one row update and one
/// event (the latest state).
const SESSION_WRITE_GAP: Duration = Duration::from_millis(250);

/// Heartbeat pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSettings {
    /// How often an instance refreshes its rows and sweeps stale ones.
    pub heartbeat: Duration,
    /// Rows not refreshed for this long belong to a dead instance.
    pub stale_after: Duration,
}

impl ClusterSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            heartbeat: Duration::from_secs(config.instance_heartbeat_secs),
            stale_after: Duration::from_secs(config.instance_stale_secs),
        }
    }
}

/// This instance's identity and its view of the others.
pub struct Cluster {
    instance_id: Uuid,
    db: Pool,
    settings: ClusterSettings,
    /// Session changes waiting for the writer (shared with the [`SessionRegistry`]).
    changes: Arc<SessionChanges>,
}

impl Cluster {
    /// A new instance (fresh id) that writes the changes recorded in `changes`.
    pub fn new(db: Pool, settings: ClusterSettings, changes: Arc<SessionChanges>) -> Self {
        Self {
            instance_id: Uuid::new_v4(),
            db,
            settings,
            changes,
        }
    }

    pub fn instance_id(&self) -> Uuid {
        self.instance_id
    }

    /// Tells the other instances that the knowledge base changed. Failing to tell them is
    /// logged, not returned: the local reload did happen.
    pub async fn publish_kb_changed(&self) {
        let Some(payload) = notify::payload(self.instance_id, ClusterEvent::KbChanged) else {
            return;
        };
        if let Err(e) = notify::publish(&self.db, &payload).await {
            tracing::warn!(error = %e, "could not tell other instances about the knowledge-base reload");
        }
    }

    /// Tells the other instances to close session `session_id` (whichever holds it does).
    pub async fn publish_disconnect(&self, session_id: Uuid, reason: String) -> anyhow::Result<()> {
        let event = ClusterEvent::Disconnect { session_id, reason };
        let payload = notify::payload(self.instance_id, event)
            .ok_or_else(|| anyhow::anyhow!("disconnect event not publishable"))?;
        notify::publish(&self.db, &payload).await
    }

    /// Tells the other instances to cancel the user's answer `ask_id` (whichever generates it
    /// does). The ask id is client input of bounded length (checked at the ask).
    pub async fn publish_cancel(&self, user_id: Uuid, ask_id: String) -> anyhow::Result<()> {
        let event = ClusterEvent::CancelAnswer { user_id, ask_id };
        let payload = notify::payload(self.instance_id, event)
            .ok_or_else(|| anyhow::anyhow!("cancel event not publishable"))?;
        notify::publish(&self.db, &payload).await
    }

    /// Live sessions of the other instances, from `live_sessions`, skipping stale rows.
    pub async fn remote_sessions(&self) -> anyhow::Result<Vec<SessionInfo>> {
        store::remote_sessions(&self.db, self.instance_id, self.settings.stale_after).await
    }
}

/// Every live session of every instance, oldest first: this instance's from memory, the
/// others' from the table.
pub async fn all_sessions(
    cluster: &Cluster,
    sessions: &SessionRegistry,
) -> anyhow::Result<Vec<SessionInfo>> {
    let remote = cluster.remote_sessions().await?;
    Ok(merge(sessions.list(), remote))
}

/// `local` and `remote` as one list, oldest first; a session in both counts once (the local
/// copy wins: it is never behind).
pub fn merge(local: Vec<SessionInfo>, remote: Vec<SessionInfo>) -> Vec<SessionInfo> {
    let mut sessions = local;
    let known: std::collections::HashSet<Uuid> = sessions.iter().map(|s| s.session_id).collect();
    sessions.extend(
        remote
            .into_iter()
            .filter(|s| !known.contains(&s.session_id)),
    );
    sessions.sort_by_key(|s| s.connected_at);
    sessions
}

/// What the cluster tasks work with besides the [`Cluster`] handle (which holds the pool).
pub struct TaskInputs {
    /// Where the `LISTEN` connection connects (a connection of its own, not a pooled one).
    pub database_url: String,
    /// This instance's sessions: the rows to write, the admin events to send, the sockets other
    /// instances ask to close.
    pub sessions: Arc<SessionRegistry>,
    /// The knowledge base to reload when another instance says it changed.
    pub rag: Arc<Rag>,
    pub shutdown: CancellationToken,
}

/// Runs the cluster side of this instance until `shutdown`: the listener, the reloads it asks
/// for, and the session writer with its heartbeat. At shutdown this instance's rows are deleted
/// (and their sessions announced closed).
pub async fn run(cluster: Arc<Cluster>, inputs: TaskInputs) {
    let TaskInputs {
        database_url,
        sessions,
        rag,
        shutdown,
    } = inputs;
    // Reload requests from the listener to the reloader; the stored permit coalesces requests
    // that arrive while a reload runs into one more reload.
    let reload = Arc::new(Notify::new());
    let listener = notify::listen(
        database_url,
        cluster.instance_id,
        sessions.event_sender(),
        Arc::clone(&reload),
        Arc::clone(&sessions),
        shutdown.clone(),
    );
    tracing::info!(instance_id = %cluster.instance_id, "cluster tasks started");
    tokio::join!(
        listener,
        reload_on_request(&rag, &sessions, &shutdown, &reload),
        write_sessions(&cluster, &sessions, &shutdown)
    );
    tracing::info!("cluster tasks stopped");
}

/// Reloads the knowledge base each time another instance says it changed (several requests
/// while one reload runs make one more reload), and tells local admin subscribers.
async fn reload_on_request(
    rag: &Rag,
    sessions: &SessionRegistry,
    shutdown: &CancellationToken,
    requested: &Notify,
) {
    let events = sessions.event_sender();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = requested.notified() => {}
        }
        loop {
            // Dropping a reload half-way is safe: the index is swapped only at its end.
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = rag.reload() => result,
            };
            match result {
                Ok(kb) => {
                    tracing::info!("knowledge base reloaded after a change on another instance");
                    // No admin listening is fine; nothing is published: no reload ping-pong.
                    let _ = events.send(AdminEvent::KbReloaded { kb });
                    break;
                }
                // The running reload may have read the files before the change: run another.
                Err(RagError::ReloadInProgress) => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RELOAD_RETRY) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "knowledge-base reload asked by another instance failed");
                    break;
                }
            }
        }
    }
}

/// Writes recorded session changes as they come, heartbeats, and cleans up at shutdown.
async fn write_sessions(
    cluster: &Cluster,
    sessions: &SessionRegistry,
    shutdown: &CancellationToken,
) {
    // At least 100 ms: `interval` refuses zero, and config validation already asks for 1 s.
    let mut heartbeat =
        tokio::time::interval(cluster.settings.heartbeat.max(Duration::from_millis(100)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rewrite all of this instance's rows at the next heartbeat: set after any failure, since
    // other instances may have deleted our rows as stale meanwhile, or a batch may have
    // committed without our hearing of it.
    let mut resync = true;
    // After a failure, changes wait for the next heartbeat instead of each retrying (and
    // logging) on its own while the database is unreachable.
    let mut degraded = false;
    // A change is written at once after a quiet spell; changes that follow within
    // `SESSION_WRITE_GAP` wait for its end and share one write.
    let mut next_write = tokio::time::Instant::now();
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => break,
            () = cluster.changes.notified(), if !degraded => {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(next_write) => {}
                }
                next_write = tokio::time::Instant::now() + SESSION_WRITE_GAP;
                flush(cluster).await
            }
            _ = heartbeat.tick() => beat(cluster, sessions, &mut resync).await,
        };
        match result {
            Ok(()) => degraded = false,
            Err(e) => {
                resync = true;
                degraded = true;
                tracing::warn!(error = %e, "live sessions: database write failed; retrying at the next heartbeat");
            }
        }
    }
    if let Err(e) = store::leave(&cluster.db, cluster.instance_id).await {
        tracing::warn!(error = %e, "live sessions: could not delete this instance's rows at shutdown; they expire as stale");
    }
}

/// Writes the pending session changes and publishes their events, in one transaction. On
/// failure the batch goes back to be written later.
async fn flush(cluster: &Cluster) -> anyhow::Result<()> {
    let batch = cluster.changes.take();
    if batch.is_empty() {
        return Ok(());
    }
    match store::write_batch(&cluster.db, cluster.instance_id, &batch).await {
        Ok(()) => Ok(()),
        Err(e) => {
            cluster.changes.restore(batch);
            Err(e)
        }
    }
}

/// One heartbeat: write what is pending, refresh (or, after trouble, rewrite) this instance's
/// rows, and delete the rows of instances that stopped beating.
async fn beat(
    cluster: &Cluster,
    sessions: &SessionRegistry,
    resync: &mut bool,
) -> anyhow::Result<()> {
    flush(cluster).await?;
    let client = cluster.db.get().await?;
    let local = sessions.len();
    if !*resync {
        let refreshed = store::refresh_own_rows(&client, cluster.instance_id).await?;
        // Rows missing (deleted as stale while we could not beat, or lost with an unlogged
        // table after a database crash) or left over: rewrite them all.
        *resync = usize::try_from(refreshed).ok() != Some(local);
    }
    drop(client);
    if *resync {
        // Changes recorded after the list is taken are still pending and are written after
        // this, so they are not undone.
        let live = sessions.list();
        store::rewrite_own_rows(&cluster.db, cluster.instance_id, &live).await?;
        *resync = false;
    }
    let closed = store::sweep_stale(
        &cluster.db,
        cluster.instance_id,
        cluster.settings.stale_after,
    )
    .await?;
    if !closed.is_empty() {
        tracing::info!(
            sessions = closed.len(),
            "deleted live sessions of instances that stopped responding"
        );
    }
    // This instance ignores its own notifications: its admin subscribers hear it here.
    let events = sessions.event_sender();
    for event in closed {
        // No admin listening is fine.
        let _ = events.send(event);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::session_changes::sample_session as session;

    #[test]
    fn merge_lists_each_session_once_oldest_first() {
        let old = session("old");
        let new = session("new");
        let merged = merge(vec![new.clone()], vec![old.clone(), new.clone()]);
        assert_eq!(merged, vec![old, new]);
    }
}
