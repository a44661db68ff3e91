//! Who is watching a user's answers as they stream: the admin console's open session detail.
//!
//! The hook is [`AnswerWatchers::announce`], called when an answer's log is registered (see
//! [`super::sessions::SessionRegistry::register_answer`]); a watcher gets the log and follows
//! it like any other reader. This sees the answers generated on this instance only; a
//! cross-instance feed of answer deltas could call the same `announce` with a log it fills.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::log::AnswerLog;

/// An answer a watcher is told about: the client's ask id and its log.
pub type WatchedAnswer = (String, Arc<AnswerLog>);

/// Answers announced to one watcher that it has not taken yet; past this, new answers of the
/// user are not relayed to it (a console cannot read 16 new answers at once anyway).
const WATCH_BACKLOG: usize = 16;

/// The watchers of each user's answers. Closed watchers are pruned lazily: those of a user
/// when one of the user's answers is announced, all of them when a watch starts (rare).
#[derive(Default)]
pub struct AnswerWatchers {
    by_user: HashMap<Uuid, Vec<mpsc::Sender<WatchedAnswer>>>,
}

impl AnswerWatchers {
    /// A new watcher of `user_id`'s answers.
    pub fn add(&mut self, user_id: Uuid) -> mpsc::Receiver<WatchedAnswer> {
        self.by_user.retain(|_, watchers| {
            watchers.retain(|w| !w.is_closed());
            !watchers.is_empty()
        });
        let (tx, rx) = mpsc::channel(WATCH_BACKLOG);
        self.by_user.entry(user_id).or_default().push(tx);
        rx
    }

    /// Tells `user_id`'s watchers that answer `id` started. Never waits.
    pub fn announce(&mut self, user_id: Uuid, id: &str, log: &Arc<AnswerLog>) {
        let Some(watchers) = self.by_user.get_mut(&user_id) else {
            return;
        };
        watchers.retain(|w| match w.try_send((id.to_owned(), Arc::clone(log))) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if watchers.is_empty() {
            self.by_user.remove(&user_id);
        }
    }

    /// Watchers of any user (closed ones not yet pruned included).
    pub fn len(&self) -> usize {
        self.by_user.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_get_their_users_answers_and_are_pruned_once_gone() {
        let mut watchers = AnswerWatchers::default();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut first = watchers.add(alice);
        let second = watchers.add(alice);
        let log = AnswerLog::new();
        watchers.announce(alice, "a1", &log);
        watchers.announce(bob, "b1", &log);
        let (id, got) = first.try_recv().unwrap();
        assert_eq!(id, "a1");
        assert!(Arc::ptr_eq(&got, &log));
        assert!(first.try_recv().is_err(), "bob's answer is not alice's");

        drop(second);
        watchers.announce(alice, "a2", &log);
        assert_eq!(watchers.len(), 1, "the dropped watcher is pruned");
        drop(first);
        watchers.announce(alice, "a3", &log);
        assert!(watchers.is_empty());
    }

    #[test]
    fn a_full_watcher_misses_answers_without_blocking() {
        let mut watchers = AnswerWatchers::default();
        let user = Uuid::new_v4();
        let mut rx = watchers.add(user);
        let log = AnswerLog::new();
        for i in 0..WATCH_BACKLOG + 3 {
            watchers.announce(user, &format!("q{i}"), &log);
        }
        let mut got = 0;
        while rx.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, WATCH_BACKLOG);
        assert_eq!(watchers.len(), 1, "still watching");
    }
}
