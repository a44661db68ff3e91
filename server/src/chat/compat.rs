//! The Django prototype's history shape, for its clients (`SEED_COMPAT_HISTORY=true`):
//! `GET /api/chat-history/` without `limit`/`before` answers a bare list of
//! `{id, user_message, ai_response, created_at}`, newest first, at most [`MAX_ITEMS`].

use deadpool_postgres::GenericClient;
use protocol::chat::{CompatHistoryItem, HistoryItem, Page};
use serde::Serialize;
use uuid::Uuid;

use crate::error::ApiError;

/// The prototype answered every row; this answers the newest 100 (older ones are paged
/// through `limit`/`before`).
pub const MAX_ITEMS: i64 = 100;

/// What `GET /api/chat-history/` answers: the paginated page, or the prototype's bare list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum HistoryResponse {
    /// `{items, next_before}` (always with `limit` or `before`; the default shape).
    Page(Page<HistoryItem>),
    /// The Django prototype's bare list, with `SEED_COMPAT_HISTORY=true` and no `limit`/`before`.
    Compat(Vec<CompatHistoryItem>),
}

/// The user's newest exchanges in the prototype's shape.
pub(crate) async fn history(
    client: &impl GenericClient,
    user_id: Uuid,
) -> Result<Vec<CompatHistoryItem>, ApiError> {
    let query = client
        .prepare_cached(
            "SELECT q.legacy_id, q.content, COALESCE(a.content, ''), q.created_at \
             FROM messages q LEFT JOIN messages a ON a.reply_to = q.id \
             WHERE q.user_id = $1 AND q.role = 'user' \
             ORDER BY q.created_at DESC, q.id DESC LIMIT $2",
        )
        .await?;
    let rows = client.query(&query, &[&user_id, &MAX_ITEMS]).await?;
    Ok(rows
        .iter()
        .map(|row| CompatHistoryItem {
            id: row.get(0),
            user_message: row.get(1),
            ai_response: row.get(2),
            created_at: row.get(3),
        })
        .collect())
}
