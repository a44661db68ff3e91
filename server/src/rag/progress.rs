//! Progress of knowledge-base loads, for the admin event socket: a listener set once at start
//! (the admin side) that every load reports to.

use std::sync::OnceLock;

use protocol::admin::KbProgress;

type Listener = Box<dyn Fn(KbProgress) + Send + Sync>;

/// Where a load reports its progress; nowhere until a listener is set.
#[derive(Default)]
pub struct ProgressSink {
    /// Set once (at start); read by every load. A `OnceLock` so reporting takes no lock.
    listener: OnceLock<Listener>,
}

impl ProgressSink {
    pub(super) fn report(&self, progress: KbProgress) {
        if let Some(listener) = self.listener.get() {
            listener(progress);
        }
    }
}

impl super::Rag {
    /// Sends the progress of every later load to `listener` (which must not block). Only the
    /// first listener set is kept.
    pub fn on_progress(&self, listener: impl Fn(KbProgress) + Send + Sync + 'static) {
        if self.progress.listener.set(Box::new(listener)).is_err() {
            tracing::warn!("a knowledge-base progress listener was already set");
        }
    }
}
