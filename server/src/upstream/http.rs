//! HTTP plumbing of every provider client (chat models and embedders): the client and its
//! timeouts, error mapping, and retries with `Retry-After` or jittered backoff.

use std::time::Duration;

use futures::stream::StreamExt;
use rand::Rng;
use serde::Deserialize;

use super::{ProviderError, ProviderErrorKind};
use crate::config::Config;

/// Attempts per call, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 4;
/// First backoff step; doubled per attempt, with full jitter.
const BASE_BACKOFF: Duration = Duration::from_millis(400);
/// Longest single wait. A provider asking for more (e.g. a per-minute quota with a 40 s
/// `retryDelay`) fails fast instead: a person is waiting for the answer.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Largest error body read to classify a failure (bodies are never logged or shown).
const MAX_ERROR_BODY: usize = 16 * 1024;

/// The HTTP client of the providers. No total timeout (answers stream for a while); a connect
/// timeout, and a read timeout that works as the idle timeout between streamed bytes.
pub(crate) fn client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let timeout = Duration::from_secs(config.provider_timeout_secs.max(1));
    Ok(reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .read_timeout(timeout)
        .build()?)
}

/// Waiting time before attempt `attempt + 1` (0-based `attempt` just failed).
pub(crate) fn backoff(attempt: u32, hint: Option<Duration>) -> Duration {
    if let Some(hint) = hint {
        return hint.min(MAX_BACKOFF);
    }
    let ceiling = BASE_BACKOFF
        .saturating_mul(1 << attempt.min(5))
        .min(MAX_BACKOFF);
    // Full jitter keeps many clients that failed together from retrying together.
    let millis =
        rand::rng().random_range(ceiling.as_millis() as u64 / 2..=ceiling.as_millis() as u64);
    Duration::from_millis(millis)
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    /// Gemini: `RESOURCE_EXHAUSTED`, `UNAVAILABLE`, ...
    #[serde(default)]
    status: Option<String>,
    /// OpenAI: `invalid_request_error`, ...
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

/// Parses Google's duration strings (`"26s"`, `"0.5s"`).
fn parse_google_duration(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Turns a non-success response into a [`ProviderError`]: retryable for 408/429/5xx, with the
/// delay the provider asked for. Logs the status and the provider's error class only.
pub(crate) async fn error_from_response(
    provider: &str,
    response: reqwest::Response,
) -> ProviderError {
    let status = response.status();
    let header_delay = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    let mut bytes = response.bytes_stream();
    while let Some(Ok(piece)) = bytes.next().await {
        body.extend_from_slice(&piece);
        if body.len() > MAX_ERROR_BODY {
            break;
        }
    }
    let parsed = serde_json::from_slice::<ErrorEnvelope>(&body)
        .ok()
        .and_then(|e| e.error);
    let mut retry_delay = None;
    let mut daily_quota = false;
    let mut class = None;
    if let Some(err) = &parsed {
        class = err.status.clone().or_else(|| err.kind.clone());
        for detail in &err.details {
            if let Some(delay) = detail.get("retryDelay").and_then(|d| d.as_str()) {
                retry_delay = parse_google_duration(delay);
            }
            // A per-day quota does not clear by retrying within an answer.
            if detail.to_string().contains("PerDay") {
                daily_quota = true;
            }
        }
    }
    tracing::warn!(
        provider,
        status = status.as_u16(),
        class = class.as_deref().unwrap_or("-"),
        "provider request failed"
    );
    let code = status.as_u16();
    let retryable = matches!(code, 408 | 429 | 500 | 502 | 503 | 504) && !daily_quota;
    let (kind, message) = match code {
        429 => (
            ProviderErrorKind::Unavailable,
            "the answer service is busy (rate limited); please try again shortly",
        ),
        500..=599 => (
            ProviderErrorKind::Unavailable,
            "the answer service is unavailable right now; please try again shortly",
        ),
        401 | 403 => (
            ProviderErrorKind::Rejected,
            "the answer service refused our credentials",
        ),
        _ => (
            ProviderErrorKind::Rejected,
            "the answer service rejected the request",
        ),
    };
    ProviderError {
        kind,
        message: message.to_owned(),
        retryable,
        retry_after: retry_delay.or(header_delay),
    }
}

/// Maps a transport error (connect, timeout, broken body) without exposing URLs.
pub(crate) fn transport_error(provider: &str, err: &reqwest::Error) -> ProviderError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    // Keys travel in headers, never in URLs, so the error text is safe to log.
    tracing::warn!(provider, error = %err, "provider transport error");
    let error = ProviderError::unavailable(format!(
        "the answer service {what}; please try again shortly"
    ));
    // A timeout already cost a full wait; retrying would double it. Refused or reset
    // connections fail fast and are worth another try.
    if err.is_timeout() {
        error.final_()
    } else {
        error
    }
}

/// Sends a request once; a non-success status becomes a classified [`ProviderError`].
pub(crate) async fn send_once(
    provider: &str,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, ProviderError> {
    match request.send().await {
        Ok(resp) if resp.status().is_success() => Ok(resp),
        Ok(resp) => Err(error_from_response(provider, resp).await),
        Err(e) => Err(transport_error(provider, &e)),
    }
}

/// Sends a request, retrying transient failures. `build` makes a fresh request per attempt.
pub(crate) async fn send_with_retry(
    provider: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, ProviderError> {
    let mut attempt = 0;
    loop {
        let err = match build().send().await {
            Ok(resp) if resp.status().is_success() => return Ok(resp),
            Ok(resp) => error_from_response(provider, resp).await,
            Err(e) => transport_error(provider, &e),
        };
        attempt += 1;
        if !err.retryable || attempt >= MAX_ATTEMPTS {
            return Err(err);
        }
        tokio::time::sleep(backoff(attempt - 1, err.retry_after)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn google_durations_parse() {
        assert_eq!(parse_google_duration("26s"), Some(Duration::from_secs(26)));
        assert_eq!(
            parse_google_duration("0.5s"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_google_duration("abc"), None);
        assert_eq!(parse_google_duration("-1s"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..10 {
            let d = backoff(attempt, None);
            assert!(d <= MAX_BACKOFF, "{d:?}");
            assert!(d >= BASE_BACKOFF / 2, "{d:?}");
        }
        assert_eq!(
            backoff(0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(backoff(0, Some(Duration::from_secs(60))), MAX_BACKOFF);
    }
}
