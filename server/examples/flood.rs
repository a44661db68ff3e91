//! Benchmark of abuse resistance: how much a login flood slows streaming answers, and how much
//! memory a burst of sign-ups costs.
//!
//! ```sh
//! cargo run --release -p server --example flood
//! ```
//!
//! The real server runs in-process on a fresh database (as in the tests), behind a "proxy"
//! (`TRUSTED_PROXIES=127.0.0.1`, each simulated client named in `X-Forwarded-For`), answering
//! with a fake OpenAI-compatible model on loopback that streams `CHUNKS` chunks `GAP_MS` apart.
//! One socket asks questions one after the other and records, for every chunk after the first,
//! how much later than `GAP_MS` after its predecessor it arrived: the latency the server adds
//! per chunk. That runs twice, alone and while a flood logs in 50 times a second (real argon2
//! checks). Then 128 sign-ups arrive at once while `/proc/self/status` is sampled. Loopback
//! only; every loop is bounded. The last line is `FLOOD_JSON {...}`.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server::config::{Config, LlmProvider};
use server::startup::Application;
use test_support::fake::chat::{FakeChat, Stream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use test_support::{drop_database, fresh_database, workspace_dir};

const CHUNKS: usize = 30;
const GAP_MS: u64 = 20;
const QUESTIONS: usize = 20;
const PASSWORD: &str = "correct horse battery";

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// An OpenAI-compatible `/v1/chat/completions` that streams `CHUNKS` words `GAP_MS` apart.
async fn spawn_fake_model() -> String {
    let gap = Duration::from_millis(GAP_MS);
    FakeChat::start(move |_| Stream::words(CHUNKS, gap).into())
        .await
        .url
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).expect("JSON");
        }
    }
}

/// Asks `QUESTIONS` questions one after the other; the server-added delay of every chunk
/// after an answer's first, in ms.
async fn stream_delays(base: &str, token: &str) -> Vec<f64> {
    let mut request = format!("{}/ws/chat", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    let mut delays = Vec::new();
    for q in 0..QUESTIONS {
        let ask = json!({"type":"ask","id":format!("q{q}"),"message":"Can I return an item?","conversation_id":null});
        ws.send(Message::Text(ask.to_string().into()))
            .await
            .unwrap();
        let mut last: Option<Instant> = None;
        loop {
            let frame = next_json(&mut ws).await;
            match frame["type"].as_str() {
                Some("delta") => {
                    let now = Instant::now();
                    if let Some(prev) = last {
                        let gap = now.duration_since(prev).as_secs_f64() * 1000.0;
                        delays.push((gap - GAP_MS as f64).max(0.0));
                    }
                    last = Some(now);
                }
                Some("done") => break,
                Some("error") => panic!("error frame: {frame}"),
                _ => {}
            }
        }
    }
    delays
}

#[tokio::main]
async fn main() {
    let mut config = Config::parse_from(["chat-server"]).expect("default config");
    config.database_url = fresh_database().await;
    config.bind_addr = "127.0.0.1:0".parse().unwrap();
    config.jwt_secret = Some(server::config::Secret::new(
        "bench-secret-of-at-least-32-bytes!!",
    ));
    config.knowledge_base_dir = workspace_dir().join("knowledge_base");
    config.model_dir = std::env::var_os("MODEL_DIR")
        .map(Into::into)
        .unwrap_or_else(|| workspace_dir().join("models/all-MiniLM-L6-v2"));
    config.gemini_api_key = None;
    config.llm_provider = Some(LlmProvider::Openai);
    config.openai_base_url = spawn_fake_model().await;
    config.llm_model = Some("fake".into());
    config.trusted_proxies = vec!["127.0.0.1".into()];
    config.asks_per_minute = 1000;
    config.signup_max_per_addr = 1000;
    config.login_max_failures_per_addr = 1000;
    let database_url = config.database_url.clone();
    let app = Application::build(config).await.expect("server builds");
    let base = format!("http://{}", app.local_addr());
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    let signup = |username: String, addr: String| {
        client
            .post(format!("{base}/api/signup/"))
            .header("x-forwarded-for", addr)
            .json(&json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}))
            .send()
    };
    assert_eq!(
        signup("streamer".into(), "192.0.2.1".into())
            .await
            .unwrap()
            .status(),
        201
    );
    let login = client
        .post(format!("{base}/api/login/"))
        .json(&json!({"username": "streamer", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let token = login.json::<Value>().await.unwrap()["access"]
        .as_str()
        .unwrap()
        .to_owned();
    // Warm-up answer (model loaded, caches filled).
    stream_delays(&base, &token).await;

    let quiet = stream_delays(&base, &token).await;

    // 50 logins a second, each from its own address, for as long as the streaming takes.
    let flooding = tokio_util::sync::CancellationToken::new();
    let flood = {
        let (client, base, stop) = (client.clone(), base.clone(), flooding.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let (mut sent, mut statuses) = (0u32, std::collections::BTreeMap::new());
            let mut pending = futures::stream::FuturesUnordered::new();
            while !stop.is_cancelled() && sent < 10_000 {
                tokio::select! {
                    _ = tick.tick() => {
                        let request = client
                            .post(format!("{base}/api/login/"))
                            .header("x-forwarded-for", format!("10.{}.{}.{}", sent >> 16 & 255, sent >> 8 & 255, sent & 255))
                            .json(&json!({"username": "streamer", "password": PASSWORD}))
                            .send();
                        pending.push(request);
                        sent += 1;
                    }
                    Some(result) = pending.next() => {
                        let status = result.map(|r| r.status().as_u16()).unwrap_or(0);
                        *statuses.entry(status).or_insert(0u32) += 1;
                    }
                }
            }
            while let Some(result) = pending.next().await {
                let status = result.map(|r| r.status().as_u16()).unwrap_or(0);
                *statuses.entry(status).or_insert(0u32) += 1;
            }
            (sent, statuses)
        })
    };
    let started = Instant::now();
    let flooded = stream_delays(&base, &token).await;
    let flood_secs = started.elapsed().as_secs_f64();
    flooding.cancel();
    let (logins_sent, login_statuses) = flood.await.unwrap();

    // 128 sign-ups at once, from 128 addresses.
    let baseline = rss_mib();
    let peak_kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = {
        let peak_kib = std::sync::Arc::clone(&peak_kib);
        tokio::spawn(async move {
            // Bounded: the burst is over long before this many samples.
            for _ in 0..100_000 {
                let kib = (rss_mib() * 1024.0) as u64;
                peak_kib.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let started = Instant::now();
    let burst = futures::future::join_all((0..128).map(|n| {
        let request = signup(format!("burst{n}"), format!("198.51.100.{}", n + 1));
        async move { request.await.map(|r| r.status().as_u16()).unwrap_or(0) }
    }))
    .await;
    let burst_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(20)).await;
    sampling.abort();
    let peak = (peak_kib.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0).max(baseline);
    let mut burst_statuses = std::collections::BTreeMap::new();
    for s in &burst {
        *burst_statuses.entry(*s).or_insert(0u32) += 1;
    }

    let summary = json!({
        "chunk_gap_ms": GAP_MS,
        "quiet": {"chunks": quiet.len(), "added_p50_ms": pct(&quiet, 50.0), "added_p99_ms": pct(&quiet, 99.0)},
        "login_flood": {
            "chunks": flooded.len(), "added_p50_ms": pct(&flooded, 50.0), "added_p99_ms": pct(&flooded, 99.0),
            "logins_sent": logins_sent, "per_sec": f64::from(logins_sent) / flood_secs,
            "statuses": login_statuses,
        },
        "signup_burst_128": {
            "rss_before_mib": baseline, "rss_peak_mib": peak, "secs": burst_secs,
            "statuses": burst_statuses,
        },
    });
    println!(
        "streaming, added per chunk: quiet p50 {:.2} ms p99 {:.2} ms; during 50 logins/s p50 {:.2} ms p99 {:.2} ms",
        pct(&quiet, 50.0),
        pct(&quiet, 99.0),
        pct(&flooded, 50.0),
        pct(&flooded, 99.0)
    );
    println!("FLOOD_JSON {summary}");
    state.shutdown.cancel();
    let _ = server.await;
    drop_database(&database_url).await;
}
