//! `chat-admin`: the support-chat admin console, a client of the server's admin API.
//!
//! # Layout
//!
//! - [`api`]: typed REST client (login, token refresh, sessions, knowledge base, reload,
//!   cleanup, cleanup runs, stats); server errors become readable [`api::ApiError`]s.
//! - [`auth`]: credentials, and the task that refreshes the access token before it expires.
//! - [`events`]: the live admin event socket, reconnecting with backoff, feeding the app channel.
//! - [`app`]: the [`app::App`] state; keys become [`app::Action`]s, events are applied. No I/O.
//! - [`ui`]: `draw(frame, &App)`, a pure rendering of the state.
//! - [`run`]: the event loop tying them together, and terminal setup/restore.
//! - [`tls`]: the TLS provider for `wss://` event sockets.
//! - [`ui_views`]: drawing of those views and of the reload progress bar.
//! - [`views`]: state of the gaps, feedback and documents views (keys → actions, no I/O).

pub mod api;
pub mod app;
pub mod auth;
pub mod events;
pub mod run;
pub mod tls;
pub mod ui;
pub mod ui_views;
pub mod views;

pub use run::{Config, run};
