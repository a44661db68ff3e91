//! `/api/admin/kb/documents`: list, upload or replace, and delete knowledge-base documents.
//! Storage and the overlay over the folder are in [`crate::rag::documents`]; this is HTTP.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use protocol::ErrorBody;
use protocol::admin::AdminEvent;
use protocol::documents::KbDocument;

use crate::auth::AdminUser;
use crate::error::{ApiError, ApiResult};
use crate::rag::documents::{self, DocumentChange, DocumentError, DocumentKind};
use crate::state::AppState;

impl From<DocumentError> for ApiError {
    fn from(e: DocumentError) -> Self {
        match e {
            DocumentError::NotFound => ApiError::NotFound("no such document"),
            DocumentError::Rag(e) => e.into(),
        }
    }
}

/// The documents the knowledge base serves, by name.
#[utoipa::path(get, path = "/api/admin/kb/documents", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = Vec<KbDocument>), (status = 403, body = ErrorBody)))]
pub async fn list_documents(
    _admin: AdminUser,
    State(state): State<AppState>,
) -> ApiResult<Json<Vec<KbDocument>>> {
    Ok(Json(state.answerer.rag().documents().await?))
}

fn checked_name(name: &str) -> ApiResult<DocumentKind> {
    documents::validate_name(name).map_err(|m| ApiError::validation("name", m))
}

/// Uploads or replaces a document. The body is the document; its `Content-Type` says how to
/// read it (`text/markdown`, `text/plain`, `text/html`, `application/pdf`; without one, the
/// name's extension decides). The index is rebuilt before the answer (questions in flight keep
/// the old one) and the other instances reload. A document with no readable text is a 422 and
/// changes nothing.
#[utoipa::path(put, path = "/api/admin/kb/documents/{name}", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Document name, e.g. `parking.md`; `/` (as %2F) for folders")),
    request_body(content = Vec<u8>, description = "The document", content_type = "text/markdown"),
    responses((status = 201, body = KbDocument, description = "Added"),
              (status = 200, body = KbDocument, description = "Replaced"),
              (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 422, description = "Bad name, or no readable text", body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn put_document(
    admin: AdminUser,
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let by_name = checked_name(&name)?;
    let kind = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => by_name,
        Some(ct) => match DocumentKind::from_content_type(ct) {
            Some(kind) => kind,
            None if ct.starts_with("application/octet-stream") => by_name,
            None => {
                return Err(ApiError::UnsupportedMediaType(
                    "documents are text/markdown, text/plain, text/html or application/pdf".into(),
                ));
            }
        },
    };
    let limit = state.config.kb_max_document_bytes;
    let too_large = || ApiError::PayloadTooLarge(format!("documents are limited to {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut bytes: Vec<u8> = Vec::new();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|_| ApiError::BadRequest("the body could not be read".into()))?;
        if bytes.len() + piece.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&piece);
    }
    let body = Arc::new(bytes);
    let (text, _chunks) = documents::prepare(name.clone(), kind, Arc::clone(&body))
        .await
        .map_err(|m| ApiError::validation("body", m))?;

    let rag = state.answerer.rag();
    let existed = rag.documents().await?.iter().any(|d| d.name == name);
    tracing::info!(admin = %admin.0.username, document = %name, kind = kind.as_str(),
        bytes = body.len(), "knowledge-base document upload");
    let change = DocumentChange::Put {
        name: name.clone(),
        kind,
        body,
        text,
    };
    let kb = rag.change_document(change, admin.0.id).await?;
    announce(&state, kb).await;
    let document = rag
        .documents()
        .await?
        .into_iter()
        .find(|d| d.name == name)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("uploaded document not loaded")))?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(document)).into_response())
}

/// Deletes a document (an uploaded one, or hides a folder file on every instance). The index
/// is rebuilt before the answer and the other instances reload.
#[utoipa::path(delete, path = "/api/admin/kb/documents/{name}", tag = "admin",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Document name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete_document(
    admin: AdminUser,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    checked_name(&name)?;
    tracing::info!(admin = %admin.0.username, document = %name, "knowledge-base document delete");
    let kb = state
        .answerer
        .rag()
        .change_document(DocumentChange::Delete { name }, admin.0.id)
        .await?;
    announce(&state, kb).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells this instance's admin consoles and the other instances that the knowledge base changed.
async fn announce(state: &AppState, kb: protocol::admin::KbInfo) {
    let _ = state
        .sessions
        .event_sender()
        .send(AdminEvent::KbReloaded { kb });
    state.cluster.publish_kb_changed().await;
}
