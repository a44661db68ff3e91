//! A typed client of the server's REST API: login, token refresh and the admin routes.
//!
//! Methods take the access token as an argument rather than holding one, so the token
//! refresher ([`crate::auth`]) stays the only owner of the current pair.

use protocol::admin::{CleanupRun, KbInfo, RecentQuestion, SessionInfo, Stats, StatsSeries};
use protocol::auth::{LoginRequest, RefreshRequest, TokenPair};
use protocol::documents::KbDocument;
use protocol::feedback::FeedbackEntry;
use protocol::gaps::GapsReport;
use protocol::{ErrorBody, ErrorCode};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

/// What went wrong with a request, in words fit for the status bar.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error body (or at least an error status).
    #[error("{message} ({status})")]
    Server {
        status: u16,
        code: Option<ErrorCode>,
        message: String,
    },
    #[error("cannot reach the server: {0}")]
    Network(String),
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl ApiError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => *code,
            _ => None,
        }
    }

    /// 409: a reload or cleanup is already in progress.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Server { status: 409, .. })
    }

    /// The credentials (not the network) are the problem: logging in again may help.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Server { status: 401, .. })
    }
}

impl From<reqwest::Error> for ApiError {
    fn from(e: reqwest::Error) -> Self {
        if e.is_decode() {
            Self::Decode(e.to_string())
        } else {
            // The innermost cause ("Connection refused (os error 111)") says what is wrong;
            // reqwest's own text ("error sending request") does not, and the URL is already
            // on the status bar.
            let mut cause: &dyn std::error::Error = &e;
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            Self::Network(cause.to_string())
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!("chat-admin/", env!("CARGO_PKG_VERSION")))
            // A reload of a large knowledge base may take a while; hanging forever helps no one.
            .timeout(std::time::Duration::from_secs(300))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn login(&self, username: &str, password: &str) -> Result<TokenPair, ApiError> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        send(self.request(Method::POST, "/api/login/", None).json(&body)).await
    }

    /// Trades a refresh token for a new pair; the old refresh token is spent (rotation).
    pub async fn refresh(&self, refresh: &str) -> Result<TokenPair, ApiError> {
        let body = RefreshRequest {
            refresh: refresh.to_owned(),
        };
        send(
            self.request(Method::POST, "/api/token/refresh/", None)
                .json(&body),
        )
        .await
    }

    pub async fn sessions(&self, token: &str) -> Result<Vec<SessionInfo>, ApiError> {
        send(self.request(Method::GET, "/api/admin/sessions", Some(token))).await
    }

    pub async fn kb(&self, token: &str) -> Result<KbInfo, ApiError> {
        send(self.request(Method::GET, "/api/admin/kb", Some(token))).await
    }

    /// Reloads the knowledge base; a 409 means another reload is running.
    pub async fn reload_kb(&self, token: &str) -> Result<KbInfo, ApiError> {
        send(self.request(Method::POST, "/api/admin/kb/reload", Some(token))).await
    }

    /// Runs the history cleanup now; a 409 means one is already running.
    pub async fn cleanup(&self, token: &str) -> Result<CleanupRun, ApiError> {
        send(self.request(Method::POST, "/api/admin/cleanup", Some(token))).await
    }

    /// Recent cleanup runs, newest first.
    pub async fn cleanup_runs(&self, token: &str, limit: u32) -> Result<Vec<CleanupRun>, ApiError> {
        let path = format!("/api/admin/cleanup/runs?limit={limit}");
        send(self.request(Method::GET, &path, Some(token))).await
    }

    pub async fn stats(&self, token: &str) -> Result<Stats, ApiError> {
        send(self.request(Method::GET, "/api/admin/stats", Some(token))).await
    }

    /// The last hour, minute by minute: asks, answer latency p50/p95, provider errors.
    pub async fn stats_series(&self, token: &str) -> Result<StatsSeries, ApiError> {
        send(self.request(Method::GET, "/api/admin/stats/series", Some(token))).await
    }

    /// A user's latest questions with the start of each answer, newest first.
    pub async fn user_questions(
        &self,
        token: &str,
        user_id: uuid::Uuid,
        limit: u32,
    ) -> Result<Vec<RecentQuestion>, ApiError> {
        let path = format!("/api/admin/users/{user_id}/questions?limit={limit}");
        send(self.request(Method::GET, &path, Some(token))).await
    }

    /// Knowledge gaps of the last 30 days, ranked.
    pub async fn gaps(&self, token: &str) -> Result<GapsReport, ApiError> {
        send(self.request(Method::GET, "/api/admin/gaps", Some(token))).await
    }

    /// The latest answer ratings, newest first.
    pub async fn feedback(&self, token: &str, limit: u32) -> Result<Vec<FeedbackEntry>, ApiError> {
        let path = format!("/api/admin/feedback?limit={limit}");
        send(self.request(Method::GET, &path, Some(token))).await
    }

    pub async fn documents(&self, token: &str) -> Result<Vec<KbDocument>, ApiError> {
        send(self.request(Method::GET, "/api/admin/kb/documents", Some(token))).await
    }

    /// Uploads (or replaces) document `name`; the index is rebuilt before the answer.
    pub async fn put_document(
        &self,
        token: &str,
        name: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<KbDocument, ApiError> {
        let path = format!("/api/admin/kb/documents/{}", encode_segment(name));
        send(
            self.request(Method::PUT, &path, Some(token))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body),
        )
        .await
    }

    pub async fn delete_document(&self, token: &str, name: &str) -> Result<(), ApiError> {
        let path = format!("/api/admin/kb/documents/{}", encode_segment(name));
        send_no_body(self.request(Method::DELETE, &path, Some(token))).await
    }

    /// Closes a live session's socket (close code 4010, with a reason the user sees).
    pub async fn disconnect(&self, token: &str, session_id: uuid::Uuid) -> Result<(), ApiError> {
        let path = format!("/api/admin/sessions/{session_id}/disconnect");
        let body = serde_json::json!({"reason": "disconnected by an administrator"});
        send_no_body(self.request(Method::POST, &path, Some(token)).json(&body)).await
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

async fn send<T: DeserializeOwned>(request: RequestBuilder) -> Result<T, ApiError> {
    let response = request.send().await?;
    let status = response.status();
    if status.is_success() {
        return Ok(response.json().await?);
    }
    let text = response.text().await.unwrap_or_default();
    Err(error_from_body(status, &text))
}

/// Like [`send`] for answers without a body (204).
async fn send_no_body(request: RequestBuilder) -> Result<(), ApiError> {
    let response = request.send().await?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(error_from_body(status, &text))
}

/// Percent-encodes one path segment: a document name's `/` travels as `%2F`.
pub fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The server's `{"error":{...}}` body when there is one; otherwise the bare status
/// (a proxy in between may answer with HTML, which is no use on a status bar).
pub fn error_from_body(status: StatusCode, body: &str) -> ApiError {
    match serde_json::from_str::<ErrorBody>(body) {
        Ok(body) => ApiError::Server {
            status: status.as_u16(),
            code: Some(body.error.code),
            message: body.error.message,
        },
        Err(_) => ApiError::Server {
            status: status.as_u16(),
            code: None,
            message: status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_becomes_a_readable_error() {
        let e = error_from_body(
            StatusCode::CONFLICT,
            r#"{"error":{"code":"conflict","message":"a cleanup is already running"}}"#,
        );
        assert!(e.is_conflict());
        assert_eq!(e.code(), Some(ErrorCode::Conflict));
        assert_eq!(e.to_string(), "a cleanup is already running (409)");
    }

    #[tokio::test]
    async fn an_unreachable_server_says_why() {
        // A port that was just free: nothing listens there now.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = ApiClient::new(&format!("http://{addr}"))
            .stats("token")
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Network(_)), "{e:?}");
        assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
    }

    #[test]
    fn document_names_are_one_encoded_segment() {
        assert_eq!(encode_segment("returns.md"), "returns.md");
        assert_eq!(encode_segment("a/Oven 3.pdf"), "a%2FOven%203.pdf");
    }

    #[test]
    fn non_json_error_falls_back_to_the_status() {
        let e = error_from_body(StatusCode::BAD_GATEWAY, "<html>oops</html>");
        assert_eq!(e.code(), None);
        assert_eq!(e.to_string(), "Bad Gateway (502)");
    }
}
