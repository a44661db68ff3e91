//! The wire between instances: cluster events as JSON envelopes on one NOTIFY channel, and the
//! `LISTEN` connection that receives them.
//!
//! Events go out with `pg_notify('support_chat_events', '{"origin":..,"event":..}')`, from a
//! pooled connection or inside the caller's transaction (delivered at commit). They come in on a
//! dedicated `LISTEN` connection that reconnects after failures; an instance ignores its own
//! events (it has already acted on them locally). Payloads stay under PostgreSQL's limit: a
//! session event too large is sent with its free-text fields trimmed.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::StreamExt;
use protocol::admin::AdminEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::chat::sessions::SessionRegistry;

/// The NOTIFY channel of cluster events.
pub const CHANNEL: &str = "support_chat_events";
/// PostgreSQL refuses payloads of 8000 bytes or more; session events are trimmed below this.
const MAX_PAYLOAD_BYTES: usize = 7000;
/// Free-text session fields (user agent, address, name) are cut to this many characters when an
/// event would otherwise be too large to notify.
const TRIMMED_FIELD_CHARS: usize = 256;

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

/// Sends `payload` on [`CHANNEL`] from a pooled connection.
pub(super) async fn publish(db: &Pool, payload: &str) -> anyhow::Result<()> {
    let client = db.get().await?;
    let stmt = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
    client.execute(&stmt, &[&CHANNEL, &payload]).await?;
    Ok(())
}

/// The payload of `event`, or `None` (logged) if it cannot be made small enough.
pub(super) fn payload(origin: Uuid, event: ClusterEvent) -> Option<String> {
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

/// Publishes `events` from inside `tx` (delivered when it commits, in this order), in one
/// statement however many there are.
pub(super) async fn notify_all(
    tx: &deadpool_postgres::Transaction<'_>,
    origin: Uuid,
    events: Vec<AdminEvent>,
) -> Result<(), tokio_postgres::Error> {
    let payloads: Vec<String> = events
        .into_iter()
        .filter_map(|event| payload(origin, ClusterEvent::Session { event }))
        .collect();
    if payloads.is_empty() {
        return Ok(());
    }
    // `unnest` yields the array in order, and each row's `pg_notify` queues its payload as
    // the row is produced.
    let stmt = tx
        .prepare_cached(
            "SELECT count(pg_notify($1, payload)) FROM unnest($2::text[]) AS t(payload)",
        )
        .await?;
    tx.execute(&stmt, &[&CHANNEL, &payloads]).await?;
    Ok(())
}

/// Keeps a `LISTEN` connection open (reconnecting after failures) until `shutdown`, passing
/// other instances' session events to local admin subscribers and their knowledge-base
/// changes to the reloader.
pub(super) async fn listen(
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
    use crate::chat::session_changes::sample_session as session;

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
}
