//! What the support loop tells the knowledge-base owners: the knowledge gaps
//! (`GET /api/admin/gaps`), the latest answer ratings (`GET /api/admin/feedback`), and the
//! last hour minute by minute (`GET /api/admin/stats/series`).

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use protocol::ErrorBody;
use protocol::admin::{MinuteStats, RecentQuestion, StatsSeries};
use protocol::feedback::{FeedbackEntry, Rating};
use protocol::gaps::GapsReport;
use serde::Deserialize;
use uuid::Uuid;

use super::store;
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

/// Minutes in the stats series.
const SERIES_MINUTES: i64 = 60;

/// Asks per minute, answer latency p50/p95 and provider errors over the last hour, one entry
/// per minute (oldest first, empty minutes included), from the stored messages of every
/// instance.
#[utoipa::path(get, path = "/api/admin/stats/series", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = StatsSeries), (status = 403, body = ErrorBody)))]
pub async fn stats_series(
    _admin: AdminUser,
    State(state): State<AppState>,
) -> ApiResult<Json<StatsSeries>> {
    let client = state.db.get().await?;
    let back = (SERIES_MINUTES - 1) as i32;
    let (now, busy) = store::minute_stats(&client, back).await?;
    let found: std::collections::HashMap<DateTime<Utc>, MinuteStats> =
        busy.into_iter().map(|minute| (minute.at, minute)).collect();
    let minutes = (0..SERIES_MINUTES)
        .rev()
        .map(|back| {
            let at = now - chrono::Duration::minutes(back);
            found.get(&at).cloned().unwrap_or(MinuteStats {
                at,
                asks: 0,
                latency_p50_ms: None,
                latency_p95_ms: None,
                provider_errors: 0,
            })
        })
        .collect();
    Ok(Json(StatsSeries { minutes }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RecentQuery {
    /// At most this many questions (default 10, at most 100).
    limit: Option<i64>,
}

/// A user's latest questions with the start of each answer, newest first (the console's
/// session detail).
#[utoipa::path(get, path = "/api/admin/users/{id}/questions", tag = "admin",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id"), RecentQuery),
    responses((status = 200, body = Vec<RecentQuestion>), (status = 403, body = ErrorBody)))]
pub async fn user_questions(
    _admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<RecentQuery>,
) -> ApiResult<Json<Vec<RecentQuestion>>> {
    let user_id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("no such user"))?;
    let limit = query.limit.unwrap_or(10).clamp(1, 100);
    let client = state.db.get().await?;
    Ok(Json(
        store::recent_questions(&client, user_id, limit).await?,
    ))
}
