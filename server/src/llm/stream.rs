//! What the streaming HTTP chat clients share on top of [`crate::upstream`]: the driver that
//! turns a provider's SSE payloads into answer chunks, and retries before the first delta.
//!
//! The driver owns what every provider shares (skipping empty events, unparseable JSON,
//! cumulative usage, and how the stream ends); a provider only says what one event's JSON means,
//! through [`StreamEvent`].

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use protocol::chat::Usage;
use serde::de::DeserializeOwned;

use super::{ChatStream, Chunk};
use crate::upstream::sse::SseData;
use crate::upstream::{ProviderError, http};

/// Attempts to open an answer stream, the first included: a storm of 429/503 is ridden out
/// within the first-token deadline (`PROVIDER_TIMEOUT_SECS`) rather than after a fixed count.
const MAX_STREAM_ATTEMPTS: u32 = 12;

/// One provider's streamed event, as JSON.
pub(crate) trait StreamEvent: DeserializeOwned {
    /// Named in logs.
    const PROVIDER: &'static str;
    /// A payload that is not JSON and ends the stream normally (OpenAI's `[DONE]`).
    const END_MARKER: Option<&'static str> = None;

    /// Reports what this event says: answer text, usage, a finish reason, or a failure.
    fn read(self, out: &mut Chunks);
}

/// The answer chunks the events read so far turned into, waiting to be handed out, and how the
/// answer stands.
#[derive(Default)]
pub(crate) struct Chunks {
    pending: VecDeque<Result<Chunk, ProviderError>>,
    /// Usage counts are cumulative: the last one seen wins.
    usage: Usage,
    /// An event carried a normal finish reason; usage may still follow, and a connection that
    /// ends from here on ends the answer normally.
    finished: bool,
    /// Nothing more is read: the stream ends once `pending` is empty.
    done: bool,
}

impl Chunks {
    /// Answer text; empty text is dropped.
    pub(crate) fn delta(&mut self, text: String) {
        if !text.is_empty() {
            self.pending.push_back(Ok(Chunk::Delta(text)));
        }
    }

    /// Counts so far; they replace the earlier ones.
    pub(crate) fn usage(&mut self, usage: Usage) {
        self.usage = usage;
    }

    /// The answer ended normally (stop, length, ...).
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// The answer failed: `error` follows what was already reported, and the stream ends.
    pub(crate) fn fail(&mut self, error: ProviderError) {
        self.done = true;
        self.pending.push_back(Err(error));
    }

    /// One event's `data` payload.
    fn read<E: StreamEvent>(&mut self, data: &str) {
        if E::END_MARKER.is_some_and(|marker| data.trim() == marker) {
            self.done = true;
            self.pending
                .push_back(Ok(Chunk::Finished { usage: self.usage }));
            return;
        }
        if data.trim().is_empty() {
            return;
        }
        match serde_json::from_str::<E>(data) {
            Ok(event) => event.read(self),
            Err(e) => {
                tracing::warn!(provider = E::PROVIDER, error = %e, "unparseable stream event");
                self.fail(ProviderError::unavailable(
                    "the answer service sent an unexpected response",
                ));
            }
        }
    }

    /// The payloads ran out (`None`) or broke (`Some(error)`).
    fn end(&mut self, error: Option<ProviderError>) {
        self.done = true;
        // A connection that breaks or closes after the finish reason lost nothing (some servers
        // close without `[DONE]`; Gemini never sends one).
        self.pending.push_back(if self.finished {
            Ok(Chunk::Finished { usage: self.usage })
        } else {
            Err(error.unwrap_or_else(|| {
                ProviderError::unavailable("the answer stream was cut off; please ask again")
            }))
        });
    }
}

/// Turns the SSE `data` payloads into answer chunks. The stream ends with `Finished` only after a
/// normal finish reason (or the end marker); a connection that closes before that is an error.
pub(crate) fn chat_stream<E: StreamEvent>(payloads: SseData) -> ChatStream {
    stream::unfold(
        (payloads, Chunks::default()),
        |(mut payloads, mut chunks)| async move {
            loop {
                if let Some(item) = chunks.pending.pop_front() {
                    return Some((item, (payloads, chunks)));
                }
                if chunks.done {
                    return None;
                }
                match payloads.next().await {
                    Some(Ok(data)) => chunks.read::<E>(&data),
                    Some(Err(e)) => chunks.end(Some(e)),
                    None => chunks.end(None),
                }
            }
        },
    )
    .boxed()
}

/// Opens a stream with retries *before the first delta*: an attempt that fails to connect, gets
/// a retryable status, or breaks before any text arrived is retried with backoff; once a delta
/// is in hand the stream is returned and later failures are final. Each attempt must produce its
/// first item within `first_token_timeout`.
pub(crate) async fn open_with_retry<F, Fut>(
    first_token_timeout: Duration,
    open: F,
) -> Result<ChatStream, ProviderError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<ChatStream, ProviderError>>,
{
    let mut attempt = 0;
    let started = std::time::Instant::now();
    loop {
        let outcome = tokio::time::timeout(first_token_timeout, async {
            let mut stream = open().await?;
            // Wait for the first item: a failure before any text can still be retried.
            match stream.next().await {
                Some(Ok(first)) => {
                    let rest = match first {
                        Chunk::Delta(_) => Some(stream),
                        Chunk::Finished { .. } => None,
                    };
                    Ok((first, rest))
                }
                Some(Err(e)) => Err(e),
                None => Err(ProviderError::unavailable(
                    "the answer stream ended before it began",
                )),
            }
        })
        .await
        .unwrap_or_else(|_| {
            // Not retried: another full wait would keep the person waiting twice as long.
            Err(ProviderError::unavailable(
                "the answer service did not answer in time; please try again",
            )
            .final_())
        });
        match outcome {
            Ok((first, rest)) => {
                let head = stream::iter([Ok(first)]);
                return Ok(match rest {
                    Some(rest) => head
                        .chain(rest.map(|item| item.map_err(ProviderError::final_)))
                        .boxed(),
                    None => head.boxed(),
                });
            }
            Err(err) => {
                attempt += 1;
                let wait = http::backoff(attempt - 1, err.retry_after);
                // Retry while the person's wait for a first token stays within the deadline;
                // past it they get `provider_unavailable` instead of a longer wait.
                if !err.retryable
                    || attempt >= MAX_STREAM_ATTEMPTS
                    || started.elapsed() + wait >= first_token_timeout
                {
                    return Err(err);
                }
                tracing::info!(attempt, "retrying the answer stream");
                metrics::counter!("provider_retries_total").increment(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}
