//! Load benchmark of the running system: the real server in-process (like the tests), a fresh
//! PostgreSQL database, the full `knowledge_base/`, local all-MiniLM-L6-v2 and the offline
//! answerer. Measures retrieval, chat over the WebSocket at several concurrencies, login, the
//! REST chat path, memory and knowledge-base reloads, and prints a table.
//!
//! ```sh
//! cargo run -p server --example load            # dev profile (dependencies at opt-level 3)
//! LOAD_SOCKETS=1,50,200 cargo run -p server --example load
//! ```
//!
//! The database comes from `TEST_DATABASE_URL`, else `DATABASE_URL`, else
//! `postgres://root@127.0.0.1:5432/postgres`; it is dropped at the end. Every request loop is
//! bounded in count and every wait in time; only loopback addresses are used. The last line
//! printed is a JSON summary (`LOAD_JSON {...}`) for comparing runs. See BENCHMARKS.md.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server::config::Config;
use server::grounding::AnswerRequest;
use server::rag::embed::local::LocalEmbedder;
use server::startup::Application;
use server::state::AppState;
use server::upstream::embedding::{EmbedKind, Embedder};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Longest wait for any one frame or response before the benchmark fails.
const WAIT: Duration = Duration::from_secs(120);
const PASSWORD: &str = "correct horse battery";

use test_support::{drop_database, fresh_database, workspace_dir};

/// A `/proc/self/status` field in MiB (`VmRSS`, `VmHWM`).
fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a number in {line:?}"));
    kib / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of `values` (milliseconds), `p` in 0..=100.
fn pct(values: &[f64], p: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of nothing");
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The question with one word gap widened: a distinct string (so the server's question-vector
/// cache misses, as for real traffic) with the same tokens for the embedder, BM25 and the
/// answerer, so the same work as the original question.
fn variant(question: &str, v: usize) -> String {
    let words: Vec<&str> = question.split(' ').collect();
    let gaps = words.len().saturating_sub(1).max(1);
    let (gap, extra) = (v % gaps, 1 + v / gaps);
    let mut out = String::with_capacity(question.len() + extra + 1);
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
            if i - 1 == gap {
                out.push_str(&" ".repeat(extra));
            }
        }
        out.push_str(word);
    }
    out
}

struct Rows(Vec<(String, String)>);

impl Rows {
    fn add(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let (name, value) = (name.into(), value.into());
        println!("  {name:<52} {value}");
        self.0.push((name, value));
    }
}

struct Bench {
    state: AppState,
    base: String,
    ws: String,
    http: reqwest::Client,
    questions: Vec<String>,
    /// Counts question variants handed out, so no two asks send the same string.
    next_variant: usize,
    summary: serde_json::Map<String, Value>,
    rows: Rows,
}

impl Bench {
    fn record(&mut self, key: &str, value: f64) {
        self.summary.insert(key.to_owned(), json!(value));
    }

    fn fresh_question(&mut self) -> String {
        let i = self.next_variant;
        self.next_variant += 1;
        let q = &self.questions[i % self.questions.len()];
        variant(q, 1 + i / self.questions.len())
    }

    async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        tokio::time::timeout(WAIT, request.send())
            .await
            .unwrap_or_else(|_| panic!("POST {path}: no response within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    async fn login(&self, username: &str) -> String {
        let response = self
            .post(
                "/api/login/",
                None,
                &json!({"username": username, "password": PASSWORD}),
            )
            .await;
        assert_eq!(response.status(), 200, "login of {username}");
        let body: Value = response.json().await.expect("a token pair");
        body["access"].as_str().expect("an access token").to_owned()
    }

    async fn users(&self, count: usize) -> Vec<(String, String)> {
        let mut users = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("bench{i}");
            let response = self
                .post(
                    "/api/signup/",
                    None,
                    &json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}),
                )
                .await;
            assert_eq!(response.status(), 201, "signup of {name}");
            let token = self.login(&name).await;
            users.push((name, token));
        }
        users
    }

    async fn retrieval(&mut self) {
        println!("1. retrieval: state.answerer.retrieve (MiniLM embedding + FAISS + BM25 fusion)");
        let answerer = self.state.answerer.clone();
        let ask = |q: String| AnswerRequest {
            question: q,
            history: Vec::new(),
        };
        // Warm-up on strings not used below.
        for i in 0..20 {
            let q = variant(&self.questions[i % self.questions.len()], 0);
            answerer.retrieve(&ask(q)).await.expect("warm-up retrieve");
        }
        let mut uncached = Vec::new();
        let mut cached = Vec::new();
        let mut hits = 0usize;
        for q in &self.questions {
            let started = Instant::now();
            let passages = answerer.retrieve(&ask(q.clone())).await.expect("retrieve");
            uncached.push(ms(started.elapsed()));
            hits += usize::from(!passages.is_empty());
        }
        for _ in 0..3 {
            for q in &self.questions {
                let started = Instant::now();
                answerer.retrieve(&ask(q.clone())).await.expect("retrieve");
                cached.push(ms(started.elapsed()));
            }
        }
        let n = self.questions.len();
        self.rows.add(
            format!("retrieve, new question (n={n}) p50 / p95"),
            format!(
                "{:.2} / {:.2} ms",
                pct(&uncached, 50.0),
                pct(&uncached, 95.0)
            ),
        );
        self.rows.add(
            format!("retrieve, repeated question (n={}) p50 / p95", cached.len()),
            format!("{:.3} / {:.3} ms", pct(&cached, 50.0), pct(&cached, 95.0)),
        );
        self.rows.add(
            "questions with passages above threshold",
            format!("{hits}/{n}"),
        );
        self.record("retrieve_new_p50_ms", pct(&uncached, 50.0));
        self.record("retrieve_new_p95_ms", pct(&uncached, 95.0));
        self.record("retrieve_cached_p50_ms", pct(&cached, 50.0));
        self.record("retrieve_cached_p95_ms", pct(&cached, 95.0));
    }

    /// One round: `n` sockets connect and authenticate (untimed), then all ask at once.
    async fn chat_round(&mut self, users: &[(String, String)], n: usize) -> ChatRound {
        let mut sockets = Vec::with_capacity(n);
        for i in 0..n {
            let token = &users[i % users.len()].1;
            let mut request = format!("{}/ws/chat", self.ws)
                .into_client_request()
                .expect("a socket request");
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("a header value"),
            );
            let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
                .await
                .expect("socket connects in time")
                .unwrap_or_else(|e| panic!("socket {i} connects: {e}"));
            let ready = next_json(&mut ws).await;
            assert_eq!(
                ready["type"], "ready",
                "socket {i}: expected ready, got {ready}"
            );
            sockets.push(ws);
        }
        let questions: Vec<String> = (0..n).map(|_| self.fresh_question()).collect();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n + 1));
        let mut tasks = Vec::with_capacity(n);
        for (i, (mut ws, question)) in sockets.into_iter().zip(questions).enumerate() {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let started = Instant::now();
                let id = format!("q{i}");
                ws.send(Message::text(
                    json!({"type": "ask", "id": id, "message": question, "conversation_id": null})
                        .to_string(),
                ))
                .await
                .expect("ask sent");
                let (mut sources, mut first_delta) = (None, None);
                let mut deltas = 0usize;
                let done = loop {
                    let frame = next_json(&mut ws).await;
                    match frame["type"].as_str() {
                        Some("sources") => sources = Some(started.elapsed()),
                        Some("delta") => {
                            deltas += 1;
                            first_delta.get_or_insert_with(|| started.elapsed());
                        }
                        Some("done") => {
                            let reason = frame["finish_reason"].as_str().unwrap_or("?");
                            if reason != "stop" {
                                panic!("socket {i}: answer ended with {reason}: {frame}");
                            }
                            break started.elapsed();
                        }
                        Some("pong") => {}
                        _ => panic!("socket {i}: unexpected frame while answering: {frame}"),
                    }
                };
                let _ = ws.close(None).await;
                assert!(deltas > 0, "socket {i}: an answer with no delta");
                Sample {
                    sources: sources
                        .unwrap_or_else(|| panic!("socket {i}: no sources frame before done")),
                    first_delta: first_delta.expect("a first delta"),
                    done,
                }
            }));
        }
        barrier.wait().await;
        let started = Instant::now();
        let mut samples = Vec::with_capacity(n);
        for task in tasks {
            samples.push(task.await.expect("a socket task (see the panic above)"));
        }
        ChatRound {
            samples,
            wall: started.elapsed(),
        }
    }

    async fn chat(&mut self, users: &[(String, String)], concurrency: &[usize]) {
        println!("2. chat over /ws/chat: N sockets ask at once (times from sending the ask)");
        // Warm-up: every question once over one socket. The offline answerer embeds the
        // sentences of the passages it meets once and keeps them; this pays for that, so the
        // rounds below measure the steady state.
        let started = Instant::now();
        for _ in 0..self.questions.len() {
            self.chat_round(users, 1).await;
        }
        let warm_up = ms(started.elapsed());
        self.rows.add(
            format!(
                "warm-up: {} asks one by one, answerer cold",
                self.questions.len()
            ),
            format!("{warm_up:.0} ms"),
        );
        self.record("ws_warm_up_ms", warm_up);
        for &n in concurrency {
            // Several rounds at each concurrency: 20 at N=1, 4 at N=50, 2 at N=200.
            let rounds = (200 / n.max(1)).clamp(2, 20);
            let (mut src, mut first, mut done) = (Vec::new(), Vec::new(), Vec::new());
            let mut rates = Vec::new();
            for _ in 0..rounds {
                let round = self.chat_round(users, n).await;
                rates.push(n as f64 / round.wall.as_secs_f64());
                for s in &round.samples {
                    src.push(ms(s.sources));
                    first.push(ms(s.first_delta));
                    done.push(ms(s.done));
                }
            }
            let rate = pct(&rates, 50.0);
            self.rows.add(
                format!("N={n:<3} ({} answers) sources p50 / p95", src.len()),
                format!("{:.1} / {:.1} ms", pct(&src, 50.0), pct(&src, 95.0)),
            );
            self.rows.add(
                format!("N={n:<3} first delta p50 / p95"),
                format!("{:.1} / {:.1} ms", pct(&first, 50.0), pct(&first, 95.0)),
            );
            self.rows.add(
                format!("N={n:<3} done p50 / p95"),
                format!("{:.1} / {:.1} ms", pct(&done, 50.0), pct(&done, 95.0)),
            );
            self.rows.add(
                format!("N={n:<3} answers/s (all finish_reason=stop)"),
                format!("{rate:.1}"),
            );
            for (key, values) in [("sources", &src), ("first", &first), ("done", &done)] {
                self.record(&format!("ws{n}_{key}_p50_ms"), pct(values, 50.0));
                self.record(&format!("ws{n}_{key}_p95_ms"), pct(values, 95.0));
            }
            self.record(&format!("ws{n}_answers_per_s"), rate);
        }
    }

    async fn logins(&mut self, users: &[(String, String)]) {
        println!("3. login: POST /api/login/ (argon2id m=19 MiB t=2 p=1)");
        for clients in [1usize, 4] {
            let per_client = 12;
            let started = Instant::now();
            let mut tasks = Vec::new();
            for c in 0..clients {
                let (http, base) = (self.http.clone(), self.base.clone());
                let name = users[c % users.len()].0.clone();
                tasks.push(tokio::spawn(async move {
                    let mut times = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let t = Instant::now();
                        let response = tokio::time::timeout(
                            WAIT,
                            http.post(format!("{base}/api/login/"))
                                .json(&json!({"username": name, "password": PASSWORD}))
                                .send(),
                        )
                        .await
                        .expect("login answered in time")
                        .expect("login sent");
                        assert_eq!(response.status(), 200, "login of {name}");
                        response.bytes().await.expect("login body");
                        times.push(ms(t.elapsed()));
                    }
                    times
                }));
            }
            let mut times = Vec::new();
            for task in tasks {
                times.extend(task.await.expect("a login task"));
            }
            let rate = times.len() as f64 / started.elapsed().as_secs_f64();
            self.rows.add(
                format!("{clients} client(s) x {per_client}: p50 / logins/s"),
                format!("{:.1} ms / {rate:.1}", pct(&times, 50.0)),
            );
            self.record(&format!("login{clients}_p50_ms"), pct(&times, 50.0));
            self.record(&format!("login{clients}_per_s"), rate);
        }
    }

    async fn rest_chat(&mut self, token: &str) {
        println!("4. REST POST /api/chat/, sequential");
        let mut times = Vec::new();
        for _ in 0..30 {
            let question = self.fresh_question();
            let started = Instant::now();
            let response = self
                .post("/api/chat/", Some(token), &json!({"message": question}))
                .await;
            assert_eq!(response.status(), 200, "POST /api/chat/");
            let body: Value = response.json().await.expect("a chat answer");
            times.push(ms(started.elapsed()));
            assert!(
                body["answer"].as_str().is_some_and(|a| !a.is_empty()),
                "an answer in {body}"
            );
        }
        self.rows.add(
            format!("n={} p50 / p95", times.len()),
            format!("{:.1} / {:.1} ms", pct(&times, 50.0), pct(&times, 95.0)),
        );
        self.record("rest_p50_ms", pct(&times, 50.0));
        self.record("rest_p95_ms", pct(&times, 95.0));
    }

    async fn reloads(&mut self) {
        println!("6. knowledge-base reload: state.answerer.rag().reload()");
        let rag = self.state.answerer.rag().clone();
        let mut warm = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let info = rag.reload().await.expect("reload");
            warm.push(ms(started.elapsed()));
            assert!(info.errors.is_empty(), "reload errors: {:?}", info.errors);
        }
        self.rows.add(
            "reload from the embedding cache (n=5) p50",
            format!("{:.1} ms", pct(&warm, 50.0)),
        );
        self.record("reload_cached_p50_ms", pct(&warm, 50.0));
        // Empty the cache: the next reload embeds every chunk again.
        let db = self.state.db.get().await.expect("a database connection");
        db.batch_execute("DELETE FROM embedding_cache")
            .await
            .expect("empty the embedding cache");
        drop(db);
        let started = Instant::now();
        let info = rag.reload().await.expect("reload with an empty cache");
        let cold = ms(started.elapsed());
        self.rows.add(
            format!("reload with an empty cache ({} chunks)", info.chunks),
            format!("{cold:.0} ms"),
        );
        self.record("reload_empty_cache_ms", cold);
    }

    /// The embedding alone: a second copy of MiniLM, no cache, one question per call.
    async fn raw_embedding(&mut self) {
        println!("7. breakdown: MiniLM forward pass alone (no cache), per question");
        let dir = workspace_dir().join("models/all-MiniLM-L6-v2");
        let embedder = tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir))
            .await
            .expect("load task")
            .expect("the local model loads");
        let mut times = Vec::new();
        for round in 0..2 {
            for q in &self.questions {
                let texts = [q.clone()];
                let started = Instant::now();
                embedder
                    .embed(&texts, EmbedKind::Query)
                    .await
                    .expect("embed");
                if round == 1 {
                    times.push(ms(started.elapsed()));
                }
            }
        }
        self.rows.add(
            format!("embed one question (n={}) p50 / p95", times.len()),
            format!("{:.2} / {:.2} ms", pct(&times, 50.0), pct(&times, 95.0)),
        );
        self.record("embed_p50_ms", pct(&times, 50.0));
        self.record("embed_p95_ms", pct(&times, 95.0));
    }
}

struct Sample {
    sources: Duration,
    first_delta: Duration,
    done: Duration,
}

struct ChatRound {
    samples: Vec<Sample>,
    wall: Duration,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame as JSON; fails loudly on a close, an error or a wait over [`WAIT`].
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => panic!("no frame within {WAIT:?}"),
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(&text).expect("a JSON frame");
            }
            Ok(Some(Ok(Message::Close(frame)))) => panic!("socket closed: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("socket error: {e}"),
            Ok(None) => panic!("socket ended"),
        }
    }
}

fn load_questions() -> Vec<String> {
    let path = workspace_dir().join("eval/questions.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let set: Value = serde_json::from_str(&text).expect("eval/questions.json is JSON");
    let mut questions = Vec::new();
    for key in ["answerable", "unanswerable"] {
        for q in set[key].as_array().expect("a question list") {
            questions.push(q["question"].as_str().expect("a question").to_owned());
        }
    }
    assert!(!questions.is_empty(), "no questions in eval/questions.json");
    questions
}

fn concurrency() -> Vec<usize> {
    std::env::var("LOAD_SOCKETS")
        .unwrap_or_else(|_| "1,50,200".to_owned())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("LOAD_SOCKETS: comma-separated counts")
        })
        .collect()
}

#[tokio::main]
async fn main() {
    if std::env::var_os("BENCH_LOG").is_some() {
        server::telemetry::init_logging(server::config::LogFormat::Text);
    }
    let questions = load_questions();
    let loadavg = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", loadavg().trim());
    let database_url = fresh_database().await;

    let mut config = Config::parse_from(["chat-server"]).expect("default config");
    config.database_url = database_url.clone();
    config.bind_addr = "127.0.0.1:0".parse().expect("a loopback address");
    config.jwt_secret = Some(server::config::Secret::new(
        "bench-secret-of-at-least-32-bytes!!",
    ));
    config.knowledge_base_dir = workspace_dir().join("knowledge_base");
    config.model_dir = workspace_dir().join("models/all-MiniLM-L6-v2");
    config.gemini_api_key = None;
    config.llm_provider = None;
    config.embedding_provider = None;
    config.mailer = server::config::Secret::new("console");
    config.admin_username = None;
    config.admin_password = None;
    config.cors_origins = Vec::new();
    // The per-user ask limit (20/min) would answer most asks with rate_limited, and the socket
    // cap (16 per user) would refuse most sockets: raised so the benchmark measures answering.
    // Everything else is the default configuration.
    config.asks_per_minute = 1_000_000;
    config.ws_max_sockets_per_user = 100_000;

    println!(
        "load benchmark: {} questions from eval/questions.json, {} cores, profile {}",
        questions.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if cfg!(debug_assertions) {
            "dev (dependencies opt-level 3)"
        } else {
            "release"
        }
    );
    let started = Instant::now();
    let app = Application::build(config)
        .await
        .expect("the application builds");
    let build_ms = ms(started.elapsed());
    let addr = app.local_addr();
    assert!(addr.ip().is_loopback(), "the server listens on loopback");
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());
    let rss_start = proc_status_mib("VmRSS");

    let mut bench = Bench {
        state: state.clone(),
        base: format!("http://{addr}"),
        ws: format!("ws://{addr}"),
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client"),
        questions,
        next_variant: 0,
        summary: serde_json::Map::new(),
        rows: Rows(Vec::new()),
    };
    println!("0. start-up");
    let info = state.answerer.rag().info();
    bench.rows.add(
        format!(
            "Application::build, empty cache ({} documents, {} chunks)",
            info.documents, info.chunks
        ),
        format!("{build_ms:.0} ms"),
    );
    bench.record("startup_empty_cache_ms", build_ms);

    bench.retrieval().await;
    let users = bench.users(20).await;
    let concurrency = concurrency();
    bench.chat(&users, &concurrency).await;
    println!("5. memory (whole process: server and benchmark clients)");
    let hwm = proc_status_mib("VmHWM");
    bench.rows.add(
        "VmRSS after start-up, knowledge base loaded",
        format!("{rss_start:.0} MiB"),
    );
    bench.rows.add(
        format!(
            "VmHWM after the chat runs (max N={})",
            concurrency.iter().max().unwrap_or(&0)
        ),
        format!("{hwm:.0} MiB"),
    );
    bench.record("rss_start_mib", rss_start);
    bench.record("hwm_after_chat_mib", hwm);
    bench.logins(&users).await;
    let token = users[0].1.clone();
    bench.rest_chat(&token).await;
    bench.reloads().await;
    bench.raw_embedding().await;

    state.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
    drop_database(&database_url).await;
    println!("load average at end: {}", loadavg().trim());
    println!("LOAD_JSON {}", Value::Object(bench.summary));
}
