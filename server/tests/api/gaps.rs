//! Knowledge gaps against the real server, PostgreSQL and the local MiniLM embedder: refused
//! and rated-down questions grouped by meaning and ranked by size × recency.

use std::time::{Duration, Instant};

use protocol::auth::TokenPair;
use protocol::gaps::{GapReason, GapsReport};
use serde_json::{Value, json};
use test_support::{TestApp, spawn_app_with};

const ADMIN_PASSWORD: &str = "admin password for tests";

/// Paraphrases of one question the fixture knowledge base cannot answer.
const PETS: [&str; 4] = [
    "Can I bring my dog into the store?",
    "Are dogs allowed in your store?",
    "Is my dog allowed inside the shop?",
    "Can I take my dog with me into your store?",
];
/// Paraphrases of another.
const STUDENTS: [&str; 3] = [
    "Do you offer a student discount?",
    "Is there a discount for students?",
    "Can students get a discount?",
];
/// Unrelated to both, and unanswerable too.
const LONER: &str = "What is the capital of Australia?";
/// Answerable from the fixtures; becomes a gap only once rated down.
const ANSWERABLE: &str = "How long do refunds take?";

async fn spawn() -> (TestApp, TokenPair) {
    let app = spawn_app_with(|c| {
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new(ADMIN_PASSWORD));
        c.asks_per_minute = 100;
    })
    .await;
    let admin = app.login_tokens("boss", ADMIN_PASSWORD).await;
    (app, admin)
}

async fn ask(app: &TestApp, token: &str, question: &str) -> Value {
    let response = app
        .post_json_authed("/api/chat/", token, &json!({ "message": question }))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Signals are recorded after each answer, off its path: wait for `n` of them.
async fn wait_for_signals(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = app.count("SELECT count(*) FROM question_signals").await;
        if have >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{have} of {n} signals recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn group_of<'a>(report: &'a GapsReport, question: &str) -> &'a protocol::gaps::Gap {
    report
        .gaps
        .iter()
        .find(|g| g.examples.iter().any(|e| e.question == question))
        .unwrap_or_else(|| panic!("no group holds {question:?}: {report:#?}"))
}

fn questions_of(gap: &protocol::gaps::Gap) -> Vec<&str> {
    let mut q: Vec<&str> = gap.examples.iter().map(|e| e.question.as_str()).collect();
    q.sort_unstable();
    q
}

fn sorted(q: &[&'static str]) -> Vec<&'static str> {
    let mut q = q.to_vec();
    q.sort_unstable();
    q
}

#[tokio::test]
async fn refused_paraphrases_form_one_group_and_groups_rank_by_size_and_recency() {
    let (app, admin) = spawn().await;
    let alice = app.user_tokens("alice").await;
    let bob = app.user_tokens("bob").await;

    let mut asked = 0;
    for (i, q) in PETS.iter().enumerate() {
        // Two users: a gap is about the question, not who asked.
        let user = if i % 2 == 0 { &alice } else { &bob };
        let answer = ask(&app, &user.access, q).await;
        assert_eq!(
            answer["answer"], "I don't have that information.",
            "{q}: {answer}"
        );
        asked += 1;
    }
    for q in STUDENTS.iter().chain([&LONER]) {
        ask(&app, &alice.access, q).await;
        asked += 1;
    }
    let answered = ask(&app, &alice.access, ANSWERABLE).await;
    assert_ne!(answered["answer"], "I don't have that information.");
    asked += 1;
    wait_for_signals(&app, asked).await;

    let report: GapsReport = app.get_json("/api/admin/gaps", &admin.access).await;
    assert_eq!(
        report.gaps.len(),
        3,
        "pets, students, the loner: {report:#?}"
    );
    let pets = group_of(&report, PETS[0]);
    assert_eq!(pets.size, 4);
    assert_eq!(questions_of(pets), sorted(&PETS));
    assert_eq!(pets.refused, 4);
    assert!(PETS.contains(&pets.representative.as_str()));
    assert!(
        pets.examples
            .iter()
            .all(|e| e.reasons == vec![GapReason::Refused])
    );
    let students = group_of(&report, STUDENTS[0]);
    assert_eq!(questions_of(students), sorted(&STUDENTS));
    assert_eq!(group_of(&report, LONER).size, 1);
    // Biggest first when equally recent.
    let sizes: Vec<usize> = report.gaps.iter().map(|g| g.size).collect();
    assert_eq!(sizes, vec![4, 3, 1]);
    assert!(
        report
            .gaps
            .iter()
            .all(|g| g.examples.iter().all(|e| e.question != ANSWERABLE)),
        "a well-grounded answer is no gap"
    );

    // Rated down, the answered question becomes a gap of its own, with its comment.
    let message_id = answered["message_id"].as_str().unwrap();
    let response = app
        .post_json_authed(
            &format!("/api/messages/{message_id}/feedback"),
            &alice.access,
            &json!({"rating": "down", "comment": "What about gift cards?"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let report: GapsReport = app.get_json("/api/admin/gaps", &admin.access).await;
    let refunds = group_of(&report, ANSWERABLE);
    assert_eq!(refunds.rated_down, 1);
    assert_eq!(
        refunds.examples[0].comment.as_deref(),
        Some("What about gift cards?")
    );
    // The group's best passage is the answer's own best source: the same cosine similarity.
    let best_source = answered["sources"]
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| {
            a["score"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["score"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(
        refunds.best_document.as_deref(),
        best_source["document"].as_str()
    );
    let best_score = f64::from(refunds.best_score.unwrap());
    assert!(
        (best_score - best_source["score"].as_f64().unwrap()).abs() < 1e-4,
        "{best_score} against {best_source}"
    );

    // The pet questions asked three weeks ago: a week's half-life puts the students first;
    // a very long one puts size first again.
    app.db()
        .await
        .execute(
            "UPDATE messages SET created_at = now() - interval '21 days' \
             WHERE role = 'user' AND content = ANY($1)",
            &[&PETS.to_vec()],
        )
        .await
        .unwrap();
    let report: GapsReport = app.get_json("/api/admin/gaps", &admin.access).await;
    assert_eq!(report.gaps[0].size, 3, "{report:#?}");
    assert!(questions_of(&report.gaps[0]).contains(&STUDENTS[0]));
    let report: GapsReport = app
        .get_json("/api/admin/gaps?half_life_hours=100000", &admin.access)
        .await;
    assert_eq!(report.gaps[0].size, 4);

    // The window: nothing was asked after now.
    let since = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let path = format!("/api/admin/gaps?since={}", urlencode(&since));
    let report: GapsReport = app.get_json(&path, &admin.access).await;
    assert!(report.gaps.is_empty());
    assert_eq!(report.questions, 0);

    // Bad parameters and plain users.
    let response = app
        .get_authed("/api/admin/gaps?since=yesterday", &admin.access)
        .await;
    assert_eq!(response.status(), 400);
    let response = app.get_authed("/api/admin/gaps", &alice.access).await;
    assert_eq!(response.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn the_admin_sees_the_latest_ratings_with_their_question() {
    let (app, admin) = spawn().await;
    let alice = app.user_tokens("alice").await;
    let first = ask(&app, &alice.access, ANSWERABLE).await;
    let second = ask(&app, &alice.access, "How much does standard shipping cost?").await;
    for (answer, rating) in [(&first, "down"), (&second, "up")] {
        let id = answer["message_id"].as_str().unwrap();
        let response = app
            .post_json_authed(
                &format!("/api/messages/{id}/feedback"),
                &alice.access,
                &json!({"rating": rating, "comment": format!("{rating}!")}),
            )
            .await;
        assert_eq!(response.status(), 200);
    }
    let all: Vec<protocol::feedback::FeedbackEntry> =
        app.get_json("/api/admin/feedback", &admin.access).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].question, "How much does standard shipping cost?");
    assert_eq!(all[0].username, "alice");
    assert_eq!(all[0].comment.as_deref(), Some("up!"));
    assert!(!all[0].answer_excerpt.is_empty());
    let down: Vec<protocol::feedback::FeedbackEntry> = app
        .get_json("/api/admin/feedback?rating=down", &admin.access)
        .await;
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].question, ANSWERABLE);
    let response = app.get_authed("/api/admin/feedback", &alice.access).await;
    assert_eq!(response.status(), 403);
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn the_stats_series_covers_the_last_hour_minute_by_minute() {
    let (app, admin) = spawn().await;
    let alice = app.user_tokens("alice").await;
    ask(&app, &alice.access, ANSWERABLE).await;
    ask(&app, &alice.access, PETS[0]).await;
    let series: protocol::admin::StatsSeries =
        app.get_json("/api/admin/stats/series", &admin.access).await;
    assert_eq!(series.minutes.len(), 60);
    assert!(
        series
            .minutes
            .windows(2)
            .all(|w| w[1].at - w[0].at == chrono::Duration::minutes(1))
    );
    assert_eq!(series.minutes.iter().map(|m| m.asks).sum::<i64>(), 2);
    assert!(series.minutes.iter().any(|m| m.latency_p95_ms.is_some()));
    assert_eq!(
        series
            .minutes
            .iter()
            .map(|m| m.provider_errors)
            .sum::<i64>(),
        0
    );
    // Older questions fall outside the window.
    app.db()
        .await
        .execute(
            "UPDATE messages SET created_at = now() - interval '2 hours'",
            &[],
        )
        .await
        .unwrap();
    let series: protocol::admin::StatsSeries =
        app.get_json("/api/admin/stats/series", &admin.access).await;
    assert_eq!(series.minutes.iter().map(|m| m.asks).sum::<i64>(), 0);
    let response = app
        .get_authed("/api/admin/stats/series", &alice.access)
        .await;
    assert_eq!(response.status(), 403);
    app.stop().await;
}

#[tokio::test]
async fn the_admin_reads_a_users_recent_questions() {
    let (app, admin) = spawn().await;
    let alice = app.user_tokens("alice").await;
    ask(&app, &alice.access, ANSWERABLE).await;
    ask(&app, &alice.access, PETS[0]).await;
    let id: uuid::Uuid = app
        .db()
        .await
        .query_one("SELECT id FROM users WHERE username = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    let recent: Vec<protocol::admin::RecentQuestion> = app
        .get_json(&format!("/api/admin/users/{id}/questions"), &admin.access)
        .await;
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0].question, PETS[0], "newest first");
    assert_eq!(
        recent[0].answer_excerpt.as_deref(),
        Some("I don't have that information.")
    );
    assert_eq!(
        recent[1].answer_status,
        Some(protocol::chat::MessageStatus::Complete)
    );
    let one: Vec<protocol::admin::RecentQuestion> = app
        .get_json(
            &format!("/api/admin/users/{id}/questions?limit=1"),
            &admin.access,
        )
        .await;
    assert_eq!(one.len(), 1);
    let response = app
        .get_authed(&format!("/api/admin/users/{id}/questions"), &alice.access)
        .await;
    assert_eq!(response.status(), 403);
    app.stop().await;
}
