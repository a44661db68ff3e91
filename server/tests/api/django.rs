//! Moving from the Django prototype: `import-django` against a Django-shaped database built
//! here, old password hashes at login, and the prototype's response shapes.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use server::auth::django::make_pbkdf2_sha256;
use server::import_django::plan::{RowSkip, UserSkip};
use server::import_django::{Options, Report, import};

use test_support::*;

/// Django's own test vector (tests/auth_tests/test_hashers.py, Django 4.1).
const DJANGO_VECTOR: &str =
    "pbkdf2_sha256$390000$seasalt$8xBlGd3jVgvJ+92hWPxi5ww0uuAuAnKgC45eudxro7c=";

/// Made by Django 5.2 for the password "lètmein" (argon2 costs lowered, bcrypt rounds 4).
const DJANGO_ARGON2: &str = "argon2$argon2id$v=19$m=1024,t=1,p=2$YWJjZGVmZ2hpams$g71U2WBDA3Q4QJOSbHxBiaT3+pPvVZ/e+06n/InWNUY";
const DJANGO_BCRYPT_SHA256: &str =
    "bcrypt_sha256$$2b$04$iwYiAjj83hJMoxYc4aFtUu.Za.fzRN5hQTCE522dyOUaQb7wZtNz6";

const ALICE_PASSWORD: &str = "alice's old password";

/// A fresh database with Django's `auth_user` and the prototype's history table.
async fn django_database() -> (String, tokio_postgres::Client) {
    let url = fresh_database().await;
    let client = server::db::connect(&url).await.expect("django db");
    client
        .batch_execute(include_str!("../fixtures/django/schema.sql"))
        .await
        .expect("django schema");
    (url, client)
}

async fn add_user(
    db: &tokio_postgres::Client,
    username: &str,
    email: &str,
    password: &str,
    is_staff: bool,
    is_active: bool,
) -> i32 {
    let joined: DateTime<Utc> = "2024-03-01T10:00:00Z".parse().unwrap();
    db.query_one(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, \
                                is_staff, is_active, date_joined) \
         VALUES ($1, false, $2, '', '', $3, $4, $5, $6) RETURNING id",
        &[&password, &username, &email, &is_staff, &is_active, &joined],
    )
    .await
    .unwrap()
    .get(0)
}

async fn add_row(db: &tokio_postgres::Client, user: i32, q: &str, a: &str, at: DateTime<Utc>) {
    db.execute(
        "INSERT INTO chatbot_api_chathistory (user_message, ai_response, created_at, user_id) \
         VALUES ($1, $2, $3, $4)",
        &[&q, &a, &at, &user],
    )
    .await
    .unwrap();
}

fn options(dry_run: bool) -> Options {
    Options {
        dry_run,
        admins: true,
        keep_old: false,
        retention_days: 30,
        batch_users: 3,
        chunk_rows: 1,
        progress: false,
    }
}

async fn password_hash(app: &TestApp, username: &str) -> String {
    app.db()
        .await
        .query_one(
            "SELECT password_hash FROM users WHERE username = $1",
            &[&username],
        )
        .await
        .unwrap()
        .get(0)
}

/// Second precision, as the assertions compare JSON timestamps.
fn ago(now: DateTime<Utc>, hours: i64) -> DateTime<Utc> {
    let t = now - TimeDelta::hours(hours);
    DateTime::from_timestamp(t.timestamp(), 0).unwrap()
}

#[tokio::test]
async fn django_users_and_history_move_over_and_old_clients_keep_working() {
    // Hashes made with Django's algorithm: the helper reproduces Django's own test vector.
    assert_eq!(
        make_pbkdf2_sha256("lètmein", "seasalt", 390_000),
        DJANGO_VECTOR
    );

    let (source_url, django) = django_database().await;
    let alice_hash = make_pbkdf2_sha256(ALICE_PASSWORD, "Zy8kQ1wX3vB7nM2pL5rT9a", 1000);
    let alice = add_user(
        &django,
        "alice",
        "alice@example.com",
        &alice_hash,
        false,
        true,
    )
    .await;
    let twin = add_user(
        &django,
        "Alice",
        "alice2@example.com",
        &alice_hash,
        false,
        true,
    )
    .await;
    add_user(
        &django,
        "bob",
        "ALICE@example.com",
        &alice_hash,
        false,
        true,
    )
    .await;
    let carol_hash = make_pbkdf2_sha256("carol's password", "c4r0lSalt", 1000);
    add_user(
        &django,
        "carol",
        "carol@example.com",
        &carol_hash,
        true,
        true,
    )
    .await;
    add_user(&django, "dave", "", DJANGO_ARGON2, false, true).await;
    add_user(
        &django,
        "erin",
        "erin@example.com",
        &carol_hash,
        false,
        false,
    )
    .await;
    add_user(
        &django,
        "frank",
        "frank@example.com",
        "!Unusable1234",
        false,
        true,
    )
    .await;
    add_user(
        &django,
        "gina",
        "gina@example.com",
        DJANGO_BCRYPT_SHA256,
        false,
        true,
    )
    .await;

    let now = Utc::now();
    add_row(
        &django,
        alice,
        "Where is my parcel?",
        "It ships in 2 days.",
        ago(now, 72),
    )
    .await;
    add_row(
        &django,
        alice,
        "And returns?",
        "Within 30 days.",
        ago(now, 71),
    )
    .await;
    add_row(&django, alice, "", "an empty question", ago(now, 70)).await;
    add_row(
        &django,
        alice,
        "Gift cards?",
        "They never expire.",
        ago(now, 24),
    )
    .await;
    add_row(
        &django,
        alice,
        "Very old",
        "Too old to keep.",
        ago(now, 24 * 40),
    )
    .await;
    add_row(&django, twin, "Twin question", "Twin answer", ago(now, 5)).await;

    let app = spawn_app_with(|c| c.seed_compat_history = true).await;

    // A dry run reports and writes nothing.
    let dry = import(&source_url, &app.database_url, &options(true))
        .await
        .unwrap();
    assert_eq!(dry.users_imported, 5, "{dry}");
    assert_eq!(dry.rows_imported, 3, "{dry}");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 0);

    let first = import(&source_url, &app.database_url, &options(false))
        .await
        .unwrap();
    check_first_report(&first);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 5);
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE role = 'admin'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'dave@users.invalid'")
            .await,
        1
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM users WHERE username = 'alice' \
             AND created_at = '2024-03-01T10:00:00Z'"
        )
        .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 2);
    // One conversation spans two rows (and two COPY chunks): it ends at its last row.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM conversations \
             WHERE updated_at - created_at = interval '1 hour'"
        )
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM messages WHERE status = 'complete'")
            .await,
        6
    );

    // The second run imports nothing.
    let second = import(&source_url, &app.database_url, &options(false))
        .await
        .unwrap();
    assert_eq!(second.users_imported, 0, "{second}");
    assert_eq!(second.users_already, 5, "{second}");
    assert_eq!(second.rows_imported, 0, "{second}");
    assert_eq!(second.rows_already, 3, "{second}");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 5);
    assert_eq!(app.count("SELECT count(*) FROM messages").await, 6);

    // Old passwords work once, and are argon2id afterwards.
    assert!(
        password_hash(&app, "alice")
            .await
            .starts_with("pbkdf2_sha256$")
    );
    let response = app.login("alice", "wrong password").await;
    assert_eq!(response.status(), 401);
    assert!(
        password_hash(&app, "alice")
            .await
            .starts_with("pbkdf2_sha256$")
    );
    let tokens = app.login_tokens("alice", ALICE_PASSWORD).await;
    assert!(password_hash(&app, "alice").await.starts_with("$argon2id$"));
    app.login_tokens("alice", ALICE_PASSWORD).await;
    for (name, password) in [("dave", "lètmein"), ("gina", "lètmein")] {
        app.login_tokens(name, password).await;
        assert!(
            password_hash(&app, name).await.starts_with("$argon2id$"),
            "{name}"
        );
    }
    assert_eq!(app.login("frank", "").await.status(), 401);
    assert_eq!(app.login("frank", "!Unusable1234").await.status(), 401);

    // History, the prototype's way: a bare list, newest first, original timestamps.
    let list: Value = app.get_json("/api/chat-history/", &tokens.access).await;
    let list = list.as_array().expect("a bare list").clone();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["user_message"], "Gift cards?");
    assert_eq!(list[0]["ai_response"], "They never expire.");
    assert_eq!(list[2]["user_message"], "Where is my parcel?");
    let at: DateTime<Utc> = list[2]["created_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(at, ago(now, 72));
    assert!(list.iter().all(|item| item["id"].is_i64()));

    // And the paginated way.
    let page: Value = app
        .get_json("/api/chat-history/?limit=2", &tokens.access)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["question"], "Gift cards?");
    assert_eq!(page["items"][0]["status"], "complete");
    assert!(page["next_before"].is_string());
    let conversations: Value = app.get_json("/api/conversations/", &tokens.access).await;
    let conversations = conversations["items"].as_array().unwrap();
    assert_eq!(conversations.len(), 2);
    assert_eq!(conversations[1]["title"], "Where is my parcel?");
    assert_eq!(conversations[1]["message_count"], 4);
    let id = conversations[1]["id"].as_str().unwrap();
    let messages: Value = app
        .get_json(&format!("/api/conversations/{id}/messages"), &tokens.access)
        .await;
    let roles: Vec<&str> = messages["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["assistant", "user", "assistant", "user"]);

    // A question the way the prototype's clients ask and read it.
    for body in [
        json!({"message": "How long do refunds take?"}),
        json!({"user_message": "How long does shipping take?"}),
    ] {
        let response = app
            .post_json_authed("/api/chat/", &tokens.access, &body)
            .await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        let asked = body
            .get("message")
            .or_else(|| body.get("user_message"))
            .unwrap();
        assert_eq!(&answer["user_message"], asked);
        assert!(!answer["ai_response"].as_str().unwrap().is_empty());
        assert_eq!(answer["ai_response"], answer["answer"]);
    }
    let list: Value = app.get_json("/api/chat-history/", &tokens.access).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 5);
    assert_eq!(list[0]["user_message"], "How long does shipping take?");
    assert!(list[0]["id"].as_i64() > list[2]["id"].as_i64());

    // A row added to Django later is imported by the next run, and only it.
    add_row(&django, alice, "One more?", "Sure.", ago(now, 1)).await;
    let third = import(&source_url, &app.database_url, &options(false))
        .await
        .unwrap();
    assert_eq!((third.rows_imported, third.rows_already), (1, 3), "{third}");

    drop_database(&source_url).await;
}

fn check_first_report(report: &Report) {
    let text = report.to_string();
    assert_eq!(report.users_read, 8, "{text}");
    assert_eq!(report.users_imported, 5, "{text}");
    assert_eq!(report.admins, 1, "{text}");
    assert_eq!(report.placeholder_emails, 1, "{text}");
    assert_eq!(
        report.users_skipped.get(&UserSkip::DuplicateUsername),
        Some(&1),
        "{text}"
    );
    assert_eq!(
        report.users_skipped.get(&UserSkip::DuplicateEmail),
        Some(&1),
        "{text}"
    );
    assert_eq!(
        report.users_skipped.get(&UserSkip::Inactive),
        Some(&1),
        "{text}"
    );
    assert_eq!(report.hashes.get("pbkdf2_sha256"), Some(&2), "{text}");
    assert_eq!(report.hashes.get("argon2"), Some(&1), "{text}");
    assert_eq!(report.hashes.get("bcrypt_sha256"), Some(&1), "{text}");
    assert_eq!(report.cannot_log_in.values().sum::<u64>(), 1, "{text}");
    assert_eq!(report.rows_imported, 3, "{text}");
    assert_eq!(report.conversations, 2, "{text}");
    assert_eq!(report.rows_skipped.get(&RowSkip::Old), Some(&1), "{text}");
    assert_eq!(
        report.rows_skipped.get(&RowSkip::EmptyQuestion),
        Some(&1),
        "{text}"
    );
    assert_eq!(report.rows_of_skipped_users, 1, "{text}");
    assert!(text.contains("duplicate username"), "{text}");
    assert!(text.contains("older than HISTORY_RETENTION_DAYS"), "{text}");
}

#[tokio::test]
async fn history_keeps_its_page_shape_by_default_and_the_docs_show_both() {
    let app = spawn_app().await;
    let tokens = app.user_tokens("zoe").await;
    let page: Value = app.get_json("/api/chat-history/", &tokens.access).await;
    assert!(page["items"].is_array(), "{page}");

    let docs: Value = app.get("/openapi.json").await.json().await.unwrap();
    let shapes = &docs["components"]["schemas"]["HistoryResponse"]["oneOf"];
    assert_eq!(shapes.as_array().map(Vec::len), Some(2), "{shapes}");
    let text = docs.to_string();
    assert!(text.contains("CompatHistoryItem"));
    let chat = &docs["components"]["schemas"]["ChatResponse"]["properties"];
    assert!(chat["user_message"].is_object() && chat["ai_response"].is_object());
}

#[tokio::test]
async fn a_source_that_is_not_django_is_refused_clearly() {
    let app = spawn_app().await;
    let other = fresh_database().await;
    let error = import(&other, &app.database_url, &options(false))
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("auth_user"), "{error:#}");
    drop_database(&other).await;
}
