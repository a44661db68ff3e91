//! A test's client websocket: sending JSON frames, reading them with a deadline.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client websocket to the test server.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long socket reads wait for the next frame before the test fails.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// What a socket read gave: a JSON text frame, or the end of the socket.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Closed(Option<CloseFrame>),
}

/// The next text frame as JSON, or the close; other frames are skipped. Fails the test when
/// nothing comes within [`FRAME_WAIT`].
pub async fn next_incoming(ws: &mut Ws) -> Incoming {
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(text))) => {
                return Incoming::Json(serde_json::from_str(&text).expect("a JSON frame"));
            }
            Some(Ok(Message::Close(frame))) => return Incoming::Closed(frame),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return Incoming::Closed(None),
        }
    }
}

/// The next text frame as JSON; fails the test when the socket closes instead.
pub async fn next_frame(ws: &mut Ws) -> Value {
    match next_incoming(ws).await {
        Incoming::Json(value) => value,
        Incoming::Closed(frame) => panic!("socket closed: {frame:?}"),
    }
}

/// Reads until the socket closes (skipping any frames before it); the close frame, if one came.
pub async fn next_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        if let Incoming::Closed(frame) = next_incoming(ws).await {
            return frame;
        }
    }
}

/// Sends `frame` as a text frame; failing to send fails the test.
pub async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("frame sent");
}
