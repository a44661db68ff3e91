//! The external services the server talks to, faked on loopback with their real wire
//! protocols, so the server's own clients are what the tests exercise.
//!
//! - [`chat`]: an OpenAI-compatible chat model streaming answers the test chooses per request.
//! - [`scripted`]: Gemini and OpenAI-compatible HTTP APIs answering each request with the
//!   next scripted [`scripted::Reply`], recording what they were sent.
//! - [`smtp`]: the mail relay, recording the messages, refusing or stalling on demand.

pub mod chat;
pub mod scripted;
pub mod smtp;
