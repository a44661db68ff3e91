//! The chat socket, REST chat, SSE, history and conversations, against the real server and a
//! real PostgreSQL; providers are the offline one or a fake OpenAI-compatible server on loopback.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server::config::{Config, LlmProvider};
use test_support::fake::chat::{ChatReply, ChatStats, FakeChat, Stream};
use test_support::{
    Incoming, TestApp, Ws, next_frame, next_incoming, send, spawn_app, spawn_app_with,
};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// A fake OpenAI-compatible provider. What it does depends on the question:
// "slowly" → 40 word deltas, 40 ms apart; "hesitate" → three deltas, the first after 5 s;
// "fail before" → a 400 error; "fail midway" → three deltas, then the connection breaks;
// anything else → three quick deltas.

/// Starts the fake on loopback; returns its root URL and counters.
async fn spawn_fake() -> (String, Arc<ChatStats>) {
    let fake = FakeChat::start(|call| {
        let last = call.last_message();
        if last.contains("fail before") {
            ChatReply::bad_model()
        } else if last.contains("slowly") {
            Stream::words(40, Duration::from_millis(40))
                .usage(11)
                .into()
        } else if last.contains("hesitate") {
            Stream::words(3, Duration::ZERO)
                .first_after(Duration::from_secs(5))
                .into()
        } else if last.contains("fail midway") {
            Stream::words(10, Duration::from_millis(20))
                .usage(11)
                .breaking_after(3)
                .into()
        } else {
            Stream::words(3, Duration::ZERO).usage(11).into()
        }
    })
    .await;
    (fake.url, fake.stats)
}

/// A server whose answers come from the fake provider.
async fn spawn_with_fake(adjust: impl FnOnce(&mut Config)) -> (TestApp, Arc<ChatStats>) {
    let (url, stats) = spawn_fake().await;
    let app = spawn_app_with(|c| {
        c.llm_provider = Some(LlmProvider::Openai);
        c.openai_base_url = url;
        c.llm_model = Some("fake-model".into());
        c.provider_timeout_secs = 5;
        adjust(c);
    })
    .await;
    (app, stats)
}

// ---------------------------------------------------------------------------------------------
// Socket helpers.

/// Connects with the header and reads `ready`.
async fn connect_ready(app: &TestApp, token: &str) -> Ws {
    let mut ws = app.ws_connect(token).await;
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    ws
}

/// Expects the next frame to be an `error` with this code; returns it.
async fn expect_error(ws: &mut Ws, code: &str) -> Value {
    let frame = next_frame(ws).await;
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    frame
}

async fn expect_close(ws: &mut Ws) -> Option<CloseFrame> {
    loop {
        match next_incoming(ws).await {
            Incoming::Closed(frame) => return frame,
            Incoming::Json(_) => continue,
        }
    }
}

/// Everything one answer sent on a socket, in order.
#[derive(Debug, Default)]
struct Answer {
    sources: Option<Value>,
    deltas: Vec<(u64, String)>,
    errors: Vec<Value>,
    done: Value,
}

impl Answer {
    fn text(&self) -> String {
        self.deltas.iter().map(|(_, t)| t.as_str()).collect()
    }
}

/// Reads frames of answer `id` until its `done` (frames of other ids are a failure).
async fn read_answer(ws: &mut Ws, id: &str) -> Answer {
    let mut answer = Answer::default();
    loop {
        let frame = next_frame(ws).await;
        assert_eq!(frame["id"], id, "{frame}");
        match frame["type"].as_str().unwrap() {
            "sources" => answer.sources = Some(frame),
            "delta" => answer.deltas.push((
                frame["seq"].as_u64().unwrap(),
                frame["text"].as_str().unwrap().to_owned(),
            )),
            "error" => answer.errors.push(frame),
            "done" => {
                answer.done = frame;
                return answer;
            }
            other => panic!("unexpected {other}: {frame}"),
        }
    }
}

async fn ask(ws: &mut Ws, id: &str, message: &str) {
    send(
        ws,
        json!({"type":"ask","id":id,"message":message,"conversation_id":null}),
    )
    .await;
}

fn assert_seqs_from(deltas: &[(u64, String)], first: u64) {
    for (i, (seq, _)) in deltas.iter().enumerate() {
        assert_eq!(
            *seq,
            first + i as u64,
            "deltas in order without gaps: {deltas:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// REST helpers.

/// The stored answer of a conversation (newest message), straight from the database.
async fn stored_answer(app: &TestApp, conversation_id: &str) -> Option<(String, String)> {
    let db = app.db().await;
    let id: uuid::Uuid = conversation_id.parse().unwrap();
    db.query_opt(
        "SELECT content, status FROM messages WHERE conversation_id = $1 AND role = 'assistant' \
         ORDER BY created_at DESC LIMIT 1",
        &[&id],
    )
    .await
    .unwrap()
    .map(|row| (row.get(0), row.get(1)))
}

/// Waits until the answer of the conversation is stored.
async fn wait_stored(app: &TestApp, conversation_id: &str) -> (String, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(stored) = stored_answer(app, conversation_id).await {
            return stored;
        }
        assert!(Instant::now() < deadline, "answer stored in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication.

#[tokio::test]
async fn header_auth_streams_an_answer_in_order_that_matches_what_is_stored() {
    let app = spawn_app().await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = app
        .try_ws_connect("/ws/chat", Some(&tokens.access))
        .await
        .unwrap();
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["user"]["username"], "alice");
    assert!(ready["user"].get("password_hash").is_none());
    let session_id = ready["session_id"].as_str().unwrap().to_owned();
    let sessions = app.state.sessions.list();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].session_id.to_string(), session_id);
    assert_eq!(sessions[0].username, "alice");

    ask(&mut ws, "a1", "How long do refunds take?").await;
    let answer = read_answer(&mut ws, "a1").await;
    let sources = answer.sources.as_ref().expect("sources before the deltas");
    assert!(
        !sources["sources"].as_array().unwrap().is_empty(),
        "{sources}"
    );
    assert!(!answer.deltas.is_empty());
    assert_seqs_from(&answer.deltas, 0);
    assert_eq!(answer.done["finish_reason"], "stop");
    assert!(answer.errors.is_empty());
    let conversation_id = answer.done["conversation_id"].as_str().unwrap();
    assert_eq!(sources["conversation_id"], conversation_id);

    let (content, status) = wait_stored(&app, conversation_id).await;
    assert_eq!(content, answer.text());
    assert_eq!(status, "complete");
    let db = app.db().await;
    let row = db
        .query_one(
            "SELECT id, jsonb_array_length(sources), total_tokens, latency_ms FROM messages \
             WHERE role = 'assistant'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, uuid::Uuid>(0).to_string(),
        answer.done["message_id"]
    );
    assert_eq!(
        row.get::<_, i32>(1) as usize,
        sources["sources"].as_array().unwrap().len()
    );
    assert_eq!(
        row.get::<_, Option<i32>>(2).map(i64::from),
        answer.done["usage"]["total_tokens"].as_i64()
    );
    assert!(row.get::<_, Option<i32>>(3).is_some());

    // The session counted the ask; closing the socket removes it.
    assert_eq!(app.state.sessions.list()[0].asks, 1);
    ws.close(None).await.unwrap();
    let state = app.state.clone();
    wait_for("the session to go", || state.sessions.is_empty()).await;
}

/// The count of one `chat_ask_stage_seconds` stage in the server's `/metrics` (0 if absent).
async fn stage_count(app: &TestApp, stage: &str) -> f64 {
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let series = format!("chat_ask_stage_seconds_count{{stage=\"{stage}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn an_asks_steps_before_its_first_token_are_timed_in_the_metrics() {
    let app = spawn_app().await;
    let tokens = app.user_tokens("tim").await;
    let stages = ["limit", "store", "model_first_chunk"];
    let mut before = Vec::new();
    for stage in stages {
        before.push(stage_count(&app, stage).await);
    }
    let mut ws = connect_ready(&app, &tokens.access).await;
    ask(&mut ws, "t1", "How long do refunds take?").await;
    let answer = read_answer(&mut ws, "t1").await;
    assert_eq!(answer.done["finish_reason"], "stop", "{:?}", answer);
    for (stage, before) in stages.into_iter().zip(before) {
        let after = stage_count(&app, stage).await;
        assert!(after >= before + 1.0, "{stage}: {before} -> {after}");
    }
}

#[tokio::test]
async fn first_frame_auth_works_and_bad_credentials_are_refused() {
    let app = spawn_app().await;
    let tokens = app.user_tokens("alice").await;

    // A bad header token is refused before the upgrade.
    match app.try_ws_connect("/ws/chat", Some("not-a-token")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }

    // Without a header: other frames first get an error, then `auth` opens the session.
    let mut ws = app.try_ws_connect("/ws/chat", None).await.unwrap();
    send(&mut ws, json!({"type":"ping"})).await;
    expect_error(&mut ws, "unauthorized").await;
    send(&mut ws, json!({"type":"auth","token": tokens.access})).await;
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["user"]["username"], "alice");
    ask(&mut ws, "a1", "Can I return an item?").await;
    let answer = read_answer(&mut ws, "a1").await;
    assert_eq!(answer.done["finish_reason"], "stop");

    // A bad token in the first frame: an error, then close 4003.
    let mut ws = app.try_ws_connect("/ws/chat", None).await.unwrap();
    send(&mut ws, json!({"type":"auth","token":"forged"})).await;
    expect_error(&mut ws, "unauthorized").await;
    let close = expect_close(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(close.code), protocol::ws::CLOSE_UNAUTHENTICATED);
}

#[tokio::test]
async fn an_expired_token_closes_with_4001_and_renewal_keeps_the_socket() {
    let app = spawn_app_with(|c| c.access_token_ttl_secs = 4).await;
    let tokens = app.user_tokens("alice").await;
    let user_id = app.state.tokens.verify_access(&tokens.access).unwrap().id;

    let started = Instant::now();
    let mut ws = connect_ready(&app, &tokens.access).await;
    let close = expect_close(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(close.code), protocol::ws::CLOSE_TOKEN_EXPIRED);
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "{:?}",
        started.elapsed()
    );

    // Tokens are minted directly here: the login path is slow on purpose (argon2).
    let mint = |app: &TestApp, id: uuid::Uuid| {
        app.state
            .tokens
            .issue_access(id, "alice", protocol::auth::Role::User)
            .unwrap()
    };
    // The login token has just expired (that is what closed the first socket): the second
    // socket authenticates with a fresh one.
    let started = Instant::now();
    let mut ws = app.try_ws_connect("/ws/chat", None).await.unwrap();
    send(&mut ws, json!({"type":"auth","token": mint(&app, user_id)})).await;
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["user"]["id"], user_id.to_string());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Renewed at +2 s: expires 5 to 6 s from the start.
    send(&mut ws, json!({"type":"auth","token": mint(&app, user_id)})).await;
    tokio::time::sleep(Duration::from_millis(4100).saturating_sub(started.elapsed())).await;
    // Past the first token's expiry: still open.
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(next_frame(&mut ws).await["type"], "pong");
    // A bad renewal is answered but does not end the socket.
    send(&mut ws, json!({"type":"auth","token":"forged"})).await;
    expect_error(&mut ws, "unauthorized").await;
    // The renewed token expires in turn.
    let close = expect_close(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(close.code), protocol::ws::CLOSE_TOKEN_EXPIRED);
    assert!(started.elapsed() > Duration::from_secs(4));
}

// ---------------------------------------------------------------------------------------------
// Malformed frames and limits.

#[tokio::test]
async fn malformed_frames_get_error_frames_and_the_socket_stays_up() {
    let app = spawn_app_with(|c| {
        c.ws_max_frame_bytes = 1024;
        c.max_question_chars = 100;
    })
    .await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;

    ws.send(Message::Text("this is not json".into()))
        .await
        .unwrap();
    expect_error(&mut ws, "bad_request").await;
    send(&mut ws, json!({"type":"shout"})).await;
    expect_error(&mut ws, "bad_request").await;
    send(&mut ws, json!({"type":"ask","id":"a1"})).await;
    let missing = expect_error(&mut ws, "bad_request").await;
    assert!(
        missing["message"].as_str().unwrap().contains("message"),
        "{missing}"
    );
    send(&mut ws, json!({"no_type": true})).await;
    expect_error(&mut ws, "bad_request").await;
    ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    expect_error(&mut ws, "bad_request").await;
    send(&mut ws, json!({"type":"ping","pad":"x".repeat(2000)})).await;
    expect_error(&mut ws, "payload_too_large").await;
    ask(&mut ws, "a2", &"why ".repeat(30)).await;
    let long = expect_error(&mut ws, "validation_failed").await;
    assert_eq!(long["id"], "a2");
    ask(&mut ws, "a3", "   ").await;
    expect_error(&mut ws, "validation_failed").await;
    ask(&mut ws, "", "hello").await;
    expect_error(&mut ws, "validation_failed").await;
    send(&mut ws, json!({"type":"cancel","id":"nope"})).await;
    expect_error(&mut ws, "not_found").await;
    send(&mut ws, json!({"type":"resume","id":"nope","after_seq":0})).await;
    expect_error(&mut ws, "not_found").await;

    // Still up and answering.
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(next_frame(&mut ws).await["type"], "pong");
    ask(&mut ws, "a4", "How long does shipping take?").await;
    assert_eq!(
        read_answer(&mut ws, "a4").await.done["finish_reason"],
        "stop"
    );
    // None of the refused asks was stored.
    let count = app.count("SELECT count(*) FROM messages").await;
    assert_eq!(count, 2);
}

#[tokio::test]
async fn asks_per_minute_are_limited_per_user_across_socket_and_rest() {
    let app = spawn_app_with(|c| c.asks_per_minute = 2).await;
    let alice = app.user_tokens("alice").await;
    let bob = app.user_tokens("bob").await;
    let mut ws = connect_ready(&app, &alice.access).await;
    ask(&mut ws, "a1", "How long do refunds take?").await;
    read_answer(&mut ws, "a1").await;
    let response = app
        .post_json_authed(
            "/api/chat/",
            &alice.access,
            &json!({"message":"Can I return an item?"}),
        )
        .await;
    assert_eq!(response.status(), 200);

    ask(&mut ws, "a3", "How long does shipping take?").await;
    let limited = expect_error(&mut ws, "rate_limited").await;
    assert_eq!(limited["id"], "a3");
    let retry = limited["retry_after"].as_u64().unwrap();
    assert!((1..=60).contains(&retry));
    let response = app
        .post_json_authed(
            "/api/chat/",
            &alice.access,
            &json!({"message":"Where is my parcel?"}),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // Another user is not affected.
    let response = app
        .post_json_authed(
            "/api/chat/",
            &bob.access,
            &json!({"message":"Where is my parcel?"}),
        )
        .await;
    assert_eq!(response.status(), 200);
}

/// REST counts the limit in the statement that stores the question: an ask over it, new or a
/// follow-up, stores nothing and counts nothing.
#[tokio::test]
async fn a_rest_ask_over_the_limit_stores_nothing() {
    let app = spawn_app_with(|c| c.asks_per_minute = 2).await;
    let alice = app.user_tokens("alice").await;
    let ask_rest = |body: Value| {
        let (app, token) = (&app, alice.access.clone());
        async move { app.post_json_authed("/api/chat/", &token, &body).await }
    };
    let first = ask_rest(json!({"message": "How long do refunds take?"})).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let conversation = first["conversation_id"].as_str().unwrap().to_owned();
    let follow_up = json!({"message": "And for a gift?", "conversation_id": conversation});
    assert_eq!(ask_rest(follow_up.clone()).await.status(), 200);

    for body in [json!({"message": "Where is my parcel?"}), follow_up] {
        let response = ask_rest(body).await;
        assert_eq!(response.status(), 429);
        let retry = test_support::retry_after_secs(&response);
        assert!((1..=60).contains(&retry), "retry-after {retry}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    // Two questions and their answers, in one conversation; nothing of the refused asks, and
    // only the two admitted asks in the limit's log.
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 4);
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(app.count("SELECT count(*) FROM answers_in_flight").await, 0);
    let hits = app
        .count("SELECT sum(cardinality(hits))::bigint FROM rate_logs WHERE key LIKE 'asks:%'")
        .await;
    assert_eq!(hits, 2);
}

#[tokio::test]
async fn answers_in_flight_per_connection_are_limited() {
    let (app, _stats) = spawn_with_fake(|c| c.ws_max_in_flight = 1).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    ask(&mut ws, "a1", "tell me slowly about refunds").await;
    ask(&mut ws, "a2", "and about shipping").await;
    // a1's frames may come first; a2's refusal is among the next frames.
    let mut refused = false;
    let mut a1 = Answer::default();
    loop {
        let frame = next_frame(&mut ws).await;
        if frame["id"] == "a2" {
            assert_eq!(frame["type"], "error");
            assert_eq!(frame["code"], "too_many_in_flight");
            refused = true;
            continue;
        }
        match frame["type"].as_str().unwrap() {
            "delta" => a1
                .deltas
                .push((frame["seq"].as_u64().unwrap(), String::new())),
            "done" => break,
            _ => {}
        }
    }
    assert!(refused);
    assert_eq!(a1.deltas.len(), 40);
    // With a1 done, a new ask is accepted.
    ask(&mut ws, "a3", "and about shipping").await;
    assert_eq!(
        read_answer(&mut ws, "a3").await.done["finish_reason"],
        "stop"
    );
}

// ---------------------------------------------------------------------------------------------
// Cancel, disconnect, resume.

#[tokio::test]
async fn cancel_stops_the_provider_and_stores_a_cancelled_answer() {
    let (app, stats) = spawn_with_fake(|_| {}).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    ask(&mut ws, "a1", "tell me slowly about refunds").await;
    let mut answer = Answer::default();
    while answer.deltas.len() < 3 {
        let frame = next_frame(&mut ws).await;
        if frame["type"] == "delta" {
            answer.deltas.push((
                frame["seq"].as_u64().unwrap(),
                frame["text"].as_str().unwrap().into(),
            ));
        }
    }
    // The same id cannot be asked again while its answer runs.
    ask(&mut ws, "a1", "tell me slowly about shipping").await;
    loop {
        let frame = next_frame(&mut ws).await;
        if frame["type"] == "delta" {
            answer.deltas.push((
                frame["seq"].as_u64().unwrap(),
                frame["text"].as_str().unwrap().into(),
            ));
        } else {
            assert_eq!(frame["type"], "error", "{frame}");
            assert_eq!(frame["code"], "conflict", "{frame}");
            break;
        }
    }
    send(&mut ws, json!({"type":"cancel","id":"a1"})).await;
    let rest = read_answer(&mut ws, "a1").await;
    answer.deltas.extend(rest.deltas);
    assert_eq!(rest.done["finish_reason"], "cancelled");
    assert!(
        answer.deltas.len() < 40,
        "stopped early: {}",
        answer.deltas.len()
    );
    assert_seqs_from(&answer.deltas, 0);

    let conversation_id = rest.done["conversation_id"].as_str().unwrap();
    let (content, status) = wait_stored(&app, conversation_id).await;
    assert_eq!(status, "cancelled");
    assert_eq!(content, answer.text());
    // The upstream request was dropped, not read to its end.
    wait_for("the provider to see its stream dropped", || {
        stats.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(stats.completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_cancel_before_the_first_delta_stops_the_model_call_at_once() {
    let (app, stats) = spawn_with_fake(|_| {}).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    ask(&mut ws, "a1", "hesitate about refunds").await;
    wait_for("the model call", || {
        stats.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    send(&mut ws, json!({"type":"cancel","id":"a1"})).await;
    // Well before the model's first delta (5 s away).
    let answer = tokio::time::timeout(Duration::from_secs(3), read_answer(&mut ws, "a1"))
        .await
        .expect("the cancel ends the answer without waiting for the model");
    assert_eq!(
        answer.done["finish_reason"], "cancelled",
        "{:?}",
        answer.done
    );
    assert!(answer.deltas.is_empty());
    let conversation_id = answer.done["conversation_id"].as_str().unwrap();
    let (content, status) = wait_stored(&app, conversation_id).await;
    assert_eq!((content.as_str(), status.as_str()), ("", "cancelled"));
    wait_for("the provider to see its stream dropped", || {
        stats.dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(stats.completed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_new_conversations_model_call_starts_while_its_question_is_being_stored() {
    let (app, stats) = spawn_with_fake(|_| {}).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    // Storing a question waits while the in-flight table is locked.
    let locker = app.db().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE answers_in_flight IN EXCLUSIVE MODE")
        .await
        .unwrap();
    ask(&mut ws, "a1", "How long do refunds take?").await;
    wait_for("the model call", || {
        stats.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM messages").await,
        0,
        "the model was asked before the question was stored"
    );
    // Nothing is shown before the question is stored.
    let early = tokio::time::timeout(Duration::from_millis(300), next_frame(&mut ws)).await;
    assert!(early.is_err(), "a frame before the store: {early:?}");
    locker.batch_execute("ROLLBACK").await.unwrap();

    let answer = read_answer(&mut ws, "a1").await;
    assert_eq!(answer.done["finish_reason"], "stop", "{:?}", answer.done);
    assert_eq!(answer.text(), "w0 w1 w2 ");
    let conversation_id = answer.done["conversation_id"].as_str().unwrap();
    let (content, status) = wait_stored(&app, conversation_id).await;
    assert_eq!(
        (content.as_str(), status.as_str()),
        ("w0 w1 w2 ", "complete")
    );
    assert_eq!(stats.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_disconnect_mid_answer_still_completes_and_stores_it() {
    let (app, stats) = spawn_with_fake(|_| {}).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    ask(&mut ws, "a1", "tell me slowly about refunds").await;
    let mut conversation_id = None;
    let mut deltas = 0;
    while deltas < 2 {
        let frame = next_frame(&mut ws).await;
        match frame["type"].as_str().unwrap() {
            "sources" => {
                conversation_id = Some(frame["conversation_id"].as_str().unwrap().to_owned())
            }
            "delta" => deltas += 1,
            _ => {}
        }
    }
    drop(ws);
    let conversation_id = conversation_id.expect("sources came first");
    // While it is still being generated the history shows the question as pending.
    let history: Value = app
        .get_authed("/api/chat-history/", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["items"][0]["status"], "pending", "{history}");
    assert!(history["items"][0]["answer"].is_null());
    let (content, status) = wait_stored(&app, &conversation_id).await;
    assert_eq!(status, "complete");
    let expected: String = (0..40).map(|i| format!("w{i} ")).collect();
    assert_eq!(content, expected);
    assert_eq!(stats.dropped.load(Ordering::SeqCst), 0);

    // It is in the history when the user comes back.
    let history: Value = app
        .get_authed("/api/chat-history/", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["items"][0]["answer"], expected.as_str());
    assert_eq!(history["items"][0]["status"], "complete");
}

#[tokio::test]
async fn resume_after_reconnect_replays_the_rest_without_gaps_or_repeats() {
    let (app, _stats) = spawn_with_fake(|_| {}).await;
    let tokens = app.user_tokens("alice").await;
    let mut first = connect_ready(&app, &tokens.access).await;
    ask(&mut first, "a1", "tell me slowly about refunds").await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let frame = next_frame(&mut first).await;
        if frame["type"] == "delta" {
            seen.push((
                frame["seq"].as_u64().unwrap(),
                frame["text"].as_str().unwrap().to_owned(),
            ));
        }
    }
    drop(first);

    let mut second = connect_ready(&app, &tokens.access).await;
    let last = seen.last().unwrap().0;
    send(
        &mut second,
        json!({"type":"resume","id":"a1","after_seq":last}),
    )
    .await;
    let rest = read_answer(&mut second, "a1").await;
    assert!(
        rest.sources.is_none(),
        "sources are not repeated after a sequence number"
    );
    assert_seqs_from(&rest.deltas, last + 1);
    seen.extend(rest.deltas);
    assert_seqs_from(&seen, 0);
    assert_eq!(rest.done["finish_reason"], "stop");
    let text: String = seen.iter().map(|(_, t)| t.as_str()).collect();
    let (content, _) = wait_stored(&app, rest.done["conversation_id"].as_str().unwrap()).await;
    assert_eq!(text, content);

    // A finished answer can be replayed whole (with its sources) within the window.
    let mut third = connect_ready(&app, &tokens.access).await;
    send(&mut third, json!({"type":"resume","id":"a1"})).await;
    let whole = read_answer(&mut third, "a1").await;
    assert!(whole.sources.is_some());
    assert_eq!(whole.text(), content);
    assert_eq!(whole.done, rest.done);
}

#[tokio::test]
async fn recent_turns_of_the_conversation_go_into_the_prompt_bounded() {
    let (app, stats) = spawn_with_fake(|c| c.history_turns = 2).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    ask(&mut ws, "a1", "How long do refunds take? (first)").await;
    let first = read_answer(&mut ws, "a1").await;
    let conversation_id = first.done["conversation_id"].as_str().unwrap().to_owned();
    for (i, label) in ["second", "third", "fourth"].iter().enumerate() {
        let id = format!("a{}", i + 2);
        send(
            &mut ws,
            json!({"type":"ask","id":id,"message":format!("How long do refunds take? ({label})"),
                   "conversation_id": conversation_id}),
        )
        .await;
        let answer = read_answer(&mut ws, &id).await;
        assert_eq!(answer.done["conversation_id"], conversation_id.as_str());
    }
    // The fourth question saw the second and third exchanges, oldest first, and not the first.
    let request = stats.last_request.lock().unwrap().clone();
    let messages = request["messages"].as_array().unwrap();
    let earlier: Vec<(&str, &str)> = messages[1..messages.len() - 1]
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    assert_eq!(
        earlier,
        vec![
            ("user", "How long do refunds take? (second)"),
            ("assistant", "w0 w1 w2 "),
            ("user", "How long do refunds take? (third)"),
            ("assistant", "w0 w1 w2 "),
        ]
    );
    assert!(
        messages.last().unwrap()["content"]
            .as_str()
            .unwrap()
            .contains("(fourth)")
    );
}

// ---------------------------------------------------------------------------------------------
// Provider failures.

#[tokio::test]
async fn a_provider_failing_before_or_during_the_stream_ends_the_answer_as_error() {
    let (app, _stats) = spawn_with_fake(|_| {}).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;

    ask(
        &mut ws,
        "a1",
        "How long do refunds take? Please fail before you start",
    )
    .await;
    let before = read_answer(&mut ws, "a1").await;
    assert!(before.deltas.is_empty());
    assert_eq!(before.errors.len(), 1, "{:?}", before.errors);
    assert_eq!(before.errors[0]["code"], "provider_unavailable");
    assert!(
        !before.errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("bad model"),
        "upstream text leaked"
    );
    assert_eq!(before.done["finish_reason"], "error");
    let (content, status) =
        wait_stored(&app, before.done["conversation_id"].as_str().unwrap()).await;
    assert_eq!((content.as_str(), status.as_str()), ("", "error"));

    ask(
        &mut ws,
        "a2",
        "How long do refunds take? Please fail midway through",
    )
    .await;
    let during = read_answer(&mut ws, "a2").await;
    assert_eq!(during.deltas.len(), 3);
    assert_eq!(during.errors.len(), 1, "{:?}", during.errors);
    assert_eq!(during.done["finish_reason"], "error");
    let (content, status) =
        wait_stored(&app, during.done["conversation_id"].as_str().unwrap()).await;
    assert_eq!(status, "error");
    assert_eq!(content, "w0 w1 w2 ");

    // REST reports the failure as a 502 with a stable code.
    let response = app
        .post_json_authed(
            "/api/chat/",
            &tokens.access,
            &json!({"message":"How long do refunds take? fail before"}),
        )
        .await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "provider_unavailable");

    // The socket is still usable.
    ask(&mut ws, "a3", "a normal question").await;
    assert_eq!(
        read_answer(&mut ws, "a3").await.done["finish_reason"],
        "stop"
    );
}

// ---------------------------------------------------------------------------------------------
// Heartbeats and load.

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_and_cleaned_up() {
    let app = spawn_app_with(|c| c.ws_ping_secs = 1).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let state = app.state.clone();
    wait_for("the silent session to be dropped", || {
        state.sessions.is_empty()
    })
    .await;
    let close = expect_close(&mut ws).await;
    if let Some(close) = close {
        assert_eq!(u16::from(close.code), 1001);
    }

    // A peer that reads (and so answers pings) stays.
    let mut ws = connect_ready(&app, &tokens.access).await;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        if let Ok(Some(Ok(Message::Close(_)))) =
            tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        {
            panic!("a live peer was closed");
        }
    }
    assert_eq!(app.state.sessions.len(), 1);
}

#[tokio::test]
async fn two_hundred_sockets_asking_at_once_all_get_their_answers() {
    // One user's 200 sockets: the per-user socket cap is lifted for this load.
    let app = spawn_app_with(|c| {
        c.asks_per_minute = 1000;
        c.ws_max_sockets_per_user = 200;
    })
    .await;
    let tokens = app.user_tokens("alice").await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let app = Arc::clone(&app);
        let token = tokens.access.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect_ready(&app, &token).await;
            let id = format!("q{i}");
            ask(&mut ws, &id, "How long do refunds take?").await;
            let answer = read_answer(&mut ws, &id).await;
            assert_eq!(answer.done["finish_reason"], "stop");
            assert_seqs_from(&answer.deltas, 0);
            answer.text()
        }));
    }
    let mut texts = Vec::new();
    for task in tasks {
        texts.push(task.await.unwrap());
    }
    assert!(texts.iter().all(|t| !t.is_empty() && *t == texts[0]));
    let db = app.db().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let stored: i64 = db
            .query_one(
                "SELECT count(*) FROM messages WHERE role = 'assistant' AND status = 'complete'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if stored == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "all 200 answers stored, got {stored}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// REST, SSE, history, isolation.

#[tokio::test]
async fn rest_chat_is_seed_compatible_and_continues_a_conversation() {
    let app = spawn_app().await;
    let tokens = app.user_tokens("alice").await;

    let response = app.post_json("/api/chat/", &json!({"message":"hi"})).await;
    assert_eq!(response.status(), 401);

    let response = app
        .post_json_authed(
            "/api/chat/",
            &tokens.access,
            &json!({"message":"How long do refunds take?"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let first: Value = response.json().await.unwrap();
    assert!(!first["answer"].as_str().unwrap().is_empty());
    assert!(!first["sources"].as_array().unwrap().is_empty());
    assert_eq!(first["finish_reason"], "stop");
    let conversation_id = first["conversation_id"].as_str().unwrap().to_owned();
    let (content, status) = stored_answer(&app, &conversation_id).await.unwrap();
    assert_eq!(
        (content.as_str(), status.as_str()),
        (first["answer"].as_str().unwrap(), "complete")
    );

    let body =
        json!({"message":"And how long does shipping take?","conversation_id": conversation_id});
    let response = app
        .post_json_authed("/api/chat/", &tokens.access, &body)
        .await;
    let second: Value = response.json().await.unwrap();
    assert_eq!(second["conversation_id"], conversation_id.as_str());

    let response = app
        .post_json_authed("/api/chat/", &tokens.access, &json!({"message": ""}))
        .await;
    assert_eq!(response.status(), 422);
    let response = app
        .post_json_authed(
            "/api/chat/",
            &tokens.access,
            &json!({"text": "wrong field"}),
        )
        .await;
    assert_eq!(response.status(), 422);

    // The conversation holds both exchanges, newest first.
    let messages: Value = app
        .get_authed(
            &format!("/api/conversations/{conversation_id}/messages"),
            &tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    let items = messages["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert_eq!(items[0]["role"], "assistant");
    assert_eq!(items[0]["id"], second["message_id"]);
    assert_eq!(items[1]["content"], "And how long does shipping take?");
    assert_eq!(items[3]["content"], "How long do refunds take?");

    let conversations: Value = app
        .get_authed("/api/conversations/", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(conversations["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        conversations["items"][0]["title"],
        "How long do refunds take?"
    );
    assert_eq!(conversations["items"][0]["message_count"], 4);

    // History: newest first, keyset pages.
    let page: Value = app
        .get_authed("/api/chat-history/?limit=1", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        page["items"][0]["question"],
        "And how long does shipping take?"
    );
    assert_eq!(page["items"][0]["answer"], second["answer"]);
    assert_eq!(
        page["items"][0]["conversation_id"],
        conversation_id.as_str()
    );
    let cursor = page["next_before"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let page: Value = app
        .get_authed(
            &format!("/api/chat-history/?limit=1&before={cursor}"),
            &tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0]["question"], "How long do refunds take?");
    assert!(
        page["items"][0]["asked_at"].is_string() && page["items"][0]["answered_at"].is_string()
    );
    let cursor = page["next_before"].as_str().unwrap().to_owned();
    let page: Value = app
        .get_authed(
            &format!("/api/chat-history/?limit=1&before={cursor}"),
            &tokens.access,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(page["items"].as_array().unwrap().is_empty());
    assert!(page["next_before"].is_null());
    let response = app
        .get_authed("/api/chat-history/?before=garbage", &tokens.access)
        .await;
    assert_eq!(response.status(), 400);

    // The routes are documented.
    let openapi: Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/api/chat/",
        "/api/chat/stream",
        "/api/chat-history/",
        "/api/conversations/",
        "/ws/chat",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path} documented");
    }
}

#[tokio::test]
async fn sse_streams_the_same_answer_and_ends_with_done() {
    use eventsource_stream::Eventsource;

    let app = spawn_app().await;
    let tokens = app.user_tokens("alice").await;
    let response = app
        .post_json_authed(
            "/api/chat/stream",
            &tokens.access,
            &json!({"message":"How long do refunds take?"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events: Vec<_> = response.bytes_stream().eventsource().collect().await;
    let events: Vec<(String, Value)> = events
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| (e.event, serde_json::from_str(&e.data).unwrap()))
        .collect();
    assert_eq!(events[0].0, "sources");
    let (name, done) = events.last().unwrap();
    assert_eq!(name, "done");
    assert_eq!(done["finish_reason"], "stop");
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "delta")
        .map(|(_, d)| d)
        .collect();
    assert!(!deltas.is_empty());
    for (i, delta) in deltas.iter().enumerate() {
        assert_eq!(delta["seq"], i as u64);
    }
    let text: String = deltas.iter().map(|d| d["text"].as_str().unwrap()).collect();
    let (content, status) = stored_answer(&app, done["conversation_id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!((content, status.as_str()), (text, "complete"));

    let response = app
        .client
        .post(app.url("/api/chat/stream"))
        .json(&json!({"message":"hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn another_users_history_is_invisible_on_every_route() {
    let app = spawn_app().await;
    let alice = app.user_tokens("alice").await;
    let bob = app.user_tokens("bob").await;
    let mut alice_ws = connect_ready(&app, &alice.access).await;
    ask(&mut alice_ws, "shared-id", "How long do refunds take?").await;
    let answer = read_answer(&mut alice_ws, "shared-id").await;
    let conversation_id = answer.done["conversation_id"].as_str().unwrap().to_owned();

    for path in ["/api/chat-history/", "/api/conversations/"] {
        let page: Value = app
            .get_authed(path, &bob.access)
            .await
            .json()
            .await
            .unwrap();
        assert!(
            page["items"].as_array().unwrap().is_empty(),
            "{path}: {page}"
        );
        let page: Value = app
            .get_authed(path, &alice.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1, "{path}: {page}");
    }
    let messages = format!("/api/conversations/{conversation_id}/messages");
    let response = app.get_authed(&messages, &bob.access).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(!body.to_string().contains("refunds"));
    let response = app
        .delete_authed(
            &format!("/api/conversations/{conversation_id}"),
            &bob.access,
        )
        .await;
    assert_eq!(response.status(), 404);
    let response = app
        .post_json_authed(
            "/api/chat/",
            &bob.access,
            &json!({"message":"sneaky","conversation_id": conversation_id}),
        )
        .await;
    assert_eq!(response.status(), 404);
    let response = app
        .get_authed("/api/conversations/not-a-uuid/messages", &bob.access)
        .await;
    assert_eq!(response.status(), 404);

    // On the socket: bob can neither add to, resume nor cancel alice's answers.
    let mut bob_ws = connect_ready(&app, &bob.access).await;
    send(
        &mut bob_ws,
        json!({"type":"ask","id":"b1","message":"sneaky","conversation_id": conversation_id}),
    )
    .await;
    let refused = expect_error(&mut bob_ws, "not_found").await;
    assert_eq!(refused["id"], "b1");
    send(
        &mut bob_ws,
        json!({"type":"resume","id":"shared-id","after_seq":0}),
    )
    .await;
    expect_error(&mut bob_ws, "not_found").await;
    send(&mut bob_ws, json!({"type":"cancel","id":"shared-id"})).await;
    expect_error(&mut bob_ws, "not_found").await;
    let count = app.count("SELECT count(*) FROM messages").await;
    assert_eq!(count, 2, "bob's refused question was not stored");

    // Alice still sees and can delete her conversation.
    let response = app.get_authed(&messages, &alice.access).await;
    assert_eq!(response.status(), 200);
    let response = app
        .delete_authed(
            &format!("/api/conversations/{conversation_id}"),
            &alice.access,
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(app.get_authed(&messages, &alice.access).await.status(), 404);
    let page: Value = app
        .get_authed("/api/chat-history/", &alice.access)
        .await
        .json()
        .await
        .unwrap();
    assert!(page["items"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn shutdown_closes_sockets_but_lets_answers_finish_and_be_stored() {
    let (app, stats) = spawn_with_fake(|_| {}).await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = connect_ready(&app, &tokens.access).await;
    ask(&mut ws, "a1", "tell me slowly about refunds").await;
    let mut conversation_id = None;
    loop {
        let frame = next_frame(&mut ws).await;
        if frame["type"] == "sources" {
            conversation_id = frame["conversation_id"].as_str().map(str::to_owned);
        }
        if frame["type"] == "delta" {
            break;
        }
    }
    let database_url = app.database_url.clone();
    let stopping = tokio::spawn(app.stop());
    let close = expect_close(&mut ws).await.expect("a close frame");
    // 1012 (service restart): reconnect, possibly to another instance, and resume.
    assert_eq!(u16::from(close.code), protocol::ws::CLOSE_SERVICE_RESTART);
    stopping.await.unwrap();

    // The server waited for the answer: it is stored complete, the provider read to its end.
    let db = server::db::connect(&database_url).await.unwrap();
    let id: uuid::Uuid = conversation_id.expect("sources first").parse().unwrap();
    let row = db
        .query_one(
            "SELECT content, status FROM messages WHERE conversation_id = $1 AND role = 'assistant'",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(1), "complete");
    assert_eq!(
        row.get::<_, String>(0),
        (0..40).map(|i| format!("w{i} ")).collect::<String>()
    );
    assert_eq!(stats.completed.load(Ordering::SeqCst), 1);
}
