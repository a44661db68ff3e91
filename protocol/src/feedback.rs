//! Answer feedback: `POST /api/messages/{id}/feedback`, the socket's `feedback` frame, and the
//! admin's list of ratings (`GET /api/admin/feedback`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest feedback comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Rating {
    Up,
    Down,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }

    /// The stored form back (`up`/`down`); anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "up" => Some(Self::Up),
            "down" => Some(Self::Down),
            _ => None,
        }
    }
}

/// `POST /api/messages/{id}/feedback` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedbackRequest {
    pub rating: Rating,
    /// At most 1,000 characters; empty counts as none.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A stored rating (the caller's, as the REST route answers it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Feedback {
    /// The rated answer.
    pub message_id: Uuid,
    pub rating: Rating,
    pub comment: Option<String>,
    pub rated_at: DateTime<Utc>,
}

/// One rating as the admin sees it: who, on what question, the answer's start, the comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeedbackEntry {
    pub message_id: Uuid,
    pub username: String,
    pub rating: Rating,
    pub comment: Option<String>,
    pub question: String,
    /// The first 300 characters of the answer.
    pub answer_excerpt: String,
    pub rated_at: DateTime<Utc>,
}
