//! The answer log: everything one answer has produced so far, in order, and cursors that follow
//! it live or resume it after a given delta. A pure in-memory structure (no I/O): the generating
//! task in [`super::pipeline`] appends to it; the socket, REST/SSE, the relay and the admin watch
//! read it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::chat::{Done, Source};
use protocol::error::ErrorCode;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use uuid::Uuid;

use crate::sync::lock;

/// Something that happened to an answer, in order. `Done` and `Rejected` end the log.
/// Serialized (as JSON) only to relay an answer to other instances ([`super::relay`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LogEvent {
    Sources {
        conversation_id: Uuid,
        sources: Vec<Source>,
    },
    Delta {
        seq: u64,
        text: String,
    },
    /// The answer failed (before or during the stream); a `Done` with `finish_reason: error`
    /// follows.
    Failed {
        code: ErrorCode,
        message: String,
    },
    Done(Done),
    /// The question was not accepted (e.g. someone else's conversation); nothing was stored.
    Rejected {
        code: ErrorCode,
        message: String,
    },
}

impl LogEvent {
    pub(crate) fn is_terminal(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Rejected { .. })
    }
}

struct LogState {
    events: Vec<LogEvent>,
    finished_at: Option<Instant>,
}

/// Everything one answer produced so far; the generating task appends, readers follow.
pub struct AnswerLog {
    /// The events; held only to append or copy one, never across an await.
    state: Mutex<LogState>,
    /// Bumped after every append so readers waiting for more wake up.
    version: watch::Sender<usize>,
    /// Cancelled by a `cancel` frame: the generating task drops the provider stream.
    cancel: CancellationToken,
}

impl AnswerLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(LogState {
                events: Vec::new(),
                finished_at: None,
            }),
            version: watch::channel(0).0,
            cancel: CancellationToken::new(),
        })
    }

    pub(crate) fn push(&self, event: LogEvent) {
        let mut state = lock(&self.state);
        if state.finished_at.is_some() {
            return;
        }
        if event.is_terminal() {
            state.finished_at = Some(Instant::now());
        }
        state.events.push(event);
        let len = state.events.len();
        drop(state);
        self.version.send_replace(len);
    }

    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Completes once [`cancel`](Self::cancel) has been called.
    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    pub fn is_finished(&self) -> bool {
        lock(&self.state).finished_at.is_some()
    }

    /// Finished longer than `window` ago.
    pub(crate) fn expired(&self, now: Instant, window: Duration) -> bool {
        lock(&self.state)
            .finished_at
            .is_some_and(|at| now.duration_since(at) > window)
    }

    /// A reader from the first event.
    pub fn follow(self: &Arc<Self>) -> LogCursor {
        LogCursor {
            log: Arc::clone(self),
            pos: 0,
            version: self.version.subscribe(),
            after_seq: None,
            ended: false,
        }
    }

    /// A reader of the deltas with `seq > after_seq` (all of them, and the sources, when
    /// `after_seq` is `None`), then the end.
    pub fn resume(self: &Arc<Self>, after_seq: Option<u64>) -> LogCursor {
        LogCursor {
            after_seq,
            ..self.follow()
        }
    }
}

/// Reads an [`AnswerLog`] in order, waiting for more until its end.
pub struct LogCursor {
    log: Arc<AnswerLog>,
    pos: usize,
    version: watch::Receiver<usize>,
    after_seq: Option<u64>,
    ended: bool,
}

impl LogCursor {
    /// The next event, or `None` after the last one.
    pub async fn next(&mut self) -> Option<LogEvent> {
        loop {
            if self.ended {
                return None;
            }
            // Mark the current version seen before reading, so an append after the read
            // wakes `changed()` below.
            self.version.borrow_and_update();
            let event = lock(&self.log.state).events.get(self.pos).cloned();
            let Some(event) = event else {
                // The sender lives in the log this cursor holds, so this only waits.
                let _ = self.version.changed().await;
                continue;
            };
            self.pos += 1;
            self.ended = event.is_terminal();
            if let Some(after) = self.after_seq {
                match &event {
                    LogEvent::Sources { .. } => continue,
                    LogEvent::Delta { seq, .. } if *seq <= after => continue,
                    _ => {}
                }
            }
            return Some(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use protocol::chat::{FinishReason, Usage};

    use super::*;

    fn delta(seq: u64) -> LogEvent {
        LogEvent::Delta {
            seq,
            text: format!("w{seq} "),
        }
    }

    fn done() -> LogEvent {
        LogEvent::Done(Done {
            message_id: Uuid::nil(),
            conversation_id: Uuid::nil(),
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
        })
    }

    #[tokio::test]
    async fn readers_follow_live_and_resume_without_gaps_or_repeats() {
        let log = AnswerLog::new();
        let sources = LogEvent::Sources {
            conversation_id: Uuid::nil(),
            sources: Vec::new(),
        };
        log.push(sources.clone());
        log.push(delta(0));
        log.push(delta(1));

        let mut from_start = log.follow();
        let mut resumed = log.resume(Some(0));
        assert_eq!(from_start.next().await, Some(sources));
        assert_eq!(resumed.next().await, Some(delta(1)));

        let writer = {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.push(delta(2));
                log.push(done());
                // Nothing after the end is recorded.
                log.push(delta(3));
            })
        };
        assert_eq!(resumed.next().await, Some(delta(2)));
        assert_eq!(resumed.next().await, Some(done()));
        assert_eq!(resumed.next().await, None);
        let rest: Vec<_> =
            futures::stream::unfold(
                from_start,
                |mut c| async move { c.next().await.map(|e| (e, c)) },
            )
            .collect()
            .await;
        assert_eq!(rest, vec![delta(0), delta(1), delta(2), done()]);
        writer.await.unwrap();
        assert!(log.is_finished());
    }

    #[test]
    fn events_survive_the_relay_encoding() {
        let events = vec![
            LogEvent::Sources {
                conversation_id: Uuid::new_v4(),
                sources: Vec::new(),
            },
            delta(7),
            LogEvent::Failed {
                code: ErrorCode::ProviderUnavailable,
                message: "down".into(),
            },
            done(),
            LogEvent::Rejected {
                code: ErrorCode::Interrupted,
                message: "gone".into(),
            },
        ];
        for event in events {
            let text = serde_json::to_string(&event).unwrap();
            assert_eq!(serde_json::from_str::<LogEvent>(&text).unwrap(), event);
        }
    }
}
