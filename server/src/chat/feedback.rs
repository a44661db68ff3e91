//! Answer feedback: a user rates one of their own answers up or down, with an optional comment.
//! One rating per answer per user (a new one replaces the old); someone else's answer, a
//! question, or an unknown id all answer 404, so ids of other users' messages cannot be probed.
//! Ratings live in `message_feedback` and go with their message (retention cleanup, deleted
//! conversation) through the foreign key's cascade.

use axum::Json;
use axum::extract::{Path, State};
use deadpool_postgres::{GenericClient, Pool};
use protocol::ErrorBody;
use protocol::feedback::{Feedback, FeedbackEntry, FeedbackRequest, MAX_COMMENT_CHARS, Rating};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::state::AppState;

/// Characters of the answer shown with a rating in the admin list.
const EXCERPT_CHARS: usize = 300;

/// Rate one of your answers (`message_id` from the `done` frame or the REST answer).
#[utoipa::path(
    post, path = "/api/messages/{id}/feedback", tag = "chat",
    params(("id" = Uuid, Path, description = "Id of the answer message")),
    request_body = FeedbackRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = Feedback),
        (status = 404, description = "No such answer of yours", body = ErrorBody),
        (status = 422, description = "Comment too long", body = ErrorBody),
    )
)]
pub async fn rate_answer(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<FeedbackRequest>,
) -> ApiResult<Json<Feedback>> {
    let message_id = Uuid::parse_str(&id).map_err(|_| ApiError::NotFound("no such answer"))?;
    let feedback = rate(
        &state.db,
        user.id,
        message_id,
        request.rating,
        request.comment,
    )
    .await?;
    Ok(Json(feedback))
}

/// Stores `user_id`'s rating of answer `message_id` (replacing an earlier one). Shared by the
/// REST route and the socket's `feedback` frame.
pub async fn rate(
    db: &Pool,
    user_id: Uuid,
    message_id: Uuid,
    rating: Rating,
    comment: Option<String>,
) -> ApiResult<Feedback> {
    let comment = comment
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    if let Some(c) = &comment
        && c.chars().count() > MAX_COMMENT_CHARS
    {
        return Err(ApiError::validation(
            "comment",
            format!("must be at most {MAX_COMMENT_CHARS} characters"),
        ));
    }
    let client = db.get().await?;
    // The SELECT finds nothing for another user's message or a question, so nothing is
    // inserted and the caller gets the same 404 as for an unknown id.
    let stmt = client
        .prepare_cached(
            "INSERT INTO message_feedback (message_id, user_id, rating, comment) \
             SELECT id, $2, $3, $4 FROM messages \
             WHERE id = $1 AND user_id = $2 AND role = 'assistant' \
             ON CONFLICT (message_id, user_id) DO UPDATE \
               SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, updated_at = now() \
             RETURNING updated_at",
        )
        .await?;
    let row = client
        .query_opt(&stmt, &[&message_id, &user_id, &rating.as_str(), &comment])
        .await?
        .ok_or(ApiError::NotFound("no such answer"))?;
    metrics::counter!("answer_feedback_total", "rating" => rating.as_str()).increment(1);
    Ok(Feedback {
        message_id,
        rating,
        comment,
        rated_at: row.get(0),
    })
}

/// The latest ratings, newest first, with their question and the start of the answer.
pub async fn latest(
    client: &impl GenericClient,
    limit: i64,
    rating: Option<Rating>,
) -> Result<Vec<FeedbackEntry>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT f.message_id, u.username, f.rating, f.comment, q.content, \
                    left(a.content, $2), f.updated_at \
             FROM message_feedback f \
             JOIN messages a ON a.id = f.message_id \
             JOIN messages q ON q.id = a.reply_to \
             JOIN users u ON u.id = f.user_id \
             WHERE $3::text IS NULL OR f.rating = $3 \
             ORDER BY f.updated_at DESC, f.message_id DESC LIMIT $1",
        )
        .await?;
    let excerpt = EXCERPT_CHARS as i32;
    let rating = rating.map(Rating::as_str);
    let rows = client.query(&stmt, &[&limit, &excerpt, &rating]).await?;
    Ok(rows
        .iter()
        .map(|row| FeedbackEntry {
            message_id: row.get(0),
            username: row.get(1),
            rating: Rating::parse(row.get(2)).unwrap_or(Rating::Down),
            comment: row.get(3),
            question: row.get(4),
            answer_excerpt: row.get(5),
            rated_at: row.get(6),
        })
        .collect())
}
