//! The error body: `{"error":{"code":"...","message":"..."}}`.

use serde::{Deserialize, Serialize};

/// Stable, snake_case error codes shared by REST bodies and socket `error` frames.
/// Clients branch on these; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, unknown frame type, missing field.
    BadRequest,
    /// Well-formed input that breaks a rule (length, format, range).
    ValidationFailed,
    /// Missing, malformed or revoked credentials.
    Unauthorized,
    /// A token that was valid but has expired.
    TokenExpired,
    /// Authenticated but not allowed (e.g. not an admin).
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// Duplicate resource, or an operation already in progress.
    Conflict,
    /// Body or frame over the size limit.
    PayloadTooLarge,
    /// A body that is not `application/json`.
    UnsupportedMediaType,
    /// Too many requests; `retry_after` says when to try again.
    RateLimited,
    /// Too many answers in flight on one connection.
    TooManyInFlight,
    /// The LLM or embedding provider failed or refused.
    ProviderUnavailable,
    /// The provider blocked the prompt (safety filters).
    ContentBlocked,
    /// Service starting up or dependency unreachable.
    Unavailable,
    Internal,
    /// The server generating an answer stopped before it ended (stored answers only).
    Interrupted,
}

impl ErrorCode {
    /// The wire name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::ValidationFailed => "validation_failed",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited => "rate_limited",
            Self::TooManyInFlight => "too_many_in_flight",
            Self::ProviderUnavailable => "provider_unavailable",
            Self::ContentBlocked => "content_blocked",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds to wait before retrying (with `rate_limited`; also sent as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Per-field problems (with `validation_failed`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code,
                message: message.into(),
                retry_after: None,
                fields: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_wire_names() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::TokenExpired,
            ErrorCode::PayloadTooLarge,
            ErrorCode::TooManyInFlight,
            ErrorCode::ProviderUnavailable,
        ] {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_owned()));
        }
    }

    #[test]
    fn body_has_the_documented_shape() {
        let body = ErrorBody::new(ErrorCode::NotFound, "no such conversation");
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error":{"code":"not_found","message":"no such conversation"}})
        );
    }
}
