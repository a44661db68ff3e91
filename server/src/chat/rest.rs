//! REST chat (whole answer or Server-Sent Events), history and conversations.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use protocol::chat::{ChatRequest, ChatResponse, Conversation, Done, FinishReason, Message, Page};
use protocol::error::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::log::{AnswerLog, LogCursor, LogEvent};
use super::pipeline;
use super::{compat, store};
use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;

/// Checks, counts against the ask limit and stores the question (one statement), and starts
/// generating; the answer task runs to its end on `state.tasks` even if the caller goes away.
async fn start(
    state: &AppState,
    user: &AuthUser,
    request: ChatRequest,
) -> ApiResult<Arc<AnswerLog>> {
    pipeline::validate(&state.config, &request.message)?;
    let accepted = pipeline::accept(
        &state.db,
        state.cluster.instance_id(),
        state.config.history_turns,
        user.id,
        request.message,
        request.conversation_id,
        Some(state.config.asks_per_minute),
        None,
    )
    .await?;
    let log = AnswerLog::new();
    state.tasks.spawn(pipeline::generate(
        state.clone(),
        accepted,
        None,
        Arc::clone(&log),
    ));
    Ok(log)
}

/// An answer that failed, as an API error (the message is the pipeline's user-safe one).
fn failure(code: ErrorCode, message: String) -> ApiError {
    match code {
        ErrorCode::ProviderUnavailable => ApiError::ProviderUnavailable(message),
        ErrorCode::ContentBlocked => ApiError::ContentBlocked(message),
        ErrorCode::Unavailable => ApiError::Unavailable("the answer service is not ready"),
        ErrorCode::NotFound => ApiError::NotFound("no such conversation"),
        _ => ApiError::Internal(anyhow::anyhow!("answer failed: {code}")),
    }
}

/// Ask a question and get the whole grounded answer (seed-compatible).
#[utoipa::path(
    post, path = "/api/chat/", tag = "chat",
    request_body = ChatRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The answer, stored with its question", body = ChatResponse),
        (status = 401, body = ErrorBody), (status = 404, description = "Not your conversation", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 502, description = "The model failed", body = ErrorBody),
    )
)]
pub async fn chat(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(request): ApiJson<ChatRequest>,
) -> ApiResult<Json<ChatResponse>> {
    let started = std::time::Instant::now();
    let user_message = request.message.clone();
    let log = start(&state, &user, request).await?;
    let mut cursor = log.follow();
    let mut answer = String::new();
    let mut sources = Vec::new();
    let mut failed = None;
    while let Some(event) = cursor.next().await {
        match event {
            LogEvent::Sources { sources: s, .. } => sources = s,
            LogEvent::Delta { text, .. } => answer.push_str(&text),
            LogEvent::Failed { code, message } => failed = Some((code, message)),
            LogEvent::Rejected { code, message } => return Err(failure(code, message)),
            LogEvent::Done(done) => {
                if done.finish_reason == FinishReason::Error {
                    let (code, message) = failed.unwrap_or((ErrorCode::Internal, String::new()));
                    return Err(failure(code, message));
                }
                return Ok(Json(ChatResponse {
                    ai_response: answer.clone(),
                    user_message,
                    answer,
                    sources,
                    conversation_id: done.conversation_id,
                    message_id: done.message_id,
                    finish_reason: done.finish_reason,
                    usage: done.usage,
                    latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                }));
            }
        }
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "answer log ended without done"
    )))
}

/// `event: sources` of the SSE stream.
#[derive(Serialize)]
struct SseSources<'a> {
    conversation_id: Uuid,
    sources: &'a [protocol::chat::Source],
}

/// `event: delta` of the SSE stream.
#[derive(Serialize)]
struct SseDelta<'a> {
    seq: u64,
    text: &'a str,
}

/// `event: error` of the SSE stream.
#[derive(Serialize)]
struct SseError<'a> {
    code: ErrorCode,
    message: &'a str,
}

fn sse_event(name: &'static str, data: &impl Serialize) -> Event {
    // These payloads are plain structs of strings and numbers: serializing cannot fail.
    Event::default()
        .json_data(data)
        .unwrap_or_default()
        .event(name)
}

fn to_sse(event: &LogEvent) -> Event {
    match event {
        LogEvent::Sources {
            conversation_id,
            sources,
        } => sse_event(
            "sources",
            &SseSources {
                conversation_id: *conversation_id,
                sources,
            },
        ),
        LogEvent::Delta { seq, text } => sse_event("delta", &SseDelta { seq: *seq, text }),
        LogEvent::Failed { code, message } | LogEvent::Rejected { code, message } => sse_event(
            "error",
            &SseError {
                code: *code,
                message,
            },
        ),
        LogEvent::Done(done) => sse_event("done", done),
    }
}

fn sse_stream(cursor: LogCursor) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.next().await?;
        Some((Ok(to_sse(&event)), cursor))
    })
}

/// Ask a question and get the answer as Server-Sent Events: `sources`, `delta` (`{seq, text}`)
/// as it streams, `error` (`{code, message}`) if it fails, and last `done` (the same payload as
/// the socket's `done` frame, without `id`).
#[utoipa::path(
    post, path = "/api/chat/stream", tag = "chat",
    request_body = ChatRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "text/event-stream of sources, delta..., done", content_type = "text/event-stream", body = Done),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody),
    )
)]
pub async fn chat_stream(
    State(state): State<AppState>,
    user: AuthUser,
    ApiJson(request): ApiJson<ChatRequest>,
) -> ApiResult<impl IntoResponse> {
    let log = start(&state, &user, request).await?;
    let sse = Sse::new(sse_stream(log.follow()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    Ok((
        [
            // Proxies (nginx) must pass each event on at once.
            ("x-accel-buffering", "no"),
            (header::CACHE_CONTROL.as_str(), "no-cache"),
        ],
        sse,
    ))
}

/// `limit` (1..=100, default 20) and `before` (the `next_before` of the previous page).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page (default 20); values outside 1..=100 are clamped into it.
    #[param(value_type = Option<u64>, minimum = 0, maximum = 4294967295_u64)]
    limit: Option<u32>,
    /// Cursor: the `next_before` of the previous page.
    #[param(value_type = Option<Uuid>)]
    before: Option<String>,
}

impl PageQuery {
    fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE))
    }

    fn before(&self) -> ApiResult<Option<Uuid>> {
        match self.before.as_deref() {
            None => Ok(None),
            Some(b) => Uuid::parse_str(b).map(Some).map_err(|_| {
                ApiError::BadRequest("`before` is not a cursor from a previous page".into())
            }),
        }
    }

    fn page<T>(&self, items: Vec<T>, id: impl Fn(&T) -> Uuid) -> Page<T> {
        let full = i64::try_from(items.len()).unwrap_or(i64::MAX) >= self.limit();
        let next_before = if full {
            items.last().map(|i| id(i).to_string())
        } else {
            None
        };
        Page { items, next_before }
    }
}

/// The caller's past questions and answers, newest first: `{items, next_before}` pages.
///
/// With `SEED_COMPAT_HISTORY=true`, a request with neither `limit` nor `before` answers the
/// Django prototype's bare list of `{id, user_message, ai_response, created_at}` instead (the
/// newest 100 exchanges), for the prototype's clients.
#[utoipa::path(
    get, path = "/api/chat-history/", tag = "chat",
    params(PageQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page `{items, next_before}`; or, with SEED_COMPAT_HISTORY=true and no `limit`/`before`, the Django prototype's bare list (newest 100)", body = compat::HistoryResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    )
)]
pub async fn chat_history(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<compat::HistoryResponse>> {
    let client = state.db.get().await?;
    if state.config.seed_compat_history && query.limit.is_none() && query.before.is_none() {
        let items = compat::history(&client, user.id).await?;
        return Ok(Json(compat::HistoryResponse::Compat(items)));
    }
    let items = store::history(&client, user.id, query.before()?, query.limit()).await?;
    Ok(Json(compat::HistoryResponse::Page(
        query.page(items, |i| i.id),
    )))
}

/// The caller's conversations, newest first.
#[utoipa::path(
    get, path = "/api/conversations/", tag = "chat",
    params(PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Page<Conversation>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody))
)]
pub async fn list_conversations(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<Conversation>>> {
    let client = state.db.get().await?;
    let items = store::conversations(&client, user.id, query.before()?, query.limit()).await?;
    Ok(Json(query.page(items, |c| c.id)))
}

/// A conversation id from the path; anything that is not a UUID names no conversation.
fn conversation_id(raw: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("no such conversation"))
}

/// The messages of one of the caller's conversations, newest first.
#[utoipa::path(
    get, path = "/api/conversations/{id}/messages", tag = "chat",
    params(("id" = Uuid, Path, description = "Conversation id"), PageQuery),
    security(("bearer" = [])),
    responses((status = 200, body = Page<Message>), (status = 404, description = "No such conversation of yours", body = ErrorBody))
)]
pub async fn conversation_messages(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<Message>>> {
    let id = conversation_id(&id)?;
    let client = state.db.get().await?;
    let items = store::messages(&client, user.id, id, query.before()?, query.limit())
        .await?
        .ok_or(ApiError::NotFound("no such conversation"))?;
    Ok(Json(query.page(items, |m| m.id)))
}

/// Deletes one of the caller's conversations and its messages.
#[utoipa::path(
    delete, path = "/api/conversations/{id}", tag = "chat",
    params(("id" = Uuid, Path, description = "Conversation id")),
    security(("bearer" = [])),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such conversation of yours", body = ErrorBody))
)]
pub async fn delete_conversation(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = conversation_id(&id)?;
    let client = state.db.get().await?;
    if store::delete_conversation(&client, user.id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound("no such conversation"))
    }
}
