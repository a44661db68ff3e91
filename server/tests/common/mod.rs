//! Test harness: the real server on a random port, a fresh PostgreSQL database per test.
//!
//! Each test binary includes this with `mod common;`. Not every binary uses every helper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Once;

use protocol::auth::TokenPair;
use serde_json::{Value, json};
use server::config::Config;
use server::startup::Application;
use server::state::AppState;

/// The server where test databases are created: `TEST_DATABASE_URL`, else `DATABASE_URL`,
/// else the local default.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty database with a unique name and returns its URL.
pub async fn fresh_database() -> String {
    let admin_url = admin_database_url();
    let name = format!("sct_{}", uuid::Uuid::new_v4().simple());
    let client = server::db::connect(&admin_url)
        .await
        .expect("test PostgreSQL reachable (set TEST_DATABASE_URL)");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let mut config: tokio_postgres::Config = admin_url.parse().expect("valid admin URL");
    config.dbname(&name);
    url_of(&config)
}

fn url_of(config: &tokio_postgres::Config) -> String {
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

pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// Settings for a test server: a fresh database, a random port, offline providers,
/// the small fixture knowledge base, a fixed JWT secret.
pub async fn test_config() -> Config {
    let mut config = Config::parse_from(["chat-server"]).expect("default config");
    config.database_url = fresh_database().await;
    config.bind_addr = "127.0.0.1:0".parse().expect("addr");
    config.jwt_secret = Some(server::config::Secret::new(
        "test-secret-of-at-least-32-bytes!!",
    ));
    config.knowledge_base_dir = fixture("kb");
    config.model_dir = workspace_dir().join("models/all-MiniLM-L6-v2");
    config.gemini_api_key = None;
    config.llm_provider = None;
    config.embedding_provider = None;
    config.mailer = server::config::Secret::new("console");
    config.admin_username = None;
    config.admin_password = None;
    config.cors_origins = Vec::new();
    config
}

fn init_logs() {
    static ONCE: Once = Once::new();
    // Quiet unless asked for: TEST_LOG=1 (RUST_LOG filters).
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            server::telemetry::init_logging(server::config::LogFormat::Text);
        }
    });
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub database_url: String,
    pub state: AppState,
    pub client: reqwest::Client,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the test settings changed by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    init_logs();
    let mut config = test_config().await;
    adjust(&mut config);
    spawn_app_from(config).await
}

pub async fn spawn_app_from(config: Config) -> TestApp {
    init_logs();
    let database_url = config.database_url.clone();
    let app = Application::build(config)
        .await
        .expect("application builds");
    let addr = app.local_addr();
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        addr,
        base: format!("http://{addr}"),
        database_url,
        state,
        client: reqwest::Client::new(),
        server,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// A direct database connection, for assertions on what is stored.
    pub async fn db(&self) -> tokio_postgres::Client {
        server::db::connect(&self.database_url)
            .await
            .expect("test db connection")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn signup(&self, username: &str, email: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/signup/",
            &json!({"username": username, "email": email, "password": password}),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/login/",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Signs `username` up (password `correct horse battery`) and logs in.
    pub async fn user_tokens(&self, username: &str) -> TokenPair {
        let password = "correct horse battery";
        let response = self
            .signup(username, &format!("{username}@example.com"), password)
            .await;
        assert_eq!(response.status(), 201, "signup of {username}");
        let response = self.login(username, password).await;
        assert_eq!(response.status(), 200, "login of {username}");
        response.json().await.expect("token pair")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) {
        self.state.shutdown.cancel();
        let _ = self.server.await;
    }
}
