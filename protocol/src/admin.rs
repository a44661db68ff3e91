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
