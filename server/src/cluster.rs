//! What several server instances behind one load balancer share, through PostgreSQL only.
//!
//! - Every process has a random instance id ([`Cluster::instance_id`]).
//! - Events go out with `pg_notify('support_chat_events', '{"origin":..,"event":..}')` and come
//!   in on a dedicated `LISTEN` connection that reconnects after failures; an instance ignores
//!   its own events (it has already acted on them locally).
//! - Knowledge-base reloads: a reload asked of one instance publishes [`ClusterEvent::KbChanged`];
//!   the others reload their own index (cheap: embeddings are cached in PostgreSQL) and tell
//!   their own admin subscribers. A reload caused by a notification publishes nothing, so two
//!   instances never bounce reloads back and forth.
//! - Live sessions: the [`SessionRegistry`] records each open/update/close in
//!   [`SessionChanges`] (a coalescing map, so a socket never waits on the database); a writer
//!   task turns them into rows of `live_sessions` and session events, one transaction per
//!   batch (notifications are delivered at commit, so a listener that then reads the table
//!   sees the row). A heartbeat refreshes this instance's rows; rows of instances silent for
//!   longer than the staleness window are ignored by readers and deleted (with a
//!   `session_closed` event) by the next heartbeat of any instance. A graceful shutdown deletes
//!   this instance's rows.
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures::StreamExt;
use protocol::admin::{AdminEvent, SessionInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::chat::session_changes::{Pending, SessionChanges};
use crate::chat::sessions::SessionRegistry;
use crate::rag::RagError;
use crate::state::AppState;

/// The NOTIFY channel of cluster events.
pub const CHANNEL: &str = "support_chat_events";
/// PostgreSQL refuses payloads of 8000 bytes or more; session events are trimmed below this.
const MAX_PAYLOAD_BYTES: usize = 7000;
/// Free-text session fields (user agent, address, name) are cut to this many characters when an
/// event would otherwise be too large to notify.
const TRIMMED_FIELD_CHARS: usize = 256;
/// Wait before retrying a reload that found another one in progress (which may have started
/// before the change it was told about).
const RELOAD_RETRY: Duration = Duration::from_millis(500);

/// What travels on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The instance that published it.
    pub origin: Uuid,
    pub event: ClusterEvent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A session event for admin subscribers (`session_opened`, `session_updated`,
    /// `session_closed`).
    Session { event: AdminEvent },
    /// The knowledge base on disk changed: reload. Only a signal, because a `KbInfo` (with its
    /// list of failed documents) could exceed the payload limit and each instance reports its
    /// own reload anyway.
    KbChanged,
    /// An admin disconnected a session: the instance that holds it closes its socket.
    Disconnect { session_id: Uuid, reason: String },
    /// A user cancelled, on another instance, an answer this instance may be generating (see
    /// [`crate::chat::relay`]): the instance generating it stops it.
    CancelAnswer { user_id: Uuid, ask_id: String },
}

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
        let Some(payload) = payload(self.instance_id, ClusterEvent::KbChanged) else {
            return;
        };
        let sent = async {
            let client = self.db.get().await?;
            let stmt = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
            client.execute(&stmt, &[&CHANNEL, &payload]).await?;
            anyhow::Ok(())
        };
        if let Err(e) = sent.await {
            tracing::warn!(error = %e, "could not tell other instances about the knowledge-base reload");
        }
    }

    /// Tells the other instances to close session `session_id` (whichever holds it does).
    pub async fn publish_disconnect(&self, session_id: Uuid, reason: String) -> anyhow::Result<()> {
        let event = ClusterEvent::Disconnect { session_id, reason };
        let payload = payload(self.instance_id, event)
            .ok_or_else(|| anyhow::anyhow!("disconnect event not publishable"))?;
        let client = self.db.get().await?;
        let stmt = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
        client.execute(&stmt, &[&CHANNEL, &payload]).await?;
        Ok(())
    }

    /// Tells the other instances to cancel the user's answer `ask_id` (whichever generates it
    /// does). The ask id is client input of bounded length (checked at the ask).
    pub async fn publish_cancel(&self, user_id: Uuid, ask_id: String) -> anyhow::Result<()> {
        let event = ClusterEvent::CancelAnswer { user_id, ask_id };
        let payload = payload(self.instance_id, event)
            .ok_or_else(|| anyhow::anyhow!("cancel event not publishable"))?;
        let client = self.db.get().await?;
        let stmt = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
        client.execute(&stmt, &[&CHANNEL, &payload]).await?;
        Ok(())
    }

    /// Live sessions of the other instances, from `live_sessions`, skipping stale rows.
    pub async fn remote_sessions(&self) -> anyhow::Result<Vec<SessionInfo>> {
        let client = self.db.get().await?;
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
            .query(
                &stmt,
                &[&self.instance_id, &self.settings.stale_after.as_secs_f64()],
            )
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
}

/// Every live session of every instance, oldest first: this instance's from memory, the
/// others' from the table.
pub async fn all_sessions(state: &AppState) -> anyhow::Result<Vec<SessionInfo>> {
    let remote = state.cluster.remote_sessions().await?;
    Ok(merge(state.sessions.list(), remote))
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

/// The payload of `event`, or `None` (logged) if it cannot be made small enough.
fn payload(origin: Uuid, event: ClusterEvent) -> Option<String> {
    let mut envelope = Envelope { origin, event };
    for attempt in 0..2 {
        match serde_json::to_string(&envelope) {
            Ok(text) if text.len() < MAX_PAYLOAD_BYTES => return Some(text),
            Ok(_) if attempt == 0 => trim(&mut envelope.event),
            Ok(text) => {
                tracing::warn!(
                    bytes = text.len(),
                    "cluster event too large to notify; dropped"
                );
            }
            Err(e) => tracing::error!(error = %e, "cluster event not serialisable"),
        }
    }
    None
}

/// Cuts the free-text fields of a session event, the only unbounded part of one.
fn trim(event: &mut ClusterEvent) {
    fn cut(text: &mut String) {
        if let Some((at, _)) = text.char_indices().nth(TRIMMED_FIELD_CHARS) {
            text.truncate(at);
        }
    }
    if let ClusterEvent::Session {
        event: AdminEvent::SessionOpened { session } | AdminEvent::SessionUpdated { session },
    } = event
    {
        session.user_agent.iter_mut().for_each(cut);
        session.remote_addr.iter_mut().for_each(cut);
        cut(&mut session.username);
    }
}

/// Runs the cluster side of this instance until `state.shutdown`: the listener, the reloads it
/// asks for, and the session writer with its heartbeat. At shutdown this instance's rows are
/// deleted (and their sessions announced closed).
pub async fn run(state: AppState) {
    // Reload requests from the listener to the reloader; the stored permit coalesces requests
    // that arrive while a reload runs into one more reload.
    let reload = Arc::new(Notify::new());
    let listener = listen(
        state.config.database_url.clone(),
        state.cluster.instance_id,
        state.sessions.event_sender(),
        Arc::clone(&reload),
        Arc::clone(&state.sessions),
        state.shutdown.clone(),
    );
    tracing::info!(instance_id = %state.cluster.instance_id, "cluster tasks started");
    tokio::join!(
        listener,
        reload_on_request(&state, &reload),
        write_sessions(&state)
    );
    tracing::info!("cluster tasks stopped");
}

/// Reloads the knowledge base each time another instance says it changed (several requests
/// while one reload runs make one more reload), and tells local admin subscribers.
async fn reload_on_request(state: &AppState, requested: &Notify) {
    let shutdown = &state.shutdown;
    let events = state.sessions.event_sender();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = requested.notified() => {}
        }
        loop {
            // Dropping a reload half-way is safe: the index is swapped only at its end.
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = state.answerer.rag().reload() => result,
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
async fn write_sessions(state: &AppState) {
    let cluster = &state.cluster;
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
    loop {
        let result = tokio::select! {
            () = state.shutdown.cancelled() => break,
            () = cluster.changes.notified(), if !degraded => flush(cluster).await,
            _ = heartbeat.tick() => beat(state, &mut resync).await,
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
    if let Err(e) = leave(cluster).await {
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
    match write_batch(cluster, &batch).await {
        Ok(()) => Ok(()),
        Err(e) => {
            cluster.changes.restore(batch);
            Err(e)
        }
    }
}

async fn write_batch(cluster: &Cluster, batch: &HashMap<Uuid, Pending>) -> anyhow::Result<()> {
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
    let mut client = cluster.db.get().await?;
    let tx = client.transaction().await?;
    upsert(&tx, cluster.instance_id, &upserts).await?;
    if !closed.is_empty() {
        let stmt = tx
            .prepare_cached("DELETE FROM live_sessions WHERE session_id = ANY($1)")
            .await?;
        tx.execute(&stmt, &[&closed]).await?;
    }
    notify_all(&tx, cluster.instance_id, events).await?;
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

/// Publishes `events` from inside `tx` (delivered when it commits).
async fn notify_all(
    tx: &deadpool_postgres::Transaction<'_>,
    origin: Uuid,
    events: Vec<AdminEvent>,
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
    for event in events {
        if let Some(payload) = payload(origin, ClusterEvent::Session { event }) {
            tx.execute(&stmt, &[&CHANNEL, &payload]).await?;
        }
    }
    Ok(())
}

/// One heartbeat: write what is pending, refresh (or, after trouble, rewrite) this instance's
/// rows, and delete the rows of instances that stopped beating.
async fn beat(state: &AppState, resync: &mut bool) -> anyhow::Result<()> {
    let cluster = &state.cluster;
    flush(cluster).await?;
    let client = cluster.db.get().await?;
    let local = state.sessions.len();
    if !*resync {
        let stmt = client
            .prepare_cached("UPDATE live_sessions SET seen_at = now() WHERE instance_id = $1")
            .await?;
        let refreshed = client.execute(&stmt, &[&cluster.instance_id]).await?;
        // Rows missing (deleted as stale while we could not beat, or lost with an unlogged
        // table after a database crash) or left over: rewrite them all.
        *resync = usize::try_from(refreshed).ok() != Some(local);
    }
    drop(client);
    if *resync {
        rewrite_own_rows(cluster, &state.sessions).await?;
        *resync = false;
    }
    sweep_stale(cluster, &state.sessions.event_sender()).await
}

/// Makes this instance's rows exactly its live sessions. Changes recorded after the list is
/// taken are still pending and are written after this, so they are not undone.
async fn rewrite_own_rows(cluster: &Cluster, sessions: &SessionRegistry) -> anyhow::Result<()> {
    let live = sessions.list();
    let ids: Vec<Uuid> = live.iter().map(|s| s.session_id).collect();
    let mut client = cluster.db.get().await?;
    let tx = client.transaction().await?;
    upsert(&tx, cluster.instance_id, &live.iter().collect::<Vec<_>>()).await?;
    let stmt = tx
        .prepare_cached(
            "DELETE FROM live_sessions WHERE instance_id = $1 AND NOT (session_id = ANY($2))",
        )
        .await?;
    tx.execute(&stmt, &[&cluster.instance_id, &ids]).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the rows of dead instances and announces their sessions closed, here (this
/// instance ignores its own notifications) and to the other instances.
async fn sweep_stale(
    cluster: &Cluster,
    local_events: &broadcast::Sender<AdminEvent>,
) -> anyhow::Result<()> {
    let mut client = cluster.db.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare_cached(
            "DELETE FROM live_sessions WHERE seen_at < now() - make_interval(secs => $1) \
             RETURNING session_id",
        )
        .await?;
    let rows = tx
        .query(&stmt, &[&cluster.settings.stale_after.as_secs_f64()])
        .await?;
    let events: Vec<AdminEvent> = rows
        .iter()
        .map(|row| AdminEvent::SessionClosed {
            session_id: row.get(0),
        })
        .collect();
    notify_all(&tx, cluster.instance_id, events.clone()).await?;
    tx.commit().await?;
    if !events.is_empty() {
        tracing::info!(
            sessions = events.len(),
            "deleted live sessions of instances that stopped responding"
        );
    }
    for event in events {
        // No admin listening is fine.
        let _ = local_events.send(event);
    }
    Ok(())
}

/// Deletes this instance's rows at shutdown and announces their sessions closed.
async fn leave(cluster: &Cluster) -> anyhow::Result<()> {
    let mut client = cluster.db.get().await?;
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare_cached("DELETE FROM live_sessions WHERE instance_id = $1 RETURNING session_id")
        .await?;
    let rows = tx.query(&stmt, &[&cluster.instance_id]).await?;
    let events = rows
        .iter()
        .map(|row| AdminEvent::SessionClosed {
            session_id: row.get(0),
        })
        .collect();
    notify_all(&tx, cluster.instance_id, events).await?;
    tx.commit().await?;
    Ok(())
}

/// Keeps a `LISTEN` connection open (reconnecting after failures) until `shutdown`, passing
/// other instances' session events to local admin subscribers and their knowledge-base
/// changes to the reloader.
async fn listen(
    database_url: String,
    instance_id: Uuid,
    events: broadcast::Sender<AdminEvent>,
    reload: Arc<Notify>,
    sessions: Arc<SessionRegistry>,
    shutdown: CancellationToken,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    while !shutdown.is_cancelled() {
        let inbox = Inbox {
            instance_id,
            events: events.clone(),
            reload: Arc::clone(&reload),
            sessions: Arc::clone(&sessions),
        };
        let mut listening = false;
        match listen_once(
            &database_url,
            inbox,
            &shutdown,
            &mut connected_before,
            &mut listening,
        )
        .await
        {
            Ok(()) => return,
            Err(e) => {
                // A connection that worked starts the next outage's backoff from the beginning.
                if listening {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(error = %e, "cluster: LISTEN connection lost; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Where incoming notifications go.
struct Inbox {
    instance_id: Uuid,
    events: broadcast::Sender<AdminEvent>,
    reload: Arc<Notify>,
    /// This instance's sessions, for disconnects asked on another instance.
    sessions: Arc<SessionRegistry>,
}

impl Inbox {
    fn deliver(&self, payload: &str) {
        let envelope: Envelope = match serde_json::from_str(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: unreadable notification ignored");
                return;
            }
        };
        if envelope.origin == self.instance_id {
            return;
        }
        match envelope.event {
            // Sending never blocks; no admin listening is fine.
            ClusterEvent::Session { event } => drop(self.events.send(event)),
            // Coalesces: several changes during one reload make one more reload.
            ClusterEvent::KbChanged => self.reload.notify_one(),
            // Not ours (or already gone) is fine: only the holder acts.
            ClusterEvent::Disconnect { session_id, reason } => {
                if self.sessions.disconnect(session_id, reason) {
                    tracing::info!(%session_id, "session disconnected at another instance's request");
                }
            }
            // Only the instance generating the answer has it.
            ClusterEvent::CancelAnswer { user_id, ask_id } => {
                if let Some(log) = self.sessions.find_answer(user_id, &ask_id) {
                    log.cancel();
                    tracing::debug!("answer cancelled at another instance's request");
                }
            }
        }
    }
}

/// Returns `Ok` only on shutdown; any end of the connection is an error to reconnect after.
async fn listen_once(
    database_url: &str,
    inbox: Inbox,
    shutdown: &CancellationToken,
    connected_before: &mut bool,
    listening: &mut bool,
) -> anyhow::Result<()> {
    // Not `db::connect`: its connection driver discards notifications, and this one needs them.
    let (client, mut connection) = crate::db::connect_raw(database_url).await?;
    let reload = Arc::clone(&inbox.reload);
    // Drives the connection and delivers notifications (neither step blocks); aborted with this
    // function so it never outlives the listener.
    let mut driver = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(n) = message? {
                inbox.deliver(n.payload());
            }
        }
        Ok::<(), tokio_postgres::Error>(())
    }));
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    if *connected_before {
        // A knowledge-base change may have been announced while nobody listened.
        reload.notify_one();
    }
    *connected_before = true;
    *listening = true;
    tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        ended = &mut driver => match ended {
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(())) => Err(anyhow::anyhow!("the server closed the connection")),
            Err(e) => Err(anyhow::anyhow!("the connection driver stopped: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str) -> SessionInfo {
        SessionInfo {
            session_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            username: name.to_owned(),
            connected_at: Utc::now(),
            remote_addr: None,
            user_agent: None,
            asks: 0,
            answering: 0,
        }
    }

    #[test]
    fn oversized_session_events_are_trimmed_below_the_limit() {
        let mut s = session("a");
        s.user_agent = Some("x".repeat(20_000));
        let text = payload(
            Uuid::new_v4(),
            ClusterEvent::Session {
                event: AdminEvent::SessionOpened { session: s },
            },
        )
        .unwrap();
        assert!(text.len() < MAX_PAYLOAD_BYTES);
        let envelope: Envelope = serde_json::from_str(&text).unwrap();
        match envelope.event {
            ClusterEvent::Session {
                event: AdminEvent::SessionOpened { session },
            } => assert_eq!(session.user_agent.unwrap().len(), TRIMMED_FIELD_CHARS),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn merge_lists_each_session_once_oldest_first() {
        let old = session("old");
        let new = session("new");
        let merged = merge(vec![new.clone()], vec![old.clone(), new.clone()]);
        assert_eq!(merged, vec![old, new]);
    }
}
