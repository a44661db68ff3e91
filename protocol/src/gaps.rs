//! Knowledge gaps (`GET /api/admin/gaps`): questions the knowledge base served badly (refused,
//! rated down, or answered from weak passages), grouped by meaning.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Why a question counts as a gap (several may hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The answer was "I don't have that information."
    Refused,
    /// A user rated the answer down.
    RatedDown,
    /// Answered, but the best passage scored under the weak-grounding bar.
    WeaklyGrounded,
}

/// One question of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GapExample {
    pub question: String,
    pub asked_at: DateTime<Utc>,
    pub reasons: Vec<GapReason>,
    /// Best cosine similarity any passage reached for this question.
    pub best_score: Option<f32>,
    /// The feedback comment, when the answer was rated down with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Questions close in meaning that the knowledge base served badly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Gap {
    /// How many questions fell in this group.
    pub size: usize,
    /// The question closest to the group's centre.
    pub representative: String,
    /// Up to five questions of the group, newest first.
    pub examples: Vec<GapExample>,
    /// The document of the best-scoring passage any question of the group reached, and that
    /// score: where the missing answer probably belongs.
    pub best_document: Option<String>,
    pub best_score: Option<f32>,
    pub refused: usize,
    pub rated_down: usize,
    pub weakly_grounded: usize,
    pub last_asked: DateTime<Utc>,
    /// The ranking key: size × recency (recency halves every `half_life_hours`).
    pub score: f64,
}

/// `GET /api/admin/gaps` answer: groups ranked by `score`, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GapsReport {
    pub since: DateTime<Utc>,
    /// Questions looked at (those that count as gaps, within the window and the scan bound).
    pub questions: usize,
    /// Cosine similarity at which two questions join one group.
    pub similarity: f32,
    /// Under this best-passage similarity an answered question counts as weakly grounded.
    pub weak_score: f32,
    pub half_life_hours: f64,
    pub gaps: Vec<Gap>,
}
