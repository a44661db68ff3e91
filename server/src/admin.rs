//! The admin API: live sessions, the knowledge base, cleanups, counts, and a live event socket.
//! Every route needs a caller whose admin role is confirmed in the database ([`AdminUser`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::response::Response;
use protocol::ErrorBody;
use protocol::admin::{
    AdminCommand, AdminEvent, CleanupRun, CleanupTrigger, DisconnectRequest, KbInfo, SessionInfo,
    Stats,
};
use protocol::auth::Role;
use protocol::ws::{CLOSE_TOKEN_EXPIRED, CLOSE_UNAUTHENTICATED};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{AdminUser, AuthUser};
use crate::cluster;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, ApiWebSocket};
use crate::jobs::cleanup;
use crate::rag::RagError;
use crate::state::AppState;

mod documents;
mod insight;
mod store;
mod watch;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sessions))
        .routes(routes!(disconnect_session))
        .routes(routes!(kb_info))
        .routes(routes!(kb_reload))
        .routes(routes!(run_cleanup))
        .routes(routes!(cleanup_runs))
        .routes(routes!(stats))
        .route("/api/admin/events", axum::routing::get(events))
        .routes(routes!(insight::gaps_report))
        .routes(routes!(insight::feedback_list))
        .routes(routes!(insight::stats_series))
        .routes(routes!(insight::user_questions))
        .routes(routes!(documents::list_documents))
        .routes(routes!(documents::put_document, documents::delete_document))
}

impl From<RagError> for ApiError {
    fn from(e: RagError) -> Self {
        match e {
            RagError::ReloadInProgress => ApiError::Conflict(e.public_message()),
            RagError::Provider(_) => ApiError::ProviderUnavailable(e.public_message()),
            RagError::Internal(e) => ApiError::Internal(e),
        }
    }
}

/// Live chat sessions on every instance, oldest first.
#[utoipa::path(get, path = "/api/admin/sessions", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<SessionInfo>), (status = 403, body = ErrorBody)))]
async fn sessions(
    _admin: AdminUser,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<SessionInfo>>> {
    Ok(Json(
        cluster::all_sessions(&state.cluster, &state.sessions).await?,
    ))
}

/// A live session by id, on this instance or another.
async fn find_session(state: &AppState, id: &str) -> ApiResult<SessionInfo> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound("no such live session"))?;
    if let Some(session) = state.sessions.get(id) {
        return Ok(session);
    }
    let remote = state.cluster.remote_sessions().await?;
    remote
        .into_iter()
        .find(|s| s.session_id == id)
        .ok_or(ApiError::NotFound("no such live session"))
}

/// Closes a live session's socket, on whichever instance holds it, with close code 4010 and
/// the reason (at most 120 bytes reach the client).
#[utoipa::path(post, path = "/api/admin/sessions/{id}/disconnect", tag = "admin",
    security(("bearer" = [])), params(("id" = Uuid, Path, description = "Session id")),
    request_body = DisconnectRequest,
    responses((status = 202, description = "The session is being closed"),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such live session", body = ErrorBody)))]
async fn disconnect_session(
    admin: AdminUser,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DisconnectRequest>,
) -> ApiResult<StatusCode> {
    let session = find_session(&state, &id).await?;
    let reason = body.reason.unwrap_or_default();
    tracing::info!(
        session_id = %session.session_id,
        user_id = %session.user_id,
        by = %admin.0.username,
        "admin disconnects a session"
    );
    if !state
        .sessions
        .disconnect(session.session_id, reason.clone())
    {
        state
            .cluster
            .publish_disconnect(session.session_id, reason)
            .await?;
    }
    Ok(StatusCode::ACCEPTED)
}

/// What the loaded knowledge base holds.
#[utoipa::path(get, path = "/api/admin/kb", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = KbInfo), (status = 403, body = ErrorBody)))]
async fn kb_info(_admin: AdminUser, State(state): State<AppState>) -> Json<KbInfo> {
    Json(state.answerer.rag().info())
}

/// Reloads the knowledge base from disk; questions in flight keep the old index. The other
/// instances are told to reload theirs.
#[utoipa::path(post, path = "/api/admin/kb/reload", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = KbInfo), (status = 409, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn kb_reload(admin: AdminUser, State(state): State<AppState>) -> ApiResult<Json<KbInfo>> {
    tracing::info!(admin = %admin.0.username, "knowledge-base reload requested");
    let kb = state.answerer.rag().reload().await?;
    let _ = state
        .sessions
        .event_sender()
        .send(AdminEvent::KbReloaded { kb: kb.clone() });
    state.cluster.publish_kb_changed().await;
    Ok(Json(kb))
}

/// Runs the history cleanup now (409 if a run is already in progress anywhere).
///
/// The run is a task of its own: a caller that disconnects, or a request that outlives
/// `REQUEST_TIMEOUT_SECS` over a large history, does not cancel it. It finishes (or stops at
/// shutdown, recorded as interrupted), its record lands in the runs list and the admin socket
/// hears `cleanup_finished`.
#[utoipa::path(post, path = "/api/admin/cleanup", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = CleanupRun), (status = 409, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn run_cleanup(
    admin: AdminUser,
    State(state): State<AppState>,
) -> ApiResult<Json<CleanupRun>> {
    tracing::info!(admin = %admin.0.username, "manual history cleanup requested");
    let (db, days) = (state.db.clone(), state.config.history_retention_days);
    let (events, shutdown) = (state.sessions.event_sender(), state.shutdown.clone());
    let run = state.tasks.spawn(async move {
        let run = cleanup::run_until(&db, days, CleanupTrigger::Manual, &shutdown).await?;
        let _ = events.send(AdminEvent::CleanupFinished { run: run.clone() });
        Ok::<_, cleanup::CleanupError>(run)
    });
    let run = run
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the cleanup task failed: {e}")))??;
    Ok(Json(run))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct RunsQuery {
    /// At most this many runs (default 20; 1 to 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Recent cleanup runs, newest first.
#[utoipa::path(get, path = "/api/admin/cleanup/runs", tag = "admin", security(("bearer" = [])),
    params(RunsQuery),
    responses((status = 200, body = Vec<CleanupRun>), (status = 403, body = ErrorBody),
        (status = 422, description = "`limit` out of range", body = ErrorBody)))]
async fn cleanup_runs(
    _admin: AdminUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> ApiResult<Json<Vec<CleanupRun>>> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::validation("limit", "must be within 1..=1000"));
    }
    Ok(Json(cleanup::list_runs(&state.db, limit).await?))
}

/// Counts across the service (database-wide) and the live sessions of every instance.
#[utoipa::path(get, path = "/api/admin/stats", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Stats), (status = 403, body = ErrorBody)))]
async fn stats(_admin: AdminUser, State(state): State<AppState>) -> ApiResult<Json<Stats>> {
    let client = state.db.get().await?;
    let counts = store::counts(&client).await?;
    drop(client);
    let live = cluster::all_sessions(&state.cluster, &state.sessions).await?;
    Ok(Json(Stats {
        users: counts.users,
        conversations: counts.conversations,
        messages: counts.messages,
        live_sessions: live.len(),
        answering_now: live.iter().map(|s| s.answering).sum(),
        outbox_pending: counts.outbox_pending,
        outbox_failed: counts.outbox_failed,
    }))
}

/// `GET /api/admin/events`: a snapshot of the live sessions of every instance, then every admin
/// event as it happens (other instances' arrive through the cluster listener on the same
/// channel). A subscriber too slow to keep up gets a fresh snapshot instead of a gap.
///
/// The socket lives no longer than its token: it closes with 4001 when the token expires
/// unrenewed. The console renews it with `{"type":"auth","token":...}` frames; each renewal, and
/// a check every minute, confirms the admin role in the database (4003 once it is gone).
///
/// `{"type":"watch","user_id":...}` adds one user's answers, streamed as they are generated on
/// this instance (see [`watch`]); `{"type":"unwatch"}` stops them.
async fn events(
    admin: AdminUser,
    State(state): State<AppState>,
    ApiWebSocket(ws): ApiWebSocket,
) -> Response {
    ws.on_upgrade(move |socket| stream_events(socket, state, admin.0))
}

/// How often an open event socket re-reads its admin's role.
const ROLE_RECHECK: Duration = Duration::from_secs(60);

/// Whether `user_id` still holds the admin role; a database failure counts as yes (the socket
/// is re-checked a minute later).
async fn still_admin(state: &AppState, user_id: uuid::Uuid) -> bool {
    let role = match state.db.get().await {
        Ok(client) => crate::auth::store::role_of(&client, user_id).await,
        Err(e) => Err(e.into()),
    };
    match role {
        Ok(role) => role == Some(Role::Admin),
        Err(e) => {
            tracing::warn!(error = %e, "admin events: role check failed; keeping the socket");
            true
        }
    }
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn stream_events(mut socket: WebSocket, state: AppState, mut admin: AuthUser) {
    // Subscribed before the other instances' sessions are read, so none of their changes falls
    // in between (one may arrive twice: consoles apply events as upserts and removals).
    let (local, mut events) = state.sessions.subscribe();
    let snapshot = merged_snapshot(&state, local).await;
    if send_event(&mut socket, &AdminEvent::Snapshot { sessions: snapshot })
        .await
        .is_err()
    {
        return;
    }
    let expiry = tokio::time::sleep_until(admin.expiry());
    tokio::pin!(expiry);
    let mut recheck = tokio::time::interval_at(Instant::now() + ROLE_RECHECK, ROLE_RECHECK);
    // The user whose answers this socket relays, if any (one at a time).
    let mut relay: Option<watch::Relay> = None;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            () = &mut expiry => return close(socket, CLOSE_TOKEN_EXPIRED, "token expired").await,
            _ = recheck.tick() => {
                if !still_admin(&state, admin.id).await {
                    return close(socket, CLOSE_UNAUTHENTICATED, "no longer an admin").await;
                }
            }
            incoming = socket.recv() => match incoming {
                // The console sends pings, close, `auth` frames renewing its token, and
                // `watch`/`unwatch`; axum answers pings itself.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(Message::Text(text))) => {
                    let token = match serde_json::from_str(&text) {
                        Ok(AdminCommand::Auth { token }) => token,
                        Ok(AdminCommand::Watch { user_id }) => {
                            // Replaces the previous relay (its followers stop); answers
                            // under way are relayed again from their start.
                            relay = Some(watch::Relay::start(&state, user_id));
                            continue;
                        }
                        Ok(AdminCommand::Unwatch) => {
                            relay = None;
                            continue;
                        }
                        Err(_) => continue,
                    };
                    match state.tokens.verify_access(&token) {
                        Ok(user) if user.id == admin.id => {
                            if !still_admin(&state, user.id).await {
                                return close(socket, CLOSE_UNAUTHENTICATED, "no longer an admin")
                                    .await;
                            }
                            expiry.as_mut().reset(user.expiry());
                            admin = user;
                        }
                        Err(ApiError::TokenExpired) => {
                            return close(socket, CLOSE_TOKEN_EXPIRED, "token expired").await;
                        }
                        Ok(_) | Err(_) => {
                            return close(socket, CLOSE_UNAUTHENTICATED, "invalid token").await;
                        }
                    }
                }
                Some(Ok(_)) => {}
            },
            frame = watch::next_frame(&mut relay) => {
                if send_event(&mut socket, &frame).await.is_err() {
                    return;
                }
            }
            event = events.recv() => {
                let event = match event {
                    Ok(event) => event,
                    Err(RecvError::Lagged(_)) => AdminEvent::Snapshot {
                        sessions: merged_snapshot(&state, state.sessions.list()).await,
                    },
                    Err(RecvError::Closed) => return,
                };
                if send_event(&mut socket, &event).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `local` plus the other instances' sessions; only `local` if the table cannot be read, so the
/// console still works for this instance.
async fn merged_snapshot(state: &AppState, local: Vec<SessionInfo>) -> Vec<SessionInfo> {
    match state.cluster.remote_sessions().await {
        Ok(remote) => cluster::merge(local, remote),
        Err(e) => {
            tracing::warn!(error = %e, "admin events: other instances' sessions unavailable");
            local
        }
    }
}

async fn send_event(socket: &mut WebSocket, event: &AdminEvent) -> Result<(), axum::Error> {
    match serde_json::to_string(event) {
        Ok(text) => socket.send(Message::Text(text.into())).await,
        Err(e) => {
            tracing::error!(error = %e, "admin event not serialisable");
            Ok(())
        }
    }
}
