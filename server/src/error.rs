//! The API error type: one variant per kind of failure, each with its status and stable code.
//! Database and unexpected errors are logged and answered with a generic 500 that leaks nothing.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::error::{ErrorBody, ErrorCode, ErrorDetail, FieldError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("token expired")]
    TokenExpired,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    ProviderUnavailable(String),
    #[error("{0}")]
    ContentBlocked(String),
    #[error("{0}")]
    Unavailable(&'static str),
    /// Too busy right now (a bounded queue is full): 503 with `Retry-After: 1`.
    #[error("{0}")]
    Overloaded(&'static str),
    #[error(transparent)]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError {
            field: field.to_owned(),
            message: message.into(),
        }])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) | Self::TokenExpired => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ProviderUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::ContentBlocked(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Pool(_) => StatusCode::SERVICE_UNAVAILABLE,
            // A connection that broke mid-request (outage, restart, timeout) is the database
            // being unavailable, not a bug.
            Self::Database(e) if crate::db::faults::is_transient(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Validation(_) => ErrorCode::ValidationFailed,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::TokenExpired => ErrorCode::TokenExpired,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::ProviderUnavailable(_) => ErrorCode::ProviderUnavailable,
            Self::ContentBlocked(_) => ErrorCode::ContentBlocked,
            Self::Unavailable(_) | Self::Overloaded(_) | Self::Pool(_) => ErrorCode::Unavailable,
            Self::Database(e) if crate::db::faults::is_transient(e) => ErrorCode::Unavailable,
            Self::Database(_) | Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// When to try again: for limits, and for every 503 (a full queue or an exhausted pool is
    /// a moment's load; an unreachable database or an index still loading takes a little
    /// longer).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::Overloaded(_) | Self::Pool(_) => Some(1),
            Self::Unavailable(_) => Some(2),
            Self::Database(e) if crate::db::faults::is_transient(e) => Some(2),
            _ => None,
        }
    }

    /// The body sent to clients: internals are replaced by a generic message.
    pub fn body(&self) -> ErrorBody {
        let message = match self {
            Self::Database(e) if crate::db::faults::is_transient(e) => {
                "the database is unavailable, try again shortly".to_owned()
            }
            Self::Database(_) | Self::Internal(_) => "internal error".to_owned(),
            Self::Pool(_) => "the database is unavailable, try again shortly".to_owned(),
            Self::Validation(fields) => fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message,
                retry_after: self.retry_after_secs(),
                fields: match self {
                    Self::Validation(fields) => fields.clone(),
                    _ => Vec::new(),
                },
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // A full queue is load, not a fault: counted in metrics, not logged per request.
        if status.is_server_error() && !matches!(self, Self::Overloaded(_)) {
            tracing::error!(error = ?self, "request failed");
        }
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        match &self {
            Self::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TokenExpired => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Bearer error=\"invalid_token\", error_description=\"token expired\"",
                    ),
                );
            }
            _ => {}
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_says_when_to_try_again() {
        let timeout = deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait);
        for error in [
            ApiError::Overloaded("queue full"),
            ApiError::Unavailable("not ready"),
            ApiError::Pool(timeout),
        ] {
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE, "{error:?}");
            let response = error.into_response();
            let retry = response.headers().get(header::RETRY_AFTER);
            assert!(retry.is_some(), "503 without Retry-After");
        }
        assert_eq!(
            ApiError::Internal(anyhow::anyhow!("x")).retry_after_secs(),
            None
        );
    }
}
