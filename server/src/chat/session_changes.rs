//! Session changes on their way from the [`SessionRegistry`](super::sessions::SessionRegistry)
//! to the other instances: a coalescing map, so a socket never waits on the database.
//!
//! The registry records each open, update and close here; the cluster writer
//! ([`crate::cluster`]) takes the pending changes in batches and writes them to `live_sessions`.
//! Several changes of one session before a write make one (the latest), and a session opened
//! and closed before the writer saw it makes none.

use std::collections::HashMap;
use std::sync::Mutex;

use protocol::admin::SessionInfo;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::sync::lock;

/// A session change not yet written, the latest per session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pending {
    /// Insert or update the row; `opened` when no row was written for it yet (the event is
    /// then `session_opened`, else `session_updated`).
    Upsert {
        session: SessionInfo,
        opened: bool,
    },
    Close,
}

/// `older` followed by `newer` as one change; `None` when nothing is left to write (a session
/// opened and closed before the writer saw it).
fn combine(older: Pending, newer: Pending) -> Option<Pending> {
    match (older, newer) {
        (Pending::Upsert { opened: true, .. }, Pending::Upsert { session, .. }) => {
            Some(Pending::Upsert {
                session,
                opened: true,
            })
        }
        (Pending::Upsert { opened: true, .. }, Pending::Close) => None,
        (_, newer) => Some(newer),
    }
}

/// Session changes recorded by the registry and written by the cluster writer. Recording never
/// waits on anything but a short map update, and memory stays bounded by the number of
/// sessions changed since the last write, however slow the database.
#[derive(Default)]
pub struct SessionChanges {
    /// Unwritten changes by session, coalesced. Held only to record or swap out changes, never
    /// across an await. The registry records while holding its own sessions lock, so changes
    /// of one session arrive here in the order they happened.
    pending: Mutex<HashMap<Uuid, Pending>>,
    /// Wakes the writer; the permit is kept while it is busy, so no change is left waiting.
    wake: Notify,
}

impl SessionChanges {
    pub(crate) fn opened(&self, session: &SessionInfo) {
        self.record(
            session.session_id,
            Pending::Upsert {
                session: session.clone(),
                opened: true,
            },
        );
    }

    pub(crate) fn updated(&self, session: &SessionInfo) {
        self.record(
            session.session_id,
            Pending::Upsert {
                session: session.clone(),
                opened: false,
            },
        );
    }

    pub(crate) fn closed(&self, session_id: Uuid) {
        self.record(session_id, Pending::Close);
    }

    /// Resolves when a change was recorded since the writer last waited (a permit is kept
    /// while nobody waits, so no change is missed).
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    fn record(&self, session_id: Uuid, newer: Pending) {
        let mut pending = lock(&self.pending);
        let change = match pending.remove(&session_id) {
            Some(older) => combine(older, newer),
            None => Some(newer),
        };
        if let Some(change) = change {
            pending.insert(session_id, change);
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Every unwritten change, leaving none behind.
    pub(crate) fn take(&self) -> HashMap<Uuid, Pending> {
        std::mem::take(&mut *lock(&self.pending))
    }

    /// Puts back a batch that could not be written, under any change recorded since.
    pub(crate) fn restore(&self, batch: HashMap<Uuid, Pending>) {
        let mut pending = lock(&self.pending);
        for (session_id, older) in batch {
            let change = match pending.remove(&session_id) {
                Some(newer) => combine(older, newer),
                None => Some(older),
            };
            if let Some(change) = change {
                pending.insert(session_id, change);
            }
        }
    }
}

/// A live session for unit tests (here and in `cluster`).
#[cfg(test)]
pub(crate) fn sample_session(name: &str) -> SessionInfo {
    SessionInfo {
        session_id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        username: name.to_owned(),
        connected_at: chrono::Utc::now(),
        remote_addr: None,
        user_agent: None,
        asks: 0,
        answering: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::sample_session as session;
    use super::*;

    #[test]
    fn changes_coalesce_per_session() {
        let changes = SessionChanges::default();
        let mut a = session("a");
        let b = session("b");
        changes.opened(&a);
        a.asks = 1;
        changes.updated(&a);
        changes.opened(&b);
        changes.closed(b.session_id);
        let batch = changes.take();
        assert_eq!(
            batch.len(),
            1,
            "b opened and closed unseen: nothing to write"
        );
        assert_eq!(
            batch[&a.session_id],
            Pending::Upsert {
                session: a.clone(),
                opened: true
            }
        );

        // A failed batch goes back under newer changes.
        changes.closed(a.session_id);
        changes.restore(batch);
        assert!(
            changes.take().is_empty(),
            "opened then closed, never written"
        );

        changes.updated(&a);
        let batch = changes.take();
        changes.closed(a.session_id);
        changes.restore(batch);
        assert_eq!(changes.take()[&a.session_id], Pending::Close);
    }
}
