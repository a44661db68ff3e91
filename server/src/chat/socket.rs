//! `GET /ws/chat`: the chat WebSocket.
//!
//! Authenticate (header on the upgrade, or a first `auth` frame), then split: one writer task
//! owns the sink and is fed by a bounded queue; the connection task `select!`s over the reader,
//! the heartbeat, the token-expiry timer, server shutdown and the writer. Each answer runs as a
//! task of its own on `state.tasks` (a disconnect does not stop it); a small follower task per
//! answer copies its log into this connection's queue, and a follower that cannot queue within
//! the slow-client bound closes the connection: a slow reader never slows an answer or anyone
//! else.
//!
//! Answers asked here are also published to [`super::relay`], so a `resume` or `cancel` sent to
//! any instance reaches them; a `resume` this instance has no buffer for is read from there. On
//! server shutdown sockets close with 1012 ("service restart"): reconnect elsewhere and resume.
//!
//! Why one file: one connection's design (authenticate, split into reader, writer and followers,
//! heartbeat, expiry, shutdown) — the connection task and the frames it handles are read together;
//! the answer log, the pipeline, the relay and the sessions are rooms of their own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use protocol::error::{ErrorBody, ErrorCode};
use protocol::ws::{
    CLOSE_DISCONNECTED, CLOSE_SERVICE_RESTART, CLOSE_TOKEN_EXPIRED, CLOSE_TOO_MANY_SOCKETS,
    CLOSE_UNAUTHENTICATED, ClientFrame, ServerFrame,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::SendTimeoutError;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::log::{AnswerLog, LogEvent};
use super::pipeline;
use super::relay::{Reader, SocketLease};
use super::sessions::{SessionGuard, SessionRegistry, Unauthenticated};
use super::store::StreamRow;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::ApiWebSocket;
use crate::state::AppState;

/// Frames waiting for the writer, per connection. Deltas are small, so this is a few hundred
/// KiB at most; a client that lets it fill is too slow.
const OUT_QUEUE: usize = 256;
/// Longest accepted ask id.
const MAX_ID_CHARS: usize = 128;
/// Close code for "going away" (dead peer).
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a server-side failure.
const CLOSE_INTERNAL: u16 = 1011;
/// Close code when the peer is too slow to read (policy violation).
const CLOSE_POLICY: u16 = 1008;

enum Outgoing {
    /// Boxed: the queue allocates its slots up front, 32 at a time, per connection, and a
    /// frame is ~10x the size of a pointer; idle sockets should not pay for that.
    Frame(Box<ServerFrame>),
    Ping,
    /// Sent last: the writer stops after it.
    Close(u16, Utf8Bytes),
}

/// Open the chat socket (a WebSocket upgrade). Authenticate with `Authorization: Bearer` on the
/// upgrade or a first `{"type":"auth","token":...}` frame within 10 s; frames as in the design.
/// An expired token closes the socket with 4001; a user over `WS_MAX_SOCKETS_PER_USER` open
/// sockets is closed with 4029.
#[utoipa::path(
    get, path = "/ws/chat", tag = "chat",
    responses(
        (status = 101, description = "Switching to the chat WebSocket protocol"),
        (status = 401, description = "Bad token in the Authorization header", body = ErrorBody),
        (status = 503, description = "Too many sockets waiting to authenticate; see Retry-After", body = ErrorBody),
    )
)]
pub async fn chat_socket(
    State(state): State<AppState>,
    connect_info: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ApiWebSocket(upgrade): ApiWebSocket,
) -> Response {
    let auth = match headers.get(header::AUTHORIZATION) {
        None => match state
            .sessions
            .try_unauthenticated(state.config.ws_max_unauthenticated)
        {
            Some(waiting) => Auth::Frame(waiting),
            None => {
                metrics::counter!("chat_sockets_refused_total", "why" => "unauthenticated")
                    .increment(1);
                return ApiError::Overloaded("too many sockets waiting to authenticate")
                    .into_response();
            }
        },
        Some(_) => match crate::auth::bearer_token(&headers) {
            None => return ApiError::Unauthorized("malformed bearer token").into_response(),
            Some(token) => match state.tokens.verify_access(token) {
                Ok(user) => Auth::Header(user),
                // Upgraded, then closed with 4001: a browser cannot read a refused upgrade's
                // status, but it can read a close code, and 4001 means "refresh, reconnect".
                Err(ApiError::TokenExpired) => Auth::Expired,
                Err(e) => return e.into_response(),
            },
        },
    };
    let client = connect_info
        .map(|Extension(ConnectInfo(addr))| state.trusted_proxies.client_of(addr.ip(), &headers));
    let peer = Peer {
        remote_addr: client.map(|ip| ip.to_string()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect()),
    };
    // The protocol layer drops a connection on a frame over its cap, so the cap sits well above
    // the configured limit: frames between the two get an `error` frame and the socket lives on.
    let hard_cap = state
        .config
        .ws_max_frame_bytes
        .saturating_mul(4)
        .max(256 * 1024);
    // Buffers sized for many idle sockets (tungstenite's defaults are 128 KiB each); the write
    // buffer's cap must leave room for a whole frame past its flush threshold.
    let config = &state.config;
    let max_write = config
        .ws_max_write_buffer_bytes
        .max(config.ws_write_buffer_bytes + hard_cap);
    upgrade
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(config.ws_write_buffer_bytes)
        .max_write_buffer_size(max_write)
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| serve(socket, state, auth, peer))
}

/// How the socket authenticates.
enum Auth {
    /// The upgrade's `Authorization` header carried a valid token.
    Header(AuthUser),
    /// It carried an expired one: the socket is closed with 4001 at once.
    Expired,
    /// A first `auth` frame will; counted as waiting until then.
    Frame(Unauthenticated),
}

struct Peer {
    remote_addr: Option<String>,
    user_agent: Option<String>,
}

fn error_frame(id: Option<String>, error: impl Into<FrameError>) -> ServerFrame {
    let FrameError {
        code,
        message,
        retry_after,
    } = error.into();
    ServerFrame::Error {
        id,
        code,
        message,
        retry_after,
    }
}

fn text_of(frame: &ServerFrame) -> Message {
    // Frames are plain data (strings, numbers, UUIDs): serializing them cannot fail.
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

fn close_message(code: u16, reason: impl Into<Utf8Bytes>) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// An admin's reason as a close reason: close frames carry at most 123 bytes.
fn close_reason(reason: &str) -> String {
    let reason = reason.trim();
    if reason.is_empty() {
        return "disconnected by an administrator".to_owned();
    }
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// A frame too big, not JSON, or not a known frame: the `error` to answer with.
fn parse_frame(text: &str, max_bytes: usize) -> Result<ClientFrame, ApiError> {
    if text.len() > max_bytes {
        return Err(ApiError::PayloadTooLarge(format!(
            "frames are limited to {max_bytes} bytes"
        )));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| ApiError::BadRequest("frame is not valid JSON".into()))?;
    // serde's message names the unknown type or the missing field; it holds only client input.
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("bad frame: {e}")))
}

/// Waits for a valid `auth` frame; `None` if the socket should just end (it has been closed).
async fn authenticate(socket: &mut WebSocket, state: &AppState) -> Option<AuthUser> {
    let deadline = Instant::now() + Duration::from_secs(state.config.ws_auth_timeout_secs);
    loop {
        let message = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Err(_) => {
                let _ = socket
                    .send(close_message(
                        CLOSE_UNAUTHENTICATED,
                        "authentication timed out",
                    ))
                    .await;
                return None;
            }
            Ok(None | Some(Err(_))) => return None,
            Ok(Some(Ok(message))) => message,
        };
        let reply = match message {
            Message::Text(text) => match parse_frame(&text, state.config.ws_max_frame_bytes) {
                Ok(ClientFrame::Auth { token }) => match state.tokens.verify_access(&token) {
                    Ok(user) => return Some(user),
                    Err(e) => {
                        let close = match e {
                            ApiError::TokenExpired => (CLOSE_TOKEN_EXPIRED, "token expired"),
                            _ => (CLOSE_UNAUTHENTICATED, "invalid token"),
                        };
                        let _ = socket.send(text_of(&error_frame(None, e))).await;
                        let _ = socket.send(close_message(close.0, close.1)).await;
                        return None;
                    }
                },
                Ok(_) => ApiError::Unauthorized("authenticate first with an `auth` frame"),
                Err(e) => e,
            },
            Message::Binary(_) => ApiError::BadRequest("frames are JSON text".into()),
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket
            .send(text_of(&error_frame(None, reply)))
            .await
            .is_err()
        {
            return None;
        }
    }
}

async fn serve(mut socket: WebSocket, state: AppState, auth: Auth, peer: Peer) {
    let user = match auth {
        Auth::Header(user) => user,
        Auth::Expired => {
            let _ = socket
                .send(close_message(CLOSE_TOKEN_EXPIRED, "token expired"))
                .await;
            return;
        }
        Auth::Frame(waiting) => {
            let user = authenticate(&mut socket, &state).await;
            drop(waiting);
            match user {
                Some(user) => user,
                None => return,
            }
        }
    };
    let profile = match state.db.get().await {
        Ok(client) => crate::auth::store::user_by_id(&client, user.id).await,
        Err(e) => Err(e.into()),
    };
    let profile = match profile {
        Ok(Some(profile)) => profile,
        Ok(None) => {
            let _ = socket
                .send(close_message(CLOSE_UNAUTHENTICATED, "no such user"))
                .await;
            return;
        }
        Err(e) => {
            tracing::error!(error = ?e, "could not load the user of a chat socket");
            let _ = socket
                .send(close_message(CLOSE_INTERNAL, "internal error"))
                .await;
            return;
        }
    };
    // The per-user cap counts the user's sockets on every instance (one statement); with the
    // database away, this instance's own count below still applies.
    let lease = match state
        .relay
        .lease_socket(&state.tasks, user.id, state.config.ws_max_sockets_per_user)
        .await
    {
        Ok(Some(lease)) => Some(lease),
        Ok(None) => {
            metrics::counter!("chat_sockets_refused_total", "why" => "per_user").increment(1);
            let _ = socket
                .send(close_message(
                    CLOSE_TOO_MANY_SOCKETS,
                    "too many open sockets for this user",
                ))
                .await;
            return;
        }
        Err(e) => {
            tracing::warn!(error = ?e, "shared socket cap unavailable; counting locally");
            None
        }
    };
    let Some(session) = state.sessions.try_open(
        state.config.ws_max_sockets_per_user,
        user.id,
        user.username.clone(),
        peer.remote_addr,
        peer.user_agent,
    ) else {
        metrics::counter!("chat_sockets_refused_total", "why" => "per_user").increment(1);
        let _ = socket
            .send(close_message(
                CLOSE_TOO_MANY_SOCKETS,
                "too many open sockets for this user",
            ))
            .await;
        return;
    };
    let session_id = session.session_id;
    tracing::debug!(%session_id, user_id = %user.id, "chat socket open");
    if socket
        .send(text_of(&ServerFrame::Ready {
            session_id,
            user: profile,
        }))
        .await
        .is_err()
    {
        return;
    }

    let (sink, stream) = socket.split();
    let (out, queue) = mpsc::channel(OUT_QUEUE);
    let ping_period = Duration::from_secs(state.config.ws_ping_secs.max(1));
    // A peer may stay silent (no pong, no frame) and slow (queue full) for this long.
    let patience = ping_period * 2;
    let writer = tokio::spawn(write_loop(sink, queue, patience));
    let connection = Connection {
        _lease: lease,
        deadline: user.expiry(),
        user,
        session,
        out,
        too_slow: CancellationToken::new(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        followers: JoinSet::new(),
        resumes: VecDeque::new(),
        patience,
        state,
    };
    connection.run(stream, writer, ping_period).await;
    tracing::debug!(%session_id, "chat socket closed");
}

/// Writes queued frames until the queue ends, a close is written, or a write stalls.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut queue: mpsc::Receiver<Outgoing>,
    patience: Duration,
) {
    while let Some(outgoing) = queue.recv().await {
        let (message, last) = match outgoing {
            Outgoing::Frame(frame) => (text_of(&frame), false),
            Outgoing::Ping => (Message::Ping(Default::default()), false),
            Outgoing::Close(code, reason) => (close_message(code, reason), true),
        };
        match tokio::time::timeout(patience, sink.send(message)).await {
            Ok(Ok(())) if !last => {}
            _ => return,
        }
    }
    let _ = sink.close().await;
}

struct Connection {
    state: AppState,
    user: AuthUser,
    /// Keeps the session listed while the connection lives.
    session: SessionGuard,
    /// This socket's slot under the user's cap on all instances, given back when dropped.
    _lease: Option<SocketLease>,
    /// Frames for the writer task (bounded: see `OUT_QUEUE`).
    out: mpsc::Sender<Outgoing>,
    /// Cancelled when the peer does not take frames fast enough.
    too_slow: CancellationToken,
    /// Answers asked on this connection and not finished yet (the answer tasks decrement it,
    /// also after the connection is gone).
    in_flight: Arc<AtomicUsize>,
    /// One follower per answer this connection is reading; aborted when it ends.
    followers: JoinSet<()>,
    /// When the current access token expires; moved by a renewing `auth` frame.
    deadline: Instant,
    /// When this connection's `resume` frames of the last minute came (for their rate limit).
    resumes: VecDeque<Instant>,
    patience: Duration,
}

enum Ending {
    /// Send this close frame, then end.
    Close(u16, Utf8Bytes),
    /// End at once (the peer is gone or cannot be written to).
    Drop,
}

impl Connection {
    async fn run(
        mut self,
        mut stream: SplitStream<WebSocket>,
        mut writer: tokio::task::JoinHandle<()>,
        ping_period: Duration,
    ) {
        let mut ping = tokio::time::interval_at(Instant::now() + ping_period, ping_period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let expiry = tokio::time::sleep_until(self.deadline);
        tokio::pin!(expiry);
        let shutdown = self.state.shutdown.clone();
        let too_slow = self.too_slow.clone();

        let ending = loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(Ok(message)) = message else { break Ending::Drop };
                    last_heard = Instant::now();
                    let text = match message {
                        Message::Text(text) => text,
                        Message::Binary(_) => {
                            let error = ApiError::BadRequest("frames are JSON text".into());
                            if !self.send(error_frame(None, error)).await {
                                break Ending::Drop;
                            }
                            continue;
                        }
                        Message::Close(_) => break Ending::Drop,
                        Message::Ping(_) | Message::Pong(_) => continue,
                    };
                    let renewed = self.on_text(&text).await;
                    if let Some(deadline) = renewed {
                        self.deadline = deadline;
                        expiry.as_mut().reset(deadline);
                    }
                    if self.too_slow.is_cancelled() {
                        break Ending::Close(CLOSE_POLICY, Utf8Bytes::from_static("too slow to read"));
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > self.patience {
                        break Ending::Close(CLOSE_GOING_AWAY, Utf8Bytes::from_static("no answer to pings"));
                    }
                    if !self.queue(Outgoing::Ping).await {
                        break Ending::Drop;
                    }
                }
                reason = &mut self.session.disconnected => {
                    let reason = reason.unwrap_or_default();
                    break Ending::Close(CLOSE_DISCONNECTED, close_reason(&reason).into());
                }
                () = &mut expiry => break Ending::Close(CLOSE_TOKEN_EXPIRED, Utf8Bytes::from_static("token expired")),
                () = too_slow.cancelled() => break Ending::Close(CLOSE_POLICY, Utf8Bytes::from_static("too slow to read")),
                // The instance is draining: answers in flight go on (and stay resumable on
                // any instance); the client reconnects, through the balancer, elsewhere.
                () = shutdown.cancelled() => break Ending::Close(CLOSE_SERVICE_RESTART, Utf8Bytes::from_static("server restarting; reconnect and resume")),
                _ = &mut writer => break Ending::Drop,
                Some(_) = self.followers.join_next(), if !self.followers.is_empty() => {}
            }
        };

        // Answers go on (they are tasks of their own); only this connection's readers stop.
        self.followers.abort_all();
        match ending {
            Ending::Close(code, reason) => {
                // A full queue means the peer is not reading: no point waiting to say goodbye.
                if self.out.try_send(Outgoing::Close(code, reason)).is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
                }
                writer.abort();
            }
            Ending::Drop => writer.abort(),
        }
    }

    /// Queues a frame for the writer; false (and the connection marked too slow) if the queue
    /// stays full for longer than the patience bound, or if the writer is gone.
    async fn queue(&self, outgoing: Outgoing) -> bool {
        match self.out.send_timeout(outgoing, self.patience).await {
            Ok(()) => true,
            Err(SendTimeoutError::Timeout(_)) => {
                self.too_slow.cancel();
                false
            }
            Err(SendTimeoutError::Closed(_)) => false,
        }
    }

    async fn send(&self, frame: ServerFrame) -> bool {
        self.queue(Outgoing::Frame(Box::new(frame))).await
    }

    async fn send_error(&self, id: Option<String>, error: impl Into<FrameError>) {
        self.send(error_frame(id, error)).await;
    }

    /// Handles one text frame; returns the new token deadline after a renewing `auth`.
    async fn on_text(&mut self, text: &str) -> Option<Instant> {
        let frame = match parse_frame(text, self.state.config.ws_max_frame_bytes) {
            Ok(frame) => frame,
            Err(e) => {
                self.send_error(None, e).await;
                return None;
            }
        };
        match frame {
            ClientFrame::Ping => {
                self.send(ServerFrame::Pong).await;
            }
            ClientFrame::Auth { token } => match self.state.tokens.verify_access(&token) {
                Ok(user) if user.id == self.user.id => {
                    let deadline = user.expiry();
                    self.user = user;
                    return Some(deadline);
                }
                Ok(_) => {
                    let e = ApiError::Unauthorized("the token is for another user");
                    self.send_error(None, e).await;
                }
                Err(e) => self.send_error(None, e).await,
            },
            ClientFrame::Ask {
                id,
                message,
                conversation_id,
            } => {
                if let Err(e) = self.ask(&id, message, conversation_id).await {
                    self.send_error(Some(id), e).await;
                }
            }
            ClientFrame::Cancel { id } => {
                if let Err(e) = self.cancel(&id).await {
                    self.send_error(Some(id), e).await;
                }
            }
            ClientFrame::Feedback {
                message_id,
                rating,
                comment,
            } => {
                let db = &self.state.db;
                match super::feedback::rate(db, self.user.id, message_id, rating, comment).await {
                    Ok(_) => {
                        self.send(ServerFrame::FeedbackAck { message_id }).await;
                    }
                    Err(e) => self.send_error(None, e).await,
                }
            }
            ClientFrame::Resume { id, after_seq } => {
                if let Err(e) = self.check_resume() {
                    self.send_error(Some(id), e).await;
                    return None;
                }
                if let Some(log) = self.state.sessions.find_answer(self.user.id, &id) {
                    self.follow(id, log.resume(after_seq).into());
                    return None;
                }
                // Generated (or being generated) by another instance: read it from the relay.
                match self.state.relay.find(self.user.id, &id).await {
                    Ok(Some(stream)) => {
                        let cursor = self.state.relay.remote_cursor(stream, after_seq);
                        self.follow(id, Reader::Remote(cursor));
                    }
                    Ok(None) => {
                        let e = ApiError::NotFound("no recent answer with this id");
                        self.send_error(Some(id), e).await;
                    }
                    Err(e) => self.send_error(Some(id), e).await,
                }
            }
        }
        None
    }

    /// A `resume` starts a reader: like asks, readers are bounded in number (twice the asks in
    /// flight: each answer can be read live and resumed) and in rate (the asks per minute).
    fn check_resume(&mut self) -> Result<(), FrameError> {
        let readers = self.state.config.ws_max_in_flight.saturating_mul(2);
        if self.followers.len() >= readers {
            return Err(FrameError {
                code: ErrorCode::TooManyInFlight,
                message: format!("at most {readers} answers read at a time on one connection"),
                retry_after: None,
            });
        }
        let per_minute = self.state.config.asks_per_minute;
        let now = Instant::now();
        while self
            .resumes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.resumes.pop_front();
        }
        if self.resumes.len() >= per_minute as usize {
            let oldest = self.resumes.front().copied().unwrap_or(now);
            let wait = Duration::from_secs(60).saturating_sub(now.duration_since(oldest));
            let retry_after_secs = wait.as_secs().max(1);
            return Err(ApiError::RateLimited {
                message: format!("at most {per_minute} resumes per minute"),
                retry_after_secs,
            }
            .into());
        }
        self.resumes.push_back(now);
        Ok(())
    }

    /// Cancels the user's answer `id`: here if this instance generates it, else through the
    /// other instances (the one generating it stops it).
    async fn cancel(&self, id: &str) -> Result<(), ApiError> {
        if let Some(log) = self.state.sessions.find_answer(self.user.id, id) {
            log.cancel();
            return Ok(());
        }
        match self.state.relay.find(self.user.id, id).await? {
            Some(stream) if !stream.finished => {
                let published = self
                    .state
                    .cluster
                    .publish_cancel(self.user.id, id.to_owned())
                    .await;
                published.map_err(|e| {
                    tracing::warn!(error = %e, "could not pass a cancel to the other instances");
                    ApiError::Overloaded("the cancel could not be passed on; try again")
                })
            }
            // Finished already: nothing left to stop.
            Some(_) => Ok(()),
            None => Err(ApiError::NotFound("no answer with this id to cancel")),
        }
    }

    /// Starts an answer: limits, then a task that stores the question and generates.
    async fn ask(
        &mut self,
        id: &str,
        message: String,
        conversation_id: Option<Uuid>,
    ) -> Result<(), FrameError> {
        if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
            let e = ApiError::validation("id", format!("must be 1 to {MAX_ID_CHARS} characters"));
            return Err(e.into());
        }
        let limit = self.state.config.ws_max_in_flight;
        if self.in_flight.load(Ordering::Acquire) >= limit {
            return Err(FrameError {
                code: ErrorCode::TooManyInFlight,
                message: format!("at most {limit} answers at a time on one connection"),
                retry_after: None,
            });
        }
        pipeline::admit(
            &self.state.config,
            &self.state.db,
            &self.state.sessions,
            self.user.id,
            &message,
        )
        .await?;
        let log = AnswerLog::new();
        self.state
            .sessions
            .register_answer(self.user.id, id, Arc::clone(&log))
            .map_err(|()| {
                ApiError::Conflict("an answer with this id is still being generated".into())
            })?;

        let answering = Answering::start(
            Arc::clone(&self.in_flight),
            Arc::clone(&self.state.sessions),
            self.session.session_id,
        );
        let state = self.state.clone();
        let user_id = self.user.id;
        let answer_log = Arc::clone(&log);
        let ask_id = id.to_owned();
        self.state.tasks.spawn(async move {
            let _answering = answering;
            // The relay's stream row is written in the question's statement, before anything
            // of the answer is produced (the answer starts once the question is stored), so a
            // client that saw any of it can resume it on any instance. The publisher then
            // copies the log from its start.
            let stream = StreamRow {
                stream_id: Uuid::new_v4(),
                ask_id: &ask_id,
            };
            let accepted = pipeline::accept_and_prepare(
                &state.answerer,
                &answer_log,
                &state.db,
                state.cluster.instance_id(),
                state.config.history_turns,
                user_id,
                message,
                conversation_id,
                Some(&stream),
            )
            .await;
            match accepted {
                Ok((accepted, prepared)) => {
                    state.relay.spawn_publisher(
                        &state.tasks,
                        stream.stream_id,
                        answer_log.follow(),
                    );
                    pipeline::generate(state, accepted, prepared, answer_log).await;
                }
                Err(e) => pipeline::reject(&answer_log, &e),
            }
        });
        metrics::counter!("chat_asks_total", "via" => "socket").increment(1);
        self.follow(id.to_owned(), log.follow().into());
        Ok(())
    }

    /// Copies an answer's log into this connection's queue.
    fn follow(&mut self, id: String, cursor: Reader) {
        let out = self.out.clone();
        let too_slow = self.too_slow.clone();
        let patience = self.patience;
        self.followers
            .spawn(follow(cursor, id, out, too_slow, patience));
    }
}

async fn follow(
    cursor: impl Into<Reader>,
    id: String,
    out: mpsc::Sender<Outgoing>,
    too_slow: CancellationToken,
    patience: Duration,
) {
    let mut cursor = cursor.into();
    while let Some(event) = cursor.next().await {
        let frame = match event {
            LogEvent::Sources {
                conversation_id,
                sources,
            } => ServerFrame::Sources {
                id: id.clone(),
                conversation_id,
                sources,
            },
            LogEvent::Delta { seq, text } => ServerFrame::Delta {
                id: id.clone(),
                seq,
                text,
            },
            LogEvent::Failed { code, message } | LogEvent::Rejected { code, message } => {
                ServerFrame::Error {
                    id: Some(id.clone()),
                    code,
                    message,
                    retry_after: None,
                }
            }
            LogEvent::Done(done) => ServerFrame::Done {
                id: id.clone(),
                done,
            },
        };
        match out
            .send_timeout(Outgoing::Frame(Box::new(frame)), patience)
            .await
        {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                too_slow.cancel();
                return;
            }
            Err(SendTimeoutError::Closed(_)) => return,
        }
    }
}

/// What an `error` frame says: usually an [`ApiError`], plus the socket's own limits.
struct FrameError {
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl From<ApiError> for FrameError {
    fn from(error: ApiError) -> Self {
        let body = error.body().error;
        Self {
            code: body.code,
            message: body.message,
            retry_after: body.retry_after,
        }
    }
}

/// Counts an answer as in flight on its connection and session until dropped (by the answer
/// task, when the answer has ended).
struct Answering {
    in_flight: Arc<AtomicUsize>,
    sessions: Arc<SessionRegistry>,
    session_id: Uuid,
}

impl Answering {
    fn start(
        in_flight: Arc<AtomicUsize>,
        sessions: Arc<SessionRegistry>,
        session_id: Uuid,
    ) -> Self {
        in_flight.fetch_add(1, Ordering::AcqRel);
        sessions.answer_started(session_id);
        Self {
            in_flight,
            sessions,
            session_id,
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.sessions.answer_finished(self.session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(seq: u64) -> LogEvent {
        LogEvent::Delta {
            seq,
            text: format!("w{seq} "),
        }
    }

    #[tokio::test]
    async fn a_reader_that_does_not_keep_up_is_flagged_without_blocking_the_answer() {
        let log = AnswerLog::new();
        for seq in 0..10 {
            log.push(delta(seq));
        }
        // A queue of one that nobody drains: the peer is not reading.
        let (out, mut queue) = mpsc::channel(1);
        out.try_send(Outgoing::Ping).unwrap();
        let too_slow = CancellationToken::new();
        let follower = tokio::spawn(follow(
            log.follow(),
            "a1".into(),
            out,
            too_slow.clone(),
            Duration::from_millis(50),
        ));
        tokio::time::timeout(Duration::from_secs(2), follower)
            .await
            .unwrap()
            .unwrap();
        assert!(too_slow.is_cancelled());
        // The answer itself was never held up: the log still takes more.
        log.push(delta(10));
        assert!(matches!(queue.recv().await, Some(Outgoing::Ping)));
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_gets_every_frame_in_order() {
        let log = AnswerLog::new();
        let (out, mut queue) = mpsc::channel(2);
        let too_slow = CancellationToken::new();
        let follower = tokio::spawn(follow(
            log.follow(),
            "a1".into(),
            out,
            too_slow.clone(),
            Duration::from_secs(5),
        ));
        for seq in 0..5 {
            log.push(delta(seq));
        }
        log.push(LogEvent::Rejected {
            code: ErrorCode::NotFound,
            message: "gone".into(),
        });
        let mut seqs = Vec::new();
        while let Some(Outgoing::Frame(frame)) = queue.recv().await {
            match *frame {
                ServerFrame::Delta { id, seq, .. } => {
                    assert_eq!(id, "a1");
                    seqs.push(seq);
                }
                ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::NotFound),
                other => panic!("unexpected {other:?}"),
            }
        }
        follower.await.unwrap();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
        assert!(!too_slow.is_cancelled());
    }

    #[test]
    fn bad_frames_get_stable_codes() {
        let code = |text: &str| parse_frame(text, 64).unwrap_err().code();
        assert_eq!(code("not json"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"shout"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"ask","id":"a"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(&format!(r#"{{"type":"ping","x":"{}"}}"#, "y".repeat(64))),
            ErrorCode::PayloadTooLarge
        );
        assert_eq!(
            parse_frame(r#"{"type":"ping"}"#, 64).unwrap(),
            ClientFrame::Ping
        );
    }
}
