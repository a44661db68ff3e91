//! Server-Sent Events: framing a response into `data` payloads, and the driver that turns a
//! provider's payloads into answer chunks. The driver owns what every provider shares (skipping
//! empty events, unparseable JSON, cumulative usage, and how the stream ends); a provider only
//! says what one event's JSON means, through [`StreamEvent`].

use std::collections::VecDeque;

use eventsource_stream::Eventsource;
use futures::stream::{self, BoxStream, StreamExt};
use protocol::chat::Usage;
use serde::de::DeserializeOwned;

use super::{ChatStream, ProviderError, http};
use crate::answer::Chunk;

/// The `data` payloads of a stream, in order.
pub(crate) type SseData = BoxStream<'static, Result<String, ProviderError>>;

/// The `data` fields of a response's SSE events, in order. Handles events split across reads
/// and CRLF or LF line ends (eventsource-stream follows the spec).
pub(crate) fn data(provider: &'static str, response: reqwest::Response) -> SseData {
    response
        .bytes_stream()
        .eventsource()
        .map(move |event| match event {
            Ok(event) => Ok(event.data),
            Err(eventsource_stream::EventStreamError::Transport(e)) => {
                Err(http::transport_error(provider, &e))
            }
            Err(_) => Err(ProviderError::unavailable(
                "the answer service sent a malformed stream",
            )),
        })
        .boxed()
}

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
