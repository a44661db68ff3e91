//! The server under test: a `chat-server` process the bench starts (fresh database, loopback
//! port, the fake provider) or one already running at a URL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// The password of every account the bench makes.
pub const PASSWORD: &str = "correct horse battery staple";
/// The JWT secret of a server the bench starts.
const JWT_SECRET: &str = "chat-bench-secret-of-at-least-32-bytes";

pub struct Target {
    pub base: String,
    pub ws_base: String,
    /// Process whose `/proc` figures go beside each result (absent: none reported).
    pub pid: Option<u32>,
    /// The server's own database (seeding, user setup).
    pub database_url: String,
    child: Option<Child>,
    /// Dropped at the end when the bench created it.
    created_db: Option<String>,
    admin_url: String,
}

/// Which providers the started server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Providers {
    /// The bench's fake Gemini for answers and embeddings.
    Gemini,
    /// Local MiniLM embeddings and the offline extractive answerer.
    Offline,
}

pub struct SpawnOptions<'a> {
    pub server_bin: &'a Path,
    pub admin_database_url: &'a str,
    pub kb_dir: &'a Path,
    pub providers: Providers,
    pub fake_url: &'a str,
    /// Extra `NAME=value` settings.
    pub env: &'a [(String, String)],
    pub log: &'a Path,
}

impl Target {
    /// Starts `chat-server` on a free loopback port with a fresh database and waits until
    /// `/readyz` answers 200 (at most `ready_within`).
    pub async fn spawn(opts: SpawnOptions<'_>, ready_within: Duration) -> anyhow::Result<Self> {
        let admin = server::db::connect(opts.admin_database_url)
            .await
            .context("connecting to PostgreSQL (set DATABASE_URL or --database-url)")?;
        let name = format!("chat_bench_{}", uuid::Uuid::new_v4().simple());
        let mut config: tokio_postgres::Config = opts.admin_database_url.parse()?;
        config.dbname(&name);
        let database_url = server::db::url_of(&config);

        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let log = std::fs::File::create(opts.log)
            .with_context(|| format!("creating {}", opts.log.display()))?;
        let mut command = Command::new(opts.server_bin);
        command
            .env("DATABASE_URL", &database_url)
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("JWT_SECRET", JWT_SECRET)
            .env("KNOWLEDGE_BASE_DIR", opts.kb_dir)
            .env("RUST_LOG", "warn")
            .env("ASKS_PER_MINUTE", "100000000")
            .env("WS_MAX_SOCKETS_PER_USER", "1000000")
            .env("WS_MAX_UNAUTHENTICATED", "100000")
            .env("SIGNUP_MAX_PER_ADDR", "100000000")
            .env("LOGIN_MAX_FAILURES_PER_ADDR", "100000000")
            .env("MAILER", "console")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        match opts.providers {
            Providers::Gemini => {
                command
                    .env("GEMINI_API_KEY", "bench-key")
                    .env("GEMINI_BASE_URL", opts.fake_url)
                    .env("LLM_PROVIDER", "gemini")
                    .env("EMBEDDING_PROVIDER", "gemini")
                    // The fake's bag-of-words vectors are not on Gemini's similarity scale:
                    // keep every retrieved passage so each ask reaches the provider.
                    .env("RAG_MIN_SIMILARITY", "-1");
            }
            Providers::Offline => {
                command
                    .env_remove("GEMINI_API_KEY")
                    .env("LLM_PROVIDER", "offline")
                    .env("EMBEDDING_PROVIDER", "local");
            }
        }
        for (k, v) in opts.env {
            command.env(k, v);
        }
        // The database last, so that nothing fails between its creation and a target that
        // drops it on `stop`.
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                    .await;
                let bin = opts.server_bin.display();
                return Err(e).context(format!("starting {bin} (its database {name} dropped)"));
            }
        };
        let mut target = Self {
            base: format!("http://127.0.0.1:{port}"),
            ws_base: format!("ws://127.0.0.1:{port}"),
            pid: Some(child.id()),
            database_url,
            child: Some(child),
            created_db: Some(name.clone()),
            admin_url: opts.admin_database_url.to_owned(),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + ready_within;
        loop {
            if let Some(child) = target.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                // Already reaped: only its database is left to drop.
                target.child = None;
                target.stop().await;
                anyhow::bail!(
                    "chat-server exited during start ({status}); see {}; its database {name} dropped",
                    opts.log.display()
                );
            }
            let ready = client
                .get(format!("{}/readyz", target.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                target.stop().await;
                anyhow::bail!(
                    "chat-server not ready within {ready_within:?}; its database {name} dropped"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(target)
    }

    /// A server already running (its database given for seeding; its pid for `/proc`).
    pub fn existing(url: &str, pid: Option<u32>, database_url: &str) -> Self {
        let base = url.trim_end_matches('/').to_owned();
        let ws_base = base.replacen("http", "ws", 1);
        Self {
            base,
            ws_base,
            pid,
            database_url: database_url.to_owned(),
            child: None,
            created_db: None,
            admin_url: database_url.to_owned(),
        }
    }

    pub fn sample(&self) -> crate::stats::ProcSample {
        crate::stats::sample_with_machine(self.pid)
    }

    /// Stops a started server (SIGTERM, then kill) and drops its database.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill only sends a signal to our own child.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(name) = self.created_db.take()
            && let Ok(admin) = server::db::connect(&self.admin_url).await
        {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// `chat-server` next to this binary (same cargo profile), else `CHAT_SERVER_BIN`.
pub fn default_server_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("CHAT_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    let me = std::env::current_exe().unwrap_or_default();
    let dir = me.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live one level down, in `deps/`.
    for candidate in [dir.join("chat-server"), dir.join("../chat-server")] {
        if candidate.is_file() {
            return candidate;
        }
    }
    dir.join("chat-server")
}
