//! Answer feedback over REST and the socket, against the real server and PostgreSQL.

use protocol::admin::CleanupTrigger;
use protocol::feedback::{Feedback, Rating};
use serde_json::{Value, json};
use server::jobs::cleanup;
use test_support::{TestApp, Ws, next_frame, send, spawn_app};

/// Asks over REST; returns (answer message id, conversation id).
async fn ask_rest(app: &TestApp, token: &str, question: &str) -> (String, String) {
    let response = app
        .post_json_authed("/api/chat/", token, &json!({ "message": question }))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    (
        body["message_id"].as_str().unwrap().to_owned(),
        body["conversation_id"].as_str().unwrap().to_owned(),
    )
}

async fn rate(app: &TestApp, token: &str, message_id: &str, body: Value) -> reqwest::Response {
    app.post_json_authed(
        &format!("/api/messages/{message_id}/feedback"),
        token,
        &body,
    )
    .await
}

async fn stored(app: &TestApp, message_id: &str) -> Vec<(String, Option<String>)> {
    let id: uuid::Uuid = message_id.parse().unwrap();
    app.db()
        .await
        .query(
            "SELECT rating, comment FROM message_feedback WHERE message_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn a_rating_over_rest_is_stored_replaced_and_checked() {
    let app = spawn_app().await;
    let alice = app.user_tokens("alice").await;
    let bob = app.user_tokens("bob").await;
    let (answer_id, _) = ask_rest(&app, &alice.access, "How long do refunds take?").await;

    let response = rate(&app, &alice.access, &answer_id, json!({"rating": "up"})).await;
    assert_eq!(response.status(), 200);
    let feedback: Feedback = response.json().await.unwrap();
    assert_eq!(feedback.rating, Rating::Up);
    assert_eq!(feedback.comment, None);
    assert_eq!(feedback.message_id.to_string(), answer_id);

    // A new rating replaces the old one: still one row.
    let response = rate(
        &app,
        &alice.access,
        &answer_id,
        json!({"rating": "down", "comment": "  It did not say which days count.  "}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        stored(&app, &answer_id).await,
        vec![(
            "down".to_owned(),
            Some("It did not say which days count.".to_owned())
        )]
    );

    // Comment bound: 1,000 characters pass, 1,001 do not (and change nothing).
    let response = rate(
        &app,
        &alice.access,
        &answer_id,
        json!({"rating": "up", "comment": "é".repeat(1000)}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let response = rate(
        &app,
        &alice.access,
        &answer_id,
        json!({"rating": "down", "comment": "x".repeat(1001)}),
    )
    .await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "validation_failed");
    assert_eq!(stored(&app, &answer_id).await[0].0, "up");

    // Someone else's answer, a question, an unknown id, a non-id: all 404, nothing stored.
    let response = rate(&app, &bob.access, &answer_id, json!({"rating": "down"})).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let question_id: uuid::Uuid = app
        .db()
        .await
        .query_one(
            "SELECT reply_to FROM messages WHERE id = $1",
            &[&answer_id.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    let response = rate(
        &app,
        &alice.access,
        &question_id.to_string(),
        json!({"rating": "down"}),
    )
    .await;
    assert_eq!(response.status(), 404, "a question is not an answer");
    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let response = rate(&app, &alice.access, &id, json!({"rating": "down"})).await;
        assert_eq!(response.status(), 404, "{id}");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM message_feedback").await,
        1,
        "only alice's one rating"
    );

    // Bad bodies and no token.
    let response = rate(&app, &alice.access, &answer_id, json!({"rating": "meh"})).await;
    assert_eq!(response.status(), 422);
    let response = app
        .client
        .post(app.url(&format!("/api/messages/{answer_id}/feedback")))
        .json(&json!({"rating": "up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    app.stop().await;
}

/// Asks on the socket and reads up to `done`; returns the answer's message id.
async fn ask_socket(ws: &mut Ws, id: &str, question: &str) -> String {
    send(
        ws,
        json!({"type": "ask", "id": id, "message": question, "conversation_id": null}),
    )
    .await;
    loop {
        let frame = next_frame(ws).await;
        if frame["type"] == "done" {
            assert_eq!(frame["finish_reason"], "stop", "{frame}");
            return frame["message_id"].as_str().unwrap().to_owned();
        }
    }
}

#[tokio::test]
async fn a_rating_over_the_socket_is_acknowledged_and_scoped_to_the_user() {
    let app = spawn_app().await;
    let alice = app.user_tokens("alice").await;
    let bob = app.user_tokens("bob").await;

    let mut ws = app.ws_connect(&alice.access).await;
    assert_eq!(next_frame(&mut ws).await["type"], "ready");
    let answer_id = ask_socket(&mut ws, "a1", "How much does standard shipping cost?").await;

    send(
        &mut ws,
        json!({"type": "feedback", "message_id": answer_id, "rating": "down",
               "comment": "Which countries?"}),
    )
    .await;
    let ack = next_frame(&mut ws).await;
    assert_eq!(
        ack,
        json!({"type": "feedback_ack", "message_id": answer_id})
    );
    send(
        &mut ws,
        json!({"type": "feedback", "message_id": answer_id, "rating": "up"}),
    )
    .await;
    assert_eq!(next_frame(&mut ws).await["type"], "feedback_ack");
    assert_eq!(
        stored(&app, &answer_id).await,
        vec![("up".to_owned(), None)]
    );

    // Bob's socket: alice's answer is not found, and his socket stays up.
    let mut bob_ws = app.ws_connect(&bob.access).await;
    assert_eq!(next_frame(&mut bob_ws).await["type"], "ready");
    send(
        &mut bob_ws,
        json!({"type": "feedback", "message_id": answer_id, "rating": "down"}),
    )
    .await;
    let error = next_frame(&mut bob_ws).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "not_found", "{error}");
    // A bad rating is a bad frame.
    send(
        &mut bob_ws,
        json!({"type": "feedback", "message_id": answer_id, "rating": "sideways"}),
    )
    .await;
    assert_eq!(next_frame(&mut bob_ws).await["code"], "bad_request");
    send(&mut bob_ws, json!({"type": "ping"})).await;
    assert_eq!(next_frame(&mut bob_ws).await["type"], "pong");
    assert_eq!(
        stored(&app, &answer_id).await,
        vec![("up".to_owned(), None)]
    );
    app.stop().await;
}

#[tokio::test]
async fn the_retention_cleanup_removes_ratings_with_their_answers() {
    let app = spawn_app().await;
    let alice = app.user_tokens("alice").await;
    let (old_answer, old_conversation) =
        ask_rest(&app, &alice.access, "How long do refunds take?").await;
    let (new_answer, _) = ask_rest(&app, &alice.access, "Is express shipping faster?").await;
    for id in [&old_answer, &new_answer] {
        let response = rate(&app, &alice.access, id, json!({"rating": "down"})).await;
        assert_eq!(response.status(), 200);
    }
    // Age the first exchange past the retention window.
    let conversation: uuid::Uuid = old_conversation.parse().unwrap();
    app.db()
        .await
        .execute(
            "UPDATE messages SET created_at = now() - interval '40 days' WHERE conversation_id = $1",
            &[&conversation],
        )
        .await
        .unwrap();
    let run = cleanup::run(&app.state.db, 30, CleanupTrigger::Manual)
        .await
        .unwrap();
    assert_eq!(run.messages_deleted, 2);
    assert!(stored(&app, &old_answer).await.is_empty());
    assert_eq!(stored(&app, &new_answer).await.len(), 1);
    assert_eq!(app.count("SELECT count(*) FROM message_feedback").await, 1);
    app.stop().await;
}
