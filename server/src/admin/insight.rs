//! What the support loop tells the knowledge-base owners: the knowledge gaps
//! (`GET /api/admin/gaps`) and the latest answer ratings (`GET /api/admin/feedback`).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use protocol::ErrorBody;
use protocol::feedback::{FeedbackEntry, Rating};
use protocol::gaps::GapsReport;
use serde::Deserialize;

use crate::auth::AdminUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::gaps;
use crate::state::AppState;

/// Default window of the gaps report.
const DEFAULT_WINDOW_DAYS: i64 = 30;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct GapsQuery {
    /// Questions asked since this instant (RFC 3339); default 30 days ago.
    since: Option<DateTime<Utc>>,
    /// At most this many groups (default 50, at most 500).
    limit: Option<usize>,
    /// Hours after which a group's recency weight halves (default 168, a week).
    half_life_hours: Option<f64>,
}

/// Refused, rated-down and weakly grounded questions, grouped by meaning, ranked by
/// size × recency.
#[utoipa::path(get, path = "/api/admin/gaps", tag = "admin", security(("bearer" = [])),
    params(GapsQuery),
    responses((status = 200, body = GapsReport), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn gaps_report(
    _admin: AdminUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<GapsQuery>,
) -> ApiResult<Json<GapsReport>> {
    let since = query
        .since
        .unwrap_or_else(|| Utc::now() - chrono::Duration::days(DEFAULT_WINDOW_DAYS));
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let half_life = query
        .half_life_hours
        .unwrap_or(gaps::DEFAULT_HALF_LIFE_HOURS);
    if !(half_life.is_finite() && half_life > 0.0) {
        return Err(ApiError::validation(
            "half_life_hours",
            "must be a positive number",
        ));
    }
    Ok(Json(gaps::report(&state, since, half_life, limit).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FeedbackQuery {
    /// At most this many ratings (default 50, at most 500).
    limit: Option<i64>,
    /// Only `up` or only `down` ratings.
    rating: Option<Rating>,
}

/// The latest answer ratings, newest first, with question, answer excerpt and comment.
#[utoipa::path(get, path = "/api/admin/feedback", tag = "admin", security(("bearer" = [])),
    params(FeedbackQuery),
    responses((status = 200, body = Vec<FeedbackEntry>), (status = 403, body = ErrorBody)))]
pub async fn feedback_list(
    _admin: AdminUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<FeedbackQuery>,
) -> ApiResult<Json<Vec<FeedbackEntry>>> {
    let client = state.db.get().await?;
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    Ok(Json(
        crate::chat::feedback::latest(&client, limit, query.rating).await?,
    ))
}
