//! `chat-bench`: a black-box load tool for the support-chat server.
//!
//! It starts `chat-server` as a separate process (a fresh database, a loopback port, its own
//! fake Gemini speaking the real SSE wire format), or targets a running one (`--url`), and
//! runs bounded scenarios against it. Each scenario prints one JSON line with the server's
//! memory and CPU (from `/proc/<pid>`) beside its latency and throughput figures.
//!
//! ```sh
//! cargo run --release -p bench -- --scenarios idle,streams,rest    # default sizes
//! cargo run --release -p bench -- --smoke                          # seconds, tiny sizes
//! ```
//!
//! Scenarios: `idle` (N idle authenticated sockets: RSS per socket), `streams` (C sockets ask
//! at once; server-added delay per chunk from the fake's send stamps), `rest` (REST chat with an
//! instant provider: server CPU per chat), `history` (messages seeded with `COPY`, history
//! pages read), `login` (login bursts: RSS peak and after, throughput), `retrieval` (in-process
//! FAISS flat vs HNSW over synthetic chunks, recall@10), `answers` (a second server with the
//! local model and offline answerer: answers/s at 1 and 50 sockets), `model` (the local model
//! in-process: CPU per text and time per pass, by texts per pass), `cleanup` (the history
//! cleanup deleting expired messages seeded with `COPY` while REST chat goes on: chat latency
//! before and during the run).
//! Only loopback addresses are used; every loop is bounded in count and every wait in time.

mod cleanup;
mod client;
mod fake;
mod scenarios;
mod stats;
mod target;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use scenarios::{RetrievalOptions, StreamShape};
use target::{Providers, SpawnOptions, Target};

#[derive(Parser, Debug)]
#[command(
    name = "chat-bench",
    about = "Black-box load tool for the support-chat server"
)]
struct Args {
    /// Scenarios to run, comma-separated: idle, streams, rest, history, login, retrieval,
    /// answers, model, cleanup.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "idle,streams,rest,history,login,retrieval"
    )]
    scenarios: Vec<String>,
    /// Tiny sizes everywhere: a run of seconds that proves the tool works (the test suite's).
    #[arg(long)]
    smoke: bool,
    /// Target a running server instead of starting one (its `/proc` figures need `--pid`).
    #[arg(long)]
    url: Option<String>,
    /// Pid of the `--url` server, for its RSS and CPU.
    #[arg(long)]
    pid: Option<u32>,
    /// PostgreSQL: where the bench creates the started server's database (or, with `--url`,
    /// that server's database, for seeding). Default: `TEST_DATABASE_URL`, `DATABASE_URL`.
    #[arg(long)]
    database_url: Option<String>,
    /// The `chat-server` binary to start (default: next to this one, or `CHAT_SERVER_BIN`).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Knowledge base of the started server.
    #[arg(long)]
    kb_dir: Option<PathBuf>,
    /// Extra settings for the started server, `NAME=value`, repeatable.
    #[arg(long = "server-env")]
    server_env: Vec<String>,
    /// Write the started server's log here.
    #[arg(long, default_value = "/tmp/chat-bench-server.log")]
    server_log: PathBuf,
    /// Also append every JSON line to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Longest time any one scenario may take, in seconds.
    #[arg(long, default_value_t = 900)]
    scenario_timeout_secs: u64,

    /// Idle sockets held, per run (comma-separated; at most 10,000).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    idle: Vec<usize>,
    /// Sockets asking at once, per run (at most 2,000).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    streams: Vec<usize>,
    /// The fake provider's delay before its first chunk, ms.
    #[arg(long, default_value_t = 300)]
    first_chunk_ms: u64,
    /// The fake provider's delay between chunks, ms.
    #[arg(long, default_value_t = 20)]
    chunk_ms: u64,
    /// Chunks per streamed answer.
    #[arg(long, default_value_t = 20)]
    chunks: u64,
    /// REST chat clients, per run.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    rest_clients: Vec<usize>,
    /// REST chats per client.
    #[arg(long, default_value_t = 50)]
    rest_requests: usize,
    /// History: accounts seeded (full size: 100000).
    #[arg(long, default_value_t = 10_000)]
    history_users: usize,
    /// History: messages seeded (full size: 10000000).
    #[arg(long, default_value_t = 1_000_000)]
    history_messages: usize,
    /// History: pages read, and by how many clients at once.
    #[arg(long, default_value_t = 4000)]
    history_requests: usize,
    #[arg(long, default_value_t = 16)]
    history_clients: usize,
    /// Login burst sizes (clients at once).
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    login: Vec<usize>,
    /// Logins per client in a burst.
    #[arg(long, default_value_t = 3)]
    login_rounds: usize,
    /// Retrieval: synthetic chunk counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    retrieval: Vec<usize>,
    /// Retrieval: vector width (384 = MiniLM, 768 = Gemini at 768).
    #[arg(long, default_value_t = 384)]
    dim: usize,
    /// Retrieval: queries per size.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// HNSW links per node and search depth (as `RAG_HNSW_M`, `RAG_HNSW_EF_SEARCH`).
    #[arg(long, default_value_t = 32)]
    hnsw_m: usize,
    #[arg(long, default_value_t = 64)]
    ef_search: usize,
    /// Cleanup: expired messages seeded (deleted by the run), over how many accounts, and the
    /// REST chat clients running meanwhile.
    #[arg(long, default_value_t = 1_000_000)]
    cleanup_messages: usize,
    #[arg(long, default_value_t = 1000)]
    cleanup_users: usize,
    #[arg(long, default_value_t = 8)]
    cleanup_clients: usize,
    /// Model (in-process): texts per request (one pass each), the texts embedded per size,
    /// and the model's folder (default: `MODEL_DIR`, or the workspace's `models/`).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    model_batches: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    model_texts: usize,
    #[arg(long, env = "MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Answers (offline server): sockets per run, and questions asked by each socket.
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    answer_sockets: Vec<usize>,
    #[arg(long, default_value_t = 120)]
    answers_total: usize,
}

impl Args {
    fn shrink_for_smoke(&mut self) {
        self.idle = vec![20];
        self.streams = vec![10];
        self.first_chunk_ms = 20;
        self.chunk_ms = 5;
        self.chunks = 5;
        self.rest_clients = vec![2];
        self.rest_requests = 5;
        self.history_users = 10;
        self.history_messages = 200;
        self.history_requests = 20;
        self.history_clients = 2;
        self.login = vec![4];
        self.login_rounds = 1;
        self.retrieval = vec![1000];
        self.dim = 32;
        self.queries = 20;
        self.cleanup_messages = 400;
        self.cleanup_users = 4;
        self.cleanup_clients = 2;
        self.answer_sockets = vec![1];
        self.answers_total = 2;
        self.model_batches = vec![1, 2];
        self.model_texts = 4;
        self.scenario_timeout_secs = self.scenario_timeout_secs.min(120);
    }
}

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`, before any other thread starts. The `model` scenario runs
    // the local model as the server does: each pass on one thread.
    unsafe { server::rag::embed::local::runtime_with_one_thread_per_forward_pass() }?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.shrink_for_smoke();
    }
    stats::now_us();
    let open_files = stats::raise_open_files();
    let run = format!("b{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut out = match &args.out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };
    let mut emit = |line: Value| -> anyhow::Result<()> {
        let text = line.to_string();
        println!("{text}");
        if let Some(file) = out.as_mut() {
            writeln!(file, "{text}")?;
        }
        Ok(())
    };
    emit(json!({
        "scenario": "machine",
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "load_avg_1m": stats::load_average(),
        "bench_open_files": open_files,
        "smoke": args.smoke,
    }))?;

    let wants = |name: &str| args.scenarios.iter().any(|s| s == name);
    let fake_settings = Arc::new(fake::FakeSettings::default());
    let fake_url = fake::start(Arc::clone(&fake_settings)).await?;
    let admin_db = args
        .database_url
        .clone()
        .or_else(|| std::env::var("TEST_DATABASE_URL").ok())
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/postgres".to_owned());
    let server_bin = args
        .server_bin
        .clone()
        .unwrap_or_else(target::default_server_bin);
    let kb_dir = args
        .kb_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../knowledge_base"));
    let mut extra_env = Vec::new();
    for pair in &args.server_env {
        let (k, v) = pair
            .split_once('=')
            .context("--server-env takes NAME=value")?;
        extra_env.push((k.to_owned(), v.to_owned()));
    }
    let limit = Duration::from_secs(args.scenario_timeout_secs);
    // The `--url` server, or a started one with these providers (waiting up to `ready` for it).
    let open_target = |providers: Providers, ready: Duration| {
        let (args, admin_db, server_bin, kb_dir, fake_url, extra_env) = (
            &args,
            &admin_db,
            &server_bin,
            &kb_dir,
            &fake_url,
            &extra_env,
        );
        async move {
            match &args.url {
                Some(url) => Ok(Target::existing(url, args.pid, admin_db)),
                None => {
                    Target::spawn(
                        SpawnOptions {
                            server_bin,
                            admin_database_url: admin_db,
                            kb_dir,
                            providers,
                            fake_url,
                            env: extra_env,
                            log: &args.server_log,
                        },
                        ready,
                    )
                    .await
                }
            }
        }
    };
    let mut failures = 0;

    let server_scenarios = ["idle", "streams", "rest", "history", "login", "cleanup"];
    if server_scenarios.iter().any(|s| wants(s)) {
        let mut target = open_target(Providers::Gemini, Duration::from_secs(120)).await?;
        let idle_start = target.sample();
        emit(json!({
            "scenario": "server_idle",
            "providers": "gemini (fake)",
            "server_rss_mib": idle_start.rss_kib as f64 / 1024.0,
        }))?;
        // Futures do nothing until awaited: each runs in turn below, under the time limit.
        let mut jobs: Vec<(String, Job<'_>)> = Vec::new();
        let t = &target;
        let fs = &fake_settings;
        let r = &run;
        if wants("idle") {
            for &n in &args.idle {
                let n = n.min(10_000);
                let r = job_prefix(r, jobs.len());
                jobs.push((
                    format!("idle {n}"),
                    Box::pin(async move { scenarios::idle_sockets(t, n, &r).await }),
                ));
            }
        }
        if wants("streams") {
            for &c in &args.streams {
                let c = c.min(2_000);
                let shape = StreamShape {
                    first_chunk_ms: args.first_chunk_ms,
                    chunk_ms: args.chunk_ms,
                    chunks: args.chunks,
                };
                let r = job_prefix(r, jobs.len());
                jobs.push((
                    format!("streams {c}"),
                    Box::pin(async move { scenarios::streams(t, fs, c, &shape, &r).await }),
                ));
            }
        }
        if wants("rest") {
            for &c in &args.rest_clients {
                let requests = args.rest_requests;
                let r = job_prefix(r, jobs.len());
                jobs.push((
                    format!("rest {c}"),
                    Box::pin(async move { scenarios::rest_chat(t, fs, c, requests, &r).await }),
                ));
            }
        }
        if wants("login") {
            for &c in &args.login {
                let rounds = args.login_rounds;
                let r = job_prefix(r, jobs.len());
                jobs.push((
                    format!("login {c}"),
                    Box::pin(async move { scenarios::login_burst(t, c, rounds, &r).await }),
                ));
            }
        }
        if wants("history") {
            let (users, messages, requests, clients) = (
                args.history_users,
                args.history_messages,
                args.history_requests,
                args.history_clients,
            );
            jobs.push((
                "history".to_owned(),
                Box::pin(scenarios::history(t, users, messages, requests, clients, r)),
            ));
        }
        if wants("cleanup") {
            let (messages, users, clients) = (
                args.cleanup_messages,
                args.cleanup_users,
                args.cleanup_clients,
            );
            // The started server keeps the default retention (HISTORY_RETENTION_DAYS=30)
            // unless `--server-env` changes it.
            let retention = extra_env
                .iter()
                .find(|(k, _)| k == "HISTORY_RETENTION_DAYS")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(30);
            jobs.push((
                "cleanup".to_owned(),
                Box::pin(cleanup::cleanup_under_load(
                    t, fs, messages, users, clients, retention, r,
                )),
            ));
        }
        for (name, job) in jobs {
            match tokio::time::timeout(limit, job).await {
                Ok(Ok(line)) => emit(line)?,
                Ok(Err(e)) => {
                    failures += 1;
                    emit(json!({"scenario": name, "error": format!("{e:#}")}))?;
                }
                Err(_) => {
                    failures += 1;
                    emit(json!({"scenario": name, "error": "timed out"}))?;
                }
            }
        }
        target.stop().await;
    }

    if wants("answers") {
        let mut target = open_target(Providers::Offline, Duration::from_secs(300)).await?;
        let questions = eval_questions(&kb_dir)?;
        // Warm-up: every question once over one socket, so the answerer's sentence vectors
        // are cached and the runs measure the per-question work.
        let warm = if args.smoke { 1 } else { questions.len() };
        let warmup = scenarios::answers(&target, 1, warm, &questions[..warm.max(1)], 0, &run).await;
        if let Err(e) = warmup {
            failures += 1;
            emit(json!({"scenario": "answers warm-up", "error": format!("{e:#}")}))?;
        }
        for (k, &s) in args.answer_sockets.iter().enumerate() {
            let rounds = args.answers_total.div_ceil(s.max(1)).max(1);
            // Run k's variants start past every earlier run's, so none hits the server's
            // question cache.
            let salt = (k + 1) * (args.answers_total / questions.len() + 3);
            let result = tokio::time::timeout(
                limit,
                scenarios::answers(&target, s, rounds, &questions, salt, &run),
            )
            .await;
            match result {
                Ok(Ok(line)) => emit(line)?,
                Ok(Err(e)) => {
                    failures += 1;
                    emit(json!({"scenario": "answers", "sockets": s, "error": format!("{e:#}")}))?;
                }
                Err(_) => {
                    failures += 1;
                    emit(json!({"scenario": "answers", "sockets": s, "error": "timed out"}))?;
                }
            }
        }
        target.stop().await;
    }

    if wants("model") {
        let dir = args.model_dir.clone().unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
        });
        let loaded = tokio::task::spawn_blocking(move || {
            server::rag::embed::local::LocalEmbedder::load(&dir)
        })
        .await?;
        match loaded {
            Ok(embedder) => {
                let questions = eval_questions(&kb_dir)?;
                for &batch in &args.model_batches {
                    let result = tokio::time::timeout(
                        limit,
                        scenarios::model(&embedder, &questions, batch, args.model_texts),
                    )
                    .await;
                    match result {
                        Ok(Ok(line)) => emit(line)?,
                        Ok(Err(e)) => {
                            failures += 1;
                            emit(
                                json!({"scenario": "model", "batch": batch, "error": format!("{e:#}")}),
                            )?;
                        }
                        Err(_) => {
                            failures += 1;
                            emit(
                                json!({"scenario": "model", "batch": batch, "error": "timed out"}),
                            )?;
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                emit(json!({"scenario": "model", "error": format!("{e:#}")}))?;
            }
        }
    }

    if wants("retrieval") {
        let opts = RetrievalOptions {
            dim: args.dim,
            queries: args.queries,
            params: server::rag::index::HnswParams {
                m: args.hnsw_m,
                ef_search: args.ef_search,
            },
        };
        for &n in &args.retrieval {
            let n = n.clamp(10, 1_000_000);
            let result = tokio::task::block_in_place(|| scenarios::retrieval(n, &opts));
            match result {
                Ok(line) => emit(line)?,
                Err(e) => {
                    failures += 1;
                    emit(json!({"scenario": "retrieval", "chunks": n, "error": format!("{e:#}")}))?;
                }
            }
        }
    }

    anyhow::ensure!(failures == 0, "{failures} scenario(s) failed");
    Ok(())
}

type Job<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Value>> + 'a>>;

/// The questions of `eval/questions.json` (the shipped knowledge base's set).
fn eval_questions(kb_dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let path = kb_dir.join("../eval/questions.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)?;
    let list = value
        .get("answerable")
        .and_then(Value::as_array)
        .context("an `answerable` question list")?;
    let questions: Vec<String> = list
        .iter()
        .filter_map(|q| q.get("question").and_then(Value::as_str).map(str::to_owned))
        .collect();
    anyhow::ensure!(!questions.is_empty(), "no questions in {}", path.display());
    Ok(questions)
}

/// The account-name prefix of the `n`-th job of a run: a size given twice (`--streams 10,10`)
/// signs up its own accounts instead of colliding with the first run's.
fn job_prefix(run: &str, n: usize) -> String {
    format!("{run}j{n}")
}
