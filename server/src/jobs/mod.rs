//! Background jobs: the scheduled history cleanup and the welcome-mail outbox.
//!
//! # Layout
//! - [`cleanup`]: the cleanup run (batched deletes under an advisory lock, recorded runs) and
//!   the run-now / run-listing functions the admin API calls.
//! - [`outbox`]: queueing mail in the caller's transaction and the worker that delivers it.
//! - [`mailer`]: where mail goes (console or SMTP).
//!
//! Every server process runs a scheduler and an outbox worker; the advisory lock and
//! `FOR UPDATE SKIP LOCKED` make that safe with any number of processes.

use anyhow::Context;
use deadpool_postgres::Pool;
use protocol::admin::{AdminEvent, CleanupTrigger};
use tokio::sync::broadcast;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;

pub mod cleanup;
pub mod mailer;
pub mod outbox;

/// What the jobs run with, besides the config.
pub struct Runtime {
    pub db: Pool,
    /// Every job task registers here, so a shutdown waits for it.
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// The admin event channel: consoles hear about scheduled runs as they do about manual ones.
    pub events: broadcast::Sender<AdminEvent>,
    /// This process, for the sweep of interrupted answers that runs with the cleanup.
    pub instance_id: Uuid,
}

/// Starts the cleanup scheduler and the outbox worker under `runtime.tasks`; both stop on
/// `runtime.shutdown`. Fails on a bad `CLEANUP_SCHEDULE`, `MAILER` or `MAIL_FROM`.
pub async fn start(config: &Config, runtime: Runtime) -> anyhow::Result<()> {
    start_scheduler(config, &runtime).await?;

    let mailer = mailer::from_config(config)?;
    runtime.tasks.spawn(outbox::run_worker(
        runtime.db.clone(),
        config.database_url.clone(),
        mailer,
        outbox::WorkerSettings::default(),
        runtime.shutdown.clone(),
    ));
    Ok(())
}

async fn start_scheduler(config: &Config, runtime: &Runtime) -> anyhow::Result<()> {
    let schedule = config.cleanup_schedule.clone();
    let retention_days = config.history_retention_days;
    let (db, tasks, shutdown) = (
        runtime.db.clone(),
        runtime.tasks.clone(),
        runtime.shutdown.clone(),
    );
    // Admin consoles hear about scheduled runs as they do about manual ones.
    let events = runtime.events.clone();
    let instance_id = runtime.instance_id;
    let stale_after = std::time::Duration::from_secs(config.instance_stale_secs);
    let job = Job::new_async(schedule.as_str(), move |_id, _scheduler| {
        let (db, shutdown, events) = (db.clone(), shutdown.clone(), events.clone());
        // On the tracker, so a shutdown waits for (and interrupts, between batches) a run.
        tasks.spawn(async move {
            // Answers left pending by stopped processes become `interrupted` (also done on
            // every heartbeat; here too so a run of the schedule leaves none behind).
            if let Err(e) = crate::chat::orphans::sweep(&db, instance_id, stale_after).await {
                tracing::warn!(error = %e, "scheduled sweep of interrupted answers failed");
            }
            match cleanup::run_until(&db, retention_days, CleanupTrigger::Scheduled, &shutdown)
                .await
            {
                // No admin listening is fine: the run is recorded anyway.
                Ok(run) => drop(events.send(AdminEvent::CleanupFinished { run })),
                Err(cleanup::CleanupError::AlreadyRunning) => {
                    tracing::info!("scheduled history cleanup skipped: another run is in progress");
                }
                Err(e) => tracing::error!(error = %e, "scheduled history cleanup could not start"),
            }
        });
        Box::pin(async {})
    })
    .with_context(|| {
        format!(
            "CLEANUP_SCHEDULE {schedule:?} is not a valid cron expression with seconds \
             (6 fields, e.g. `0 0 3 * * *`)"
        )
    })?;

    let mut scheduler = JobScheduler::new()
        .await
        .context("creating the job scheduler")?;
    let job_id = scheduler
        .add(job)
        .await
        .context("scheduling the history cleanup")?;
    scheduler
        .start()
        .await
        .context("starting the job scheduler")?;
    let next_run = scheduler.next_tick_for_job(job_id).await.ok().flatten();
    tracing::info!(
        schedule = %schedule,
        retention_days,
        next_run = %next_run.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339()),
        "history cleanup scheduler started"
    );

    let shutdown = runtime.shutdown.clone();
    runtime.tasks.spawn(async move {
        shutdown.cancelled().await;
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "stopping the job scheduler");
        }
    });
    Ok(())
}
