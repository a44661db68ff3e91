//! The admin API (`/api/admin/...`) and its live event socket.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A live chat WebSocket session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionInfo {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub username: String,
    pub connected_at: DateTime<Utc>,
    pub remote_addr: Option<String>,
    pub user_agent: Option<String>,
    /// Questions asked on this connection so far.
    pub asks: u64,
    /// Answers being generated right now.
    pub answering: u32,
}

/// `POST /api/admin/sessions/{id}/disconnect`: the reason the user's socket is told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DisconnectRequest {
    /// At most 120 bytes reach the client (a close frame's limit); default "disconnected by an
    /// administrator".
    #[serde(default)]
    pub reason: Option<String>,
}

/// A document that failed to load, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KbError {
    pub document: String,
    pub message: String,
}

/// What the loaded knowledge base holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KbInfo {
    pub documents: usize,
    pub chunks: usize,
    pub embedding_provider: String,
    pub embedding_model: String,
    pub dimension: usize,
    /// `flat` or `hnsw`.
    pub index_kind: String,
    pub loaded_at: DateTime<Utc>,
    /// Chunks embedded by this load (the rest came from the cache).
    pub embedded: usize,
    pub cached: usize,
    pub took_ms: u64,
    pub errors: Vec<KbError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CleanupTrigger {
    Scheduled,
    Manual,
}

/// One run of the history cleanup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CleanupRun {
    pub id: i64,
    pub trigger: CleanupTrigger,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub messages_deleted: i64,
    pub conversations_deleted: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stats {
    pub users: i64,
    pub conversations: i64,
    pub messages: i64,
    pub live_sessions: usize,
    pub answering_now: u32,
    pub outbox_pending: i64,
    pub outbox_failed: i64,
}

/// Frames of `GET /api/admin/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AdminEvent {
    /// Sent first: every live session at the time of connecting.
    Snapshot {
        sessions: Vec<SessionInfo>,
    },
    SessionOpened {
        session: SessionInfo,
    },
    SessionUpdated {
        session: SessionInfo,
    },
    SessionClosed {
        session_id: Uuid,
    },
    KbReloaded {
        kb: KbInfo,
    },
    CleanupFinished {
        run: CleanupRun,
    },
    /// A knowledge-base load on this instance moved on (sent while it runs; `kb_reloaded`
    /// follows when it ends).
    KbProgress {
        progress: KbProgress,
    },
    /// Answers a `watch` command: from now on, the answers to this user's questions that are
    /// generated on the instance this socket is connected to are relayed (`answer_started`,
    /// `answer_delta`, `answer_ended`), those already under way from their first delta.
    /// `local_sessions` counts the user's live chat sockets on this instance: 0 while the
    /// user is connected elsewhere means their answers are generated on another instance and
    /// are not relayed here.
    Watching {
        user_id: Uuid,
        local_sessions: usize,
    },
    /// A watched user's answer began (`id` is the ask id their client chose).
    AnswerStarted {
        user_id: Uuid,
        id: String,
    },
    /// The next piece of a watched answer (`seq` counts from 0 per answer, as on the chat
    /// socket).
    AnswerDelta {
        user_id: Uuid,
        id: String,
        seq: u64,
        text: String,
    },
    /// A watched answer ended. `finish_reason` is missing when the question was refused before
    /// an answer began (e.g. someone else's conversation); `error` is the error code of a
    /// failed answer.
    AnswerEnded {
        user_id: Uuid,
        id: String,
        #[serde(default)]
        finish_reason: Option<crate::chat::FinishReason>,
        #[serde(default)]
        message_id: Option<Uuid>,
        #[serde(default)]
        error: Option<crate::error::ErrorCode>,
    },
}

/// Frames the console sends on `GET /api/admin/events`. Unknown frames are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AdminCommand {
    /// Renews the socket's token (the same frame as the chat socket's `auth`).
    Auth { token: String },
    /// Relays this user's answers as they stream (the console's open session detail);
    /// answered by `watching`. Replaces the previous watch: one per socket.
    Watch { user_id: Uuid },
    /// Stops relaying answers.
    Unwatch,
}

/// How far a knowledge-base load has got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KbProgress {
    /// `reading` (documents read, vectors looked up in the cache), `embedding`, `indexing`,
    /// `done`.
    pub phase: String,
    /// Documents read.
    pub documents: usize,
    /// Chunks the load needs vectors for.
    pub chunks_total: usize,
    /// Chunks whose vector is ready (cache hits plus those embedded so far).
    pub chunks_ready: usize,
    /// Chunks embedded by the provider so far in this load.
    pub chunks_embedded: usize,
    /// Chunks whose vector came from the embedding cache.
    pub cache_hits: usize,
}

/// One minute of `GET /api/admin/stats/series`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MinuteStats {
    /// Start of the minute.
    pub at: DateTime<Utc>,
    /// Questions asked.
    pub asks: i64,
    /// Answer latency (question to last token) of the answers stored in this minute.
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Answers that ended with a provider error (`provider_unavailable`, `content_blocked`).
    pub provider_errors: i64,
}

/// `GET /api/admin/stats/series`: the last hour, one entry per minute, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsSeries {
    pub minutes: Vec<MinuteStats>,
}

/// One of a user's recent questions (`GET /api/admin/users/{id}/questions`), for the console's
/// session detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecentQuestion {
    pub asked_at: DateTime<Utc>,
    pub question: String,
    /// `None` while the answer is being generated.
    pub answer_status: Option<crate::chat::MessageStatus>,
    /// The first 300 characters of the answer.
    pub answer_excerpt: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn watch_commands_and_answer_frames_have_their_wire_shape() {
        let user_id = Uuid::nil();
        let watch: AdminCommand =
            serde_json::from_value(json!({"type": "watch", "user_id": user_id})).unwrap();
        assert_eq!(watch, AdminCommand::Watch { user_id });
        let unwatch: AdminCommand = serde_json::from_value(json!({"type": "unwatch"})).unwrap();
        assert_eq!(unwatch, AdminCommand::Unwatch);
        // The renewal frame is the chat socket's `auth`.
        let auth: AdminCommand =
            serde_json::from_value(json!({"type": "auth", "token": "t"})).unwrap();
        assert_eq!(auth, AdminCommand::Auth { token: "t".into() });

        let ended = AdminEvent::AnswerEnded {
            user_id,
            id: "a1".into(),
            finish_reason: Some(crate::chat::FinishReason::Stop),
            message_id: None,
            error: None,
        };
        assert_eq!(
            serde_json::to_value(&ended).unwrap(),
            json!({"type": "answer_ended", "user_id": user_id, "id": "a1",
                   "finish_reason": "stop", "message_id": null, "error": null})
        );
        let delta: AdminEvent = serde_json::from_value(json!({
            "type": "answer_delta", "user_id": user_id, "id": "a1", "seq": 3, "text": "hi"
        }))
        .unwrap();
        assert_eq!(
            delta,
            AdminEvent::AnswerDelta {
                user_id,
                id: "a1".into(),
                seq: 3,
                text: "hi".into()
            }
        );
    }
}
