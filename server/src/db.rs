//! The PostgreSQL pool and migrations.
//!
//! Queries live next to the feature that owns them (`auth::store`, `chat::store`, ...), as plain
//! functions over a `&tokio_postgres::Client` or transaction, using `prepare_cached`.

use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Socket;

pub mod faults;
pub mod tls;

pub use faults::DbTimeouts;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Key of the advisory lock that serialises migrations across processes.
const MIGRATION_LOCK_KEY: i64 = 0x5eed_c4a7_0001;

/// A pool over `url`. Connections are opened lazily; a dead server makes `get()` fail
/// (and `/readyz` go 503) until it is back, with no restart.
pub fn pool(url: &str, max_size: usize) -> anyhow::Result<Pool> {
    pool_with(url, max_size, &DbTimeouts::default())
}

/// A pool over `url` whose waits are bounded by `timeouts` (see [`faults`]), with TLS as the
/// URL's `sslmode` asks (see [`tls`]).
pub fn pool_with(url: &str, max_size: usize, timeouts: &DbTimeouts) -> anyhow::Result<Pool> {
    let tls::DbTarget {
        mut config, tls, ..
    } = tls::parse(url)?;
    timeouts.apply_transport(&mut config);
    timeouts.apply_statement_timeout(&mut config);
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    // Creating a connection covers the TCP connect, the TLS handshake and authentication.
    let create = timeouts.connect + Duration::from_secs(1);
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeouts.pool_wait))
        .create_timeout(Some(create))
        .recycle_timeout(Some(timeouts.pool_wait))
        .build()
        .context("building the database pool")
}

/// Opens up to `n` of the pool's connections (at most its size) at once, prepares `statements`
/// on each (the hot path's, so the first requests after a start do not pay a parse and plan
/// per connection), and returns them to it. A connection that cannot be opened is left for
/// later (logged); the pool opens it on demand as before. Returns how many opened.
pub async fn warm(pool: &Pool, n: usize, statements: &[&str]) -> usize {
    let n = n.min(pool.status().max_size);
    let held = futures::future::join_all((0..n).map(|_| async {
        let client = pool.get().await?;
        for sql in statements {
            if let Err(e) = client.prepare_cached(sql).await {
                // Only the head start is lost: the statement is prepared at its first use.
                tracing::warn!(error = %e, "could not prepare a statement at start");
            }
        }
        Ok::<_, deadpool_postgres::PoolError>(client)
    }))
    .await;
    let opened = held.iter().filter(|c| c.is_ok()).count();
    if let Some(Err(e)) = held.iter().find(|c| c.is_err()) {
        tracing::warn!(error = %e, opened, wanted = n, "could not open every pooled connection at start");
    }
    opened
}

/// One connection outside the pool, with TLS as `url` asks and bounded connects, whose
/// connection half the caller drives (e.g. to receive notifications).
pub async fn connect_raw(
    url: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio_postgres::Connection<Socket, tls::RustlsStream<Socket>>,
)> {
    let tls::DbTarget {
        mut config, tls, ..
    } = tls::parse(url)?;
    DbTimeouts::default().apply_transport(&mut config);
    config
        .connect(tls)
        .await
        .context("connecting to PostgreSQL")
}

/// Opens one connection outside the pool (migrations, LISTEN).
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = connect_raw(url).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// A parsed configuration written back as a URL: host (TCP or socket directory), port, user,
/// password and database, no other option. For tools that derive one database from
/// `DATABASE_URL` (the test harness and `chat-bench` make a fresh one per run). The URL carries
/// the password: never log it.
pub fn url_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("root");
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or("postgres");
    if host.starts_with('/') {
        format!("postgres://{user}{password}@localhost:{port}/{db}?host={host}")
    } else {
        format!("postgres://{user}{password}@{host}:{port}/{db}")
    }
}

/// Creates the database named in `url` if it does not exist, via the `postgres` database.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let tls::DbTarget { config, tls, .. } = tls::parse(url)?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    if connect(url).await.is_ok() {
        return Ok(());
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    DbTimeouts::default().apply_transport(&mut admin);
    let (client, connection) = admin.connect(tls).await.with_context(|| {
        "connecting to PostgreSQL (is it running? `make run` starts one)".to_owned()
    })?;
    tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        match client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another process created it at the same moment.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e).context("creating the database"),
        }
    }
    Ok(())
}

/// Applies pending migrations. Safe from several processes at once: each waits for a
/// session-level advisory lock, and the later ones find nothing left to apply.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("taking the migration lock")?;
    let result = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .context("applying migrations");
    // The lock also ends with the session; unlocking explicitly frees it for waiters sooner.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let report = result?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}
