//! A fake OpenAI-compatible chat model on loopback: `POST /v1/chat/completions`, answered with
//! the real streaming wire format (`chat.completion.chunk` events, a `stop` chunk, an optional
//! usage chunk, `[DONE]`) or an OpenAI-style error. What each request gets is the test's choice:
//! [`FakeChat::start`] takes a function from the [`Call`] to its [`ChatReply`].
//!
//! The fake counts requests, streams read to their end and streams dropped before it (the server
//! hung up), and keeps the latest request body: [`ChatStats`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde_json::{Value, json};

/// One request to the fake.
pub struct Call {
    /// Its number, from 1.
    pub n: usize,
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
}

impl Call {
    /// The content of the request's last message (the question; earlier turns may mention
    /// others), or `""`.
    pub fn last_message(&self) -> &str {
        self.body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
    }
}

/// What the fake sends back for one request.
pub enum ChatReply {
    /// An error status with an OpenAI-style JSON error body, and `Retry-After` when given.
    Error {
        status: u16,
        message: &'static str,
        kind: &'static str,
        retry_after: Option<&'static str>,
    },
    /// A streamed answer.
    Stream(Stream),
}

impl ChatReply {
    /// `400 invalid_request_error` "bad model": refused before any byte of an answer.
    pub fn bad_model() -> Self {
        Self::Error {
            status: 400,
            message: "bad model",
            kind: "invalid_request_error",
            retry_after: None,
        }
    }

    /// `status` (429, 503) "overloaded", with `Retry-After: 1`.
    pub fn overloaded(status: u16) -> Self {
        Self::Error {
            status,
            message: "overloaded",
            kind: "server_error",
            retry_after: Some("1"),
        }
    }
}

impl From<Stream> for ChatReply {
    fn from(stream: Stream) -> Self {
        Self::Stream(stream)
    }
}

/// A streamed answer: `count` content deltas `pause` apart, then the end.
pub struct Stream {
    count: usize,
    piece: Arc<dyn Fn(usize) -> String + Send + Sync>,
    pause: Duration,
    pause_before_end: bool,
    break_after: Option<usize>,
    usage_prompt_tokens: Option<usize>,
    /// Waited before the first delta (the model "thinking").
    first_pause: Duration,
}

impl Stream {
    /// `count` deltas, the `i`-th being `piece(i)` (made when it is sent).
    pub fn generated(
        count: usize,
        pause: Duration,
        piece: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> Self {
        Self {
            count,
            piece: Arc::new(piece),
            pause,
            pause_before_end: true,
            break_after: None,
            usage_prompt_tokens: None,
            first_pause: Duration::ZERO,
        }
    }

    /// The first delta comes only after `pause`.
    pub fn first_after(mut self, pause: Duration) -> Self {
        self.first_pause = pause;
        self
    }

    /// The deltas `w0 `, `w1 ` … `w{count-1} `.
    pub fn words(count: usize, pause: Duration) -> Self {
        Self::generated(count, pause, |i| format!("w{i} "))
    }

    /// The given deltas.
    pub fn pieces(pieces: Vec<String>, pause: Duration) -> Self {
        Self::generated(pieces.len(), pause, move |i| pieces[i].clone())
    }

    /// The end comes right after the last delta, without a pause before it.
    pub fn end_at_once(mut self) -> Self {
        self.pause_before_end = false;
        self
    }

    /// After `deltas` deltas the connection breaks (a transport error) instead of going on.
    pub fn breaking_after(mut self, deltas: usize) -> Self {
        self.break_after = Some(deltas);
        self
    }

    /// A usage chunk before `[DONE]`: `prompt_tokens` in, one completion token per delta.
    pub fn usage(mut self, prompt_tokens: usize) -> Self {
        self.usage_prompt_tokens = Some(prompt_tokens);
        self
    }
}

/// What the fake has seen.
#[derive(Default)]
pub struct ChatStats {
    pub requests: AtomicUsize,
    /// Streams written to their end.
    pub completed: AtomicUsize,
    /// Streams dropped before their end: the server hung up on the fake.
    pub dropped: AtomicUsize,
    /// The body of the latest request.
    pub last_request: Mutex<Value>,
}

/// The running fake.
pub struct FakeChat {
    /// Its root URL (`http://127.0.0.1:PORT`), the server's `openai_base_url`.
    pub url: String,
    pub stats: Arc<ChatStats>,
}

type Respond = dyn Fn(&Call) -> ChatReply + Send + Sync;

impl FakeChat {
    /// Starts the fake on a random loopback port; `answer` chooses each request's reply.
    pub async fn start(answer: impl Fn(&Call) -> ChatReply + Send + Sync + 'static) -> Self {
        let stats = Arc::new(ChatStats::default());
        let answer: Arc<Respond> = Arc::new(answer);
        let shared = Arc::clone(&stats);
        let router = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |body: String| {
                completions(Arc::clone(&shared), Arc::clone(&answer), body)
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake chat model");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url: format!("http://{addr}"),
            stats,
        }
    }
}

async fn completions(stats: Arc<ChatStats>, answer: Arc<Respond>, body: String) -> Response {
    let n = stats.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    *stats.last_request.lock().expect("stats lock") = body.clone();
    match answer(&Call { n, body }) {
        ChatReply::Error {
            status,
            message,
            kind,
            retry_after,
        } => {
            let mut response = Response::builder()
                .status(status)
                .header("content-type", "application/json");
            if let Some(seconds) = retry_after {
                response = response.header("retry-after", seconds);
            }
            response
                .body(Body::from(format!(
                    r#"{{"error":{{"message":"{message}","type":"{kind}","param":null,"code":null}}}}"#
                )))
                .expect("an error response")
        }
        ChatReply::Stream(stream) => Response::builder()
            .header("content-type", "text/event-stream")
            .body(stream_body(stream, stats))
            .expect("a streaming response"),
    }
}

/// Counts the stream as completed or dropped when it goes.
struct StreamGuard {
    stats: Arc<ChatStats>,
    completed: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let counter = if self.completed {
            &self.stats.completed
        } else {
            &self.stats.dropped
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

fn stream_body(stream: Stream, stats: Arc<ChatStats>) -> Body {
    let Stream {
        count,
        piece,
        pause,
        pause_before_end,
        break_after,
        usage_prompt_tokens,
        first_pause,
    } = stream;
    let guard = StreamGuard {
        stats,
        completed: false,
    };
    let events = futures::stream::unfold((0usize, guard), move |(i, mut guard)| {
        let piece = Arc::clone(&piece);
        async move {
            let before_end = i < count || (i == count && pause_before_end);
            if i == 0 && !first_pause.is_zero() {
                tokio::time::sleep(first_pause).await;
            } else if i > 0 && before_end && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if break_after == Some(i) {
                let broken = Err(std::io::Error::other("upstream broke"));
                return Some((broken, (i + 1, guard)));
            }
            let data = if i < count {
                chunk(Some(&piece(i)), None)
            } else if i == count {
                // The end is written: whatever happens next, this stream was read to its end.
                guard.completed = true;
                let mut end = chunk(None, Some("stop"));
                if let Some(prompt) = usage_prompt_tokens {
                    let usage = json!({"id":"chatcmpl-1","choices":[],
                        "usage":{"prompt_tokens":prompt,"completion_tokens":count,"total_tokens":prompt + count}});
                    end.push_str(&format!("data: {usage}\n\n"));
                }
                end.push_str("data: [DONE]\n\n");
                end
            } else {
                return None;
            };
            Some((Ok::<_, std::io::Error>(data), (i + 1, guard)))
        }
    });
    Body::from_stream(events)
}

/// One `chat.completion.chunk` event.
fn chunk(content: Option<&str>, finish: Option<&str>) -> String {
    let delta = match content {
        Some(c) => json!({"content": c}),
        None => json!({}),
    };
    let body = json!({"id":"chatcmpl-1","object":"chat.completion.chunk",
        "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
    format!("data: {body}\n\n")
}
