//! Writing into this service's database: accounts by multi-row insert, conversations, messages
//! and the import records by binary `COPY`, all inside the caller's transaction.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Transaction};
use uuid::Uuid;

use super::plan::{DjangoUser, NewUser, TakenKeys};
use crate::auth::store::role_to_db;

/// Key of the advisory lock held for a whole import, so two imports never interleave.
const IMPORT_LOCK_KEY: i64 = 0x5eed_c4a7_0d1a;

/// Takes the import lock for this session; false if another import holds it.
pub async fn try_lock(client: &tokio_postgres::Client) -> anyhow::Result<bool> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&IMPORT_LOCK_KEY])
        .await?;
    Ok(row.get(0))
}

/// Django ids imported before → (their account, whether it still exists).
pub async fn known_users(
    db: &impl GenericClient,
    django_ids: &[i64],
) -> anyhow::Result<HashMap<i64, (Uuid, bool)>> {
    let rows = db
        .query(
            "SELECT m.django_id, m.user_id, EXISTS (SELECT 1 FROM users u WHERE u.id = m.user_id) \
             FROM django_user_imports m WHERE m.django_id = ANY($1)",
            &[&django_ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Adds to `taken` the lower-cased names and emails of accounts here that clash with `users`.
pub async fn add_taken_keys(
    db: &impl GenericClient,
    users: &[DjangoUser],
    taken: &mut TakenKeys,
) -> anyhow::Result<()> {
    let names: Vec<String> = users
        .iter()
        .map(|u| u.username.trim().to_lowercase())
        .collect();
    let emails: Vec<String> = users
        .iter()
        .map(|u| u.email.trim().to_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    let rows = db
        .query(
            "SELECT lower(username), lower(email) FROM users \
             WHERE lower(username) = ANY($1) OR lower(email) = ANY($2)",
            &[&names, &emails],
        )
        .await?;
    for row in rows {
        taken.usernames.insert(row.get(0));
        taken.emails.insert(row.get(1));
    }
    Ok(())
}

/// Inserts accounts (one statement for the batch); an account whose name or email was taken
/// meanwhile is left out. Returns the ids inserted.
pub async fn insert_users(
    tx: &Transaction<'_>,
    users: &[(&DjangoUser, &NewUser)],
) -> anyhow::Result<HashSet<Uuid>> {
    if users.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<Uuid> = users.iter().map(|(_, n)| n.id).collect();
    let names: Vec<&str> = users.iter().map(|(d, _)| d.username.trim()).collect();
    let emails: Vec<&str> = users.iter().map(|(_, n)| n.email.as_str()).collect();
    let hashes: Vec<&str> = users.iter().map(|(d, _)| d.password.as_str()).collect();
    let roles: Vec<&str> = users.iter().map(|(_, n)| role_to_db(n.role)).collect();
    let joined: Vec<DateTime<Utc>> = users.iter().map(|(d, _)| d.date_joined).collect();
    let rows = tx
        .query(
            "INSERT INTO users (id, username, email, password_hash, role, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::timestamptz[]) \
             ON CONFLICT DO NOTHING RETURNING id",
            &[&ids, &names, &emails, &hashes, &roles, &joined],
        )
        .await?;
    let inserted: HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let (django_ids, user_ids): (Vec<i64>, Vec<Uuid>) = users
        .iter()
        .filter(|(_, n)| inserted.contains(&n.id))
        .map(|(d, n)| (d.id, n.id))
        .unzip();
    tx.execute(
        "INSERT INTO django_user_imports (django_id, user_id) \
         SELECT * FROM UNNEST($1::bigint[], $2::uuid[])",
        &[&django_ids, &user_ids],
    )
    .await?;
    Ok(inserted)
}

/// The Django history ids already imported for `django_users`.
pub async fn imported_rows(
    db: &impl GenericClient,
    django_users: &[i64],
) -> anyhow::Result<HashSet<i64>> {
    if django_users.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = db
        .query(
            "SELECT django_id FROM django_history_imports WHERE django_user_id = ANY($1)",
            &[&django_users],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A conversation that starts in this chunk.
#[derive(Debug)]
pub struct NewConversation {
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One Django row: a question and its complete answer, both at the row's time.
#[derive(Debug)]
pub struct Exchange {
    pub django_id: i64,
    pub django_user_id: i64,
    pub question_id: Uuid,
    pub answer_id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub question: String,
    pub answer: String,
    pub at: DateTime<Utc>,
}

/// Rows written together. Rows arrive by user and time, so a chunk continues at most one
/// conversation that began in an earlier chunk.
#[derive(Debug, Default)]
pub struct Chunk {
    pub conversations: Vec<NewConversation>,
    /// A conversation begun in an earlier chunk, with its new latest time.
    pub continued: Option<(Uuid, DateTime<Utc>)>,
    pub exchanges: Vec<Exchange>,
}

impl Chunk {
    /// Adds `exchange`; `starts` says whether its conversation begins with it.
    pub fn push(&mut self, exchange: Exchange, starts: bool) {
        let conversation = exchange.conversation_id;
        if starts {
            self.conversations.push(NewConversation {
                id: conversation,
                user_id: exchange.user_id,
                title: crate::chat::store::title_of(&exchange.question),
                created_at: exchange.at,
                updated_at: exchange.at,
            });
        } else if let Some(last) = self
            .conversations
            .last_mut()
            .filter(|c| c.id == conversation)
        {
            last.updated_at = last.updated_at.max(exchange.at);
        } else {
            self.continued = Some((conversation, exchange.at));
        }
        self.exchanges.push(exchange);
    }

    pub fn len(&self) -> usize {
        self.exchanges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
    }
}

/// Writes a chunk with three `COPY`s (conversations, messages, import records).
pub async fn write_chunk(tx: &Transaction<'_>, chunk: &Chunk) -> anyhow::Result<()> {
    if !chunk.conversations.is_empty() {
        let sink = tx
            .copy_in(
                "COPY conversations (id, user_id, title, created_at, updated_at) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::UUID,
                Type::UUID,
                Type::TEXT,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
            ],
        );
        pin_mut!(writer);
        for c in &chunk.conversations {
            let row: [&(dyn ToSql + Sync); 5] =
                [&c.id, &c.user_id, &c.title, &c.created_at, &c.updated_at];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await?;
    }
    if let Some((id, at)) = chunk.continued {
        tx.execute(
            "UPDATE conversations SET updated_at = greatest(updated_at, $2) WHERE id = $1",
            &[&id, &at],
        )
        .await?;
    }

    let sink = tx
        .copy_in(
            "COPY messages (id, conversation_id, user_id, role, reply_to, content, status, \
                            created_at) FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::UUID,
            Type::UUID,
            Type::TEXT,
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
        ],
    );
    pin_mut!(writer);
    let no_reply: Option<Uuid> = None;
    for e in &chunk.exchanges {
        let reply_to = Some(e.question_id);
        let question: [&(dyn ToSql + Sync); 8] = [
            &e.question_id,
            &e.conversation_id,
            &e.user_id,
            &"user",
            &no_reply,
            &e.question,
            &"complete",
            &e.at,
        ];
        writer.as_mut().write(&question).await?;
        let answer: [&(dyn ToSql + Sync); 8] = [
            &e.answer_id,
            &e.conversation_id,
            &e.user_id,
            &"assistant",
            &reply_to,
            &e.answer,
            &"complete",
            &e.at,
        ];
        writer.as_mut().write(&answer).await?;
    }
    writer.finish().await?;

    let sink = tx
        .copy_in(
            "COPY django_history_imports (django_id, django_user_id, question_id) \
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8, Type::UUID]);
    pin_mut!(writer);
    for e in &chunk.exchanges {
        let row: [&(dyn ToSql + Sync); 3] = [&e.django_id, &e.django_user_id, &e.question_id];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}
