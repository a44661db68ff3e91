//! The test harness of the support-chat workspace, shared by the server's integration tests and
//! examples and the admin console's tests (a dev-dependency of both; compiled once, not per test
//! binary).
//!
//! - [`app`]: the real server in-process on a random port ([`spawn_app`] and friends), or the
//!   real `chat-server` binary as a process ([`server_process`]).
//! - [`db`]: a fresh PostgreSQL database per test ([`fresh_database`], [`TestDb`]).
//! - [`ws`]: reading and writing the JSON frames of a test socket.
//! - [`rag`]: settings and data of the retrieval and provider tests.
//! - [`fake`]: the external services the server talks to, faked on loopback with their real
//!   wire protocols (the model providers, the mail relay).
//!
//! The items most tests use are re-exported here.

pub mod app;
pub mod db;
pub mod fake;
pub mod rag;
pub mod ws;

use std::path::PathBuf;

pub use app::{TestApp, server_process, spawn_app, spawn_app_from, spawn_app_with, test_config};
pub use db::{TestDb, admin_database_url, drop_database, fresh_database};
pub use ws::{FRAME_WAIT, Incoming, Ws, next_close, next_frame, next_incoming, send};

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file or folder under the server's test fixtures (`server/tests/fixtures`).
pub fn fixture(path: &str) -> PathBuf {
    workspace_dir().join("server/tests/fixtures").join(path)
}

/// A loopback port that was free a moment ago (bound, then released), for a process or proxy
/// the test starts itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Waits, if need be, until the server's fixed rate-limit window of `window_secs` (windows are
/// `[n·w, (n+1)·w)` of the clock, see `server::throttle`) has at least `needed` left, so hits a
/// test counts cannot be split across two windows by a boundary falling mid-test.
pub async fn within_one_window(window_secs: u64, needed: std::time::Duration) {
    let window = std::time::Duration::from_secs(window_secs);
    assert!(
        needed < window,
        "a window of {window_secs} s cannot hold {needed:?}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    let into = std::time::Duration::from_nanos(
        u64::try_from(now.as_nanos() % window.as_nanos()).expect("a window under 584 years"),
    );
    let left = window - into;
    if left < needed {
        tokio::time::sleep(left + std::time::Duration::from_millis(50)).await;
    }
}

/// A response's `Retry-After`, in whole seconds (panics if it is missing or not a number).
pub fn retry_after_secs(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .expect("an ASCII Retry-After")
        .parse()
        .expect("Retry-After in seconds")
}
