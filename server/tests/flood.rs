//! A flood of sign-ups and logins from many addresses (behind a trusted proxy), with an answer
//! streaming meanwhile: memory stays bounded (hashing waits for its fixed workers instead of
//! allocating per request), every response is an answer or a clear refusal, and the answer
//! arrives whole. Alone in its binary, so the process's memory is this test's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::SinkExt;
use serde_json::json;
use test_support::{next_frame, spawn_app_with};
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct horse battery";

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signup_and_login_flood_keeps_memory_bounded_and_chat_streaming() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.asks_per_minute = 100;
    })
    .await;
    let tokens = app.user_tokens("steady").await;
    // Warm up: every hashing worker has its memory, the model has answered once.
    let warm = (0..8).map(|_| app.login("steady", "wrong password"));
    futures::future::join_all(warm).await;
    let mut ws = app.ws_connect(&tokens.access).await;
    assert_eq!(next_frame(&mut ws).await["type"], "ready");
    let ask = |id: &str| {
        Message::Text(
            json!({"type":"ask","id":id,"message":"Can I return an item?","conversation_id":null})
                .to_string()
                .into(),
        )
    };
    ws.send(ask("warm")).await.unwrap();
    while next_frame(&mut ws).await["type"] != "done" {}

    let baseline = rss_bytes();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let client = reqwest::Client::new();
    let requests = (0..128u32).flat_map(|n| {
        let addr = format!("198.51.{}.{}", n / 200, n % 200 + 1);
        let signup = client
            .post(app.url("/api/signup/"))
            .header("x-forwarded-for", addr.clone())
            .json(&json!({"username": format!("flood{n}"), "email": format!("flood{n}@example.com"), "password": PASSWORD}));
        let password = if n % 2 == 0 { PASSWORD } else { "wrong password" };
        let login = client
            .post(app.url("/api/login/"))
            .header("x-forwarded-for", format!("203.0.{}.{}", n / 200, n % 200 + 1))
            .json(&json!({"username": "steady", "password": password}));
        [signup, login]
    });
    let flood = futures::future::join_all(requests.map(|r| async move {
        let response = r.send().await.expect("a response");
        let retry = response.headers().get("retry-after").is_some();
        (response.status().as_u16(), retry)
    }));
    let answer = async {
        ws.send(ask("during")).await.unwrap();
        loop {
            let frame = next_frame(&mut ws).await;
            if frame["type"] == "done" {
                return frame;
            }
        }
    };
    let (responses, done) = tokio::join!(flood, answer);
    sampling.abort();

    assert_eq!(done["finish_reason"], "stop", "{done}");
    for (status, retry) in &responses {
        match status {
            200 | 201 | 401 => {}
            429 | 503 => assert!(retry, "{status} without Retry-After"),
            other => panic!("unexpected status {other}"),
        }
    }
    let created = responses.iter().filter(|(s, _)| *s == 201).count();
    assert!(created > 0, "{responses:?}");
    let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    println!(
        "flood: {} responses, {created} created, peak RSS +{} MiB",
        responses.len(),
        grown >> 20
    );
    // Unbounded, 256 argon2 hashes at once would take up to 19 MiB each (gigabytes).
    assert!(grown < 200 << 20, "RSS grew by {} MiB", grown >> 20);
}
