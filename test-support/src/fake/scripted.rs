//! A scriptable fake of the Gemini and OpenAI-compatible HTTP APIs on loopback: each request
//! gets the next scripted [`Reply`] (JSON, SSE in chosen byte pieces, silence, an endless
//! stream), embedding calls optionally an [`EmbedFn`]'s vectors; every request is recorded.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::StreamExt;

/// What the fake answers to the next request.
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// An SSE body sent in the given byte pieces, `pause` apart; `then_break` ends the body
    /// with a transport error (the connection drops) instead of a clean end.
    Sse {
        pieces: Vec<Vec<u8>>,
        pause: Duration,
        then_break: bool,
    },
    /// Response headers, then silence: no body byte ever comes.
    Silent,
    /// An endless SSE stream of `piece` every `pause`; counts as dropped when the client goes.
    Endless { piece: Vec<u8>, pause: Duration },
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

/// Maps a text to its (unnormalised) embedding.
pub type EmbedFn = fn(&str) -> Vec<f32>;

#[derive(Default)]
pub struct FakeState {
    pub seen: Mutex<Vec<Seen>>,
    script: Mutex<VecDeque<Reply>>,
    /// Answers embedding calls when set (scripted replies then serve only chat calls).
    pub embed: Mutex<Option<EmbedFn>>,
    /// Set when an endless stream noticed the client had gone.
    pub client_gone: std::sync::atomic::AtomicBool,
}

pub struct FakeProvider {
    pub addr: SocketAddr,
    pub base: String,
    pub state: Arc<FakeState>,
}

impl FakeProvider {
    pub async fn start() -> Self {
        let state = Arc::new(FakeState::default());
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            base: format!("http://{addr}"),
            state,
        }
    }

    pub fn push(&self, reply: Reply) {
        self.state.script.lock().unwrap().push_back(reply);
    }

    pub fn set_embedder(&self, f: EmbedFn) {
        *self.state.embed.lock().unwrap() = Some(f);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// Cuts `text` into pieces of `size` bytes, on purpose ignoring UTF-8 and line boundaries.
pub fn split_bytes(text: &str, size: usize) -> Vec<Vec<u8>> {
    text.as_bytes().chunks(size).map(<[u8]>::to_vec).collect()
}

async fn handle(State(state): State<Arc<FakeState>>, request: Request) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let headers = request.headers().clone();
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    state.seen.lock().unwrap().push(Seen {
        path_and_query: path_and_query.clone(),
        headers,
        body: body.clone(),
    });

    // Embedding calls are answered by the embedding function when one is set, so scripted
    // replies stay in order for the chat calls.
    let is_embedding = path_and_query.contains(":batchEmbedContents")
        || path_and_query.starts_with("/v1/embeddings");
    let embed = *state.embed.lock().unwrap();
    let reply = match embed {
        Some(f) if is_embedding => embedding_reply(&path_and_query, &body, f),
        _ => state
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Reply::Json {
                status: 500,
                headers: vec![],
                body: "{}".into(),
            }),
    };
    match reply {
        Reply::Json {
            status,
            headers,
            body,
        } => {
            let mut builder = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            for (k, v) in headers {
                builder = builder.header(k, v);
            }
            builder.body(Body::from(body)).unwrap()
        }
        Reply::Sse {
            pieces,
            pause,
            then_break,
        } => {
            let stream = futures::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>))
                .then(move |piece| async move {
                    tokio::time::sleep(pause).await;
                    piece.map(Bytes::from)
                })
                .chain(
                    futures::stream::iter(then_break.then_some(())).then(|()| async {
                        // Let the data written so far reach the client before the reset.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(std::io::Error::other("connection dropped"))
                    }),
                );
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Reply::Silent => Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(futures::stream::pending::<
                Result<Bytes, std::io::Error>,
            >()))
            .unwrap(),
        Reply::Endless { piece, pause } => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    if tx.send(Ok(Bytes::from(piece.clone()))).await.is_err() {
                        // The body was dropped: the client hung up.
                        state
                            .client_gone
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
    }
}

/// Answers Gemini `batchEmbedContents` and OpenAI `/v1/embeddings` with `f`.
fn embedding_reply(path: &str, body: &serde_json::Value, f: EmbedFn) -> Reply {
    let json = if path.contains(":batchEmbedContents") {
        let embeddings: Vec<serde_json::Value> = body["requests"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        let text = r["content"]["parts"][0]["text"]
                            .as_str()
                            .unwrap_or_default();
                        serde_json::json!({"values": f(text)})
                    })
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({"embeddings": embeddings})
    } else {
        let data: Vec<serde_json::Value> = body["input"]
            .as_array()
            .map(|xs| {
                xs.iter()
                    .enumerate()
                    .map(|(i, x)| {
                        serde_json::json!({"object":"embedding","index":i,
                                           "embedding": f(x.as_str().unwrap_or_default())})
                    })
                    .rev() // out of order on purpose: clients must sort by index
                    .collect()
            })
            .unwrap_or_default();
        serde_json::json!({"object":"list","data":data,"usage":{"prompt_tokens":1,"total_tokens":1}})
    };
    Reply::Json {
        status: 200,
        headers: vec![],
        body: json.to_string(),
    }
}
