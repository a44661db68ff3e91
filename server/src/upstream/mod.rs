//! Talking to outside providers, shared by the chat models ([`crate::llm`]) and the embedders
//! ([`crate::rag::embed`]): the HTTP client and its timeouts, error mapping, retries with
//! `Retry-After` or backoff, SSE framing, and the [`ProviderError`] every call ends in.
//!
//! Layout:
//! - `http`: the client, error bodies → [`ProviderError`], `send_once` / `send_with_retry`.
//! - `sse`: a streamed response as its `data` payloads.
//! - `embedding`: the [`Embedder`](embedding::Embedder) contract (implemented in `rag::embed`,
//!   used by retrieval and by the offline answerer).

pub mod embedding;
pub(crate) mod http;
pub(crate) mod sse;

use std::time::Duration;

/// What kind of failure a provider call ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    /// Network trouble, timeouts, overload, quota, unexpected responses: try again later.
    Unavailable,
    /// The provider's safety filters refused the prompt or the answer.
    Blocked,
    /// A bug or misconfiguration on our side (bad request, wrong model name, bad key).
    Rejected,
}

/// A provider failure. `message` is safe to show: it never holds keys or upstream bodies.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    pub message: String,
    /// Whether trying again may help (429, 5xx, network), decided from the status.
    pub retryable: bool,
    /// Delay the provider asked for (`Retry-After`, `RetryInfo.retryDelay`).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            kind: ProviderErrorKind::Unavailable,
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }

    pub fn blocked(message: impl Into<String>) -> Self {
        Self {
            kind: ProviderErrorKind::Blocked,
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        Self {
            kind: ProviderErrorKind::Rejected,
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// The same error, marked as not worth retrying (e.g. after text already streamed).
    pub fn final_(mut self) -> Self {
        self.retryable = false;
        self
    }
}
