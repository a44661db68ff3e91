//! Server-Sent Events framing: a streamed response as its `data` payloads, in order.

use eventsource_stream::Eventsource;
use futures::stream::{BoxStream, StreamExt};

use super::{ProviderError, http};

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
