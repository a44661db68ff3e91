//! The admin API: live sessions, the knowledge base, cleanups, counts, and a live event socket.
//! Every route needs a caller whose admin role is confirmed in the database ([`AdminUser`]).

use axum::Json;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use protocol::ErrorBody;
use protocol::admin::{AdminEvent, CleanupRun, CleanupTrigger, KbInfo, SessionInfo, Stats};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AdminUser;
use crate::cluster;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiQuery;
use crate::jobs::cleanup;
use crate::rag::RagError;
use crate::state::AppState;

mod documents;
mod insight;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sessions))
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
    Ok(Json(cluster::all_sessions(&state).await?))
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
#[utoipa::path(post, path = "/api/admin/cleanup", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = CleanupRun), (status = 409, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
async fn run_cleanup(
    admin: AdminUser,
    State(state): State<AppState>,
) -> ApiResult<Json<CleanupRun>> {
    tracing::info!(admin = %admin.0.username, "manual history cleanup requested");
    let run = cleanup::run(
        &state.db,
        state.config.history_retention_days,
        CleanupTrigger::Manual,
    )
    .await?;
    let _ = state
        .sessions
        .event_sender()
        .send(AdminEvent::CleanupFinished { run: run.clone() });
    Ok(Json(run))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct RunsQuery {
    /// At most this many runs (default 20, at most 1000).
    limit: Option<i64>,
}

/// Recent cleanup runs, newest first.
#[utoipa::path(get, path = "/api/admin/cleanup/runs", tag = "admin", security(("bearer" = [])),
    params(RunsQuery),
    responses((status = 200, body = Vec<CleanupRun>), (status = 403, body = ErrorBody)))]
async fn cleanup_runs(
    _admin: AdminUser,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> ApiResult<Json<Vec<CleanupRun>>> {
    Ok(Json(
        cleanup::list_runs(&state.db, query.limit.unwrap_or(20)).await?,
    ))
}

/// Counts across the service (database-wide) and the live sessions of every instance.
#[utoipa::path(get, path = "/api/admin/stats", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Stats), (status = 403, body = ErrorBody)))]
async fn stats(_admin: AdminUser, State(state): State<AppState>) -> ApiResult<Json<Stats>> {
    let client = state.db.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM conversations), \
                    (SELECT count(*) FROM messages), \
                    (SELECT count(*) FROM mail_outbox WHERE status = 'pending'), \
                    (SELECT count(*) FROM mail_outbox WHERE status = 'failed')",
        )
        .await?;
    let row = client.query_one(&stmt, &[]).await?;
    drop(client);
    let live = cluster::all_sessions(&state).await?;
    Ok(Json(Stats {
        users: row.get(0),
        conversations: row.get(1),
        messages: row.get(2),
        live_sessions: live.len(),
        answering_now: live.iter().map(|s| s.answering).sum(),
        outbox_pending: row.get(3),
        outbox_failed: row.get(4),
    }))
}

/// `GET /api/admin/events`: a snapshot of the live sessions of every instance, then every admin
/// event as it happens (other instances' arrive through the cluster listener on the same
/// channel). A subscriber too slow to keep up gets a fresh snapshot instead of a gap.
async fn events(
    _admin: AdminUser,
    State(state): State<AppState>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.on_upgrade(move |socket| stream_events(socket, state))
}

async fn stream_events(mut socket: WebSocket, state: AppState) {
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
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            incoming = socket.recv() => match incoming {
                // The console sends nothing but pings and close; axum answers pings itself.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
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
