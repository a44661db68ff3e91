//! Conversations and messages in PostgreSQL: plain functions over a client, `prepare_cached`,
//! explicit row mapping. Every query is scoped by the owning user, so another user's rows are
//! indistinguishable from missing ones.
//!
//! Why one file: the statements here write and read the same rows and must agree on them (a
//! question's in-flight row and ask-limit hit, its answer's `reply_to` and gap signals, the
//! history and pages that read both back); split apart, that agreement would span files.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use protocol::chat::{Conversation, HistoryItem, Message, MessageStatus, Role, Source, Usage};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::ApiError;
use crate::llm::Turn;

/// Longest conversation title, in characters.
const TITLE_CHARS: usize = 80;

pub(crate) struct StoredQuestion {
    pub question_id: Uuid,
    pub conversation_id: Uuid,
    /// Earlier complete exchanges of the conversation, oldest first.
    pub history: Vec<Turn>,
}

/// An asks-per-minute limit counted in the same statement that stores the question (see
/// [`store_question`]): at most `max` asks under `key` per `window_secs`.
pub(crate) struct AskLimit<'a> {
    pub key: &'a str,
    pub max: u32,
    pub window_secs: u64,
}

/// The relay's stream row of a socket answer (see [`super::relay`]), written in the same
/// statement as its question (one round trip fewer): `stream_id` names the answer's published
/// events, `ask_id` is the client's id for it; the process is the question's `instance_id`.
pub(crate) struct StreamRow<'a> {
    pub stream_id: Uuid,
    pub ask_id: &'a str,
}

/// What [`store_question`] did: stored the question, or counted nothing and stored nothing
/// because the ask limit was reached (whole seconds until an ask is admitted again).
pub(crate) enum Stored {
    Question(StoredQuestion),
    Limited { retry_after_secs: u64 },
}

/// The head of both question statements: the ask limit's upsert (`hit`, parameters `$1`–`$3`,
/// see [`crate::throttle::sliding_hit_sql`]) and whether the ask may be stored (`admitted.ok`:
/// the hit counted, or no limit was asked for).
macro_rules! ask_limit_ctes {
    () => {
        concat!(
            "WITH hit AS (",
            crate::throttle::sliding_hit_sql!(),
            "), admitted AS (SELECT coalesce((SELECT counted FROM hit), true) AS ok), "
        )
    };
}

/// [`store_question`]'s statement for a question that opens a conversation. `$1`–`$3` are the
/// ask limit's ([`crate::throttle::sliding_hit_sql`]); the rows are written only if it counted
/// the ask (or was not asked to count).
pub(crate) const NEW_QUESTION_SQL: &str = concat!(
    ask_limit_ctes!(),
    "conversation AS ( \
       INSERT INTO conversations (id, user_id, title) \
       SELECT $4::uuid, $5::uuid, $6::text FROM admitted WHERE ok), \
     question AS ( \
       INSERT INTO messages (id, conversation_id, user_id, role, content, status) \
       SELECT $7::uuid, $4::uuid, $5::uuid, 'user', $8::text, 'complete' FROM admitted WHERE ok), \
     in_flight AS ( \
       INSERT INTO answers_in_flight (question_id, instance_id) \
       SELECT $7::uuid, $9::uuid FROM admitted WHERE ok), \
     stream AS ( \
       INSERT INTO answer_streams (stream_id, user_id, ask_id, instance_id) \
       SELECT $10::uuid, $5::uuid, $11::text, $9::uuid FROM admitted \
       WHERE ok AND $10::uuid IS NOT NULL) \
     SELECT ok, (SELECT retry_after FROM hit) FROM admitted"
);

/// [`store_question`]'s statement for a question in an existing conversation; `$1`–`$3` as in
/// [`NEW_QUESTION_SQL`].
pub(crate) const FOLLOW_UP_SQL: &str = concat!(
    ask_limit_ctes!(),
    "touched AS ( \
       UPDATE conversations SET updated_at = now() \
       WHERE id = $4 AND user_id = $5 AND (SELECT ok FROM admitted) RETURNING id), \
     question AS ( \
       INSERT INTO messages (id, conversation_id, user_id, role, content, status) \
       SELECT $6::uuid, id, $5::uuid, 'user', $7::text, 'complete' FROM touched RETURNING id), \
     in_flight AS ( \
       INSERT INTO answers_in_flight (question_id, instance_id) \
       SELECT id, $8::uuid FROM question), \
     stream AS ( \
       INSERT INTO answer_streams (stream_id, user_id, ask_id, instance_id) \
       SELECT $10::uuid, $5::uuid, $11::text, $8::uuid FROM question \
       WHERE $10::uuid IS NOT NULL), \
     recent AS ( \
       SELECT q.content AS question, a.content AS answer, a.created_at, a.id \
       FROM messages a JOIN messages q ON q.id = a.reply_to \
       WHERE a.conversation_id = (SELECT id FROM touched) AND a.role = 'assistant' \
         AND a.status = 'complete' \
       ORDER BY a.created_at DESC, a.id DESC LIMIT $9) \
     SELECT (SELECT ok FROM admitted), (SELECT retry_after FROM hit), \
       EXISTS (SELECT 1 FROM touched), \
       coalesce((SELECT array_agg(question ORDER BY created_at DESC, id DESC) FROM recent), \
                '{}'::text[]), \
       coalesce((SELECT array_agg(answer ORDER BY created_at DESC, id DESC) FROM recent), \
                '{}'::text[])"
);

/// The verdict of a question statement's ask limit (its first two columns): `Some(retry after,
/// in seconds)` if the ask was not admitted.
fn limited(row: &Row, limit: Option<&AskLimit<'_>>) -> Result<Option<u64>, ApiError> {
    let window_secs = limit.map_or(1, |l| l.window_secs);
    Ok(crate::throttle::sliding_verdict(row, window_secs)?.err())
}

/// In one statement (one round trip, atomic without a transaction block): counts the ask
/// against `limit` if one is given (nothing is stored if the limit is reached), checks the
/// conversation is the user's (or starts one), reads its last `history_turns` complete
/// exchanges, and stores the question with its `answers_in_flight` row (naming this process
/// as the one answering, so the answer is marked interrupted if the process dies first; see
/// `chat::orphans`) and, given `stream`, the relay's stream row of the answer.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store_question(
    client: &impl GenericClient,
    instance_id: Uuid,
    user_id: Uuid,
    conversation_id: Option<Uuid>,
    question: &str,
    history_turns: usize,
    limit: Option<&AskLimit<'_>>,
    stream: Option<&StreamRow<'_>>,
) -> Result<Stored, ApiError> {
    let question_id = Uuid::new_v4();
    let stream_id = stream.map(|s| s.stream_id);
    let ask_id = stream.map(|s| s.ask_id);
    let key = limit.map(|l| l.key);
    let max = limit.map(|l| i64::from(l.max));
    let window = limit.map_or(1.0, |l| l.window_secs.max(1) as f64);
    let Some(id) = conversation_id else {
        // The new conversation, the question and its in-flight row: the foreign keys are checked
        // at the statement's end, when all three rows exist.
        let id = Uuid::new_v4();
        let insert = client.prepare_cached(NEW_QUESTION_SQL).await?;
        let row = client
            .query_one(
                &insert,
                &[
                    &key,
                    &max,
                    &window,
                    &id,
                    &user_id,
                    &title_of(question),
                    &question_id,
                    &question,
                    &instance_id,
                    &stream_id,
                    &ask_id,
                ],
            )
            .await?;
        if let Some(retry_after_secs) = limited(&row, limit)? {
            return Ok(Stored::Limited { retry_after_secs });
        }
        return Ok(Stored::Question(StoredQuestion {
            question_id,
            conversation_id: id,
            history: Vec::new(),
        }));
    };
    // Touches the conversation if it is the user's; only then stores the question. The history
    // is read from the statement's snapshot, so it never holds the question itself. One row
    // comes back: the limit's verdict, whether the conversation was found, and the turns,
    // newest first, as arrays.
    let ask = client.prepare_cached(FOLLOW_UP_SQL).await?;
    let turns = i64::try_from(history_turns).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            &ask,
            &[
                &key,
                &max,
                &window,
                &id,
                &user_id,
                &question_id,
                &question,
                &instance_id,
                &turns,
                &stream_id,
                &ask_id,
            ],
        )
        .await?;
    if let Some(retry_after_secs) = limited(&row, limit)? {
        return Ok(Stored::Limited { retry_after_secs });
    }
    if !row.try_get::<_, bool>(2)? {
        return Err(ApiError::NotFound("no such conversation"));
    }
    let questions: Vec<String> = row.try_get(3)?;
    let answers: Vec<String> = row.try_get(4)?;
    let mut history: Vec<Turn> = questions
        .into_iter()
        .zip(answers)
        .map(|(question, answer)| Turn { question, answer })
        .collect();
    history.reverse();
    Ok(Stored::Question(StoredQuestion {
        question_id,
        conversation_id: id,
        history,
    }))
}

pub(crate) fn title_of(question: &str) -> String {
    let question = question.split_whitespace().collect::<Vec<_>>().join(" ");
    if question.chars().count() <= TITLE_CHARS {
        return question;
    }
    let mut title: String = question.chars().take(TITLE_CHARS - 1).collect();
    title.push('…');
    title
}

/// A finished answer, whatever the ending.
pub(crate) struct AnswerRecord<'a> {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub reply_to: Uuid,
    pub content: &'a str,
    pub status: MessageStatus,
    pub sources: &'a [Source],
    pub usage: Usage,
    pub first_token_ms: Option<i32>,
    pub latency_ms: i32,
    pub error_code: Option<&'a str>,
    /// The question's knowledge-gap signals, written in the same statement (complete answers).
    pub signals: Option<&'a QuestionSignals>,
}

/// A question's knowledge-gap signals (see [`crate::gaps`]): its vector, as little-endian
/// `f32`s, the best similarity any passage reached and its document, and whether the answer
/// was a refusal.
#[derive(Debug, Clone)]
pub(crate) struct QuestionSignals {
    pub provider: &'static str,
    pub model: String,
    pub dimension: i32,
    pub embedding: Vec<u8>,
    pub best_score: Option<f32>,
    pub best_document: Option<String>,
    pub refused: bool,
}

/// [`store_answer`]'s statement.
pub(crate) const STORE_ANSWER_SQL: &str = "WITH answer AS ( \
               INSERT INTO messages (id, conversation_id, user_id, role, reply_to, content, status, \
                 sources, prompt_tokens, completion_tokens, total_tokens, first_token_ms, \
                 latency_ms, error_code) \
               VALUES ($1, $2, $3, 'assistant', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
               ON CONFLICT (reply_to) WHERE reply_to IS NOT NULL DO UPDATE SET \
                 id = EXCLUDED.id, content = EXCLUDED.content, status = EXCLUDED.status, \
                 sources = EXCLUDED.sources, prompt_tokens = EXCLUDED.prompt_tokens, \
                 completion_tokens = EXCLUDED.completion_tokens, \
                 total_tokens = EXCLUDED.total_tokens, first_token_ms = EXCLUDED.first_token_ms, \
                 latency_ms = EXCLUDED.latency_ms, error_code = EXCLUDED.error_code, \
                 created_at = now() \
               WHERE messages.status = 'error' AND messages.error_code = 'interrupted' \
               RETURNING conversation_id), \
             done AS (DELETE FROM answers_in_flight WHERE question_id = $4), \
             signals AS ( \
               INSERT INTO question_signals (question_id, provider, model, dimension, embedding, \
                 best_score, best_document, refused) \
               SELECT $4, $14, $15, $16, $17, $18, $19, $20 WHERE $14::text IS NOT NULL \
               ON CONFLICT (question_id) DO NOTHING) \
             UPDATE conversations SET updated_at = now() \
             WHERE id = (SELECT conversation_id FROM answer)";

pub(crate) async fn store_answer(
    client: &impl GenericClient,
    record: &AnswerRecord<'_>,
) -> Result<(), ApiError> {
    // Written straight into the statement's buffer, without a `serde_json::Value` in between.
    let sources = tokio_postgres::types::Json(record.sources);
    let insert = client.prepare_cached(STORE_ANSWER_SQL).await?;
    let tokens = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let signals = record.signals;
    client
        .execute(
            &insert,
            &[
                &record.id,
                &record.conversation_id,
                &record.user_id,
                &record.reply_to,
                &record.content,
                &record.status.as_str(),
                &sources,
                &tokens(record.usage.prompt_tokens),
                &tokens(record.usage.completion_tokens),
                &tokens(record.usage.total_tokens),
                &record.first_token_ms,
                &record.latency_ms,
                &record.error_code,
                &signals.map(|g| g.provider),
                &signals.map(|g| g.model.as_str()),
                &signals.map(|g| g.dimension),
                &signals.map(|g| g.embedding.as_slice()),
                &signals.and_then(|g| g.best_score),
                &signals.and_then(|g| g.best_document.as_deref()),
                &signals.map(|g| g.refused),
            ],
        )
        .await?;
    Ok(())
}

fn status_of(text: &str) -> MessageStatus {
    match text {
        "complete" => MessageStatus::Complete,
        "cancelled" => MessageStatus::Cancelled,
        "error" => MessageStatus::Error,
        _ => MessageStatus::Pending,
    }
}

fn sources_of(value: Option<serde_json::Value>) -> Vec<Source> {
    value
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The user's questions with their answers, newest first, older than the question `before`.
pub(crate) async fn history(
    client: &impl GenericClient,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<HistoryItem>, ApiError> {
    let query = client
        .prepare_cached(
            "SELECT q.id, q.conversation_id, q.content, q.created_at, \
                    a.content, a.status, a.sources, a.created_at, a.error_code \
             FROM messages q LEFT JOIN messages a ON a.reply_to = q.id \
             WHERE q.user_id = $1 AND q.role = 'user' \
               AND ($2::uuid IS NULL OR (q.created_at, q.id) < \
                    (SELECT created_at, id FROM messages WHERE id = $2 AND user_id = $1)) \
             ORDER BY q.created_at DESC, q.id DESC LIMIT $3",
        )
        .await?;
    let rows = client.query(&query, &[&user_id, &before, &limit]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let status: Option<String> = row.get(5);
            HistoryItem {
                id: row.get(0),
                conversation_id: row.get(1),
                question: row.get(2),
                asked_at: row.get(3),
                answer: row.get(4),
                status: status.as_deref().map_or(MessageStatus::Pending, status_of),
                sources: sources_of(row.get(6)),
                answered_at: row.get::<_, Option<DateTime<Utc>>>(7),
                error_code: row.get(8),
            }
        })
        .collect())
}

/// The user's conversations, newest first, older than the conversation `before`.
pub(crate) async fn conversations(
    client: &impl GenericClient,
    user_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Conversation>, ApiError> {
    let query = client
        .prepare_cached(
            "SELECT c.id, c.title, c.created_at, c.updated_at, \
                    (SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) \
             FROM conversations c \
             WHERE c.user_id = $1 \
               AND ($2::uuid IS NULL OR (c.created_at, c.id) < \
                    (SELECT created_at, id FROM conversations WHERE id = $2 AND user_id = $1)) \
             ORDER BY c.created_at DESC, c.id DESC LIMIT $3",
        )
        .await?;
    let rows = client.query(&query, &[&user_id, &before, &limit]).await?;
    Ok(rows
        .iter()
        .map(|row| Conversation {
            id: row.get(0),
            title: row.get(1),
            created_at: row.get(2),
            updated_at: row.get(3),
            message_count: row.get(4),
        })
        .collect())
}

/// The messages of one of the user's conversations, newest first, older than the message
/// `before`; `None` if the conversation is not the user's.
pub(crate) async fn messages(
    client: &impl GenericClient,
    user_id: Uuid,
    conversation_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Option<Vec<Message>>, ApiError> {
    let owner = client
        .prepare_cached("SELECT 1 FROM conversations WHERE id = $1 AND user_id = $2")
        .await?;
    if client
        .query_opt(&owner, &[&conversation_id, &user_id])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    let query = client
        .prepare_cached(
            "SELECT id, conversation_id, role, content, status, sources, \
                    prompt_tokens, completion_tokens, total_tokens, created_at, error_code \
             FROM messages \
             WHERE conversation_id = $1 AND user_id = $2 \
               AND ($3::uuid IS NULL OR (created_at, id) < \
                    (SELECT created_at, id FROM messages WHERE id = $3 AND conversation_id = $1)) \
             ORDER BY created_at DESC, id DESC LIMIT $4",
        )
        .await?;
    let rows = client
        .query(&query, &[&conversation_id, &user_id, &before, &limit])
        .await?;
    Ok(Some(rows.iter().map(message_of).collect()))
}

fn message_of(row: &Row) -> Message {
    let role: &str = row.get(2);
    let role = if role == "assistant" {
        Role::Assistant
    } else {
        Role::User
    };
    let tokens = |i: usize| {
        row.get::<_, Option<i32>>(i)
            .map(|n| u32::try_from(n).unwrap_or(0))
    };
    let usage = match (tokens(6), tokens(7), tokens(8)) {
        (Some(prompt_tokens), Some(completion_tokens), Some(total_tokens)) => Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
        }),
        _ => None,
    };
    Message {
        id: row.get(0),
        conversation_id: row.get(1),
        role,
        content: row.get(3),
        status: status_of(row.get(4)),
        sources: sources_of(row.get(5)),
        usage,
        created_at: row.get(9),
        error_code: row.get(10),
    }
}

/// Deletes one of the user's conversations with its messages; false if it is not theirs.
pub(crate) async fn delete_conversation(
    client: &impl GenericClient,
    user_id: Uuid,
    conversation_id: Uuid,
) -> Result<bool, ApiError> {
    let delete = client
        .prepare_cached("DELETE FROM conversations WHERE id = $1 AND user_id = $2")
        .await?;
    Ok(client
        .execute(&delete, &[&conversation_id, &user_id])
        .await?
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_the_first_question_shortened() {
        assert_eq!(title_of("  Where is\nmy parcel? "), "Where is my parcel?");
        let long = "word ".repeat(40);
        let title = title_of(&long);
        assert_eq!(title.chars().count(), TITLE_CHARS);
        assert!(title.ends_with('…'));
    }
}
