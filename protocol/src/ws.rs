//! Chat WebSocket frames (`GET /ws/chat`): one JSON object per text frame, tagged by `type`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::User;
use crate::chat::{Done, Source};
use crate::error::ErrorCode;
use crate::feedback::Rating;

/// Client → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame when the upgrade carried no `Authorization` header; later, renews the token.
    Auth {
        token: String,
    },
    Ask {
        id: String,
        message: String,
        #[serde(default)]
        conversation_id: Option<Uuid>,
    },
    Cancel {
        id: String,
    },
    /// After a reconnect: the deltas of answer `id` with `seq > after_seq`, then its `done`.
    /// `after_seq` is omitted (or null) to get the answer from its first delta.
    Resume {
        id: String,
        #[serde(default)]
        after_seq: Option<u64>,
    },
    Ping,
    /// Rates one of the caller's answers (a new rating replaces the old); answered by
    /// `feedback_ack`, or an `error` frame (`not_found` for someone else's answer).
    Feedback {
        message_id: Uuid,
        rating: Rating,
        #[serde(default)]
        comment: Option<String>,
    },
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Ready {
        session_id: Uuid,
        user: User,
    },
    Sources {
        id: String,
        conversation_id: Uuid,
        sources: Vec<Source>,
    },
    Delta {
        id: String,
        seq: u64,
        text: String,
    },
    Done {
        id: String,
        #[serde(flatten)]
        done: Done,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
    Pong,
    /// The `feedback` frame for this answer was stored.
    FeedbackAck {
        message_id: Uuid,
    },
}

/// Close code sent when the access token expires unrenewed.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code sent when no valid `auth` frame arrived in time, or the token is not valid (or,
/// on the admin event socket, no longer carries the admin role).
pub const CLOSE_UNAUTHENTICATED: u16 = 4003;
/// Close code sent when an administrator disconnects the session; the close reason says why.
pub const CLOSE_DISCONNECTED: u16 = 4010;
/// Close code sent when the user already holds as many sockets as allowed.
pub const CLOSE_TOO_MANY_SOCKETS: u16 = 4029;
/// Close code (RFC 6455 "service restart") sent when the server instance drains for a restart
/// or a new version: reconnect (a load balancer sends the socket to another instance) and send
/// `resume` for answers that had not ended; they go on meanwhile and are resumable anywhere.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{FinishReason, Usage};

    #[test]
    fn client_frames_parse_from_the_documented_json() {
        let ask: ClientFrame = serde_json::from_str(
            r#"{"type":"ask","id":"a1","message":"hi","conversation_id":null}"#,
        )
        .unwrap();
        assert_eq!(
            ask,
            ClientFrame::Ask {
                id: "a1".into(),
                message: "hi".into(),
                conversation_id: None
            }
        );
        let resume: ClientFrame =
            serde_json::from_str(r#"{"type":"resume","id":"a1","after_seq":3}"#).unwrap();
        assert_eq!(
            resume,
            ClientFrame::Resume {
                id: "a1".into(),
                after_seq: Some(3)
            }
        );
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout"}"#).is_err());
    }

    #[test]
    fn done_frame_is_flat() {
        let frame = ServerFrame::Done {
            id: "a1".into(),
            done: Done {
                message_id: Uuid::nil(),
                conversation_id: Uuid::nil(),
                finish_reason: FinishReason::Cancelled,
                usage: Usage::default(),
            },
        };
        let json = serde_json::to_value(&frame).unwrap();
        assert_eq!(json["type"], "done");
        assert_eq!(json["finish_reason"], "cancelled");
        assert_eq!(json["id"], "a1");
        assert!(json.get("done").is_none());
    }
}
