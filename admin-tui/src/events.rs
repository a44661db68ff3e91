//! The client of the live admin event socket (`GET /api/admin/events`).
//!
//! [`AdminSocket`] is one connection; [`run`] keeps one up, reconnecting with backoff, and
//! forwards every [`AdminEvent`] and every change of connection state into the app channel.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::admin::{AdminCommand, AdminEvent};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::app::{AppEvent, ConnectionState};

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("bad server URL: {0}")]
    Url(String),
    #[error("{0}")]
    Socket(String),
    #[error("unexpected frame: {0}")]
    Frame(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for EventsError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error;
        match e {
            // The server refused the upgrade: show its status (401/403), not the raw response.
            Error::Http(response) => Self::Socket(format!("refused with {}", response.status())),
            other => Self::Socket(other.to_string()),
        }
    }
}

/// `http://h:p` → `ws://h:p/api/admin/events` (and https → wss).
pub fn events_url(base: &str) -> Result<String, EventsError> {
    let base = base.trim_end_matches('/');
    let rest = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        return Err(EventsError::Url(base.to_owned()));
    };
    Ok(format!("{rest}/api/admin/events"))
}

/// One open event socket.
pub struct AdminSocket {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl AdminSocket {
    /// Connects with the access token in the upgrade's `Authorization` header.
    pub async fn connect(base: &str, access_token: &str) -> Result<Self, EventsError> {
        let mut request = events_url(base)?
            .into_client_request()
            .map_err(|e| EventsError::Url(e.to_string()))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {access_token}"))
            .map_err(|_| EventsError::Socket("the access token is not a valid header".into()))?;
        request.headers_mut().insert("Authorization", bearer);
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Self { socket })
    }

    /// The next event; `None` once the server has closed the socket.
    pub async fn next_event(&mut self) -> Option<Result<AdminEvent, EventsError>> {
        loop {
            let message = match self.socket.next().await? {
                Ok(message) => message,
                Err(e) => return Some(Err(e.into())),
            };
            match message {
                Message::Text(text) => {
                    return Some(
                        serde_json::from_str(&text).map_err(|e| EventsError::Frame(e.to_string())),
                    );
                }
                Message::Close(_) => return None,
                // Pongs answer our keep-alive pings; tungstenite answers the server's pings.
                _ => {}
            }
        }
    }

    /// Renews the socket's token (the server closes it with 4001 when its token expires).
    pub async fn renew(&mut self, access_token: &str) -> Result<(), EventsError> {
        let frame = serde_json::json!({"type": "auth", "token": access_token});
        Ok(self
            .socket
            .send(Message::Text(frame.to_string().into()))
            .await?)
    }

    /// Asks the server to relay `user`'s answers as they stream (`None`: stop).
    pub async fn watch(&mut self, user: Option<uuid::Uuid>) -> Result<(), EventsError> {
        let command = match user {
            Some(user_id) => AdminCommand::Watch { user_id },
            None => AdminCommand::Unwatch,
        };
        let frame = serde_json::to_string(&command)
            .map_err(|e| EventsError::Frame(format!("watch frame: {e}")))?;
        Ok(self.socket.send(Message::Text(frame.into())).await?)
    }

    pub async fn ping(&mut self) -> Result<(), EventsError> {
        Ok(self.socket.send(Message::Ping(Vec::new().into())).await?)
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// The wait before reconnect attempt `attempt` (1-based): 1 s doubling up to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// A ping this often lets us notice a dead connection (no pong, write error) in time.
const PING_EVERY: Duration = Duration::from_secs(20);

/// Keeps the event socket up until the app channel closes. Each (re)connect begins with the
/// server's snapshot, which resets the session list. `watched` is the user whose answers the
/// server should relay (the open session detail's), sent again after each reconnect.
pub async fn run(
    base: String,
    mut access: watch::Receiver<String>,
    mut watched: watch::Receiver<Option<uuid::Uuid>>,
    events: mpsc::Sender<AppEvent>,
) {
    let mut attempt: u32 = 0;
    loop {
        let token = access.borrow_and_update().clone();
        let reason = match AdminSocket::connect(&base, &token).await {
            Ok(mut socket) => {
                attempt = 0;
                if events
                    .send(AppEvent::Connection(ConnectionState::Connected))
                    .await
                    .is_err()
                {
                    return;
                }
                let reason = pump(&mut socket, &mut access, &mut watched, &events).await;
                socket.close().await;
                match reason {
                    Some(reason) => reason,
                    None => return,
                }
            }
            Err(e) => e.to_string(),
        };
        attempt += 1;
        let wait = backoff(attempt);
        let state = ConnectionState::Retrying {
            reason,
            next_attempt: std::time::Instant::now() + wait,
        };
        if events.send(AppEvent::Connection(state)).await.is_err() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = events.closed() => return,
        }
        if events
            .send(AppEvent::Connection(ConnectionState::Connecting))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Forwards events, and each renewed access token to the server, until the socket drops
/// (`Some(reason)`) or the app is gone (`None`).
async fn pump(
    socket: &mut AdminSocket,
    access: &mut watch::Receiver<String>,
    watched: &mut watch::Receiver<Option<uuid::Uuid>>,
    events: &mpsc::Sender<AppEvent>,
) -> Option<String> {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let user = *watched.borrow_and_update();
    if user.is_some()
        && let Err(e) = socket.watch(user).await
    {
        return Some(e.to_string());
    }
    loop {
        tokio::select! {
            frame = socket.next_event() => match frame {
                Some(Ok(event)) => {
                    if events.send(AppEvent::Server(event)).await.is_err() {
                        return None;
                    }
                }
                // A frame we cannot read (a newer server?) is worth a message, not a reconnect.
                Some(Err(EventsError::Frame(e))) => {
                    if events.send(AppEvent::Error(format!("event frame: {e}"))).await.is_err() {
                        return None;
                    }
                }
                Some(Err(e)) => return Some(e.to_string()),
                None => return Some("closed by the server".into()),
            },
            _ = ping.tick() => {
                if let Err(e) = socket.ping().await {
                    return Some(e.to_string());
                }
            }
            Ok(()) = watched.changed() => {
                let user = *watched.borrow_and_update();
                if let Err(e) = socket.watch(user).await {
                    return Some(e.to_string());
                }
            }
            Ok(()) = access.changed() => {
                let token = access.borrow_and_update().clone();
                if let Err(e) = socket.renew(&token).await {
                    return Some(e.to_string());
                }
            }
            () = events.closed() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_become_socket_urls() {
        assert_eq!(
            events_url("http://127.0.0.1:8000/").unwrap(),
            "ws://127.0.0.1:8000/api/admin/events"
        );
        assert_eq!(
            events_url("https://chat.example.com").unwrap(),
            "wss://chat.example.com/api/admin/events"
        );
        assert!(events_url("ftp://x").is_err());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(6), Duration::from_secs(30));
        assert_eq!(backoff(60), Duration::from_secs(30));
    }
}
