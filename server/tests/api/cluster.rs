//! Several instances on one database: the admin view and knowledge-base reloads across them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::SinkExt;
use protocol::admin::{AdminEvent, KbInfo, SessionInfo, Stats};
use server::config::{Config, Secret};
use server::startup::Application;
use test_support::{TestApp, Ws, next_frame, spawn_app_from};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

const ADMIN_PASSWORD: &str = "admin password for tests";
/// Long enough to cover a staleness window plus a heartbeat, with slack for a busy machine.
const CLUSTER_WAIT: Duration = Duration::from_secs(15);

/// Test settings with a bootstrap admin and a fast heartbeat (1 s, stale after 3 s).
async fn cluster_config() -> Config {
    let mut config = test_support::test_config().await;
    config.admin_username = Some("boss".into());
    config.admin_password = Some(Secret::new(ADMIN_PASSWORD));
    config.instance_heartbeat_secs = 1;
    config.instance_stale_secs = 3;
    config
}

async fn admin_token(app: &TestApp) -> String {
    let response = app.login("boss", ADMIN_PASSWORD).await;
    assert_eq!(response.status(), 200);
    let tokens: protocol::auth::TokenPair = response.json().await.unwrap();
    tokens.access
}

/// Polls `probe` until it gives `Some`, failing the test after [`CLUSTER_WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + CLUSTER_WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next admin event that is not a `session_updated` or a reload's `kb_progress`.
async fn next_event(ws: &mut Ws) -> AdminEvent {
    loop {
        let event: AdminEvent = serde_json::from_value(next_frame(ws).await).unwrap();
        if !matches!(
            event,
            AdminEvent::SessionUpdated { .. } | AdminEvent::KbProgress { .. }
        ) {
            return event;
        }
    }
}

/// Opens a chat socket on `addr` and returns it with its session id.
async fn chat_on(addr: SocketAddr, token: &str) -> (Ws, Uuid) {
    let mut request = format!("ws://{addr}/ws/chat")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    let session_id = ready["session_id"].as_str().unwrap().parse().unwrap();
    (ws, session_id)
}

#[tokio::test]
async fn sessions_on_one_instance_show_on_another() {
    let config = cluster_config().await;
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    assert_ne!(a.state.cluster.instance_id(), b.state.cluster.instance_id());
    let admin = admin_token(&a).await;

    let mut events = a.ws_connect_path("/api/admin/events", &admin).await;
    let snapshot: AdminEvent = serde_json::from_value(next_frame(&mut events).await).unwrap();
    assert_eq!(snapshot, AdminEvent::Snapshot { sessions: vec![] });

    let user = a.user_tokens("alice").await;
    let (mut chat, session_id) = chat_on(b.addr, &user.access).await;

    match next_event(&mut events).await {
        AdminEvent::SessionOpened { session } => {
            assert_eq!(session.session_id, session_id);
            assert_eq!(session.username, "alice");
        }
        other => panic!("expected session_opened, got {other:?}"),
    }
    let listed: Vec<SessionInfo> = a.get_json("/api/admin/sessions", &admin).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].session_id, session_id);
    let stats: Stats = a.get_json("/api/admin/stats", &admin).await;
    assert_eq!(stats.live_sessions, 1);

    // A session on A itself is listed at once, next to B's.
    let (local_chat, local_id) = chat_on(a.addr, &user.access).await;
    let listed: Vec<SessionInfo> = a.get_json("/api/admin/sessions", &admin).await;
    let ids: Vec<Uuid> = listed.iter().map(|s| s.session_id).collect();
    assert_eq!(ids, vec![session_id, local_id], "oldest first");
    drop(local_chat);

    // A new console on A sees B's session in its snapshot.
    let mut late = a.ws_connect_path("/api/admin/events", &admin).await;
    match serde_json::from_value(next_frame(&mut late).await).unwrap() {
        AdminEvent::Snapshot { sessions } => {
            assert!(sessions.iter().any(|s| s.session_id == session_id));
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }

    chat.send(Message::Close(None)).await.unwrap();
    loop {
        match next_event(&mut events).await {
            AdminEvent::SessionClosed { session_id: closed } if closed == session_id => break,
            AdminEvent::SessionOpened { session } | AdminEvent::SessionUpdated { session }
                if session.session_id == local_id => {}
            AdminEvent::SessionClosed { session_id: closed } if closed == local_id => {}
            other => panic!("expected session_closed of B's session, got {other:?}"),
        }
    }
    eventually("the closed session to leave A's list", || async {
        let listed: Vec<SessionInfo> = a.get_json("/api/admin/sessions", &admin).await;
        listed.is_empty().then_some(())
    })
    .await;

    // B's graceful stop deletes its rows and announces their sessions closed.
    let (_open_chat, open_id) = chat_on(b.addr, &user.access).await;
    match next_event(&mut events).await {
        AdminEvent::SessionOpened { session } => assert_eq!(session.session_id, open_id),
        other => panic!("expected session_opened, got {other:?}"),
    }
    b.stop().await;
    assert_eq!(a.count("SELECT count(*) FROM live_sessions").await, 0);
    assert_eq!(
        next_event(&mut events).await,
        AdminEvent::SessionClosed {
            session_id: open_id
        }
    );
    a.stop().await;
}

#[tokio::test]
async fn a_reload_on_one_instance_reloads_the_others() {
    let kb = temp_kb_copy();
    let mut config = cluster_config().await;
    config.knowledge_base_dir = kb.clone();
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let admin = admin_token(&a).await;

    let before: KbInfo = b.get_json("/api/admin/kb", &admin).await;
    let mut b_events = b.ws_connect_path("/api/admin/events", &admin).await;
    next_frame(&mut b_events).await; // the snapshot

    std::fs::write(
        kb.join("loyalty.md"),
        "# Loyalty points\n\nEvery order earns one Northwind point per dollar spent. \
         Points can be redeemed at checkout once you hold at least 500 of them.\n",
    )
    .unwrap();
    let response = a.post_authed("/api/admin/kb/reload", &admin).await;
    assert_eq!(response.status(), 200);
    let reloaded: KbInfo = response.json().await.unwrap();
    assert_eq!(reloaded.documents, before.documents + 1);

    match next_event(&mut b_events).await {
        AdminEvent::KbReloaded { kb } => assert_eq!(kb.documents, before.documents + 1),
        other => panic!("expected kb_reloaded on B, got {other:?}"),
    }
    let on_b: KbInfo = b.get_json("/api/admin/kb", &admin).await;
    assert_eq!(on_b.documents, before.documents + 1);
    assert_eq!(
        on_b.embedded, 0,
        "A's reload already cached the new embeddings"
    );

    // B's reload, caused by A's notice, does not send A reloading again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let on_a: KbInfo = a.get_json("/api/admin/kb", &admin).await;
    assert_eq!(on_a.loaded_at, reloaded.loaded_at, "no reload ping-pong");

    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&kb);
}

#[tokio::test]
async fn a_killed_instances_sessions_expire() {
    let config = cluster_config().await;
    let a = spawn_app_from(config.clone()).await;
    let admin = admin_token(&a).await;
    let user = a.user_tokens("alice").await;
    let victim = KillableApp::start(config).await;

    let mut events = a.ws_connect_path("/api/admin/events", &admin).await;
    next_frame(&mut events).await; // the snapshot
    let (_chat, session_id) = chat_on(victim.addr, &user.access).await;
    eventually("the victim's session on A's list", || async {
        let listed: Vec<SessionInfo> = a.get_json("/api/admin/sessions", &admin).await;
        listed
            .iter()
            .any(|s| s.session_id == session_id)
            .then_some(())
    })
    .await;

    let killed_at = Instant::now();
    victim.kill();
    eventually("the dead instance's session to leave A's list", || async {
        let listed: Vec<SessionInfo> = a.get_json("/api/admin/sessions", &admin).await;
        listed.is_empty().then_some(())
    })
    .await;
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "a silent instance is given its staleness window"
    );
    // Its row is swept by A's heartbeat, and A's console hears the session close.
    loop {
        match next_event(&mut events).await {
            AdminEvent::SessionClosed { session_id: closed } if closed == session_id => break,
            AdminEvent::SessionOpened { session } if session.session_id == session_id => {}
            other => panic!("expected session_closed, got {other:?}"),
        }
    }
    let rows = a.count("SELECT count(*) FROM live_sessions").await;
    assert_eq!(rows, 0);
    a.stop().await;
}

/// An instance on its own runtime, so that it can die without any graceful shutdown.
struct KillableApp {
    addr: SocketAddr,
    kill: tokio::sync::oneshot::Sender<()>,
}

impl KillableApp {
    async fn start(config: Config) -> Self {
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let app = Application::build(config).await.expect("victim builds");
                let _ = addr_tx.send(app.local_addr());
                tokio::spawn(app.run_until_stopped());
                let _ = killed.await;
            });
            // Drops every task unfinished: no shutdown code runs, as with a killed process.
            runtime.shutdown_background();
        });
        Self {
            addr: addr_rx.await.expect("victim started"),
            kill,
        }
    }

    fn kill(self) {
        let _ = self.kill.send(());
    }
}

/// A fresh copy of the fixture knowledge base, which a test may change.
fn temp_kb_copy() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sct-kb-{}", Uuid::new_v4().simple()));
    copy_dir(&test_support::fixture("kb"), &dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn an_admin_disconnects_a_session_on_another_instance_with_a_reason() {
    let config = cluster_config().await;
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let admin = admin_token(&a).await;
    let user = a.user_tokens("carol").await;
    let (mut chat, session_id) = chat_on(b.addr, &user.access).await;
    let (mut local, local_id) = chat_on(a.addr, &user.access).await;

    // A sees the session that lives on B.
    eventually("the session on B", || async {
        let listed: Vec<SessionInfo> = a.get_json("/api/admin/sessions", &admin).await;
        listed
            .iter()
            .any(|s| s.session_id == session_id)
            .then_some(())
    })
    .await;

    let response = a
        .post_json_authed(
            &format!("/api/admin/sessions/{session_id}/disconnect"),
            &admin,
            &serde_json::json!({"reason": "please use the new app"}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let close = test_support::next_close(&mut chat)
        .await
        .expect("a close frame");
    assert_eq!(u16::from(close.code), protocol::ws::CLOSE_DISCONNECTED);
    assert_eq!(close.reason.as_str(), "please use the new app");

    // A local one, without a reason; the other socket of the same user stays.
    let response = a
        .post_json_authed(
            &format!("/api/admin/sessions/{local_id}/disconnect"),
            &admin,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let close = test_support::next_close(&mut local)
        .await
        .expect("a close frame");
    assert_eq!(u16::from(close.code), protocol::ws::CLOSE_DISCONNECTED);
    assert_eq!(close.reason.as_str(), "disconnected by an administrator");

    // Unknown sessions are a 404; regular users are refused.
    let response = a
        .post_json_authed(
            &format!("/api/admin/sessions/{}/disconnect", Uuid::new_v4()),
            &admin,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(response.status(), 404);
    let response = a
        .post_json_authed(
            &format!("/api/admin/sessions/{session_id}/disconnect"),
            &user.access,
            &serde_json::json!({}),
        )
        .await;
    assert_eq!(response.status(), 403);
}

/// Each ask changes its session twice (answering, then done). Changes close together share one
/// write of `live_sessions`, so another instance's console gets fewer `session_updated` events
/// than there were changes, and the last of them carries the session's latest state.
#[tokio::test]
async fn quick_session_changes_reach_another_instance_coalesced_and_up_to_date() {
    const ASKS: u64 = 6;
    let config = cluster_config().await;
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let admin = admin_token(&a).await;
    let mut events = a.ws_connect_path("/api/admin/events", &admin).await;
    let snapshot: AdminEvent = serde_json::from_value(next_frame(&mut events).await).unwrap();
    assert_eq!(snapshot, AdminEvent::Snapshot { sessions: vec![] });

    let user = a.user_tokens("dora").await;
    let (mut chat, session_id) = chat_on(b.addr, &user.access).await;
    match next_event(&mut events).await {
        AdminEvent::SessionOpened { session } => assert_eq!(session.session_id, session_id),
        other => panic!("expected session_opened, got {other:?}"),
    }

    for i in 0..ASKS {
        let ask = serde_json::json!({
            "type": "ask", "id": format!("q{i}"),
            "message": "Can I return an item?", "conversation_id": null,
        });
        chat.send(Message::text(ask.to_string())).await.unwrap();
        loop {
            let frame = next_frame(&mut chat).await;
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == "done" {
                break;
            }
        }
    }

    let mut updates = Vec::new();
    loop {
        let event: AdminEvent = serde_json::from_value(next_frame(&mut events).await).unwrap();
        match event {
            AdminEvent::SessionUpdated { session } if session.session_id == session_id => {
                updates.push((session.asks, session.answering));
                assert!(session.asks <= ASKS, "{session:?}");
                if session.asks == ASKS && session.answering == 0 {
                    break;
                }
            }
            AdminEvent::KbProgress { .. } => {}
            other => panic!("expected session_updated, got {other:?}"),
        }
    }
    assert!(
        (updates.len() as u64) < 2 * ASKS,
        "{} session_updated events (asks, answering) for {} changes: none were coalesced: \
         {updates:?}",
        updates.len(),
        2 * ASKS
    );
}
