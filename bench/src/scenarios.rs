//! The scenarios. Each returns one JSON object (one line of output) with the server's memory
//! and CPU from `/proc` beside its latency and throughput figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Ws};
use crate::fake::{FakeSettings, stamps};
use crate::stats::{self, ProcSample, load_average, now_us, pct, r2, sample};
use crate::target::Target;

fn mib(kib: u64) -> f64 {
    r2(kib as f64 / 1024.0)
}

/// The fields every line carries: server memory and CPU over the scenario, machine load.
pub(crate) fn server_fields(before: ProcSample, after: ProcSample, elapsed: Duration) -> Value {
    let cpu = after.cpu_s - before.cpu_s;
    let secs = elapsed.as_secs_f64().max(1e-9);
    json!({
        "server_rss_before_mib": mib(before.rss_kib),
        "server_rss_after_mib": mib(after.rss_kib),
        "server_hwm_mib": mib(after.hwm_kib),
        "server_cpu_s": r2(cpu),
        "server_cores": r2(cpu / secs),
        "elapsed_s": r2(elapsed.as_secs_f64()),
        "load_avg_1m": load_average(),
        "bench_cpu_s": r2(after.bench_cpu_s - before.bench_cpu_s),
        "postgres_cpu_s": r2(after.postgres_cpu_s - before.postgres_cpu_s),
        "machine_busy_cores": r2((after.machine_busy_s - before.machine_busy_s) / secs),
    })
}

/// Embedding requests the fake answered since `before` (from [`FakeSettings::embeddings`]), and
/// the texts in them.
fn embeddings_since(fake: &FakeSettings, before: (u64, u64)) -> (u64, u64) {
    let now = fake.embeddings();
    (now.0 - before.0, now.1 - before.1)
}

pub(crate) fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// Watches the server's RSS every 5 ms while a scenario runs; the peak comes back on stop.
struct PeakWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl PeakWatch {
    fn start(pid: Option<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Some(pid) = pid {
                    peak = peak.max(sample(pid).rss_kib);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        });
        Self { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

// ------------------------------------------------------------------ idle sockets

/// `n` authenticated chat sockets held open and idle: the server's RSS per socket.
pub async fn idle_sockets(target: &Target, n: usize, run: &str) -> anyhow::Result<Value> {
    let users = client::make_users(target, &format!("{run}_idle{n}"), n.clamp(1, 8)).await?;
    let tokens = client::tokens(target, &users).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = target.sample();
    let started = Instant::now();
    let stop = tokio_util_cancel();
    let mut tasks = JoinSet::new();
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Connect 128 at a time; each socket then sits in a task that answers pings until told to
    // close.
    let gate = Arc::new(tokio::sync::Semaphore::new(128));
    for i in 0..n {
        let token = tokens[i % tokens.len()].clone();
        let ws_base = target.ws_base.clone();
        let (gate, stop, opened, failed) = (
            Arc::clone(&gate),
            stop.clone(),
            Arc::clone(&opened),
            Arc::clone(&failed),
        );
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let ws = client::connect(&ws_base, &token).await;
            drop(permit);
            let mut ws = match ws {
                Ok(ws) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                    ws
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut stop = stop;
            loop {
                tokio::select! {
                    message = ws.next() => if !matches!(message, Some(Ok(_))) { return },
                    _ = stop.changed() => {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            }
        });
    }
    // Wait until every socket is open (or failed), bounded.
    let deadline = Instant::now() + Duration::from_secs(300);
    while opened.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < n as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = target.sample();
    let opened = opened.load(Ordering::Relaxed);
    let per_socket_kib = (held.rss_kib as f64 - before.rss_kib as f64) / opened.max(1) as f64;
    let _ = stop.sender.send(true);
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(2)).await;
    let closed = target.sample();
    Ok(merge(
        json!({
            "scenario": "idle_sockets",
            "sockets": n,
            "opened": opened,
            "failed": failed.load(Ordering::Relaxed),
            "open_s": r2(open_time.as_secs_f64()),
            "server_rss_held_mib": mib(held.rss_kib),
            "server_rss_closed_mib": mib(closed.rss_kib),
            "rss_per_socket_kib": r2(per_socket_kib),
        }),
        server_fields(before, held, started.elapsed()),
    ))
}

/// A broadcast "stop" flag for many tasks.
#[derive(Clone)]
struct Stop {
    sender: Arc<tokio::sync::watch::Sender<bool>>,
    receiver: tokio::sync::watch::Receiver<bool>,
}

impl Stop {
    async fn changed(&mut self) -> Result<(), tokio::sync::watch::error::RecvError> {
        self.receiver.changed().await
    }
}

fn tokio_util_cancel() -> Stop {
    let (sender, receiver) = tokio::sync::watch::channel(false);
    Stop {
        sender: Arc::new(sender),
        receiver,
    }
}

// ------------------------------------------------------------------ streams

pub struct StreamShape {
    pub first_chunk_ms: u64,
    pub chunk_ms: u64,
    pub chunks: u64,
}

/// `c` sockets ask at the same moment; the fake streams with the given delays. Reports the
/// delay the server added to each chunk (receive time − the fake's send stamp) and the first
/// delta's time beyond the provider's first chunk.
pub async fn streams(
    target: &Target,
    fake: &FakeSettings,
    c: usize,
    shape: &StreamShape,
    run: &str,
) -> anyhow::Result<Value> {
    fake.set(shape.first_chunk_ms, shape.chunk_ms, shape.chunks);
    let users = client::make_users(target, &format!("{run}_str{c}"), c.clamp(1, 20)).await?;
    let tokens = client::tokens(target, &users).await?;
    let mut sockets = Vec::with_capacity(c);
    let mut opening = futures::stream::iter(0..c)
        .map(|i| {
            let token = tokens[i % tokens.len()].clone();
            let ws_base = target.ws_base.clone();
            async move { client::connect(&ws_base, &token).await }
        })
        .buffer_unordered(128);
    while let Some(ws) = opening.next().await {
        sockets.push(ws?);
    }
    drop(opening);
    let embeddings_before = fake.embeddings();
    let metrics_before = server_metrics(target).await;
    let before = target.sample();
    let started = Instant::now();
    let start_line = client::barrier(c);
    let mut tasks = JoinSet::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let start_line = Arc::clone(&start_line);
        let question = format!("{} [{run}]", client::question(i));
        tasks.spawn(async move { one_stream(ws, i, question, start_line).await });
    }
    let (mut ttft, mut added, mut done, mut failed) = (Vec::new(), Vec::new(), 0u64, 0u64);
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok((first, chunks))) => {
                done += 1;
                ttft.push(first);
                added.extend(chunks);
            }
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(_) => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    let after = target.sample();
    let (requests, texts) = embeddings_since(fake, embeddings_before);
    let stages = stats::stage_means_ms(&metrics_before, &server_metrics(target).await);
    let first = shape.first_chunk_ms as f64;
    let overhead: Vec<f64> = ttft.iter().map(|t| t - first).collect();
    Ok(merge(
        json!({
            "scenario": "streams",
            "sockets": c,
            "first_chunk_ms": shape.first_chunk_ms,
            "chunk_ms": shape.chunk_ms,
            "chunks": shape.chunks,
            "answered": done,
            "failed": failed,
            "ttft_p50_ms": r2(pct(&ttft, 50.0)),
            "ttft_p99_ms": r2(pct(&ttft, 99.0)),
            "first_delta_overhead_p50_ms": r2(pct(&overhead, 50.0)),
            "first_delta_overhead_p99_ms": r2(pct(&overhead, 99.0)),
            "chunk_added_p50_ms": r2(pct(&added, 50.0)),
            "chunk_added_p99_ms": r2(pct(&added, 99.0)),
            "chunk_added_max_ms": r2(pct(&added, 100.0)),
            "chunk_samples": added.len(),
            "embedding_requests": requests,
            "embedded_texts": texts,
            "server_stage_mean_ms": stages,
            "first_error": first_error,
        }),
        server_fields(before, after, elapsed),
    ))
}

/// The server's `/metrics` samples (none if it cannot be scraped: the stage means are then
/// left out, the scenario's own figures stand).
async fn server_metrics(target: &Target) -> std::collections::HashMap<String, f64> {
    let scraped = async {
        let response = client::http()
            .get(format!("{}/metrics", target.base))
            .send()
            .await?
            .error_for_status()?;
        response.text().await
    };
    match scraped.await {
        Ok(text) => stats::prometheus_samples(&text),
        Err(_) => std::collections::HashMap::new(),
    }
}

/// One ask on one socket: (ms to the first delta, ms the server added to each chunk). The
/// question carries the run's name, so a later burst's questions are new to the server too.
async fn one_stream(
    mut ws: Ws,
    i: usize,
    question: String,
    start_line: Arc<tokio::sync::Barrier>,
) -> anyhow::Result<(f64, Vec<f64>)> {
    start_line.wait().await;
    let sent = now_us();
    client::ask(&mut ws, &format!("q{i}"), &question).await?;
    let mut first = None;
    let mut added = Vec::new();
    loop {
        let frame = client::next_json(&mut ws).await?;
        let received = now_us();
        match frame["type"].as_str() {
            Some("delta") => {
                if first.is_none() {
                    first = Some((received - sent) as f64 / 1000.0);
                }
                for stamp in stamps(frame["text"].as_str().unwrap_or("")) {
                    added.push(received.saturating_sub(stamp) as f64 / 1000.0);
                }
            }
            Some("done") => {
                anyhow::ensure!(frame["finish_reason"] == "stop", "answer ended: {frame}");
                break;
            }
            Some("error") => anyhow::bail!("error frame: {frame}"),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok((first.unwrap_or(0.0), added))
}

// ------------------------------------------------------------------ REST chat

/// `clients` loops of `POST /api/chat/`, `requests` each, the fake answering at once: server
/// CPU per chat.
pub async fn rest_chat(
    target: &Target,
    fake: &FakeSettings,
    clients: usize,
    requests: usize,
    run: &str,
) -> anyhow::Result<Value> {
    fake.set(0, 0, 8);
    let users = client::make_users(target, &format!("{run}_rest{clients}"), clients).await?;
    let tokens = client::tokens(target, &users).await?;
    let http = client::http();
    // Warm-up: connections, prepared statements.
    for token in tokens.iter().take(2) {
        chat_once(&http, &target.base, token, 0).await?;
    }
    let embeddings_before = fake.embeddings();
    let before = target.sample();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (c, token) in tokens.into_iter().enumerate() {
        let (http, base) = (http.clone(), target.base.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(requests);
            for r in 0..requests {
                let t = Instant::now();
                chat_once(&http, &base, &token, c * requests + r).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(l)) => latencies.extend(l),
            _ => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    let after = target.sample();
    let (requests, texts) = embeddings_since(fake, embeddings_before);
    let n = latencies.len() as f64;
    Ok(merge(
        json!({
            "scenario": "rest_chat",
            "clients": clients,
            "requests": latencies.len(),
            "failed_clients": failed,
            "req_per_s": r2(n / elapsed.as_secs_f64()),
            "p50_ms": r2(pct(&latencies, 50.0)),
            "p99_ms": r2(pct(&latencies, 99.0)),
            "server_cpu_ms_per_chat": r2((after.cpu_s - before.cpu_s) * 1000.0 / n.max(1.0)),
            "embedding_requests": requests,
            "embedded_texts": texts,
        }),
        server_fields(before, after, elapsed),
    ))
}

pub(crate) async fn chat_once(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    i: usize,
) -> anyhow::Result<()> {
    let response = http
        .post(format!("{base}/api/chat/"))
        .bearer_auth(token)
        .json(&json!({"message": client::question(i)}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "chat answered {}",
        response.status()
    );
    let _ = response.bytes().await?;
    Ok(())
}

// ------------------------------------------------------------------ history

/// Seeds `messages` stored messages over `users` accounts with `COPY`, then reads
/// `GET /api/chat-history/?limit=20` pages of a sample of them.
pub async fn history(
    target: &Target,
    users: usize,
    messages: usize,
    requests: usize,
    clients: usize,
    run: &str,
) -> anyhow::Result<Value> {
    let seeding = Instant::now();
    // Pairs one second apart, ending now.
    let pairs = messages / 2;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let first_at = now - pairs as i64;
    let names = seed_exchanges(target, &format!("{run}_hist"), users, pairs, |p| {
        first_at + p as i64
    })
    .await?;
    let seed_s = seeding.elapsed().as_secs_f64();

    // Read pages of a sample of the users (each login is an argon2 check).
    let sample_users: Vec<String> = names
        .iter()
        .step_by((users / 32).max(1))
        .take(32)
        .cloned()
        .collect();
    let tokens = client::tokens(target, &sample_users).await?;
    let http = client::http();
    let before = target.sample();
    let started = Instant::now();
    let per_client = requests.div_ceil(clients.max(1));
    let mut tasks = JoinSet::new();
    for c in 0..clients.max(1) {
        let (http, base, tokens) = (http.clone(), target.base.clone(), tokens.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for r in 0..per_client {
                let token = &tokens[(c * per_client + r) % tokens.len()];
                let t = Instant::now();
                let response = http
                    .get(format!("{base}/api/chat-history/?limit=20"))
                    .bearer_auth(token)
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "{}", response.status());
                let _ = response.bytes().await?;
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed();
    let after = target.sample();
    Ok(merge(
        json!({
            "scenario": "history",
            "users": users,
            "messages": pairs * 2,
            "seed_s": r2(seed_s),
            "clients": clients,
            "requests": latencies.len(),
            "req_per_s": r2(latencies.len() as f64 / elapsed.as_secs_f64()),
            "p50_ms": r2(pct(&latencies, 50.0)),
            "p99_ms": r2(pct(&latencies, 99.0)),
        }),
        server_fields(before, after, elapsed),
    ))
}

/// Pairs per `COPY` statement while seeding.
const SEED_BATCH: usize = 200_000;

/// Accounts `{prefix}_0..users` (see [`client::make_users`]), one conversation each, and `pairs`
/// question/answer rows spread over them round-robin, written with `COPY`; pair `p` (and a
/// conversation, with its first pair) is dated `at(p)`, in Unix seconds. Returns the names.
pub(crate) async fn seed_exchanges(
    target: &Target,
    prefix: &str,
    users: usize,
    pairs: usize,
    at: impl Fn(usize) -> i64,
) -> anyhow::Result<Vec<String>> {
    let users = users.max(1);
    let names = client::make_users(target, prefix, users).await?;
    let db = server::db::connect(&target.database_url).await?;
    let ids: Vec<uuid::Uuid> = db
        .query(
            "SELECT id FROM users WHERE username LIKE $1 ORDER BY username",
            &[&format!("{prefix}_%")],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    anyhow::ensure!(ids.len() == users, "seeded users missing");
    let conversations: Vec<uuid::Uuid> = ids.iter().map(|_| uuid::Uuid::new_v4()).collect();
    let mut rows = String::new();
    for (u, (user, conversation)) in ids.iter().zip(&conversations).enumerate() {
        let started = timestamp(at(u));
        rows.push_str(&format!(
            "{conversation}\t{user}\tseeded\t{started}\t{started}\n"
        ));
    }
    client::copy_in(
        &db,
        "COPY conversations (id, user_id, title, created_at, updated_at) FROM STDIN",
        rows.into_bytes(),
    )
    .await?;
    let mut written = 0;
    while written < pairs {
        let end = (written + SEED_BATCH).min(pairs);
        let mut rows = String::with_capacity((end - written) * 300);
        for p in written..end {
            let u = p % users;
            let (q, a) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
            let at = timestamp(at(p));
            rows.push_str(&format!(
                "{q}\t{c}\t{user}\tuser\t\\N\tseeded question {p}\tcomplete\t[]\t{at}\n\
                 {a}\t{c}\t{user}\tassistant\t{q}\tseeded answer {p}: the parcel ships within two working days from our warehouse.\tcomplete\t[]\t{at}\n",
                c = conversations[u],
                user = ids[u],
            ));
        }
        client::copy_in(
            &db,
            "COPY messages (id, conversation_id, user_id, role, reply_to, content, status, sources, created_at) FROM STDIN",
            rows.into_bytes(),
        )
        .await?;
        written = end;
    }
    db.batch_execute("ANALYZE users; ANALYZE conversations; ANALYZE messages")
        .await?;
    Ok(names)
}

/// Unix seconds as a PostgreSQL timestamp with time zone (UTC).
fn timestamp(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let rem = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}+00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

// ------------------------------------------------------------------ login burst

/// `clients` log in at the same moment, `rounds` times each: throughput, tail, and the
/// server's RSS peak and what stays after.
pub async fn login_burst(
    target: &Target,
    clients: usize,
    rounds: usize,
    run: &str,
) -> anyhow::Result<Value> {
    let users = client::make_users(target, &format!("{run}_login{clients}"), clients).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = target.sample();
    let watch = PeakWatch::start(target.pid);
    let started = Instant::now();
    let start_line = client::barrier(clients);
    let mut tasks = JoinSet::new();
    for user in users {
        let (base, start_line) = (target.base.clone(), Arc::clone(&start_line));
        tasks.spawn(async move {
            let http = client::http();
            start_line.wait().await;
            let (mut ok, mut refused) = (Vec::new(), 0u64);
            for _ in 0..rounds {
                let t = Instant::now();
                match client::login(&http, &base, &user).await? {
                    Some(_) => ok.push(t.elapsed().as_secs_f64() * 1000.0),
                    None => refused += 1,
                }
            }
            Ok::<_, anyhow::Error>((ok, refused))
        });
    }
    let (mut latencies, mut refused) = (Vec::new(), 0);
    while let Some(result) = tasks.join_next().await {
        let (ok, r) = result??;
        latencies.extend(ok);
        refused += r;
    }
    let elapsed = started.elapsed();
    let peak = watch.finish().await;
    let after_burst = target.sample();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = target.sample();
    Ok(merge(
        json!({
            "scenario": "login_burst",
            "clients": clients,
            "logins": latencies.len(),
            "refused_503": refused,
            "logins_per_s": r2(latencies.len() as f64 / elapsed.as_secs_f64()),
            "p50_ms": r2(pct(&latencies, 50.0)),
            "p99_ms": r2(pct(&latencies, 99.0)),
            "server_rss_peak_mib": mib(peak),
            "server_rss_settled_mib": mib(settled.rss_kib),
        }),
        server_fields(before, after_burst, elapsed),
    ))
}

// ------------------------------------------------------------------ offline answers

/// `sockets` sockets each ask `rounds` distinct questions one after another (the offline
/// answerer: local embeddings): answers per second. `salt` keeps the strings of different runs
/// apart, so no run finds another's questions in the server's question cache.
pub async fn answers(
    target: &Target,
    sockets: usize,
    rounds: usize,
    questions: &[String],
    salt: usize,
    run: &str,
) -> anyhow::Result<Value> {
    let users = client::make_users(
        target,
        &format!("{run}_ans{sockets}x{rounds}"),
        sockets.clamp(1, 20),
    )
    .await?;
    let tokens = client::tokens(target, &users).await?;
    let mut sockets_open = Vec::new();
    for i in 0..sockets {
        sockets_open.push(client::connect(&target.ws_base, &tokens[i % tokens.len()]).await?);
    }
    let before = target.sample();
    let started = Instant::now();
    let start_line = client::barrier(sockets);
    let mut tasks = JoinSet::new();
    for (s, mut ws) in sockets_open.into_iter().enumerate() {
        let start_line = Arc::clone(&start_line);
        let asks: Vec<String> = (0..rounds)
            .map(|r| {
                let i = s * rounds + r;
                variant(
                    &questions[i % questions.len()],
                    salt + i / questions.len() + 1,
                )
            })
            .collect();
        tasks.spawn(async move {
            start_line.wait().await;
            let mut latencies = Vec::new();
            for (r, q) in asks.iter().enumerate() {
                let t = Instant::now();
                let id = format!("s{s}a{r}");
                client::ask(&mut ws, &id, q).await?;
                loop {
                    let frame = client::next_json(&mut ws).await?;
                    match frame["type"].as_str() {
                        Some("done") => break,
                        Some("error") => anyhow::bail!("error frame: {frame}"),
                        _ => {}
                    }
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let _ = ws.send(Message::Close(None)).await;
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed();
    let after = target.sample();
    Ok(merge(
        json!({
            "scenario": "answers",
            "sockets": sockets,
            "answers": latencies.len(),
            "answers_per_s": r2(latencies.len() as f64 / elapsed.as_secs_f64()),
            "p50_ms": r2(pct(&latencies, 50.0)),
            "p95_ms": r2(pct(&latencies, 95.0)),
        }),
        server_fields(before, after, elapsed),
    ))
}

/// The question with one word gap widened by `extra` spaces: a distinct string (no cache hits)
/// with the same tokens, so the same work.
pub fn variant(question: &str, extra: usize) -> String {
    let words: Vec<&str> = question.split(' ').collect();
    let gap = extra % words.len().saturating_sub(1).max(1);
    let mut out = String::new();
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

// ------------------------------------------------------------------ retrieval (in-process)

pub struct RetrievalOptions {
    pub dim: usize,
    pub queries: usize,
    pub params: server::rag::index::HnswParams,
}

/// Synthetic clustered unit vectors (`n` rows): FAISS flat against HNSW on the same data,
/// search time and HNSW's recall@10 against flat's exact answer.
pub fn retrieval(n: usize, opts: &RetrievalOptions) -> anyhow::Result<Value> {
    use server::rag::index::VectorIndex;
    let dim = opts.dim;
    let mut rng = Lcg(0x5eed ^ n as u64);
    // Knowledge-base text embeds in clusters (topics); questions land near passages.
    let clusters = (n / 50).max(8);
    let centres: Vec<Vec<f32>> = (0..clusters).map(|_| rng.unit(dim, None, 0.0)).collect();
    let mut data = Vec::with_capacity(n * dim);
    for i in 0..n {
        data.extend(rng.unit(dim, Some(&centres[i % clusters]), 0.6));
    }
    let queries: Vec<Vec<f32>> = (0..opts.queries)
        .map(|q| {
            let row = (q * 7919) % n;
            rng.unit(dim, Some(&data[row * dim..(row + 1) * dim]), 0.5)
        })
        .collect();
    let t = Instant::now();
    let flat = VectorIndex::build(dim, &data, usize::MAX, opts.params)?;
    let flat_build = t.elapsed();
    let t = Instant::now();
    let hnsw = VectorIndex::build(dim, &data, 0, opts.params)?;
    let hnsw_build = t.elapsed();
    let (mut flat_ms, mut hnsw_ms, mut recall) = (Vec::new(), Vec::new(), Vec::new());
    for q in &queries {
        let t = Instant::now();
        let exact = flat.search(q, 10)?;
        flat_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let approx = hnsw.search(q, 10)?;
        hnsw_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let found = approx
            .iter()
            .filter(|(row, _)| exact.iter().any(|(e, _)| e == row))
            .count();
        recall.push(found as f64 / exact.len().max(1) as f64);
    }
    let me = sample(std::process::id());
    Ok(json!({
        "scenario": "retrieval",
        "chunks": n,
        "dim": dim,
        "queries": queries.len(),
        "hnsw_m": opts.params.m,
        "ef_search": opts.params.ef_search,
        "flat_build_s": r2(flat_build.as_secs_f64()),
        "hnsw_build_s": r2(hnsw_build.as_secs_f64()),
        "flat_p50_ms": r2(pct(&flat_ms, 50.0)),
        "flat_p99_ms": r2(pct(&flat_ms, 99.0)),
        "hnsw_p50_ms": (pct(&hnsw_ms, 50.0) * 1000.0).round() / 1000.0,
        "hnsw_p99_ms": (pct(&hnsw_ms, 99.0) * 1000.0).round() / 1000.0,
        "recall_at_10": (recall.iter().sum::<f64>() / recall.len().max(1) as f64 * 1000.0).round() / 1000.0,
        "bench_rss_mib": mib(me.rss_kib),
        "load_avg_1m": load_average(),
    }))
}

/// A small deterministic generator (no `rand` needed for synthetic data).
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    /// A unit vector: `around` plus noise of weight `noise` (or pure noise).
    fn unit(&mut self, dim: usize, around: Option<&[f32]>, noise: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|i| {
                let r = self.next_f32();
                match around {
                    Some(c) => c[i] + noise * r / (dim as f32).sqrt() * 3.5,
                    None => r,
                }
            })
            .collect();
        server::upstream::embedding::normalize(&mut v);
        v
    }
}

// ------------------------------------------------------------------ the local model (in-process)

/// The local model's own cost, without a server around it: `questions` texts embedded in
/// requests of `batch` texts, one request at a time (so one pass at a time, on one worker).
/// Reports this process's CPU per text and the wall time per pass: what batching buys, and
/// what one pass costs, without the noise of sockets, the database and the answerer.
pub async fn model(
    embedder: &server::rag::embed::local::LocalEmbedder,
    texts: &[String],
    batch: usize,
    questions: usize,
) -> anyhow::Result<Value> {
    use server::upstream::embedding::{EmbedKind, Embedder};
    let batch = batch.max(1);
    let rounds = questions.div_ceil(batch).max(1);
    let passes_before = embedder.forward_passes();
    let before = sample(std::process::id());
    let started = Instant::now();
    let mut pass_ms = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let request: Vec<String> = (0..batch)
            .map(|i| texts[(r * batch + i) % texts.len()].clone())
            .collect();
        let t = Instant::now();
        let vectors = embedder.embed(&request, EmbedKind::Query).await?;
        pass_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            vectors.len() == batch,
            "{} vectors for {batch}",
            vectors.len()
        );
    }
    let elapsed = started.elapsed();
    let after = sample(std::process::id());
    let embedded = (rounds * batch) as f64;
    Ok(json!({
        "scenario": "model",
        "batch": batch,
        "texts": rounds * batch,
        "passes": embedder.forward_passes() - passes_before,
        "texts_per_s": r2(embedded / elapsed.as_secs_f64()),
        "cpu_ms_per_text": r2((after.cpu_s - before.cpu_s) * 1000.0 / embedded),
        "pass_p50_ms": r2(pct(&pass_ms, 50.0)),
        "pass_p95_ms": r2(pct(&pass_ms, 95.0)),
        "load_avg_1m": load_average(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_differ_but_keep_the_words() {
        let a = variant("how do I return an item", 1);
        let b = variant("how do I return an item", 2);
        assert_ne!(a, b);
        assert_eq!(
            a.split_whitespace().collect::<Vec<_>>(),
            b.split_whitespace().collect::<Vec<_>>()
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(timestamp(1_790_000_000), "2026-09-21 14:13:20+00");
    }
}
