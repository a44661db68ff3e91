//! The support-chat service: accounts, retrieval-augmented streaming answers, history, jobs.
//!
//! # Layout
//! - [`config`]: typed settings, parsed once at start and validated.
//! - [`startup`]: `Application::build` (storage, services, workers, listener) and the run loop.
//! - [`http`]: the router, shared middleware, health/readiness/metrics, OpenAPI docs.
//! - [`state`]: the `AppState` every handler receives.
//! - [`error`], [`extract`]: the API error type and extractors whose rejections use it.
//! - [`db`]: the PostgreSQL pool and migrations.
//! - [`auth`]: accounts, password hashing, JWTs, refresh-token families, login throttling.
//! - [`rag`]: knowledge base → chunks → embeddings (cached) → FAISS + BM25 retrieval.
//! - [`llm`]: streaming chat models (Gemini, OpenAI-compatible, offline).
//! - [`upstream`]: what talking to providers takes, under both `llm` and `rag`: the HTTP client,
//!   retries with `Retry-After`/backoff, SSE framing, `ProviderError`.
//! - [`grounding`]: the retrieval + prompt step of an answer: passages for a question, the
//!   grounded prompt, the model's answer stream (the `Answerer`).
//! - [`chat`]: the chat WebSocket, REST chat, history and conversations, live sessions, and the
//!   answer pipeline (question stored, answer generated into a log readers follow, stored).
//! - [`admin`]: the admin API and its live event socket.
//! - [`jobs`]: the scheduled history cleanup and the welcome-mail outbox.
//! - [`cluster`]: what instances share through PostgreSQL: live sessions, LISTEN/NOTIFY events.
//! - [`telemetry`]: logging and metrics.
//! - [`client_ip`]: the client address behind trusted proxies, as per-address limits count it.
//! - [`sync`]: the poison-tolerant lock helpers every in-memory structure uses.
//! - [`throttle`]: counters in PostgreSQL shared by every instance: fixed windows (sign-ups,
//!   login failures) and a sliding log (asks per minute).
//! - [`web`]: the browser chat page at `/` and its assets, with the page security headers.
//! - [`import_django`]: `chat-server import-django`, the Django prototype's users and history.
//! - [`markup`]: inline Markdown/reStructuredText markup reduced to the words it shows (for
//!   embedding, search, and the offline answerer's read-out).
//! - [`eval`]: `chat-server eval`, the whole answer pipeline scored on question sets, and the
//!   calibration of the relevance decision.
//! - [`gaps`]: per-question retrieval signals and the knowledge-gaps report (grouped by meaning).
//!
//! # Floors
//! Every module-level `use` runs down this list, never up or around (`tests/api/layout.rs`
//! fails on an import circle between files):
//!
//! ```text
//! admin                          the admin API (handlers, its store, the live socket)
//! http · startup · gaps          router and start-up; the gaps report
//! state                          AppState: imports the rooms below, none imports it back
//! cluster                        instances sharing sessions and events through PostgreSQL
//! chat · eval                    sockets, REST, the answer pipeline and log; the eval runner
//! grounding · import_django      retrieval + prompt → model stream; the Django import
//! auth · llm · rag               accounts; chat models; knowledge base and retrieval
//! upstream · db · client_ip · extract · jobs · telemetry · throttle
//! config · error · markup · sync · web
//! ```
//! `chat`'s handlers (`rest`, `socket`) stand above `state`; its rooms that `state` holds
//! (`sessions`, `relay`) stand below it.

pub mod admin;
pub mod auth;
pub mod chat;
pub mod client_ip;
pub mod cluster;
pub mod config;
pub mod db;
pub mod error;
pub mod eval;
pub mod extract;
pub mod gaps;
pub mod grounding;
pub mod http;
pub mod import_django;
pub mod jobs;
pub mod llm;
pub mod markup;
pub mod rag;
pub mod startup;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod throttle;
pub mod upstream;
pub mod web;
