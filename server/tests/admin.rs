//! The admin API against the real server and PostgreSQL.

mod common;

use common::{TestApp, spawn_app_with};
use futures::{SinkExt, StreamExt};
use protocol::admin::{AdminEvent, CleanupRun, CleanupTrigger, KbInfo, SessionInfo, Stats};
use protocol::auth::TokenPair;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN_PASSWORD: &str = "admin password for tests";

async fn spawn_with_admin() -> (TestApp, TokenPair) {
    let app = spawn_app_with(|c| {
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new(ADMIN_PASSWORD));
    })
    .await;
    let response = app.login("boss", ADMIN_PASSWORD).await;
    assert_eq!(response.status(), 200);
    let tokens = response.json().await.unwrap();
    (app, tokens)
}

async fn ws_with_token(
    app: &TestApp,
    path: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = app.ws_url(path).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("ws connects");
    socket
}

async fn next_json<S>(socket: &mut S) -> serde_json::Value
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .expect("valid frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
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
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path} without a token");
        let body: serde_json::Value = anonymous.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");

        let forbidden = app
            .client
            .get(app.url(path))
            .bearer_auth(&user.access)
            .send()
            .await
            .unwrap();
        assert_eq!(forbidden.status(), 403, "{path} as a plain user");
        let body: serde_json::Value = forbidden.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden");
    }
    let reload = app
        .client
        .post(app.url("/api/admin/kb/reload"))
        .bearer_auth(&user.access)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn kb_info_and_reload_use_the_embedding_cache() {
    let (app, admin) = spawn_with_admin().await;
    let info: KbInfo = app
        .client
        .get(app.url("/api/admin/kb"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let on_disk = std::fs::read_dir(common::fixture("kb")).unwrap().count();
    assert_eq!(info.documents, on_disk, "every fixture document is loaded");
    assert!(info.chunks >= 3);

    let response = app
        .client
        .post(app.url("/api/admin/kb/reload"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
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
async fn manual_cleanup_is_recorded_and_counted() {
    let (app, admin) = spawn_with_admin().await;
    app.user_tokens("carol").await;
    let response = app
        .client
        .post(app.url("/api/admin/cleanup"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let run: CleanupRun = response.json().await.unwrap();
    assert_eq!(run.trigger, CleanupTrigger::Manual);
    assert!(run.finished_at.is_some());
    assert_eq!(run.error, None);

    let runs: Vec<CleanupRun> = app
        .client
        .get(app.url("/api/admin/cleanup/runs?limit=5"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(runs.first().map(|r| r.id), Some(run.id));

    let bad = app
        .client
        .get(app.url("/api/admin/cleanup/runs?limit=many"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let stats: Stats = app
        .client
        .get(app.url("/api/admin/stats"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.users, 2, "the admin and carol");
    assert_eq!(stats.live_sessions, 0);
    app.stop().await;
}

#[tokio::test]
async fn event_socket_shows_chat_sessions_opening_and_closing() {
    let (app, admin) = spawn_with_admin().await;
    let mut events = ws_with_token(&app, "/api/admin/events", &admin.access).await;
    let snapshot = next_json(&mut events).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["sessions"], json!([]));

    let user = app.user_tokens("dave").await;
    let mut chat = ws_with_token(&app, "/ws/chat", &user.access).await;
    let ready = next_json(&mut chat).await;
    assert_eq!(ready["type"], "ready");

    let opened: AdminEvent = serde_json::from_value(next_json(&mut events).await).unwrap();
    let AdminEvent::SessionOpened { session } = opened else {
        panic!("expected session_opened, got {opened:?}");
    };
    assert_eq!(session.username, "dave");

    let listed: Vec<SessionInfo> = app
        .client
        .get(app.url("/api/admin/sessions"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, session.session_id);

    chat.send(Message::Close(None)).await.unwrap();
    drop(chat);
    loop {
        let event: AdminEvent = serde_json::from_value(next_json(&mut events).await).unwrap();
        if let AdminEvent::SessionClosed { session_id } = event {
            assert_eq!(session_id, session.session_id);
            break;
        }
    }
    app.stop().await;
}
