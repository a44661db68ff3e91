//! The `cleanup` scenario: the history cleanup deleting a million expired messages while REST
//! chat goes on. Chat latency before and during the run, and the run's own pace.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::client;
use crate::fake::FakeSettings;
use crate::scenarios::{chat_once, merge, seed_exchanges, server_fields};
use crate::stats::{pct, r2};
use crate::target::Target;

/// Chat before the cleanup starts: the baseline the run is compared with.
const BASELINE: Duration = Duration::from_secs(5);
/// Longest the cleanup may take before the scenario gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Seeds `messages` messages older than `retention_days` over `users` accounts, then runs
/// `clients` REST chat loops (the fake answering at once) for a baseline, through
/// `POST /api/admin/cleanup`, and stops them when it returns.
pub async fn cleanup_under_load(
    target: &Target,
    fake: &FakeSettings,
    messages: usize,
    users: usize,
    clients: usize,
    retention_days: u32,
    run: &str,
) -> anyhow::Result<Value> {
    fake.set(0, 0, 8);
    let seeding = Instant::now();
    let seeded = seed_expired(target, messages, users.max(1), retention_days, run).await?;
    let seed_s = seeding.elapsed().as_secs_f64();

    let admin = make_admin(target, run).await?;
    let chatters = client::make_users(target, &format!("{run}_cl{clients}"), clients).await?;
    let tokens = client::tokens(target, &chatters).await?;
    let http = client::http();
    for token in tokens.iter().take(2) {
        chat_once(&http, &target.base, token, 0).await?;
    }

    // Chat loops record (start offset, latency) until told to stop.
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = JoinSet::new();
    for (c, token) in tokens.into_iter().enumerate() {
        let (http, base, stop) = (http.clone(), target.base.clone(), Arc::clone(&stop));
        loops.spawn(async move {
            let mut samples = Vec::new();
            let mut i = 0;
            // Bounded: the run limit plus the baseline at one chat per millisecond at most.
            while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                let t = Instant::now();
                chat_once(&http, &base, &token, c * 1_000_000 + i).await?;
                samples.push((t.duration_since(epoch), t.elapsed().as_secs_f64() * 1000.0));
                i += 1;
            }
            Ok::<_, anyhow::Error>(samples)
        });
    }
    tokio::time::sleep(BASELINE).await;

    let before = target.sample();
    let started = epoch.elapsed();
    let response = http
        .post(format!("{}/api/admin/cleanup", target.base))
        .bearer_auth(&admin)
        .timeout(RUN_LIMIT)
        .send()
        .await;
    let ended = epoch.elapsed();
    let after = target.sample();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    while let Some(result) = loops.join_next().await {
        samples.extend(result??);
    }
    let response = response?;
    anyhow::ensure!(
        response.status().is_success(),
        "cleanup answered {}",
        response.status()
    );
    let record: Value = response.json().await?;
    anyhow::ensure!(
        record.get("error").is_none_or(Value::is_null),
        "the cleanup run failed: {record}"
    );
    let deleted = record["messages_deleted"].as_i64().unwrap_or(0);
    anyhow::ensure!(
        deleted >= seeded as i64,
        "the cleanup deleted {deleted} messages of the {seeded} seeded"
    );

    let window = |from: Duration, to: Duration| -> Vec<f64> {
        samples
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, ms)| *ms)
            .collect()
    };
    let baseline = window(started.saturating_sub(BASELINE), started);
    let during = window(started, ended);
    let run_s = (ended - started).as_secs_f64();
    let rate = |n: usize, s: f64| r2(n as f64 / s.max(1e-9));
    Ok(merge(
        json!({
            "scenario": "cleanup",
            "messages_seeded": seeded,
            "seed_s": r2(seed_s),
            "clients": clients,
            "cleanup_s": r2(run_s),
            "messages_deleted": deleted,
            "conversations_deleted": record["conversations_deleted"],
            "deleted_per_s": rate(deleted as usize, run_s),
            "chat_baseline": {
                "requests": baseline.len(),
                "req_per_s": rate(baseline.len(), BASELINE.as_secs_f64()),
                "p50_ms": r2(pct(&baseline, 50.0)),
                "p99_ms": r2(pct(&baseline, 99.0)),
            },
            "chat_during_cleanup": {
                "requests": during.len(),
                "req_per_s": rate(during.len(), run_s),
                "p50_ms": r2(pct(&during, 50.0)),
                "p99_ms": r2(pct(&during, 99.0)),
                "max_ms": r2(during.iter().copied().fold(0.0, f64::max)),
            },
        }),
        server_fields(before, after, ended - started),
    ))
}

/// `messages` question/answer rows dated a day past the retention age, over `users` accounts
/// with one conversation each. Returns how many messages were written.
async fn seed_expired(
    target: &Target,
    messages: usize,
    users: usize,
    retention_days: u32,
    run: &str,
) -> anyhow::Result<usize> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let expired = now - (i64::from(retention_days) + 1) * 86_400;
    let pairs = messages / 2;
    seed_exchanges(target, &format!("{run}_old"), users, pairs, |_| expired).await?;
    Ok(pairs * 2)
}

/// An account with the admin role, and its access token.
async fn make_admin(target: &Target, run: &str) -> anyhow::Result<String> {
    let names = client::make_users(target, &format!("{run}_admin"), 1).await?;
    let db = server::db::connect(&target.database_url).await?;
    db.execute(
        "UPDATE users SET role = 'admin' WHERE username = $1",
        &[&names[0]],
    )
    .await?;
    Ok(client::tokens(target, &names).await?.remove(0))
}
