//! Live chat sessions, per-user ask limits and the per-user resume buffers of recent answers.
//!
//! The sessions and limits here are this instance's, in memory. Every session change is also
//! recorded for the cluster writer ([`crate::cluster`]), which shares it with the other
//! instances through PostgreSQL (the `live_sessions` table and NOTIFY), so the admin view spans
//! all instances. The asks-per-minute limit and the per-user socket cap are enforced across
//! instances by [`super::relay`] (PostgreSQL); the counts here are this instance's, used when
//! the database cannot be asked. The resume buffers here serve resumes on this instance; other
//! instances read the same answers from the relay.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use protocol::admin::{AdminEvent, SessionInfo};
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use super::log::AnswerLog;
use super::session_changes::SessionChanges;
use super::watchers::{AnswerWatchers, WatchedAnswer};
use crate::sync::lock;

/// How long a finished answer stays resumable.
pub const RESUME_WINDOW: Duration = Duration::from_secs(60);
/// Resumable answers kept per user; the oldest finished ones go first.
const MAX_BUFFERED_ANSWERS_PER_USER: usize = 16;
/// Admin events buffered for slow subscribers before they start missing some.
const EVENT_CAPACITY: usize = 1024;
/// How often the per-user maps are swept of users with nothing left in them.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The window of the asks-per-minute limit.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// An answer kept for `resume` / `cancel`, under the client's ask id.
type Resumable = (String, Arc<AnswerLog>);

/// The live chat sockets of this instance, for the admin console, plus the per-user limits.
pub struct SessionRegistry {
    /// Live sessions by id. Held only to copy or update an entry, never across an await; the
    /// admin event is sent while holding it so a subscriber's snapshot and its event stream
    /// line up (see [`SessionRegistry::subscribe`]).
    sessions: Mutex<HashMap<Uuid, SessionInfo>>,
    /// Session events for admin subscribers; sending never blocks (a lagging receiver skips).
    events: broadcast::Sender<AdminEvent>,
    /// Ask times per user within the last minute (socket and REST together), and when the
    /// map was last swept of users with no recent ask.
    asks: Mutex<(HashMap<Uuid, VecDeque<Instant>>, Instant)>,
    /// Recent answers per user, by the client's ask id, for `resume` and `cancel`, and when
    /// the map was last swept of expired answers.
    answers: Mutex<(HashMap<Uuid, Vec<Resumable>>, Instant)>,
    /// Admin sockets following a user's answers live. Taken after `answers` (an answer is
    /// announced while `answers` is held, so a new watcher sees each answer exactly once).
    watchers: Mutex<AnswerWatchers>,
    /// Open sockets per user, for `WS_MAX_SOCKETS_PER_USER`. Taken after `sessions` when both
    /// are held (in `close`), never the other way round.
    per_user: Mutex<HashMap<Uuid, usize>>,
    /// How to tell each live session's socket to close (an admin disconnected it), by session.
    disconnects: Mutex<HashMap<Uuid, oneshot::Sender<String>>>,
    /// Sockets upgraded but not yet authenticated, for `WS_MAX_UNAUTHENTICATED`.
    unauthenticated: AtomicUsize,
    /// Where session changes are recorded for the other instances (none in unit tests).
    /// Recorded while holding `sessions`, so the changes of one session stay in order.
    changes: Option<Arc<SessionChanges>>,
}

impl Default for SessionRegistry {
    fn default() -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_CAPACITY).0,
            asks: Mutex::new((HashMap::new(), Instant::now())),
            answers: Mutex::new((HashMap::new(), Instant::now())),
            watchers: Mutex::new(AnswerWatchers::default()),
            per_user: Mutex::new(HashMap::new()),
            disconnects: Mutex::new(HashMap::new()),
            unauthenticated: AtomicUsize::new(0),
            changes: None,
        }
    }
}

impl SessionRegistry {
    /// A registry that also records every session change in `changes`, for the cluster writer.
    pub fn with_changes(changes: Arc<SessionChanges>) -> Self {
        Self {
            changes: Some(changes),
            ..Self::default()
        }
    }

    /// Every live session of this instance, oldest first (all instances:
    /// [`crate::cluster::all_sessions`]).
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut sessions: Vec<SessionInfo> = lock(&self.sessions).values().cloned().collect();
        sessions.sort_by_key(|s| s.connected_at);
        sessions
    }

    /// Number of live sessions on this instance.
    pub fn len(&self) -> usize {
        lock(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers being generated right now for live sessions of this instance.
    pub fn answering_now(&self) -> u32 {
        lock(&self.sessions).values().map(|s| s.answering).sum()
    }

    /// A snapshot of the live sessions and a receiver of every session event after it
    /// (`SessionOpened`, `SessionUpdated`, `SessionClosed`), with no gap and no overlap.
    pub fn subscribe(&self) -> (Vec<SessionInfo>, broadcast::Receiver<AdminEvent>) {
        let sessions = lock(&self.sessions);
        let receiver = self.events.subscribe();
        let mut snapshot: Vec<SessionInfo> = sessions.values().cloned().collect();
        snapshot.sort_by_key(|s| s.connected_at);
        (snapshot, receiver)
    }

    /// The sender of admin events, so other features (knowledge-base reloads, cleanups) can
    /// publish on the same channel.
    pub fn event_sender(&self) -> broadcast::Sender<AdminEvent> {
        self.events.clone()
    }

    /// Registers a new session unless the user already holds `max_per_user` open ones.
    pub(crate) fn try_open(
        self: &Arc<Self>,
        max_per_user: usize,
        user_id: Uuid,
        username: String,
        remote_addr: Option<String>,
        user_agent: Option<String>,
    ) -> Option<SessionGuard> {
        {
            let mut per_user = lock(&self.per_user);
            let open = per_user.entry(user_id).or_default();
            if *open >= max_per_user {
                return None;
            }
            *open += 1;
        }
        Some(self.open(user_id, username, remote_addr, user_agent))
    }

    /// Counts a socket waiting for its `auth` frame, unless `max` already are.
    pub(crate) fn try_unauthenticated(self: &Arc<Self>, max: usize) -> Option<Unauthenticated> {
        self.unauthenticated
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Unauthenticated(Arc::clone(self)))
    }

    /// Registers a new session; dropping the guard removes it.
    pub(crate) fn open(
        self: &Arc<Self>,
        user_id: Uuid,
        username: String,
        remote_addr: Option<String>,
        user_agent: Option<String>,
    ) -> SessionGuard {
        let info = SessionInfo {
            session_id: Uuid::new_v4(),
            user_id,
            username,
            connected_at: Utc::now(),
            remote_addr,
            user_agent,
            asks: 0,
            answering: 0,
        };
        let session_id = info.session_id;
        let mut sessions = lock(&self.sessions);
        if let Some(changes) = &self.changes {
            changes.opened(&info);
        }
        sessions.insert(session_id, info.clone());
        let _ = self
            .events
            .send(AdminEvent::SessionOpened { session: info });
        drop(sessions);
        metrics::gauge!("chat_sessions").increment(1.0);
        let (disconnect, disconnected) = oneshot::channel();
        lock(&self.disconnects).insert(session_id, disconnect);
        SessionGuard {
            registry: Arc::clone(self),
            session_id,
            disconnected,
        }
    }

    /// Tells this instance's session `session_id` to close with `reason`; false if it has no
    /// such session.
    pub fn disconnect(&self, session_id: Uuid, reason: String) -> bool {
        match lock(&self.disconnects).remove(&session_id) {
            Some(switch) => switch.send(reason).is_ok(),
            None => false,
        }
    }

    /// This instance's session `session_id`, if live.
    pub fn get(&self, session_id: Uuid) -> Option<SessionInfo> {
        lock(&self.sessions).get(&session_id).cloned()
    }

    fn update(&self, session_id: Uuid, change: impl FnOnce(&mut SessionInfo)) {
        let mut sessions = lock(&self.sessions);
        if let Some(info) = sessions.get_mut(&session_id) {
            change(info);
            if let Some(changes) = &self.changes {
                changes.updated(info);
            }
            let _ = self.events.send(AdminEvent::SessionUpdated {
                session: info.clone(),
            });
        }
    }

    /// A question was asked on the session and its answer started.
    pub(crate) fn answer_started(&self, session_id: Uuid) {
        self.update(session_id, |s| {
            s.asks += 1;
            s.answering += 1;
        });
    }

    /// An answer asked on the session ended (the session may be gone by then).
    pub(crate) fn answer_finished(&self, session_id: Uuid) {
        self.update(session_id, |s| s.answering = s.answering.saturating_sub(1));
    }

    fn close(&self, session_id: Uuid) {
        lock(&self.disconnects).remove(&session_id);
        let mut sessions = lock(&self.sessions);
        if let Some(info) = sessions.remove(&session_id) {
            let mut per_user = lock(&self.per_user);
            if let Some(open) = per_user.get_mut(&info.user_id) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    per_user.remove(&info.user_id);
                }
            }
            drop(per_user);
            if let Some(changes) = &self.changes {
                changes.closed(session_id);
            }
            let _ = self.events.send(AdminEvent::SessionClosed { session_id });
            metrics::gauge!("chat_sessions").decrement(1.0);
        }
    }

    /// Counts an ask against the user's per-minute limit, or says in how many seconds one
    /// would be allowed.
    pub(crate) fn check_rate(&self, user_id: Uuid, per_minute: u32) -> Result<(), u64> {
        let now = Instant::now();
        let mut guard = lock(&self.asks);
        let (asks, swept) = &mut *guard;
        // Now and then, forget users with no ask in the window, so the map stays as small as
        // the active set without a full pass on every ask.
        if now.duration_since(*swept) > SWEEP_EVERY {
            asks.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < RATE_WINDOW)
            });
            *swept = now;
        }
        let times = asks.entry(user_id).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= per_minute as usize {
            let oldest = times.front().copied().unwrap_or(now);
            let wait = RATE_WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(wait.as_secs().max(1));
        }
        times.push_back(now);
        Ok(())
    }

    /// Keeps `log` resumable under the user's ask id. Fails if an answer with that id is still
    /// being generated (a finished one with the same id is replaced).
    pub(crate) fn register_answer(
        &self,
        user_id: Uuid,
        id: &str,
        log: Arc<AnswerLog>,
    ) -> Result<(), ()> {
        let mut guard = lock(&self.answers);
        let (answers, swept) = &mut *guard;
        let now = Instant::now();
        if now.duration_since(*swept) > SWEEP_EVERY {
            answers.retain(|_, logs| {
                logs.retain(|(_, l)| !l.expired(now, RESUME_WINDOW));
                !logs.is_empty()
            });
            *swept = now;
        }
        let logs = answers.entry(user_id).or_default();
        logs.retain(|(_, l)| !l.expired(now, RESUME_WINDOW));
        if let Some(pos) = logs.iter().position(|(existing, _)| existing == id) {
            if !logs[pos].1.is_finished() {
                return Err(());
            }
            logs.remove(pos);
        }
        while logs.len() >= MAX_BUFFERED_ANSWERS_PER_USER {
            // Oldest finished first; if every one is live, the oldest live one stops being
            // resumable (it still runs to the end and is stored).
            let pos = logs.iter().position(|(_, l)| l.is_finished()).unwrap_or(0);
            logs.remove(pos);
        }
        lock(&self.watchers).announce(user_id, id, &log);
        logs.push((id.to_owned(), log));
        Ok(())
    }

    /// Follows `user_id`'s answers on this instance: the ones being generated now, and a
    /// receiver of each one started from now on, with no gap and no overlap.
    pub fn watch_answers(
        &self,
        user_id: Uuid,
    ) -> (
        Vec<WatchedAnswer>,
        tokio::sync::mpsc::Receiver<WatchedAnswer>,
    ) {
        let answers = lock(&self.answers);
        let receiver = lock(&self.watchers).add(user_id);
        let running = answers
            .0
            .get(&user_id)
            .map(|logs| {
                logs.iter()
                    .filter(|(_, log)| !log.is_finished())
                    .map(|(id, log)| (id.clone(), Arc::clone(log)))
                    .collect()
            })
            .unwrap_or_default();
        (running, receiver)
    }

    /// The user's answer with this ask id, if still resumable.
    pub(crate) fn find_answer(&self, user_id: Uuid, id: &str) -> Option<Arc<AnswerLog>> {
        let answers = lock(&self.answers);
        answers
            .0
            .get(&user_id)?
            .iter()
            .find(|(existing, log)| existing == id && !log.expired(Instant::now(), RESUME_WINDOW))
            .map(|(_, log)| Arc::clone(log))
    }
}

/// Counts one socket as waiting for authentication until dropped.
pub(crate) struct Unauthenticated(Arc<SessionRegistry>);

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        self.0.unauthenticated.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps a session listed; dropping it (the socket ended) removes it.
pub(crate) struct SessionGuard {
    registry: Arc<SessionRegistry>,
    pub(crate) session_id: Uuid,
    /// Resolves with the reason when an admin disconnects the session.
    pub(crate) disconnected: oneshot::Receiver<String>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.close(self.session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_per_user_and_says_when_to_retry() {
        let registry = SessionRegistry::default();
        let alice = Uuid::new_v4();
        let bob = Uuid::new_v4();
        assert!(registry.check_rate(alice, 2).is_ok());
        assert!(registry.check_rate(alice, 2).is_ok());
        let retry = registry.check_rate(alice, 2).unwrap_err();
        assert!((1..=60).contains(&retry));
        assert!(registry.check_rate(bob, 2).is_ok());
    }

    #[test]
    fn sockets_are_capped_per_user_and_while_unauthenticated() {
        let registry = Arc::new(SessionRegistry::default());
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let first = registry
            .try_open(2, alice, "alice".into(), None, None)
            .unwrap();
        let second = registry
            .try_open(2, alice, "alice".into(), None, None)
            .unwrap();
        assert!(
            registry
                .try_open(2, alice, "alice".into(), None, None)
                .is_none()
        );
        assert!(
            registry
                .try_open(2, bob, "bob".into(), None, None)
                .is_some()
        );
        drop(first);
        let third = registry.try_open(2, alice, "alice".into(), None, None);
        assert!(third.is_some());
        drop((second, third));
        assert!(lock(&registry.per_user).get(&alice).is_none());

        let waiting: Vec<_> = (0..3).map(|_| registry.try_unauthenticated(3)).collect();
        assert!(waiting.iter().all(Option::is_some));
        assert!(registry.try_unauthenticated(3).is_none());
        drop(waiting);
        assert!(registry.try_unauthenticated(3).is_some());
    }

    #[tokio::test]
    async fn subscribers_see_a_snapshot_then_every_change() {
        let registry = Arc::new(SessionRegistry::default());
        let user = Uuid::new_v4();
        let first = registry.open(user, "alice".into(), None, None);
        let (snapshot, mut events) = registry.subscribe();
        assert_eq!(snapshot.len(), 1);
        assert_eq!(snapshot[0].session_id, first.session_id);

        let second = registry.open(user, "alice".into(), Some("127.0.0.1:1".into()), None);
        registry.answer_started(second.session_id);
        assert_eq!(registry.answering_now(), 1);
        registry.answer_finished(second.session_id);
        let second_id = second.session_id;
        drop(second);

        match events.recv().await.unwrap() {
            AdminEvent::SessionOpened { session } => assert_eq!(session.session_id, second_id),
            other => panic!("unexpected {other:?}"),
        }
        match events.recv().await.unwrap() {
            AdminEvent::SessionUpdated { session } => {
                assert_eq!((session.asks, session.answering), (1, 1))
            }
            other => panic!("unexpected {other:?}"),
        }
        match events.recv().await.unwrap() {
            AdminEvent::SessionUpdated { session } => {
                assert_eq!((session.asks, session.answering), (1, 0))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            events.recv().await.unwrap(),
            AdminEvent::SessionClosed {
                session_id: second_id
            }
        );
        assert_eq!(registry.list().len(), 1);
    }
}
