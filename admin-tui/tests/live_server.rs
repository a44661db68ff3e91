//! The console's clients against the real server and PostgreSQL.

use std::time::Duration;

use admin_tui::api::{ApiClient, ApiError};
use admin_tui::app::{AppEvent, ConnectionState};
use admin_tui::auth::{self, Credentials, Secret};
use admin_tui::events::{self, AdminSocket};
use futures::SinkExt;
use protocol::ErrorCode;
use protocol::admin::{AdminEvent, CleanupTrigger};
use test_support::{TestApp, spawn_app_with};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ADMIN_PASSWORD: &str = "admin password for console tests";

async fn spawn_with_admin() -> TestApp {
    spawn_app_with(|c| {
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new(ADMIN_PASSWORD));
    })
    .await
}

async fn next_event(socket: &mut AdminSocket) -> AdminEvent {
    tokio::time::timeout(Duration::from_secs(10), socket.next_event())
        .await
        .expect("an event within 10 s")
        .expect("socket open")
        .expect("a readable event")
}

async fn next_app_event(rx: &mut mpsc::Receiver<AppEvent>) -> AppEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an app event within 10 s")
        .expect("channel open")
}

#[tokio::test]
async fn rest_client_logs_in_refreshes_and_drives_the_admin_routes() {
    let app = spawn_with_admin().await;
    let api = ApiClient::new(&app.base);

    let wrong = api.login("boss", "not the password").await.unwrap_err();
    assert!(wrong.is_auth(), "{wrong:?}");
    assert_eq!(wrong.code(), Some(ErrorCode::Unauthorized));

    let first = api.login("boss", ADMIN_PASSWORD).await.unwrap();
    assert!(first.expires_in > 0);
    let pair = api.refresh(&first.refresh).await.unwrap();
    assert_ne!(pair.refresh, first.refresh, "refresh tokens rotate");
    let token = pair.access.as_str();

    let kb = api.kb(token).await.unwrap();
    assert!(kb.documents > 0 && kb.chunks >= kb.documents, "{kb:?}");
    let reloaded = api.reload_kb(token).await.unwrap();
    assert_eq!(reloaded.chunks, kb.chunks);
    assert_eq!(
        reloaded.embedded, 0,
        "unchanged documents come from the cache"
    );
    assert!(reloaded.loaded_at > kb.loaded_at);

    let run = api.cleanup(token).await.unwrap();
    assert_eq!(run.trigger, CleanupTrigger::Manual);
    assert!(run.finished_at.is_some());
    let runs = api.cleanup_runs(token, 5).await.unwrap();
    assert_eq!(runs.first().map(|r| r.id), Some(run.id));

    app.user_tokens("erin").await;
    let stats = api.stats(token).await.unwrap();
    assert_eq!(stats.users, 2, "boss and erin");
    assert_eq!(stats.live_sessions, 0);
    assert!(api.sessions(token).await.unwrap().is_empty());

    // A plain user gets the server's own message, not a panic or a decode error.
    let user = app.user_tokens("frank").await;
    match api.stats(&user.access).await.unwrap_err() {
        ApiError::Server {
            status,
            code,
            message,
        } => {
            assert_eq!(status, 403);
            assert_eq!(code, Some(ErrorCode::Forbidden));
            assert!(!message.is_empty());
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    app.stop().await;
}

#[tokio::test]
async fn event_socket_sees_sessions_reloads_and_cleanups() {
    let app = spawn_with_admin().await;
    let api = ApiClient::new(&app.base);
    let admin = api.login("boss", ADMIN_PASSWORD).await.unwrap();

    let mut socket = AdminSocket::connect(&app.base, &admin.access)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut socket).await,
        AdminEvent::Snapshot { sessions: vec![] }
    );

    let alice = app.user_tokens("alice").await;
    let mut request = app.ws_url("/ws/chat").into_client_request().unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", alice.access).parse().unwrap(),
    );
    let (mut chat, _) = tokio_tungstenite::connect_async(request).await.unwrap();

    let AdminEvent::SessionOpened { session } = next_event(&mut socket).await else {
        panic!("expected session_opened");
    };
    assert_eq!(session.username, "alice");
    let listed = api.sessions(&admin.access).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].session_id, session.session_id);

    let kb = api.reload_kb(&admin.access).await.unwrap();
    let run = api.cleanup(&admin.access).await.unwrap();
    let mut saw_kb = false;
    let mut saw_run = false;
    while !(saw_kb && saw_run) {
        match next_event(&mut socket).await {
            AdminEvent::KbReloaded { kb: event } => {
                assert_eq!(event.loaded_at, kb.loaded_at);
                saw_kb = true;
            }
            AdminEvent::CleanupFinished { run: event } => {
                assert_eq!(event.id, run.id);
                saw_run = true;
            }
            // Session updates (the ready frame, counters) and reload progress may interleave.
            AdminEvent::SessionUpdated { .. } | AdminEvent::KbProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    chat.send(Message::Close(None)).await.unwrap();
    drop(chat);
    loop {
        if let AdminEvent::SessionClosed { session_id } = next_event(&mut socket).await {
            assert_eq!(session_id, session.session_id);
            break;
        }
    }
    socket.close().await;
    app.stop().await;
}

#[tokio::test]
async fn event_task_reports_connection_state_and_forwards_the_snapshot() {
    let app = spawn_with_admin().await;
    let api = ApiClient::new(&app.base);
    let admin = api.login("boss", ADMIN_PASSWORD).await.unwrap();
    let (_access_tx, access) = watch::channel(admin.access.clone());
    let (_watched_tx, watched) = watch::channel(None);
    let (tx, mut rx) = mpsc::channel(16);
    let task = tokio::spawn(events::run(app.base.clone(), access, watched, tx));

    assert!(matches!(
        next_app_event(&mut rx).await,
        AppEvent::Connection(ConnectionState::Connected)
    ));
    assert!(matches!(
        next_app_event(&mut rx).await,
        AppEvent::Server(AdminEvent::Snapshot { sessions }) if sessions.is_empty()
    ));

    // The server going away shows as "retrying", not as a silent freeze.
    app.stop().await;
    loop {
        match next_app_event(&mut rx).await {
            AppEvent::Connection(ConnectionState::Retrying { next_attempt, .. }) => {
                let wait = next_attempt.saturating_duration_since(std::time::Instant::now());
                assert!(
                    wait <= Duration::from_secs(1),
                    "first retry is quick: {wait:?}"
                );
                break;
            }
            AppEvent::Connection(ConnectionState::Connected) => {
                panic!("reconnected to a dead server")
            }
            _ => {}
        }
    }
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends once the app channel is gone")
        .unwrap();
}

#[tokio::test]
async fn event_socket_refuses_a_plain_user() {
    let app = spawn_with_admin().await;
    let user = app.user_tokens("gina").await;
    let refused = AdminSocket::connect(&app.base, &user.access).await;
    let Err(e) = refused else {
        panic!("a plain user got the admin event socket");
    };
    assert!(e.to_string().contains("403"), "{e}");
    app.stop().await;
}

#[tokio::test]
async fn access_token_is_refreshed_before_it_expires() {
    let app = spawn_app_with(|c| {
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new(ADMIN_PASSWORD));
        // refresh_delay(11) is 1 s: the refresher acts within the test's patience.
        c.access_token_ttl_secs = 11;
    })
    .await;
    let api = ApiClient::new(&app.base);
    let credentials = Credentials::Password {
        username: "boss".into(),
        password: Secret::new(ADMIN_PASSWORD),
    };
    let tokens = auth::start(&api, &credentials).await.unwrap();
    let first = tokens.access();
    let (access_tx, mut access) = watch::channel(first.clone());
    let (tx, _rx) = mpsc::channel(4);
    let task = tokio::spawn(auth::keep_fresh(
        api.clone(),
        credentials,
        tokens,
        access_tx,
        tx,
    ));

    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), access.changed())
            .await
            .expect("a new access token within 10 s")
            .unwrap();
    }
    let current = access.borrow().clone();
    assert_ne!(current, first);
    // Two rotations in a row work: the refresher always spends the newest refresh token.
    api.stats(&current).await.unwrap();

    drop(access);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the refresher stops once nobody reads the token")
        .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn console_reads_gaps_and_feedback_and_uploads_and_deletes_documents() {
    let app = spawn_with_admin().await;
    let api = ApiClient::new(&app.base);
    let admin = api.login("boss", ADMIN_PASSWORD).await.unwrap();
    let token = admin.access.as_str();

    // A refused question and a rated answer, through the real chat API.
    let alice = app.user_tokens("alice").await;
    let answer: serde_json::Value = app
        .post_json_authed(
            "/api/chat/",
            &alice.access,
            &serde_json::json!({"message": "Can I bring my dog into the store?"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = answer["message_id"].as_str().unwrap();
    let rated = app
        .post_json_authed(
            &format!("/api/messages/{id}/feedback"),
            &alice.access,
            &serde_json::json!({"rating": "down", "comment": "no answer"}),
        )
        .await;
    assert_eq!(rated.status(), 200);
    let series = api.stats_series(token).await.unwrap();
    assert_eq!(series.minutes.len(), 60);
    assert_eq!(series.minutes.iter().map(|m| m.asks).sum::<i64>(), 1);
    let feedback = api.feedback(token, 10).await.unwrap();
    assert_eq!(feedback.len(), 1);
    assert_eq!(feedback[0].comment.as_deref(), Some("no answer"));
    let mut gaps = api.gaps(token).await.unwrap();
    for _ in 0..100 {
        if !gaps.gaps.is_empty() {
            break;
        }
        // The question's signals are recorded just after the answer.
        tokio::time::sleep(Duration::from_millis(100)).await;
        gaps = api.gaps(token).await.unwrap();
    }
    assert_eq!(gaps.gaps.len(), 1);
    assert_eq!(
        gaps.gaps[0].representative,
        "Can I bring my dog into the store?"
    );

    // Upload a file from disk by path, as the Documents view does, then delete it.
    let dir = std::env::temp_dir().join(format!("chat-admin-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pets.md");
    std::fs::write(
        &path,
        "# Pets\n\nDogs on a lead are welcome in every store.",
    )
    .unwrap();
    let done = admin_tui::run::upload_file(&api, token, &path)
        .await
        .unwrap();
    assert!(done.starts_with("uploaded pets.md"), "{done}");
    let listed = api.documents(token).await.unwrap();
    assert!(listed.iter().any(|d| d.name == "pets.md" && d.chunks == 1));
    let unsupported = dir.join("pets.docx");
    std::fs::write(&unsupported, "x").unwrap();
    let refused = admin_tui::run::upload_file(&api, token, &unsupported).await;
    assert!(refused.unwrap_err().to_string().contains(".md"));
    api.delete_document(token, "pets.md").await.unwrap();
    assert!(
        !api.documents(token)
            .await
            .unwrap()
            .iter()
            .any(|d| d.name == "pets.md")
    );
    let missing = api.delete_document(token, "pets.md").await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound));
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}
