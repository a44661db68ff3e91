//! Asks per second and chunk latency through HAProxy, with one and with two instances behind it,
//! and the cost of the shared limits per ask. Bounded: loopback only, a fixed number of asks,
//! every wait capped.
//!
//! ```sh
//! source scripts/setup.sh
//! cargo run -p server --example proxy_bench                 # 16 sockets x 8 asks per setup
//! BENCH_SOCKETS=32 BENCH_ASKS=8 cargo run -p server --example proxy_bench
//! ```
//!
//! The instances run in this process (like the tests), each with the fixture knowledge base,
//! local MiniLM embeddings and a fake OpenAI-compatible provider on loopback that streams 20
//! deltas 10 ms apart. Each delta's text is the fake's send time, so the client measures the
//! chunk latency (provider → server → relay → HAProxy → client) on one clock. Needs `haproxy`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server::config::{Config, LlmProvider};
use test_support::fake::chat::{FakeChat, Stream};
use test_support::free_port;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(60);
const WORDS: usize = 20;
const PAUSE: Duration = Duration::from_millis(10);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The fake provider: each delta's text is its send time, in microseconds since [`epoch`].
async fn spawn_fake() -> String {
    let fake = FakeChat::start(|_| {
        Stream::generated(WORDS, PAUSE, |_| {
            format!("{} ", epoch().elapsed().as_micros())
        })
        .into()
    })
    .await;
    fake.url
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// Starts haproxy in front of `servers`; returns the child and its port.
fn haproxy(servers: &[std::net::SocketAddr], dir: &std::path::Path) -> (std::process::Child, u16) {
    let port = free_port();
    let backends: String = servers
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server app{i} {a} check inter 1s\n"))
        .collect();
    let config = format!(
        "global\n    maxconn 4000\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n    timeout server 60s\n    timeout tunnel 1h\nfrontend f\n    bind 127.0.0.1:{port}\n    default_backend b\nbackend b\n    balance roundrobin\n    option forwardfor\n{backends}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = std::process::Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy installed (scripts/setup.sh)");
    (child, port)
}

async fn run_setup(instances: usize, sockets: usize, asks: usize, fake: &str) -> Value {
    let mut config: Config = test_support::test_config().await;
    config.llm_provider = Some(LlmProvider::Openai);
    config.openai_base_url = fake.to_owned();
    config.llm_model = Some("fake".into());
    config.asks_per_minute = 100_000;
    config.ws_max_sockets_per_user = 10_000;
    config.ws_max_in_flight = 4;
    config.trusted_proxies = vec!["127.0.0.1/32".into()];
    let mut apps = Vec::new();
    for _ in 0..instances {
        apps.push(test_support::spawn_app_from(config.clone()).await);
    }
    let dir = std::env::temp_dir().join(format!("proxy-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let addrs: Vec<_> = apps.iter().map(|a| a.addr).collect();
    let (mut proxy, port) = haproxy(&addrs, &dir);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(started.elapsed() < WAIT, "haproxy did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens = apps[0].user_tokens("bench").await;

    let begun = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sockets {
        let url = format!("ws://127.0.0.1:{port}/ws/chat");
        let token = tokens.access.clone();
        tasks.push(tokio::spawn(async move {
            let mut request = url.into_client_request().unwrap();
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let mut latencies = Vec::new();
            for a in 0..asks {
                let id = format!("s{s}a{a}");
                let frame = json!({"type":"ask","id":id,"message":"How long do refunds take?","conversation_id":null});
                ws.send(Message::Text(frame.to_string().into())).await.unwrap();
                loop {
                    let message = tokio::time::timeout(WAIT, ws.next())
                        .await
                        .expect("a frame in time")
                        .expect("socket open")
                        .unwrap();
                    let Message::Text(text) = message else { continue };
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["id"] != id.as_str() {
                        continue;
                    }
                    match frame["type"].as_str().unwrap_or_default() {
                        "delta" => {
                            let now = epoch().elapsed().as_micros() as f64;
                            if let Some(sent) = frame["text"]
                                .as_str()
                                .and_then(|t| t.trim().parse::<f64>().ok())
                            {
                                latencies.push((now - sent) / 1000.0);
                            }
                        }
                        "done" => break,
                        "error" => panic!("error frame: {frame}"),
                        _ => {}
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = begun.elapsed().as_secs_f64();
    let total = (sockets * asks) as f64;
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let database_url = config.database_url.clone();
    for app in apps {
        app.stop().await;
    }
    test_support::drop_database(&database_url).await;
    json!({
        "instances": instances,
        "sockets": sockets,
        "asks": total,
        "seconds": elapsed,
        "asks_per_s": total / elapsed,
        "chunks": latencies.len(),
        "chunk_ms_p50": pct(&mut latencies, 50.0),
        "chunk_ms_p99": pct(&mut latencies, 99.0),
    })
}

/// Median and p99 of `n` runs of `statement` through the pool (one round trip each).
async fn time_statements(app: &test_support::TestApp, n: usize) -> Value {
    let db = &app.state.db;
    let client = db.get().await.unwrap();
    let mut select = Vec::new();
    let mut asks = Vec::new();
    let user = uuid::Uuid::new_v4();
    for i in 0..n {
        let t = Instant::now();
        client.query_one("SELECT 1", &[]).await.unwrap();
        select.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let key = format!("asks:{user}:{}", i % 50);
        let _ = server::throttle::sliding_hit(&client, &key, 20, 60)
            .await
            .unwrap();
        asks.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    json!({
        "select1_ms_p50": pct(&mut select, 50.0), "select1_ms_p99": pct(&mut select, 99.0),
        "ask_limit_ms_p50": pct(&mut asks, 50.0), "ask_limit_ms_p99": pct(&mut asks, 99.0),
    })
}

#[tokio::main]
async fn main() {
    epoch();
    let sockets = env_usize("BENCH_SOCKETS", 16);
    let asks = env_usize("BENCH_ASKS", 8);
    let fake = spawn_fake().await;
    // Warm-up (model load, caches), not reported.
    let _ = run_setup(1, 2, 2, &fake).await;
    for instances in [1, 2] {
        let result = run_setup(instances, sockets, asks, &fake).await;
        println!("PROXY_BENCH {result}");
    }
    let app = test_support::spawn_app().await;
    println!("LIMIT_COST {}", time_statements(&app, 2000).await);
    let url = app.database_url.clone();
    app.stop().await;
    test_support::drop_database(&url).await;
}
