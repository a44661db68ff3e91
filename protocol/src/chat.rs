//! Questions, grounded answers, history and conversations.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /api/chat/` and `POST /api/chat/stream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatRequest {
    /// The question: not blank, at most `MAX_QUESTION_CHARS` (2000) characters
    /// (`user_message` is accepted too, the Django prototype's name for it).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"\S"))]
    #[serde(alias = "user_message")]
    pub message: String,
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
}

/// A knowledge-base passage an answer is grounded in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Source {
    /// Document path relative to the knowledge-base directory.
    pub document: String,
    /// Index of the chunk within its document.
    pub chunk: u32,
    /// Relevance score (higher is better).
    pub score: f32,
    /// The start of the passage.
    pub snippet: String,
    /// Heading trail of the chunk, e.g. `Returns > Refund times`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Cancelled,
    Error,
}

/// The stored status of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Answer still being generated (only seen while streaming).
    Pending,
    Complete,
    Cancelled,
    Error,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Complete => "complete",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

impl From<FinishReason> for MessageStatus {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => Self::Complete,
            FinishReason::Cancelled => Self::Cancelled,
            FinishReason::Error => Self::Error,
        }
    }
}

/// What ends every answer: the socket's `done` frame (plus `id`) and the SSE `done` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Done {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// `POST /api/chat/` answer: the whole grounded answer at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatResponse {
    pub answer: String,
    pub sources: Vec<Source>,
    pub conversation_id: Uuid,
    /// Id of the stored answer message.
    pub message_id: Uuid,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Wall time from question to last token.
    pub latency_ms: u64,
    /// The question as sent, under the Django prototype's name (for its clients).
    pub user_message: String,
    /// The same text as `answer`, under the Django prototype's name (for its clients).
    pub ai_response: String,
}

/// One question and its answer, as `GET /api/chat-history/` lists them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryItem {
    /// Id of the question message (the pagination key).
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub question: String,
    /// `None` while the answer is still being generated.
    pub answer: Option<String>,
    pub status: MessageStatus,
    pub sources: Vec<Source>,
    pub asked_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    /// With `status: error`: why, as a stable error code (e.g. `interrupted` when the server
    /// answering it stopped, `provider_unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// A keyset page: pass `next_before` as `before` to get the next (older) page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_before: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conversation {
    pub id: Uuid,
    /// The first question, shortened.
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub message_count: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Not `Role` in the OpenAPI description: the account role (user/admin) has that name.
#[cfg_attr(feature = "openapi", schema(as = MessageRole))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub role: Role,
    pub content: String,
    pub status: MessageStatus,
    #[serde(default)]
    pub sources: Vec<Source>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub created_at: DateTime<Utc>,
    /// With `status: error`: why, as a stable error code (e.g. `interrupted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
}

/// One exchange in the Django prototype's shape: `GET /api/chat-history/` answers a bare list
/// of these, newest first, when the server runs with `SEED_COMPAT_HISTORY=true` and the request
/// has neither `limit` nor `before`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CompatHistoryItem {
    /// A number, as the prototype's clients expect (stable for the exchange).
    pub id: i64,
    pub user_message: String,
    /// The answer; empty while it is still being generated or if it failed before any text.
    pub ai_response: String,
    /// When the question was asked.
    pub created_at: DateTime<Utc>,
}
