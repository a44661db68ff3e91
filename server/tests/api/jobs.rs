//! Background jobs against real PostgreSQL and a real SMTP server on loopback: the history
//! cleanup (retention edges, batches under load, exclusivity, recorded runs, the schedule) and
//! the welcome-mail outbox (delivery, retries, a crashed worker, several workers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use protocol::admin::{AdminEvent, CleanupTrigger};
use protocol::auth::{Role, User};
use serde_json::json;
use server::jobs::cleanup::{self, CleanupError};
use server::jobs::mailer::{Mailer, SmtpMailer};
use server::jobs::outbox::{self, ExecutionOutcome, RetryPolicy, WorkerSettings};
use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;

use test_support::fake::smtp::SmtpServer;
use test_support::{TestApp, spawn_app, spawn_app_with};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A migrated database with no server on it, for driving the outbox by hand.
async fn migrated_database() -> (String, Pool) {
    let url = test_support::fresh_database().await;
    server::db::migrate(&url).await.unwrap();
    let pool = server::db::pool(&url, 8).unwrap();
    (url, pool)
}

fn smtp_mailer(smtp: &SmtpServer) -> Arc<dyn Mailer> {
    let from = "Northwind Support <support@northwind.example>"
        .parse()
        .unwrap();
    Arc::new(SmtpMailer::from_url(&smtp.url(), from).unwrap())
}

/// A user row written directly, as a test fixture.
async fn insert_user(client: &impl GenericClient, username: &str) -> User {
    let row = client
        .query_one(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, 'not-a-hash') \
             RETURNING id, created_at",
            &[&username, &format!("{username}@example.com")],
        )
        .await
        .unwrap();
    User {
        id: row.get(0),
        username: username.to_owned(),
        email: format!("{username}@example.com"),
        role: Role::User,
        created_at: row.get(1),
    }
}

/// Creates a user and queues its welcome mail in one transaction, as signup does.
async fn enqueue_for(pool: &Pool, username: &str) -> User {
    let mut client = pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let user = insert_user(&*tx, username).await;
    outbox::enqueue_welcome(&tx, &user).await.unwrap();
    tx.commit().await.unwrap();
    user
}

async fn outbox_row(
    client: &tokio_postgres::Client,
    recipient: &str,
) -> (String, i32, Option<String>) {
    let row = client
        .query_one(
            "SELECT status, attempts, last_error FROM mail_outbox WHERE recipient = $1",
            &[&recipient],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Old conversations full of old questions and answers: `conversations` conversations,
/// `pairs` question/answer pairs spread over them, all `age_days` old. One transaction, so a
/// cleanup running meanwhile never sees the conversations without their messages.
async fn insert_old_history(
    client: &mut tokio_postgres::Client,
    user_id: uuid::Uuid,
    conversations: i32,
    pairs: i32,
    age_days: i32,
) {
    let client = client.transaction().await.unwrap();
    client
        .execute(
            "INSERT INTO conversations (id, user_id, title, created_at, updated_at) \
             SELECT md5('c' || i)::uuid, $1, 'old', now() - make_interval(days => $2), \
                    now() - make_interval(days => $2) \
             FROM generate_series(1, $3) i",
            &[&user_id, &age_days, &conversations],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, content, status, created_at) \
             SELECT md5('q' || i)::uuid, md5('c' || (i % $3 + 1))::uuid, $1, 'user', \
                    'old question ' || i, 'complete', now() - make_interval(days => $2) \
             FROM generate_series(1, $4) i",
            &[&user_id, &age_days, &conversations, &pairs],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO messages (id, conversation_id, user_id, role, reply_to, content, status, \
                                   created_at) \
             SELECT md5('a' || i)::uuid, md5('c' || (i % $3 + 1))::uuid, $1, 'assistant', \
                    md5('q' || i)::uuid, 'old answer ' || i, 'complete', \
                    now() - make_interval(days => $2) + interval '1 second' \
             FROM generate_series(1, $4) i",
            &[&user_id, &age_days, &conversations, &pairs],
        )
        .await
        .unwrap();
    client.commit().await.unwrap();
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn ask(app: &TestApp, access: &str, message: &str) -> reqwest::StatusCode {
    app.post_json_authed("/api/chat/", access, &json!({ "message": message }))
        .await
        .status()
}

// ---------------------------------------------------------------------------------------------
// The history cleanup
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cleanup_deletes_exactly_what_is_older_than_the_retention_age() {
    let app = spawn_app().await;
    let db = app.db().await;
    let user = insert_user(&db, "keeper").await;
    // conversation, created_at, updated_at; message, conversation, reply_to, created_at
    db.batch_execute(&format!(
        "INSERT INTO conversations (id, user_id, title, created_at, updated_at) VALUES
           ('00000000-0000-0000-0000-00000000000a', '{u}', 'all old', now() - interval '40 days', now() - interval '40 days'),
           ('00000000-0000-0000-0000-00000000000b', '{u}', 'mixed',   now() - interval '40 days', now() - interval '30 days' + interval '1 minute'),
           ('00000000-0000-0000-0000-00000000000c', '{u}', 'empty old', now() - interval '31 days', now() - interval '31 days'),
           ('00000000-0000-0000-0000-00000000000d', '{u}', 'empty new', now(), now());
         INSERT INTO messages (id, conversation_id, user_id, role, reply_to, content, status, created_at) VALUES
           ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a', '{u}', 'user', NULL, 'q', 'complete', now() - interval '40 days'),
           ('00000000-0000-0000-0000-0000000000a2', '00000000-0000-0000-0000-00000000000a', '{u}', 'assistant', '00000000-0000-0000-0000-0000000000a1', 'a', 'complete', now() - interval '30 days' - interval '1 minute'),
           ('00000000-0000-0000-0000-0000000000b1', '00000000-0000-0000-0000-00000000000b', '{u}', 'user', NULL, 'just outside', 'complete', now() - interval '30 days' - interval '1 minute'),
           ('00000000-0000-0000-0000-0000000000b2', '00000000-0000-0000-0000-00000000000b', '{u}', 'user', NULL, 'just inside', 'complete', now() - interval '30 days' + interval '1 minute'),
           ('00000000-0000-0000-0000-0000000000b3', '00000000-0000-0000-0000-00000000000b', '{u}', 'assistant', '00000000-0000-0000-0000-0000000000b2', 'answer inside', 'complete', now() - interval '30 days' + interval '1 minute');",
        u = user.id
    ))
    .await
    .unwrap();

    let run = cleanup::run(&app.state.db, 30, CleanupTrigger::Manual)
        .await
        .unwrap();

    assert_eq!(run.error, None);
    assert_eq!(run.trigger, CleanupTrigger::Manual);
    assert_eq!(
        run.messages_deleted, 3,
        "a1, a2 (just outside) and b1 (just outside)"
    );
    assert_eq!(
        run.conversations_deleted, 2,
        "a (emptied) and c (empty and old)"
    );
    let mut left: Vec<String> = db
        .query("SELECT content FROM messages ORDER BY content", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    left.sort();
    assert_eq!(left, ["answer inside", "just inside"]);
    let conversations: Vec<String> = db
        .query("SELECT title FROM conversations ORDER BY title", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(conversations, ["empty new", "mixed"]);
    assert_eq!(
        count(&db, "SELECT count(*) FROM users").await,
        1,
        "users are never touched"
    );

    // A second run finds nothing more.
    let again = cleanup::run(&app.state.db, 30, CleanupTrigger::Manual)
        .await
        .unwrap();
    assert_eq!(
        (again.messages_deleted, again.conversations_deleted),
        (0, 0)
    );
}

#[tokio::test]
async fn runs_are_recorded_newest_first() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    let user = insert_user(&db, "recorder").await;
    insert_old_history(&mut db, user.id, 3, 10, 45).await;

    let first = cleanup::run(&app.state.db, 30, CleanupTrigger::Manual)
        .await
        .unwrap();
    let second = cleanup::run(&app.state.db, 30, CleanupTrigger::Scheduled)
        .await
        .unwrap();

    let runs = cleanup::list_runs(&app.state.db, 10).await.unwrap();
    assert_eq!(runs, vec![second.clone(), first.clone()]);
    assert_eq!(first.trigger, CleanupTrigger::Manual);
    assert_eq!(second.trigger, CleanupTrigger::Scheduled);
    assert_eq!(
        (first.messages_deleted, first.conversations_deleted),
        (20, 3)
    );
    assert_eq!(
        (second.messages_deleted, second.conversations_deleted),
        (0, 0)
    );
    let finished = first.finished_at.expect("a finished run has an end");
    assert!(first.started_at <= finished && finished <= second.started_at);
    assert!(first.error.is_none() && second.error.is_none());
    assert_eq!(
        cleanup::list_runs(&app.state.db, 1).await.unwrap(),
        vec![second]
    );
}

#[tokio::test]
async fn the_scheduler_runs_the_cleanup_on_its_cron_schedule() {
    // Every second; the test only waits for the first scheduled run.
    let app = spawn_app_with(|c| c.cleanup_schedule = "* * * * * *".to_owned()).await;
    let mut events = app.state.sessions.event_sender().subscribe();
    let mut db = app.db().await;
    let user = insert_user(&db, "scheduled").await;
    insert_old_history(&mut db, user.id, 2, 5, 31).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let deleted = count(
            &db,
            "SELECT coalesce(sum(messages_deleted), 0)::bigint FROM cleanup_runs \
             WHERE trigger = 'scheduled' AND finished_at IS NOT NULL AND error IS NULL",
        )
        .await;
        if deleted == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled run deleted the old history in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 0);

    // Admin consoles are told about scheduled runs too.
    let event = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Ok(AdminEvent::CleanupFinished { run }) = events.recv().await {
                return run;
            }
        }
    })
    .await
    .expect("a cleanup_finished event");
    assert_eq!(event.trigger, CleanupTrigger::Scheduled);
    assert!(event.finished_at.is_some());
    app.stop().await;
}

#[tokio::test]
async fn a_bad_cron_schedule_refuses_to_start() {
    let mut config = test_support::test_config().await;
    config.cleanup_schedule = "every day at three".to_owned();
    let err = server::startup::Application::build(config)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("CLEANUP_SCHEDULE"), "{err:#}");
}

#[tokio::test]
async fn two_cleanups_started_at_once_run_one_at_a_time() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    let user = insert_user(&db, "racer").await;
    insert_old_history(&mut db, user.id, 100, 10_000, 60).await;

    let pool = &app.state.db;
    let (a, b) = tokio::join!(
        cleanup::run(pool, 30, CleanupTrigger::Manual),
        cleanup::run(pool, 30, CleanupTrigger::Scheduled),
    );
    let (ran, refused) = match (a, b) {
        (Ok(run), Err(e)) | (Err(e), Ok(run)) => (run, e),
        (a, b) => panic!("expected exactly one run, got {a:?} and {b:?}"),
    };
    assert!(
        matches!(refused, CleanupError::AlreadyRunning),
        "{refused:?}"
    );
    assert_eq!(ran.messages_deleted, 20_000);
    assert_eq!(
        cleanup::list_runs(pool, 10).await.unwrap().len(),
        1,
        "a refused run does nothing"
    );

    // Another process holding the lock also makes a run refuse, until it lets go.
    let other = app.db().await;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&cleanup::CLEANUP_LOCK_KEY])
        .await
        .unwrap();
    assert!(matches!(
        cleanup::run(pool, 30, CleanupTrigger::Manual).await,
        Err(CleanupError::AlreadyRunning)
    ));
    other
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&cleanup::CLEANUP_LOCK_KEY],
        )
        .await
        .unwrap();
    cleanup::run(pool, 30, CleanupTrigger::Manual)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cancelled_run_releases_the_lock_and_is_marked_interrupted() {
    let app = spawn_app().await;
    let mut db = app.db().await;
    let user = insert_user(&db, "quitter").await;
    insert_old_history(&mut db, user.id, 100, 20_000, 60).await;
    let pool = &app.state.db;

    // Drop the run's future once it has deleted some batches, as an aborted request would.
    // Boxed so that `drop` below really drops it (a stack-pinned future lives to scope end).
    let mut run = Box::pin(cleanup::run(pool, 30, CleanupTrigger::Manual));
    let in_progress =
        "SELECT count(*) FROM cleanup_runs WHERE finished_at IS NULL AND messages_deleted > 0";
    loop {
        tokio::select! {
            finished = &mut run => panic!("the run finished before it could be dropped: {finished:?}"),
            () = tokio::time::sleep(Duration::from_millis(5)) => {
                if count(&db, in_progress).await > 0 {
                    break;
                }
            }
        }
    }
    drop(run);

    // Closing the dropped run's session frees its lock within moments.
    let deadline = Instant::now() + Duration::from_secs(5);
    let run = loop {
        match cleanup::run(pool, 30, CleanupTrigger::Manual).await {
            Ok(run) => break run,
            Err(CleanupError::AlreadyRunning) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the lock was not released: {e:?}"),
        }
    };
    assert!(run.error.is_none());
    // Nobody holds the lock any more (a session lock leaked into the pool would still be held,
    // and would even let a later run on that same connection take it again re-entrantly).
    let free: bool = db
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&cleanup::CLEANUP_LOCK_KEY],
        )
        .await
        .unwrap()
        .get(0);
    assert!(free, "the cleanup lock is still held after the runs ended");
    db.execute(
        "SELECT pg_advisory_unlock($1)",
        &[&cleanup::CLEANUP_LOCK_KEY],
    )
    .await
    .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 0);
    let runs = cleanup::list_runs(pool, 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    let interrupted = &runs[1];
    assert!(interrupted.finished_at.is_some());
    assert!(
        interrupted
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("interrupted"),
        "{interrupted:?}"
    );
    assert!(interrupted.messages_deleted > 0);
    assert_eq!(
        interrupted.messages_deleted + run.messages_deleted,
        40_000,
        "each batch records its count with its delete, so the two runs add up exactly"
    );
}

#[tokio::test]
async fn a_large_cleanup_deletes_in_batches_while_chat_keeps_answering() {
    // Asks back to back for the whole run: lift the per-user rate limit.
    let app = spawn_app_with(|c| c.asks_per_minute = 100_000).await;
    let tokens = app.user_tokens("chatter").await;
    let mut db = app.db().await;
    let old = insert_user(&db, "oldtimer").await;
    insert_old_history(&mut db, old.id, 500, 25_000, 90).await;
    let old_rows = "SELECT count(*) FROM messages WHERE created_at < now() - interval '30 days'";
    assert_eq!(count(&db, old_rows).await, 50_000);

    let pool = app.state.db.clone();
    let run = tokio::spawn(async move { cleanup::run(&pool, 30, CleanupTrigger::Manual).await });

    // While it runs: answers keep coming, and other sessions see the deletes land in steps
    // (each batch commits on its own), never one long transaction.
    let mut seen_partial = false;
    let mut asks = 0;
    let mut slowest = Duration::ZERO;
    while !run.is_finished() {
        let left = count(&db, old_rows).await;
        seen_partial |= left > 0 && left < 50_000;
        let started = Instant::now();
        assert_eq!(
            ask(&app, &tokens.access, "How long does shipping take?").await,
            200
        );
        slowest = slowest.max(started.elapsed());
        asks += 1;
    }
    let run = run.await.unwrap().unwrap();

    assert!(
        asks >= 1,
        "the cleanup finished before any ask could overlap it"
    );
    assert!(
        seen_partial,
        "no partial state observed: the deletes did not commit in batches"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "an ask took {slowest:?} during the cleanup"
    );
    assert_eq!(run.messages_deleted, 50_000);
    assert_eq!(run.conversations_deleted, 500);
    assert_eq!(count(&db, old_rows).await, 0);
    // The fresh exchanges are all still there: one question and one answer per ask.
    let kept = count(&db, "SELECT count(*) FROM messages").await;
    assert_eq!(kept, 2 * asks);
    assert_eq!(ask(&app, &tokens.access, "And returns?").await, 200);
}

// ---------------------------------------------------------------------------------------------
// The welcome-mail outbox
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn signup_sends_the_welcome_mail_over_smtp_within_two_seconds() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    let app = spawn_app_with(|c| c.mailer = server::config::Secret::new(url)).await;

    let started = Instant::now();
    let response = app
        .signup("dora", "dora@example.com", "correct horse battery")
        .await;
    assert_eq!(response.status(), 201);
    smtp.wait_for(Duration::from_secs(2), "the welcome mail", |s| {
        !s.received().is_empty()
    })
    .await;
    let elapsed = started.elapsed();

    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.to, ["dora@example.com"]);
    assert_eq!(mail.from, "support@northwind.example");
    assert!(
        mail.data.contains("Subject: Welcome to Northwind Support"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("To: dora@example.com"), "{}", mail.data);
    assert!(mail.data.contains("Hello dora,"), "{}", mail.data);
    assert!(
        mail.data
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{}",
        mail.data
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "delivered after {elapsed:?}"
    );

    let db = app.db().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while outbox_row(&db, "dora@example.com").await.0 != "sent" {
        assert!(
            Instant::now() < deadline,
            "the outbox row was not marked sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        outbox_row(&db, "dora@example.com").await,
        ("sent".to_owned(), 1, None)
    );
    let stats = outbox::stats(&app.state.db).await.unwrap();
    assert_eq!((stats.pending, stats.sent, stats.failed), (0, 1, 0));
}

#[tokio::test]
async fn a_rejected_signup_queues_no_mail() {
    let app = spawn_app().await;
    assert_eq!(
        app.signup("erin", "erin@example.com", "correct horse battery")
            .await
            .status(),
        201
    );
    // Same name again: the transaction rolls back, and its mail with it.
    assert_eq!(
        app.signup("erin", "erin2@example.com", "correct horse battery")
            .await
            .status(),
        409
    );
    let db = app.db().await;
    assert_eq!(count(&db, "SELECT count(*) FROM mail_outbox").await, 1);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM mail_outbox WHERE recipient = 'erin2@example.com'"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_refusing_relay_is_retried_with_backoff_until_it_accepts() {
    let smtp = SmtpServer::start().await;
    smtp.refuse(2, "451 4.3.0 mailbox busy, try later");
    let (_url, pool) = migrated_database().await;
    let mailer = smtp_mailer(&smtp);
    let policy = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_secs(60),
        max_delay: Duration::from_secs(3600),
    };
    let user = enqueue_for(&pool, "fred").await;
    let db = pool.get().await.unwrap();

    let first = outbox::try_execute_task_with(&pool, mailer.as_ref(), &policy)
        .await
        .unwrap();
    let ExecutionOutcome::Retrying {
        attempts: 1,
        retry_in,
        reason,
        ..
    } = first
    else {
        panic!("expected a retry, got {first:?}");
    };
    assert_eq!(retry_in, Duration::from_secs(60));
    assert!(reason.contains("451"), "{reason}");
    let (status, attempts, last_error) = outbox_row(&db, &user.email).await;
    assert_eq!((status.as_str(), attempts), ("pending", 1));
    assert!(last_error.unwrap().contains("mailbox busy"));
    let wait: f64 = db
        .query_one(
            "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM mail_outbox",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!((55.0..=61.0).contains(&wait), "next attempt in {wait} s");

    // Not due yet: nothing to do.
    let idle = outbox::try_execute_task_with(&pool, mailer.as_ref(), &policy)
        .await
        .unwrap();
    assert_eq!(idle, ExecutionOutcome::EmptyQueue);

    // Time passes; the second failure doubles the wait.
    db.execute("UPDATE mail_outbox SET next_attempt_at = now()", &[])
        .await
        .unwrap();
    let second = outbox::try_execute_task_with(&pool, mailer.as_ref(), &policy)
        .await
        .unwrap();
    assert!(
        matches!(second, ExecutionOutcome::Retrying { attempts: 2, retry_in, .. } if retry_in == Duration::from_secs(120)),
        "{second:?}"
    );

    db.execute("UPDATE mail_outbox SET next_attempt_at = now()", &[])
        .await
        .unwrap();
    let third = outbox::try_execute_task_with(&pool, mailer.as_ref(), &policy)
        .await
        .unwrap();
    assert!(matches!(third, ExecutionOutcome::Sent { .. }), "{third:?}");
    assert_eq!(smtp.attempts(), 3);
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, [user.email.as_str()]);
    assert_eq!(
        outbox_row(&db, &user.email).await,
        ("sent".to_owned(), 3, None)
    );
}

#[tokio::test]
async fn smtp_credentials_from_the_url_authenticate_and_never_show() {
    let smtp = SmtpServer::start().await;
    // base64 of "\0mailer\0p@ss:w/rd": the URL's percent-encoded password, decoded.
    smtp.require_auth_plain("AG1haWxlcgBwQHNzOncvcmQ=");
    let (_url, pool) = migrated_database().await;
    let url = format!("smtp://mailer:p%40ss%3Aw%2Frd@127.0.0.1:{}", smtp.port);
    let from = "support@northwind.example".parse().unwrap();
    let mailer = SmtpMailer::from_url(&url, from).unwrap();
    assert_eq!(mailer.describe(), format!("smtp://127.0.0.1:{}", smtp.port));
    let user = enqueue_for(&pool, "jane").await;

    let outcome = outbox::try_execute_task(&pool, &mailer).await.unwrap();
    assert!(
        matches!(outcome, ExecutionOutcome::Sent { .. }),
        "{outcome:?}"
    );
    assert_eq!(smtp.logins().len(), 1);
    assert_eq!(smtp.received()[0].to, [user.email.as_str()]);

    // With a wrong password the relay refuses; the recorded reason names no secret.
    let wrong = format!("smtp://mailer:hunter2@127.0.0.1:{}", smtp.port);
    let mailer =
        SmtpMailer::from_url(&wrong, "support@northwind.example".parse().unwrap()).unwrap();
    let other = enqueue_for(&pool, "kurt").await;
    let outcome = outbox::try_execute_task(&pool, &mailer).await.unwrap();
    let ExecutionOutcome::Retrying { reason, .. } = outcome else {
        panic!("expected a retry, got {outcome:?}");
    };
    assert!(reason.contains("535"), "{reason}");
    let db = pool.get().await.unwrap();
    let stored = outbox_row(&db, &other.email).await.2.unwrap();
    assert!(
        !stored.contains("hunter2") && !reason.contains("hunter2"),
        "{stored}"
    );
}

#[tokio::test]
async fn a_notification_wakes_the_worker_long_before_its_poll() {
    let smtp = SmtpServer::start().await;
    let (url, pool) = migrated_database().await;
    let stop = CancellationToken::new();
    let settings = WorkerSettings {
        poll_interval: Duration::from_secs(60),
        ..WorkerSettings::default()
    };
    let worker = tokio::spawn(outbox::run_worker(
        pool.clone(),
        url,
        smtp_mailer(&smtp),
        settings,
        stop.clone(),
    ));
    // Let it start listening and go idle on an empty queue.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (i, name) in ["lena", "milo"].into_iter().enumerate() {
        let started = Instant::now();
        enqueue_for(&pool, name).await;
        smtp.wait_for(Duration::from_secs(2), "a notified delivery", |s| {
            s.received().len() == i + 1
        })
        .await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .expect("the worker stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn the_running_worker_retries_a_refused_welcome_mail() {
    let smtp = SmtpServer::start().await;
    smtp.refuse(1, "421 4.7.0 too many connections");
    let url = smtp.url();
    let app = spawn_app_with(|c| c.mailer = server::config::Secret::new(url)).await;

    assert_eq!(
        app.signup("gina", "gina@example.com", "correct horse battery")
            .await
            .status(),
        201
    );
    // First attempt refused at once; the default backoff retries 2 s later.
    smtp.wait_for(Duration::from_secs(8), "the retried mail", |s| {
        !s.received().is_empty()
    })
    .await;
    assert_eq!(smtp.attempts(), 2);
    assert_eq!(smtp.received()[0].to, ["gina@example.com"]);
}

#[tokio::test]
async fn a_mail_that_keeps_failing_is_marked_failed_with_the_reason() {
    let smtp = SmtpServer::start().await;
    smtp.refuse(u32::MAX, "550 5.1.1 no such mailbox");
    let (_url, pool) = migrated_database().await;
    let mailer = smtp_mailer(&smtp);
    let policy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
    };
    let user = enqueue_for(&pool, "hank").await;

    let mut outcomes = Vec::new();
    loop {
        match outbox::try_execute_task_with(&pool, mailer.as_ref(), &policy)
            .await
            .unwrap()
        {
            ExecutionOutcome::EmptyQueue => break,
            outcome => outcomes.push(outcome),
        }
        assert!(
            outcomes.len() <= 3,
            "more attempts than the policy allows: {outcomes:?}"
        );
    }
    assert!(matches!(
        outcomes[0],
        ExecutionOutcome::Retrying { attempts: 1, .. }
    ));
    assert!(matches!(
        outcomes[1],
        ExecutionOutcome::Retrying { attempts: 2, .. }
    ));
    let ExecutionOutcome::Failed {
        attempts: 3,
        reason,
        ..
    } = &outcomes[2]
    else {
        panic!("expected failure, got {:?}", outcomes[2]);
    };
    assert!(
        reason.contains("550") && reason.contains("3 attempts"),
        "{reason}"
    );

    let db = pool.get().await.unwrap();
    let (status, attempts, last_error) = outbox_row(&db, &user.email).await;
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    assert_eq!(last_error.as_deref(), Some(reason.as_str()));
    let stats = outbox::stats(&pool).await.unwrap();
    assert_eq!((stats.pending, stats.sent, stats.failed), (0, 0, 1));
    assert!(smtp.received().is_empty());
}

#[tokio::test]
async fn a_worker_stopped_between_claim_and_send_loses_nothing() {
    let smtp = SmtpServer::start().await;
    // The first delivery hangs mid-transaction at the relay, so the worker is caught holding
    // its claim when it is killed.
    smtp.stall(1);
    let (url, pool) = migrated_database().await;
    let user = enqueue_for(&pool, "ivan").await;

    let crashed = tokio::spawn(outbox::run_worker(
        pool.clone(),
        url.clone(),
        smtp_mailer(&smtp),
        WorkerSettings::default(),
        CancellationToken::new(),
    ));
    smtp.wait_for(
        Duration::from_secs(3),
        "the first worker to claim and start sending",
        |s| s.attempts() == 1,
    )
    .await;
    // The claim is held: nobody else can take the row right now.
    let probe = server::db::connect(&url).await.unwrap();
    let claimable = probe
        .query("SELECT id FROM mail_outbox FOR UPDATE SKIP LOCKED", &[])
        .await
        .unwrap();
    assert!(
        claimable.is_empty(),
        "the row should be locked by the sending worker"
    );

    crashed.abort();
    let _ = crashed.await;
    assert!(smtp.received().is_empty());
    assert_eq!(
        outbox_row(&probe, &user.email).await.0,
        "pending",
        "the message must not be lost"
    );

    // A new worker (a restarted process: its own pool) delivers it.
    let restarted_pool = server::db::pool(&url, 4).unwrap();
    let stop = CancellationToken::new();
    let restarted = tokio::spawn(outbox::run_worker(
        restarted_pool,
        url.clone(),
        smtp_mailer(&smtp),
        WorkerSettings::default(),
        stop.clone(),
    ));
    smtp.wait_for(Duration::from_secs(3), "delivery after the restart", |s| {
        !s.received().is_empty()
    })
    .await;
    stop.cancel();
    restarted.await.unwrap();

    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, [user.email.as_str()]);
    // The killed attempt never got to record itself; the one that worked did.
    assert_eq!(
        outbox_row(&probe, &user.email).await,
        ("sent".to_owned(), 1, None)
    );
}

#[tokio::test]
async fn two_workers_send_each_of_many_mails_exactly_once() {
    let smtp = SmtpServer::start().await;
    let (url, pool) = migrated_database().await;
    let stop = CancellationToken::new();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(outbox::run_worker(
                server::db::pool(&url, 4).unwrap(),
                url.clone(),
                smtp_mailer(&smtp),
                WorkerSettings::default(),
                stop.clone(),
            ))
        })
        .collect();

    const MAILS: usize = 60;
    let mut enqueues = Vec::new();
    for i in 0..MAILS {
        let pool = pool.clone();
        enqueues.push(tokio::spawn(async move {
            enqueue_for(&pool, &format!("user{i}")).await
        }));
    }
    for e in enqueues {
        e.await.unwrap();
    }
    smtp.wait_for(Duration::from_secs(15), "every mail", |s| {
        s.received().len() >= MAILS
    })
    .await;
    // Anything sent twice would arrive within the next poll or two.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }

    assert_each_sent_once(&smtp, (0..MAILS).map(|i| format!("user{i}@example.com")));
    let db = pool.get().await.unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM mail_outbox WHERE status = 'sent' AND attempts = 1"
        )
        .await,
        MAILS as i64
    );
}

#[tokio::test]
async fn two_servers_and_many_signups_send_each_welcome_mail_exactly_once() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url();
    // 24 sign-ups from one address: the per-address sign-up limit is lifted for this test.
    let first = spawn_app_with(|c| {
        c.mailer = server::config::Secret::new(url.clone());
        c.signup_max_per_addr = 100;
    })
    .await;
    // A second server process on the same database, with its own scheduler and worker.
    let mut config = test_support::test_config().await;
    config.database_url = first.database_url.clone();
    config.mailer = server::config::Secret::new(url);
    config.signup_max_per_addr = 100;
    let second = test_support::spawn_app_from(config).await;

    const SIGNUPS: usize = 24;
    let apps = [&first, &second];
    let responses = futures::future::join_all((0..SIGNUPS).map(|i| {
        let app = apps[i % 2];
        async move {
            app.signup(
                &format!("member{i}"),
                &format!("member{i}@example.com"),
                "correct horse battery",
            )
            .await
            .status()
        }
    }))
    .await;
    assert!(responses.iter().all(|s| *s == 201), "{responses:?}");

    smtp.wait_for(Duration::from_secs(15), "every welcome mail", |s| {
        s.received().len() >= SIGNUPS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_each_sent_once(
        &smtp,
        (0..SIGNUPS).map(|i| format!("member{i}@example.com")),
    );
    for mail in smtp.received() {
        let name = mail.to[0].trim_end_matches("@example.com").to_owned();
        assert!(
            mail.data.contains(&format!("Hello {name},")),
            "{}",
            mail.data
        );
    }
}

fn assert_each_sent_once(smtp: &SmtpServer, expected: impl Iterator<Item = String>) {
    let mut per_recipient: HashMap<String, usize> = HashMap::new();
    for mail in smtp.received() {
        assert_eq!(mail.to.len(), 1);
        *per_recipient.entry(mail.to[0].clone()).or_default() += 1;
    }
    let expected: Vec<String> = expected.collect();
    for recipient in &expected {
        assert_eq!(
            per_recipient.get(recipient),
            Some(&1),
            "{recipient} got {:?} mails",
            per_recipient.get(recipient)
        );
    }
    assert_eq!(
        per_recipient.len(),
        expected.len(),
        "mail to unexpected recipients: {per_recipient:?}"
    );
}

#[tokio::test]
async fn cleanup_prunes_ended_throttle_windows_and_long_expired_refresh_tokens() {
    let app = spawn_app().await;
    let db = app.db().await;
    let user = insert_user(&db, "leftovers").await;
    db.batch_execute(
        "INSERT INTO rate_limits (key, window_end, hits) VALUES \
           ('login:ip:old', now() - interval '1 second', 9), \
           ('login:ip:current', now() + interval '5 minutes', 3)",
    )
    .await
    .unwrap();
    for (hash, expires) in [("aa", "3 days"), ("bb", "1 hour")] {
        db.execute(
            &format!(
                "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at) \
                 VALUES (gen_random_uuid(), gen_random_uuid(), $1, decode('{hash}', 'hex'), \
                         now() - interval '{expires}')"
            ),
            &[&user.id],
        )
        .await
        .unwrap();
    }

    let run = cleanup::run(&app.state.db, 30, CleanupTrigger::Manual)
        .await
        .unwrap();
    assert!(run.error.is_none(), "{:?}", run.error);

    let keys: Vec<String> = db
        .query("SELECT key FROM rate_limits", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, vec!["login:ip:current".to_owned()]);
    let hashes: Vec<String> = db
        .query("SELECT encode(token_hash, 'hex') FROM refresh_tokens", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        hashes,
        vec!["bb".to_owned()],
        "a token expired an hour ago is kept"
    );
}
