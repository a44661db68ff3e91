//! The admin event socket relaying one user's answers as they stream (`watch` / `unwatch`),
//! against the real server and PostgreSQL. Answers come from the offline provider, or from a
//! fake OpenAI-compatible server on loopback that streams slowly.

use std::time::Duration;

use protocol::admin::AdminEvent;
use protocol::chat::FinishReason;
use serde_json::{Value, json};
use server::config::{Config, LlmProvider};
use test_support::fake::chat::{FakeChat, Stream};
use test_support::{TestApp, Ws, next_frame, send, spawn_app_from, spawn_app_with, test_config};
use uuid::Uuid;

const ADMIN_PASSWORD: &str = "admin password for live answer tests";

fn with_admin(c: &mut Config) {
    c.admin_username = Some("boss".into());
    c.admin_password = Some(server::config::Secret::new(ADMIN_PASSWORD));
}

/// The admin event socket, past its snapshot.
async fn admin_events(app: &TestApp) -> Ws {
    let admin = app.login_tokens("boss", ADMIN_PASSWORD).await;
    let mut events = app
        .ws_connect_path("/api/admin/events", &admin.access)
        .await;
    let snapshot: AdminEvent = serde_json::from_value(next_frame(&mut events).await).unwrap();
    assert!(matches!(snapshot, AdminEvent::Snapshot { .. }));
    events
}

/// The next admin event that is not about the session list or the knowledge base (those
/// interleave freely with relayed answers).
async fn next_relayed(events: &mut Ws) -> AdminEvent {
    loop {
        let event: AdminEvent = serde_json::from_value(next_frame(events).await).unwrap();
        match event {
            AdminEvent::Snapshot { .. }
            | AdminEvent::SessionOpened { .. }
            | AdminEvent::SessionUpdated { .. }
            | AdminEvent::SessionClosed { .. }
            | AdminEvent::KbProgress { .. }
            | AdminEvent::KbReloaded { .. } => continue,
            other => return other,
        }
    }
}

/// Sends `watch` for `user_id` and reads its `watching` answer: the user's sockets here.
async fn watch(events: &mut Ws, user_id: Uuid) -> usize {
    send(events, json!({"type": "watch", "user_id": user_id})).await;
    match next_relayed(events).await {
        AdminEvent::Watching {
            user_id: watched,
            local_sessions,
        } => {
            assert_eq!(watched, user_id);
            local_sessions
        }
        other => panic!("expected watching, got {other:?}"),
    }
}

/// A chat socket past its `ready`, and the user's id.
async fn chat(app: &TestApp, username: &str) -> (Ws, Uuid) {
    let tokens = app.user_tokens(username).await;
    let mut ws = app.ws_connect(&tokens.access).await;
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    let user_id = ready["user"]["id"].as_str().unwrap().parse().unwrap();
    (ws, user_id)
}

/// What the asker's socket got for answer `id`: the text and the `done` frame.
async fn read_answer(ws: &mut Ws, id: &str) -> (String, Value) {
    let mut text = String::new();
    loop {
        let frame = next_frame(ws).await;
        if frame["id"] != id {
            continue;
        }
        match frame["type"].as_str() {
            Some("delta") => text.push_str(frame["text"].as_str().unwrap()),
            Some("done") => return (text, frame),
            Some("sources") => {}
            other => panic!("unexpected {other:?}: {frame}"),
        }
    }
}

/// What the admin socket relayed of answer `id`: the started frame came first, then the text
/// (deltas in order, `seq` from 0) and the ended frame.
async fn read_relayed(events: &mut Ws, user_id: Uuid, id: &str) -> (String, AdminEvent) {
    assert_eq!(
        next_relayed(events).await,
        AdminEvent::AnswerStarted {
            user_id,
            id: id.into()
        }
    );
    let mut text = String::new();
    let mut next_seq = 0;
    loop {
        match next_relayed(events).await {
            AdminEvent::AnswerDelta {
                user_id: u,
                id: i,
                seq,
                text: piece,
            } => {
                assert_eq!((u, i.as_str()), (user_id, id));
                assert_eq!(seq, next_seq, "deltas in order, none missing");
                next_seq += 1;
                text.push_str(&piece);
            }
            ended @ AdminEvent::AnswerEnded { .. } => return (text, ended),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_watching_admin_gets_the_users_answer_as_it_streams() {
    let app = spawn_app_with(with_admin).await;
    let mut events = admin_events(&app).await;
    let (mut alice, alice_id) = chat(&app, "alice").await;
    let (mut bob, _) = chat(&app, "bob").await;
    assert_eq!(watch(&mut events, alice_id).await, 1);

    // Bob asks first: his answer is not relayed to a watcher of alice.
    send(
        &mut bob,
        json!({"type": "ask", "id": "b1", "message": "How long do refunds take?"}),
    )
    .await;
    read_answer(&mut bob, "b1").await;
    send(
        &mut alice,
        json!({"type": "ask", "id": "a1", "message": "How long do refunds take?"}),
    )
    .await;
    let (asked, done) = read_answer(&mut alice, "a1").await;
    assert!(!asked.is_empty());
    let (relayed, ended) = read_relayed(&mut events, alice_id, "a1").await;
    assert_eq!(relayed, asked, "the admin sees the very text the user got");
    assert_eq!(
        ended,
        AdminEvent::AnswerEnded {
            user_id: alice_id,
            id: "a1".into(),
            finish_reason: Some(FinishReason::Stop),
            message_id: Some(done["message_id"].as_str().unwrap().parse().unwrap()),
            error: None,
        }
    );

    // A question refused before an answer began ends without a finish reason.
    send(
        &mut alice,
        json!({"type": "ask", "id": "a2", "message": "Hello?",
               "conversation_id": Uuid::new_v4()}),
    )
    .await;
    let refused = next_frame(&mut alice).await;
    assert_eq!(refused["type"], "error", "{refused}");
    let (text, ended) = read_relayed(&mut events, alice_id, "a2").await;
    assert_eq!(text, "");
    let AdminEvent::AnswerEnded {
        finish_reason,
        error,
        ..
    } = ended
    else {
        unreachable!()
    };
    assert_eq!(finish_reason, None);
    assert_eq!(error.map(|c| c.as_str()), refused["code"].as_str());

    // After `unwatch`, alice's answers are no longer relayed: the next relayed frame is the
    // answer to a watch of bob, not anything of alice's.
    send(&mut events, json!({"type": "unwatch"})).await;
    send(
        &mut alice,
        json!({"type": "ask", "id": "a3", "message": "How long do refunds take?"}),
    )
    .await;
    read_answer(&mut alice, "a3").await;
    let bob_id: Uuid = {
        let sessions: Vec<protocol::admin::SessionInfo> = app
            .get_json(
                "/api/admin/sessions",
                &app.login_tokens("boss", ADMIN_PASSWORD).await.access,
            )
            .await;
        sessions
            .iter()
            .find(|s| s.username == "bob")
            .unwrap()
            .user_id
    };
    assert_eq!(watch(&mut events, bob_id).await, 1);

    // A plain user's `watch` on the chat socket is an unknown frame there, nothing more.
    send(&mut bob, json!({"type": "watch", "user_id": alice_id})).await;
    let error = next_frame(&mut bob).await;
    assert_eq!(error["type"], "error", "{error}");
    app.stop().await;
}

// A fake OpenAI-compatible provider that streams `w0 ` … `w29 ` 50 ms apart.

const SLOW_WORDS: usize = 30;

async fn spawn_slow_provider() -> String {
    let fake =
        FakeChat::start(|_| Stream::words(SLOW_WORDS, Duration::from_millis(50)).into()).await;
    fake.url
}

#[tokio::test]
async fn a_watch_started_mid_answer_gets_it_from_the_start() {
    let provider = spawn_slow_provider().await;
    let app = spawn_app_with(|c| {
        with_admin(c);
        c.llm_provider = Some(LlmProvider::Openai);
        c.openai_base_url = provider;
        c.llm_model = Some("fake-model".into());
    })
    .await;
    let mut events = admin_events(&app).await;
    let (mut alice, alice_id) = chat(&app, "alice").await;
    send(
        &mut alice,
        json!({"type": "ask", "id": "a1", "message": "How long do refunds take?"}),
    )
    .await;
    // Some of the answer has streamed before the admin opens the session.
    loop {
        let frame = next_frame(&mut alice).await;
        if frame["type"] == "delta" && frame["seq"] == 2 {
            break;
        }
    }
    assert_eq!(watch(&mut events, alice_id).await, 1);
    let (asked, _) = read_answer(&mut alice, "a1").await;
    let (relayed, ended) = read_relayed(&mut events, alice_id, "a1").await;
    let expected: String = (0..SLOW_WORDS).map(|i| format!("w{i} ")).collect();
    assert_eq!(relayed, expected, "from the first delta, none twice");
    assert!(expected.ends_with(&asked), "the socket got the rest");
    assert!(matches!(
        ended,
        AdminEvent::AnswerEnded {
            finish_reason: Some(FinishReason::Stop),
            ..
        }
    ));
    app.stop().await;
}

#[tokio::test]
async fn answers_on_another_instance_are_not_relayed_and_watching_says_so() {
    let mut config = test_config().await;
    with_admin(&mut config);
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let (mut alice, alice_id) = chat(&a, "alice").await;

    let mut on_b = admin_events(&b).await;
    assert_eq!(
        watch(&mut on_b, alice_id).await,
        0,
        "alice's socket is on instance a"
    );
    let mut on_a = admin_events(&a).await;
    assert_eq!(watch(&mut on_a, alice_id).await, 1);

    send(
        &mut alice,
        json!({"type": "ask", "id": "a1", "message": "How long do refunds take?"}),
    )
    .await;
    let (asked, _) = read_answer(&mut alice, "a1").await;
    let (relayed, _) = read_relayed(&mut on_a, alice_id, "a1").await;
    assert_eq!(relayed, asked);
    // Instance b relays nothing of it: its next relayed frame answers a new watch.
    assert_eq!(watch(&mut on_b, alice_id).await, 0);
    b.stop().await;
    a.stop().await;
}
