//! The real server for a test: in-process on a random port ([`spawn_app`]) with a fresh
//! database, offline providers and the small fixture knowledge base, or the real `chat-server`
//! binary as a child process ([`server_process`]).

use std::net::SocketAddr;
use std::sync::Once;

use protocol::auth::TokenPair;
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use server::config::Config;
use server::startup::Application;
use server::state::AppState;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::db::fresh_database;
use crate::ws::Ws;
use crate::{fixture, workspace_dir};

/// Settings for a test server: a fresh database, a random port, offline providers,
/// the small fixture knowledge base, a fixed JWT secret.
pub async fn test_config() -> Config {
    let mut config = Config::parse_from(["chat-server"]).expect("default config");
    config.database_url = fresh_database().await;
    config.bind_addr = "127.0.0.1:0".parse().expect("addr");
    // Many servers start in one test run: two warm connections each, the rest on demand.
    config.db_pool_warm = Some(2);
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

    /// `method path` with `token` as the bearer, to be finished and sent by [`send`].
    fn authed(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// `GET path` without credentials.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        send(self.client.get(self.url(path))).await
    }

    /// `GET path` with `token` as the bearer.
    pub async fn get_authed(&self, path: &str, token: &str) -> reqwest::Response {
        send(self.authed(Method::GET, path, token)).await
    }

    /// `GET path` with `token` as the bearer; asserts 200 and parses the JSON body.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str, token: &str) -> T {
        let response = self.get_authed(path, token).await;
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("a JSON body")
    }

    /// `POST path` with no body and `token` as the bearer.
    pub async fn post_authed(&self, path: &str, token: &str) -> reqwest::Response {
        send(self.authed(Method::POST, path, token)).await
    }

    /// `POST path` with a JSON body and `token` as the bearer.
    pub async fn post_json_authed(
        &self,
        path: &str,
        token: &str,
        body: &Value,
    ) -> reqwest::Response {
        send(self.authed(Method::POST, path, token).json(body)).await
    }

    /// `DELETE path` with `token` as the bearer.
    pub async fn delete_authed(&self, path: &str, token: &str) -> reqwest::Response {
        send(self.authed(Method::DELETE, path, token)).await
    }

    /// The single `count(*)`-style number `sql` selects, straight from the database.
    pub async fn count(&self, sql: &str) -> i64 {
        self.db()
            .await
            .query_one(sql, &[])
            .await
            .expect("count query")
            .get(0)
    }

    /// Opens a websocket to `path`, with `token` (if any) in the `Authorization` header.
    pub async fn try_ws_connect(&self, path: &str, token: Option<&str>) -> Result<Ws, WsError> {
        let mut request = self.ws_url(path).into_client_request().expect("ws request");
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header value"),
            );
        }
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| ws)
    }

    /// Opens a websocket to `path` authenticated by the `Authorization` header.
    pub async fn ws_connect_path(&self, path: &str, token: &str) -> Ws {
        self.try_ws_connect(path, Some(token))
            .await
            .expect("socket connects")
    }

    /// Opens the chat socket authenticated by the `Authorization` header.
    pub async fn ws_connect(&self, token: &str) -> Ws {
        self.ws_connect_path("/ws/chat", token).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        send(self.client.post(self.url(path)).json(body)).await
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
        self.login_tokens(username, password).await
    }

    /// Logs `username` in; asserts 200 and returns the token pair.
    pub async fn login_tokens(&self, username: &str, password: &str) -> TokenPair {
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

/// Sends a test request; failing to reach the server at all fails the test.
async fn send(request: RequestBuilder) -> reqwest::Response {
    request.send().await.expect("request sent")
}

/// The real `chat-server` binary (`bin`: the caller's `env!("CARGO_BIN_EXE_chat-server")`) as a
/// process on `127.0.0.1:port`: the fixture knowledge base, the local model, the OpenAI-compatible
/// fake at `fake_url`, a 1 s heartbeat; output discarded, killed when dropped. Callers add what
/// their test needs (`INSTANCE_STALE_SECS`, limits) with `.env`.
pub fn server_process(
    bin: &str,
    port: u16,
    database_url: &str,
    fake_url: &str,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_SECRET", "test-secret-of-at-least-32-bytes!!")
        .env("KNOWLEDGE_BASE_DIR", fixture("kb"))
        .env("MODEL_DIR", workspace_dir().join("models/all-MiniLM-L6-v2"))
        .env("LLM_PROVIDER", "openai")
        .env("EMBEDDING_PROVIDER", "local")
        .env("OPENAI_BASE_URL", fake_url)
        .env("LLM_MODEL", "fake-model")
        .env("INSTANCE_HEARTBEAT_SECS", "1")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}
