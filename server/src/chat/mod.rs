//! The chat socket, REST chat, history and conversations, and the live sessions.
//!
//! # Layout
//! - [`socket`]: `GET /ws/chat`: authentication, the reader/writer split, limits, heartbeats,
//!   token expiry, ask/cancel/resume.
//! - [`rest`]: `POST /api/chat/`, `POST /api/chat/stream` (SSE), `GET /api/chat-history/` and the
//!   conversation routes.
//! - [`pipeline`]: the answer pipeline, whoever asked: admit and store the question, generate
//!   in a task of its own (stream, record, metrics steps) into an [`AnswerLog`](log::AnswerLog).
//! - [`log`]: the answer log, which any number of readers follow (live or resumed).
//! - [`relay`]: answers published to PostgreSQL so a socket can resume them on any instance, and
//!   the limits every instance shares (asks per minute, sockets per user).
//! - [`sessions`]: the live-session registry (admin view and events), the asks-per-minute limit
//!   and the per-user resume buffers.
//! - [`session_changes`]: session changes coalesced on their way to the cluster writer.
//! - [`store`]: the conversation and message queries.
//! - [`durable`]: the final write of an answer, retried through a database outage.
//! - [`orphans`]: answers of processes that died become `interrupted`.
//! - [`compat`]: the Django prototype's history shape (`SEED_COMPAT_HISTORY`).
//! - [`feedback`]: `POST /api/messages/{id}/feedback` (and the socket's `feedback` frame).
//! - [`watchers`]: admin sockets following a user's answers as they stream (session detail).

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub mod compat;
mod durable;
pub(crate) mod event_writer;
pub mod feedback;
pub mod log;
pub mod orphans;
pub mod pipeline;
pub mod relay;
pub mod rest;
pub mod session_changes;
pub mod sessions;
pub mod socket;
pub(crate) mod store;
pub mod watchers;

/// The statements every ask runs (its limit, its question, its answer, and the relay's rows on
/// the socket), prepared on each pooled connection at start (see [`crate::db::warm`]).
pub(crate) const HOT_STATEMENTS: [&str; 5] = [
    crate::throttle::SLIDING_HIT_SQL,
    store::NEW_QUESTION_SQL,
    store::FOLLOW_UP_SQL,
    store::STORE_ANSWER_SQL,
    event_writer::WRITE_EVENTS_SQL,
];

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(socket::chat_socket))
        .routes(routes!(rest::chat))
        .routes(routes!(rest::chat_stream))
        .routes(routes!(rest::chat_history))
        .routes(routes!(rest::list_conversations))
        .routes(routes!(rest::conversation_messages))
        .routes(routes!(rest::delete_conversation))
        .routes(routes!(feedback::rate_answer))
}
