//! Data shared by the support-chat server, the admin console and clients.
//!
//! Plain serde types, no I/O. The server owns how these become HTTP responses
//! and socket frames; clients (tests, benches, the console) parse them back.
//!
//! # Layout
//! - [`error`]: the one error body of every REST reply and socket `error` frame, and its stable codes.
//! - [`auth`]: signup, login, token refresh and logout bodies; the public view of a user.
//! - [`chat`]: the REST chat request/answer, sources, usage, history and conversations.
//! - [`ws`]: chat WebSocket frames, client → server ([`ws::ClientFrame`]) and server → client ([`ws::ServerFrame`]).
//! - [`admin`]: bodies of the admin API and the frames of its live event socket.
//! - [`secret`]: a string that is never printed (passwords, tokens, keys).
//! - [`feedback`], [`gaps`], [`documents`]: answer ratings, the knowledge-gaps report and the
//!   knowledge-base documents of the admin API.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod error;
pub mod secret;
pub mod ws;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use secret::Secret;

pub mod documents;
pub mod feedback;
pub mod gaps;
