//! The admin API against the real server and PostgreSQL.

use futures::SinkExt;
use protocol::admin::{AdminEvent, CleanupRun, CleanupTrigger, KbInfo, SessionInfo, Stats};
use protocol::auth::TokenPair;
use serde_json::json;
use test_support::{TestApp, next_frame, spawn_app_with};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_PASSWORD: &str = "admin password for tests";

async fn spawn_with_admin() -> (TestApp, TokenPair) {
    let app = spawn_app_with(|c| {
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new(ADMIN_PASSWORD));
    })
    .await;
    let tokens = app.login_tokens("boss", ADMIN_PASSWORD).await;
    (app, tokens)
}

#[tokio::test]
async fn admin_routes_need_the_admin_role() {
    let (app, _) = spawn_with_admin().await;
    let user = app.user_tokens("alice").await;
    for path in [
        "/api/admin/sessions",
        "/api/admin/kb",
        "/api/admin/stats",
        "/api/admin/cleanup/runs",
    ] {
        let anonymous = app.get(path).await;
        assert_eq!(anonymous.status(), 401, "{path} without a token");
        let body: serde_json::Value = anonymous.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");

        let forbidden = app.get_authed(path, &user.access).await;
        assert_eq!(forbidden.status(), 403, "{path} as a plain user");
        let body: serde_json::Value = forbidden.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let reload = app.post_authed("/api/admin/kb/reload", &user.access).await;
    assert_eq!(reload.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn kb_info_and_reload_use_the_embedding_cache() {
    let (app, admin) = spawn_with_admin().await;
    let info: KbInfo = app.get_json("/api/admin/kb", &admin.access).await;
    let on_disk = std::fs::read_dir(test_support::fixture("kb"))
        .unwrap()
        .count();
    assert_eq!(info.documents, on_disk, "every fixture document is loaded");
    assert!(info.chunks >= 3);

    let response = app.post_authed("/api/admin/kb/reload", &admin.access).await;
    assert_eq!(response.status(), 200);
    let reloaded: KbInfo = response.json().await.unwrap();
    assert_eq!(reloaded.chunks, info.chunks);
    assert_eq!(
        reloaded.embedded, 0,
        "nothing changed on disk, so nothing is embedded again"
    );
    assert_eq!(reloaded.cached, info.chunks);
    assert!(reloaded.loaded_at > info.loaded_at);
    app.stop().await;
}

#[tokio::test]
async fn a_cleanup_whose_caller_gives_up_still_finishes() {
    let (app, admin) = spawn_with_admin().await;
    app.user_tokens("oldtimer").await;
    let db = app.db().await;
    // 20,000 exchanges from 90 days ago: dozens of delete batches, a run of a second or more.
    db.batch_execute(
        "INSERT INTO conversations (id, user_id, title, created_at, updated_at) \
         SELECT md5('old')::uuid, id, 'old', now() - interval '90 days', now() - interval '90 days' \
         FROM users WHERE username = 'oldtimer'; \
         INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at) \
         SELECT md5('q' || i)::uuid, md5('old')::uuid, u.id, 'user', 'old question', 'complete', \
                now() - interval '90 days' \
         FROM users u, generate_series(1, 20000) i WHERE u.username = 'oldtimer'; \
         INSERT INTO messages (id, conversation_id, user_id, role, reply_to, content, status, \
                               created_at) \
         SELECT md5('a' || i)::uuid, md5('old')::uuid, u.id, 'assistant', md5('q' || i)::uuid, \
                'old answer', 'complete', now() - interval '90 days' \
         FROM users u, generate_series(1, 20000) i WHERE u.username = 'oldtimer'",
    )
    .await
    .unwrap();

    // The caller starts the run, and gives up (drops the connection) once it is under way.
    let url = app.url("/api/admin/cleanup");
    let token = admin.access.clone();
    let caller = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .send()
            .await
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let started = loop {
        let runs: Vec<CleanupRun> = app
            .get_json("/api/admin/cleanup/runs?limit=1", &admin.access)
            .await;
        if let Some(run) = runs.into_iter().next() {
            break run;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    assert_eq!(
        started.finished_at, None,
        "the run ended before its caller could give up: {started:?}"
    );
    caller.abort();
    assert!(caller.await.is_err_and(|e| e.is_cancelled()));

    // The run goes on without its caller, to the end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let run = loop {
        let runs: Vec<CleanupRun> = app
            .get_json("/api/admin/cleanup/runs?limit=1", &admin.access)
            .await;
        if let Some(run) = runs.into_iter().next().filter(|r| r.finished_at.is_some()) {
            break run;
        }
        if std::time::Instant::now() >= deadline {
            let runs: serde_json::Value = app
                .get_json("/api/admin/cleanup/runs?limit=5", &admin.access)
                .await;
            let left = app.count("SELECT count(*) FROM messages").await;
            panic!("the run never finished: {runs}, {left} messages left");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(run.error, None, "{run:?}");
    assert_eq!(run.messages_deleted, 40_000, "{run:?}");
    assert_eq!(run.conversations_deleted, 1, "{run:?}");
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);
}

#[tokio::test]
async fn manual_cleanup_is_recorded_and_counted() {
    let (app, admin) = spawn_with_admin().await;
    app.user_tokens("carol").await;
    let response = app.post_authed("/api/admin/cleanup", &admin.access).await;
    assert_eq!(response.status(), 200);
    let run: CleanupRun = response.json().await.unwrap();
    assert_eq!(run.trigger, CleanupTrigger::Manual);
    assert!(run.finished_at.is_some());
    assert_eq!(run.error, None);

    let runs: Vec<CleanupRun> = app
        .get_json("/api/admin/cleanup/runs?limit=5", &admin.access)
        .await;
    assert_eq!(runs.first().map(|r| r.id), Some(run.id));

    let bad = app
        .get_authed("/api/admin/cleanup/runs?limit=many", &admin.access)
        .await;
    assert_eq!(bad.status(), 400);

    let stats: Stats = app.get_json("/api/admin/stats", &admin.access).await;
    assert_eq!(stats.users, 2, "the admin and carol");
    assert_eq!(stats.live_sessions, 0);
    app.stop().await;
}

#[tokio::test]
async fn event_socket_shows_chat_sessions_opening_and_closing() {
    let (app, admin) = spawn_with_admin().await;
    let mut events = app
        .ws_connect_path("/api/admin/events", &admin.access)
        .await;
    let snapshot = next_frame(&mut events).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["sessions"], json!([]));

    let user = app.user_tokens("dave").await;
    let mut chat = app.ws_connect(&user.access).await;
    let ready = next_frame(&mut chat).await;
    assert_eq!(ready["type"], "ready");

    let opened: AdminEvent = serde_json::from_value(next_frame(&mut events).await).unwrap();
    let AdminEvent::SessionOpened { session } = opened else {
        panic!("expected session_opened, got {opened:?}");
    };
    assert_eq!(session.username, "dave");

    let listed: Vec<SessionInfo> = app.get_json("/api/admin/sessions", &admin.access).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, session.session_id);

    chat.send(Message::Close(None)).await.unwrap();
    drop(chat);
    loop {
        let event: AdminEvent = serde_json::from_value(next_frame(&mut events).await).unwrap();
        if let AdminEvent::SessionClosed { session_id } = event {
            assert_eq!(session_id, session.session_id);
            break;
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn out_of_range_query_parameters_are_refused_not_bent() {
    let (app, admin) = spawn_with_admin().await;
    for limit in ["0", "1001", "-5"] {
        let response = app
            .get_authed(
                &format!("/api/admin/cleanup/runs?limit={limit}"),
                &admin.access,
            )
            .await;
        assert_eq!(response.status(), 422, "limit={limit}");
    }
    let response = app
        .get_authed("/api/admin/cleanup/runs?limit=1000", &admin.access)
        .await;
    assert_eq!(response.status(), 200);
    // An empty cursor is not "no cursor": it is not a cursor a page ever gave.
    let response = app
        .get_authed("/api/chat-history/?before=", &admin.access)
        .await;
    assert_eq!(response.status(), 400);
}
