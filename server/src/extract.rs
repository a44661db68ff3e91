//! Request extractors whose rejections use the API's JSON error body.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;

use crate::error::ApiError;

/// `axum::Json` with rejections mapped to [`ApiError`]: malformed JSON is a 400, a missing
/// field or wrong type a 422, a wrong content type a 415, an oversized body a 413.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` with rejections mapped to [`ApiError`].
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => {
                ApiError::Validation(vec![protocol::error::FieldError {
                    field: "body".into(),
                    message: serde_error_text(&e.body_text()),
                }])
            }
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(format!(
                "malformed JSON: {}",
                serde_error_text(&e.body_text())
            )),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a JSON body with `Content-Type: application/json`".into(),
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body is too large".into())
            }
            other => {
                ApiError::BadRequest(format!("unreadable request body: {}", other.body_text()))
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(format!(
            "bad query string: {}",
            serde_error_text(&rejection.body_text())
        ))
    }
}

/// `axum`'s `WebSocketUpgrade` with rejections (a plain GET, a missing `Upgrade` header)
/// answered with the API's JSON error body instead of plain text.
pub struct ApiWebSocket(pub axum::extract::ws::WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for ApiWebSocket {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::ws::WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map(Self)
            .map_err(ApiError::from)
    }
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(rejection: WebSocketUpgradeRejection) -> Self {
        ApiError::BadRequest(format!(
            "this route is a WebSocket: {}",
            rejection.body_text()
        ))
    }
}

/// Axum prefixes serde's message with a generic sentence; keep only serde's part.
fn serde_error_text(text: &str) -> String {
    text.rsplit_once(": ")
        .map(|(_, tail)| tail)
        .unwrap_or(text)
        .to_owned()
}
