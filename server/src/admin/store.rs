//! The admin API's own queries: service-wide counts (the other rooms' tables are read through
//! their own stores).

use deadpool_postgres::GenericClient;

/// Rows across the service, database-wide.
pub(super) struct Counts {
    pub users: i64,
    pub conversations: i64,
    pub messages: i64,
    /// Welcome mails waiting in the outbox.
    pub outbox_pending: i64,
    /// Welcome mails the outbox gave up on.
    pub outbox_failed: i64,
}

pub(super) async fn counts(client: &impl GenericClient) -> Result<Counts, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM conversations), \
                    (SELECT count(*) FROM messages), \
                    (SELECT count(*) FROM mail_outbox WHERE status = 'pending'), \
                    (SELECT count(*) FROM mail_outbox WHERE status = 'failed')",
        )
        .await?;
    let row = client.query_one(&stmt, &[]).await?;
    Ok(Counts {
        users: row.get(0),
        conversations: row.get(1),
        messages: row.get(2),
        outbox_pending: row.get(3),
        outbox_failed: row.get(4),
    })
}
