//! Reading the Django database: `auth_user` and the prototype's `chatbot_api_chathistory`, in
//! one read-only snapshot, users by id in batches and history streamed.

use anyhow::Context;
use futures::{Stream, TryStreamExt};
use tokio_postgres::types::ToSql;

use super::plan::{DjangoUser, HistoryRow};

/// One connection to the Django database, inside a read-only repeatable-read transaction so
/// every query sees the same snapshot (the prototype may still be running).
pub struct Source {
    client: tokio_postgres::Client,
}

/// Sizes of the source, for the progress bar and the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub users: u64,
    pub rows: u64,
    /// History rows whose `user_id` names no Django user.
    pub orphan_rows: u64,
}

impl Source {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = crate::db::connect(url)
            .await
            .context("connecting to the Django database (--from)")?;
        // Timestamps arrive as UTC; with Django's USE_TZ=False its naive times are read as UTC.
        client
            .batch_execute("SET TIME ZONE 'UTC'; BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .context("starting a read-only transaction on the Django database")?;
        for (table, columns) in [
            (
                "auth_user",
                "id, username, email, password, is_staff, is_active, date_joined",
            ),
            (
                "chatbot_api_chathistory",
                "id, user_id, user_message, ai_response, created_at",
            ),
        ] {
            client
                .batch_execute(&format!("SELECT {columns} FROM {table} LIMIT 0"))
                .await
                .with_context(|| {
                    format!(
                        "the Django database has no {table} table with the columns {columns} \
                         (is --from the prototype's database?)"
                    )
                })?;
        }
        Ok(Self { client })
    }

    pub async fn totals(&self) -> anyhow::Result<Totals> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM auth_user), \
                        (SELECT count(*) FROM chatbot_api_chathistory), \
                        (SELECT count(*) FROM chatbot_api_chathistory h WHERE h.user_id IS NULL \
                           OR NOT EXISTS (SELECT 1 FROM auth_user u WHERE u.id = h.user_id))",
                &[],
            )
            .await?;
        let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        Ok(Totals {
            users: n(0),
            rows: n(1),
            orphan_rows: n(2),
        })
    }

    /// Up to `limit` users with an id above `after`, by ascending id.
    pub async fn users_after(&self, after: i64, limit: i64) -> anyhow::Result<Vec<DjangoUser>> {
        let rows = self
            .client
            .query(
                "SELECT id::bigint, username, COALESCE(email, ''), COALESCE(password, ''), \
                        is_staff, is_active, date_joined::timestamptz \
                 FROM auth_user WHERE id > $1::bigint ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await
            .context("reading auth_user")?;
        Ok(rows
            .iter()
            .map(|row| DjangoUser {
                id: row.get(0),
                username: row.get(1),
                email: row.get(2),
                password: row.get(3),
                is_staff: row.get(4),
                is_active: row.get(5),
                date_joined: row.get(6),
            })
            .collect())
    }

    /// How many history rows `users` have.
    pub async fn count_rows(&self, users: &[i64]) -> anyhow::Result<u64> {
        if users.is_empty() {
            return Ok(0);
        }
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM chatbot_api_chathistory WHERE user_id = ANY($1::bigint[])",
                &[&users],
            )
            .await?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// The history rows of `users`, streamed by user, then time. While the stream is open this
    /// connection serves nothing else.
    pub async fn rows_of(
        &self,
        users: &[i64],
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<HistoryRow>> + use<>> {
        let statement = self
            .client
            .prepare(
                "SELECT id::bigint, user_id::bigint, COALESCE(user_message, ''), \
                        COALESCE(ai_response, ''), created_at::timestamptz \
                 FROM chatbot_api_chathistory WHERE user_id = ANY($1::bigint[]) \
                 ORDER BY user_id, created_at, id",
            )
            .await?;
        let params: [&(dyn ToSql + Sync); 1] = [&users];
        let rows = self
            .client
            .query_raw(&statement, params)
            .await
            .context("reading chatbot_api_chathistory")?;
        Ok(rows
            .map_err(anyhow::Error::from)
            .and_then(|row| async move {
                Ok(HistoryRow {
                    id: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    user_message: row.try_get(2)?,
                    ai_response: row.try_get(3)?,
                    created_at: row.try_get(4)?,
                })
            }))
    }
}
