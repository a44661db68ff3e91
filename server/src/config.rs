//! Typed configuration, parsed once at start (flags or environment, `.env` honoured) and
//! validated before anything else runs. Nothing below this module reads the environment.
//!
//! Why one file: every setting, its flag, environment name, default and validation in one place, so
//! the README's settings table and this file can be read side by side.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use protocol::Secret;

#[derive(Debug, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "The support-chat brain: accounts, grounded streaming answers, history, jobs",
    long_about = "The support-chat brain: accounts, grounded streaming answers, history, jobs.\n\n\
                  Every setting can be given as a flag or as the environment variable named in \
                  brackets; a `.env` file in the working directory is read first."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Evaluate retrieval and answers on the shipped question sets and print the scores of each
    /// and their mean.
    Eval {
        /// Question sets (JSON); each may name its own knowledge base (`knowledge_base`).
        #[arg(
            long,
            num_args = 1..,
            default_values = ["eval/questions.json", "eval/python-faq/questions.json"]
        )]
        questions: Vec<PathBuf>,
    },
    /// Import the Django prototype's users and chat history (idempotent; see the README).
    ImportDjango(ImportDjangoArgs),
}

/// `chat-server import-django`: what to copy from the Django prototype's database.
#[derive(Debug, Clone, Args)]
pub struct ImportDjangoArgs {
    /// PostgreSQL URL of the Django database (read only; its password is never printed).
    #[arg(long = "from", value_name = "POSTGRES_URL")]
    pub from: Secret,
    /// Read and report what would be imported, writing nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give Django staff accounts (`is_staff`) the admin role; without it everyone is a user.
    #[arg(long)]
    pub admins: bool,
    /// Also import history older than HISTORY_RETENTION_DAYS (the next cleanup deletes it
    /// unless the retention is raised).
    #[arg(long)]
    pub keep_old: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LlmProvider {
    Gemini,
    Openai,
    Offline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmbeddingProvider {
    Gemini,
    Openai,
    Local,
}

impl EmbeddingProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gemini => "gemini",
            Self::Openai => "openai",
            Self::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    // --- service ---
    /// PostgreSQL URL (may hold a password: its value is never printed).
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://root@127.0.0.1:5432/support_chat"
    )]
    pub database_url: String,
    /// Maximum pooled database connections.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    /// Pooled connections opened at start (default: all `DB_POOL_SIZE`), each with the ask
    /// path's statements prepared, so the first burst of questions does not wait on connects,
    /// TLS handshakes and statement parsing.
    #[arg(long, env = "DB_POOL_WARM")]
    pub db_pool_warm: Option<usize>,
    /// Listen address (port 0 picks a free port).
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8000")]
    pub bind_addr: SocketAddr,
    /// Origins allowed to call the API from a browser, comma-separated.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Largest accepted REST request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// Drain timeout: seconds to let requests and answers in flight finish after SIGTERM (chat
    /// sockets are closed at once with 1012 and resume their answers on another instance).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,
    /// Seconds between an instance's heartbeats in the shared live-sessions table.
    #[arg(long, env = "INSTANCE_HEARTBEAT_SECS", default_value_t = 10)]
    pub instance_heartbeat_secs: u64,
    /// Seconds without a heartbeat after which an instance's live sessions are dropped.
    #[arg(long, env = "INSTANCE_STALE_SECS", default_value_t = 30)]
    pub instance_stale_secs: u64,

    // --- auth ---
    /// HMAC secret for tokens, at least 32 bytes. Unset: a random one per start.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Access-token lifetime in seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 15 * 60)]
    pub access_token_ttl_secs: u64,
    /// Refresh-token lifetime in seconds.
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 24 * 60 * 60)]
    pub refresh_token_ttl_secs: u64,
    /// Failed logins per (username, client address) before that pair is locked out: someone
    /// else's failures never lock a user out at their own address.
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: u32,
    /// Window and lockout length for failed logins, in seconds.
    #[arg(long, env = "LOGIN_LOCKOUT_SECS", default_value_t = 300)]
    pub login_lockout_secs: u64,
    /// Failed logins per client address (any usernames) before that address is locked out.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ADDR", default_value_t = 30)]
    pub login_max_failures_per_addr: u32,
    /// Sign-ups per client address within SIGNUP_WINDOW_SECS.
    #[arg(long, env = "SIGNUP_MAX_PER_ADDR", default_value_t = 10)]
    pub signup_max_per_addr: u32,
    /// Window of the per-address sign-up limit, in seconds.
    #[arg(long, env = "SIGNUP_WINDOW_SECS", default_value_t = 600)]
    pub signup_window_secs: u64,
    /// Sign-ups per minute across all addresses (0: no global limit).
    #[arg(long, env = "SIGNUP_MAX_PER_MINUTE", default_value_t = 0)]
    pub signup_max_per_minute: u32,
    /// Password-hashing worker threads [default: one per core].
    #[arg(long, env = "HASH_WORKERS")]
    pub hash_workers: Option<usize>,
    /// Password checks waiting for a hashing worker; past it sign-ups and logins get a 503
    /// with Retry-After.
    #[arg(long, env = "HASH_QUEUE", default_value_t = crate::auth::password::DEFAULT_QUEUE)]
    pub hash_queue: usize,
    /// Reverse proxies (CIDRs or addresses, comma-separated) whose X-Forwarded-For or
    /// Forwarded header names the client. Empty: the TCP peer is the client.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Bootstrap an admin account with this name at start if absent.
    #[arg(long, env = "ADMIN_USERNAME")]
    pub admin_username: Option<String>,
    /// Password of the bootstrap admin account.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,

    // --- providers ---
    /// Gemini API key; enables Gemini for answers and embeddings.
    #[arg(long, env = "GEMINI_API_KEY", hide_env_values = true)]
    pub gemini_api_key: Option<Secret>,
    /// Gemini API root.
    #[arg(
        long,
        env = "GEMINI_BASE_URL",
        default_value = "https://generativelanguage.googleapis.com"
    )]
    pub gemini_base_url: String,
    /// Thinking budget for Gemini 2.5 (0 turns thinking off, for latency).
    #[arg(long, env = "GEMINI_THINKING_BUDGET", default_value_t = 0)]
    pub gemini_thinking_budget: i32,
    /// Answer provider [default: gemini when GEMINI_API_KEY is set, else offline].
    #[arg(long, env = "LLM_PROVIDER", value_enum)]
    pub llm_provider: Option<LlmProvider>,
    /// Embedding provider [default: gemini when GEMINI_API_KEY is set, else local].
    #[arg(long, env = "EMBEDDING_PROVIDER", value_enum)]
    pub embedding_provider: Option<EmbeddingProvider>,
    /// Root of an OpenAI-compatible server (Ollama, vLLM, llama.cpp, TEI), with or without `/v1`.
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "http://127.0.0.1:11434"
    )]
    pub openai_base_url: String,
    /// API key of the OpenAI-compatible server, if it wants one.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,
    /// Answer model [default: gemini-2.5-flash for gemini; required for openai].
    #[arg(long, env = "LLM_MODEL")]
    pub llm_model: Option<String>,
    /// Embedding model [default: gemini-embedding-001 for gemini, all-MiniLM-L6-v2 for local].
    #[arg(long, env = "EMBEDDING_MODEL")]
    pub embedding_model: Option<String>,
    /// Output dimension asked of Gemini embeddings (128..=3072).
    #[arg(long, env = "EMBEDDING_DIM", default_value_t = 768)]
    pub embedding_dim: usize,
    /// Folder of the local embedding model (model.safetensors, tokenizer.json, config.json).
    #[arg(long, env = "MODEL_DIR", default_value = "./models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,
    /// Seconds to wait for a provider's first byte.
    #[arg(long, env = "PROVIDER_TIMEOUT_SECS", default_value_t = 30)]
    pub provider_timeout_secs: u64,
    /// Largest answer, in tokens.
    #[arg(long, env = "MAX_OUTPUT_TOKENS", default_value_t = 1024)]
    pub max_output_tokens: u32,

    // --- retrieval ---
    /// Documents to load (.md, .txt and .html, recursively).
    #[arg(long, env = "KNOWLEDGE_BASE_DIR", default_value = "./knowledge_base")]
    pub knowledge_base_dir: PathBuf,
    /// Passages given to the model as context.
    #[arg(long, env = "RAG_TOP_K", default_value_t = 4)]
    pub rag_top_k: usize,
    /// Cosine similarity under which a passage is not used as context [default: tuned per
    /// embedding model: 0.36 for all-MiniLM-L6-v2, 0.62 for Gemini, 0.40 for OpenAI-compatible].
    #[arg(long, env = "RAG_MIN_SIMILARITY")]
    pub rag_min_similarity: Option<f32>,
    /// Chunks from which the vector index is HNSW (approximate) instead of flat (exact).
    #[arg(long, env = "RAG_HNSW_THRESHOLD", default_value_t = crate::rag::index::HNSW_THRESHOLD)]
    pub rag_hnsw_threshold: usize,
    /// HNSW links per node (FAISS `HNSW<M>`): more is better recall, more memory, slower build.
    #[arg(long, env = "RAG_HNSW_M", default_value_t = 32)]
    pub rag_hnsw_m: usize,
    /// HNSW candidates kept while searching (efSearch): more is better recall, slower search.
    #[arg(long, env = "RAG_HNSW_EF_SEARCH", default_value_t = 64)]
    pub rag_hnsw_ef_search: usize,
    /// Milliseconds the local embedding model waits for more texts to embed in the same
    /// forward pass when several are already waiting (questions arriving together share one
    /// pass); a lone text is embedded at once.
    #[arg(long, env = "EMBED_BATCH_WINDOW_MS", default_value_t = 3)]
    pub embed_batch_window_ms: u64,
    /// Most texts in one forward pass of the local embedding model.
    #[arg(long, env = "EMBED_MAX_BATCH", default_value_t = 32)]
    pub embed_max_batch: usize,
    /// Cosine similarity from which the best passage is used without the lexical-support check
    /// [default: tuned per embedding model: 0.44 for all-MiniLM-L6-v2; for other models their
    /// RAG_MIN_SIMILARITY + 0.08, an estimate].
    #[arg(long, env = "RAG_CONFIDENT_SIMILARITY")]
    pub rag_confident_similarity: Option<f32>,
    /// Under the confident similarity, the share (0..=1) of the question's rare words (weighted
    /// by their rarity in the knowledge base) the top passages must contain; 0 turns the check
    /// off [default: 0.6].
    #[arg(long, env = "RAG_MIN_LEXICAL_SUPPORT")]
    pub rag_min_lexical_support: Option<f32>,
    /// Earlier question/answer pairs of the conversation put in the prompt.
    #[arg(long, env = "HISTORY_TURNS", default_value_t = 4)]
    pub history_turns: usize,

    // --- chat socket limits ---
    /// Largest accepted WebSocket frame, in bytes.
    #[arg(long, env = "WS_MAX_FRAME_BYTES", default_value_t = 16 * 1024)]
    pub ws_max_frame_bytes: usize,
    /// Read buffer of each WebSocket, in bytes (tungstenite allocates and zeroes it per socket,
    /// so it is most of an idle socket's memory; a bigger frame grows it for that frame).
    #[arg(long, env = "WS_READ_BUFFER_BYTES", default_value_t = 4 * 1024)]
    pub ws_read_buffer_bytes: usize,
    /// Bytes of outgoing frames collected before they are written to the network (every frame
    /// is flushed at once anyway; 0 writes each frame as it comes).
    #[arg(long, env = "WS_WRITE_BUFFER_BYTES", default_value_t = 0)]
    pub ws_write_buffer_bytes: usize,
    /// Most bytes one WebSocket may hold unwritten (a peer that does not read); past it the
    /// write fails and the socket closes.
    #[arg(long, env = "WS_MAX_WRITE_BUFFER_BYTES", default_value_t = 1024 * 1024)]
    pub ws_max_write_buffer_bytes: usize,
    /// Longest accepted question, in characters.
    #[arg(long, env = "MAX_QUESTION_CHARS", default_value_t = 2000)]
    pub max_question_chars: usize,
    /// Answers in flight per connection.
    #[arg(long, env = "WS_MAX_IN_FLIGHT", default_value_t = 2)]
    pub ws_max_in_flight: usize,
    /// Questions per minute per user (socket and REST together, across all instances).
    #[arg(long, env = "ASKS_PER_MINUTE", default_value_t = 20)]
    pub asks_per_minute: u32,
    /// Seconds between server pings on the socket.
    #[arg(long, env = "WS_PING_SECS", default_value_t = 20)]
    pub ws_ping_secs: u64,
    /// Chat sockets one user may hold open at once, counted across all instances.
    #[arg(long, env = "WS_MAX_SOCKETS_PER_USER", default_value_t = 16)]
    pub ws_max_sockets_per_user: usize,
    /// Chat sockets still waiting for their `auth` frame; past it new upgrades get a 503.
    #[arg(long, env = "WS_MAX_UNAUTHENTICATED", default_value_t = 512)]
    pub ws_max_unauthenticated: usize,
    /// Seconds a chat socket has to send its `auth` frame.
    #[arg(long, env = "WS_AUTH_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_auth_timeout_secs: u64,
    /// Seconds a client has to send a request's headers before the connection is closed.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// Seconds a REST request may take, body included (the chat socket, the admin event socket
    /// and SSE streams are exempt).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 60)]
    pub request_timeout_secs: u64,

    // --- jobs ---
    /// Age in days after which history is deleted.
    #[arg(long, env = "HISTORY_RETENTION_DAYS", default_value_t = 30)]
    pub history_retention_days: u32,
    /// Cron expression with seconds (6 fields) for the history cleanup.
    #[arg(long, env = "CLEANUP_SCHEDULE", default_value = "0 0 3 * * *")]
    pub cleanup_schedule: String,
    /// `console`, or an `smtp://` / `smtps://` URL (credentials in the URL).
    #[arg(
        long,
        env = "MAILER",
        default_value = "console",
        hide_env_values = true
    )]
    pub mailer: Secret,
    /// Sender address of outgoing mail.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Northwind Support <support@northwind.example>"
    )]
    pub mail_from: String,

    // --- database faults ---
    /// Seconds the final write of an answer (complete, cancelled or failed) keeps being retried,
    /// with backoff, while the database is unreachable; the client gets its `done` meanwhile.
    /// Past it the answer is logged with its message id and counted as lost.
    #[arg(long, env = "ANSWER_WRITE_RETRY_SECS", default_value_t = 600)]
    pub answer_write_retry_secs: u64,
    /// Seconds to wait for a new database connection (TCP connect, TLS handshake, login).
    #[arg(long, env = "DB_CONNECT_TIMEOUT_SECS", default_value_t = 5)]
    pub db_connect_timeout_secs: u64,
    /// Seconds a request waits for a pooled database connection before answering 503.
    #[arg(long, env = "DB_POOL_WAIT_SECS", default_value_t = 5)]
    pub db_pool_wait_secs: u64,
    /// Server-side statement timeout of pooled connections, in seconds (0: none).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_SECS", default_value_t = 15)]
    pub db_statement_timeout_secs: u64,
    /// Idle seconds before TCP keepalive probes start on database connections.
    #[arg(long, env = "DB_KEEPALIVE_SECS", default_value_t = 30)]
    pub db_keepalive_secs: u64,
    /// Seconds sent data may stay unacknowledged before a database connection counts as broken
    /// (TCP_USER_TIMEOUT: a network partition fails queries instead of hanging them).
    #[arg(long, env = "DB_TCP_USER_TIMEOUT_SECS", default_value_t = 20)]
    pub db_tcp_user_timeout_secs: u64,
    // --- Django prototype compatibility ---
    /// `GET /api/chat-history/` without `limit`/`before` answers the Django prototype's bare
    /// list `[{id, user_message, ai_response, created_at}]` (newest 100) instead of a page.
    #[arg(long, env = "SEED_COMPAT_HISTORY", value_parser = clap::builder::BoolishValueParser::new())]
    pub seed_compat_history: bool,
    // --- knowledge gaps and documents ---
    /// Cosine similarity at which two questions join one knowledge gap [default: halfway
    /// between the embedder's relevance threshold and 1: 0.68 for all-MiniLM-L6-v2].
    #[arg(long, env = "GAPS_SIMILARITY")]
    pub gaps_similarity: Option<f32>,
    /// Best-passage similarity under which an answered question counts as weakly grounded
    /// [default: the relevance threshold + 0.05].
    #[arg(long, env = "GAPS_WEAK_SCORE")]
    pub gaps_weak_score: Option<f32>,
    /// Largest document accepted by `PUT /api/admin/kb/documents/{name}`, in bytes.
    #[arg(long, env = "KB_MAX_DOCUMENT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub kb_max_document_bytes: usize,
}

/// A configuration problem found at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    #[error(
        "JWT_SECRET must be at least 32 bytes (got {0}); generate one with `openssl rand -hex 32`"
    )]
    JwtSecretTooShort(usize),
    #[error("KNOWLEDGE_BASE_DIR {path} cannot be read: {reason}")]
    KnowledgeBase { path: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses flags and environment (after loading `.env`), as `main` does.
    pub fn from_env_and_args() -> Cli {
        let _ = dotenvy::dotenv();
        Cli::parse()
    }

    /// Parses from an explicit argument list and the environment; used by tests and tools.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args).map(|cli| cli.config)
    }

    /// Checks what can be checked without I/O to other services.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::db::tls::parse(&self.database_url)
            .map_err(|e| ConfigError::DatabaseUrl(format!("{e:#}")))?;
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < 32
        {
            return Err(ConfigError::JwtSecretTooShort(secret.expose().len()));
        }
        std::fs::read_dir(&self.knowledge_base_dir).map_err(|e| ConfigError::KnowledgeBase {
            path: self.knowledge_base_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        if !(128..=3072).contains(&self.embedding_dim) {
            return Err(ConfigError::Invalid(format!(
                "EMBEDDING_DIM must be within 128..=3072 (got {})",
                self.embedding_dim
            )));
        }
        if self.rag_top_k == 0 || self.ws_max_in_flight == 0 || self.asks_per_minute == 0 {
            return Err(ConfigError::Invalid(
                "RAG_TOP_K, WS_MAX_IN_FLIGHT and ASKS_PER_MINUTE must be at least 1".into(),
            ));
        }
        if let Some(t) = self.rag_min_similarity
            && !(-1.0..=1.0).contains(&t)
        {
            return Err(ConfigError::Invalid(format!(
                "RAG_MIN_SIMILARITY is a cosine similarity within -1..=1 (got {t})"
            )));
        }
        if let Some(t) = self.rag_confident_similarity
            && !(-1.0..=1.0).contains(&t)
        {
            return Err(ConfigError::Invalid(format!(
                "RAG_CONFIDENT_SIMILARITY is a cosine similarity within -1..=1 (got {t})"
            )));
        }
        if let Some(s) = self.rag_min_lexical_support
            && !(0.0..=1.0).contains(&s)
        {
            return Err(ConfigError::Invalid(format!(
                "RAG_MIN_LEXICAL_SUPPORT is a share within 0..=1 (got {s})"
            )));
        }
        if self.instance_heartbeat_secs == 0
            || self.instance_stale_secs <= self.instance_heartbeat_secs
        {
            return Err(ConfigError::Invalid(
                "INSTANCE_HEARTBEAT_SECS must be at least 1 and below INSTANCE_STALE_SECS".into(),
            ));
        }
        if self.admin_username.is_some() != self.admin_password.is_some() {
            return Err(ConfigError::Invalid(
                "ADMIN_USERNAME and ADMIN_PASSWORD go together".into(),
            ));
        }
        crate::client_ip::TrustedProxies::parse(&self.trusted_proxies)
            .map_err(ConfigError::Invalid)?;
        crate::http::parse_origins(&self.cors_origins).map_err(ConfigError::Invalid)?;
        if self.header_read_timeout_secs == 0
            || self.request_timeout_secs == 0
            || self.ws_auth_timeout_secs == 0
        {
            return Err(ConfigError::Invalid(
                "HEADER_READ_TIMEOUT_SECS, REQUEST_TIMEOUT_SECS and WS_AUTH_TIMEOUT_SECS must be at least 1".into(),
            ));
        }
        if self.embed_max_batch == 0
            || !(4..=128).contains(&self.rag_hnsw_m)
            || self.rag_hnsw_ef_search == 0
        {
            return Err(ConfigError::Invalid(
                "EMBED_MAX_BATCH and RAG_HNSW_EF_SEARCH must be at least 1, RAG_HNSW_M within 4..=128".into(),
            ));
        }
        if self.ws_read_buffer_bytes < 256
            || self.ws_max_write_buffer_bytes <= self.ws_write_buffer_bytes
        {
            return Err(ConfigError::Invalid(
                "WS_READ_BUFFER_BYTES must be at least 256 and WS_MAX_WRITE_BUFFER_BYTES above WS_WRITE_BUFFER_BYTES".into(),
            ));
        }
        if self.ws_max_sockets_per_user == 0 || self.hash_workers == Some(0) {
            return Err(ConfigError::Invalid(
                "WS_MAX_SOCKETS_PER_USER and HASH_WORKERS must be at least 1".into(),
            ));
        }
        let mailer = self.mailer.expose();
        if mailer != "console" && !mailer.starts_with("smtp://") && !mailer.starts_with("smtps://")
        {
            return Err(ConfigError::Invalid(
                "MAILER must be `console` or an smtp:// or smtps:// URL".into(),
            ));
        }
        Ok(())
    }

    /// The vector-index choice and tuning.
    pub fn index_settings(&self) -> crate::rag::index::IndexSettings {
        crate::rag::index::IndexSettings {
            hnsw_threshold: self.rag_hnsw_threshold,
            params: crate::rag::index::HnswParams {
                m: self.rag_hnsw_m,
                ef_search: self.rag_hnsw_ef_search,
            },
        }
    }

    /// The answer provider in force: explicit, else Gemini with a key, else offline.
    pub fn llm_provider(&self) -> LlmProvider {
        self.llm_provider
            .unwrap_or(if self.gemini_api_key.is_some() {
                LlmProvider::Gemini
            } else {
                LlmProvider::Offline
            })
    }

    /// The Gemini API root as the clients want it: without a trailing `/` or `/v1beta`, so
    /// either spelling of `GEMINI_BASE_URL` works.
    pub fn gemini_root(&self) -> String {
        api_root(&self.gemini_base_url, "/v1beta")
    }

    /// The OpenAI-compatible root as the clients want it: without a trailing `/` or `/v1`
    /// (servers document their URL both ways, e.g. `http://127.0.0.1:11434/v1`).
    pub fn openai_root(&self) -> String {
        api_root(&self.openai_base_url, "/v1")
    }

    /// The embedding provider in force: explicit, else Gemini with a key, else local.
    pub fn embedding_provider(&self) -> EmbeddingProvider {
        self.embedding_provider
            .unwrap_or(if self.gemini_api_key.is_some() {
                EmbeddingProvider::Gemini
            } else {
                EmbeddingProvider::Local
            })
    }
}

fn api_root(url: &str, version: &str) -> String {
    let url = url.trim_end_matches('/');
    url.strip_suffix(version).unwrap_or(url).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec!["chat-server", "--knowledge-base-dir", "."];
        args.extend_from_slice(extra);
        Config::parse_from(args).unwrap()
    }

    #[test]
    fn short_jwt_secret_is_refused() {
        let config = parse(&["--jwt-secret", "short"]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::JwtSecretTooShort(5))
        ));
        let config = parse(&["--jwt-secret", &"x".repeat(32)]);
        config.validate().unwrap();
    }

    #[test]
    fn bad_database_url_is_refused() {
        let config = parse(&["--database-url", "postgres://host:notaport/db"]);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::DatabaseUrl(_))
        ));
    }

    #[test]
    fn unreadable_knowledge_base_is_refused() {
        let mut config = parse(&[]);
        config.knowledge_base_dir = "/nonexistent/kb".into();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::KnowledgeBase { .. })
        ));
    }

    #[test]
    fn provider_roots_accept_a_versioned_url() {
        for (given, root) in [
            ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
            ("http://127.0.0.1:11434/", "http://127.0.0.1:11434"),
            ("http://127.0.0.1:11434/v1", "http://127.0.0.1:11434"),
            ("http://127.0.0.1:11434/v1/", "http://127.0.0.1:11434"),
        ] {
            let config = parse(&["--openai-base-url", given]);
            assert_eq!(config.openai_root(), root, "{given}");
        }
        let config = parse(&["--gemini-base-url", "https://g.example/v1beta/"]);
        assert_eq!(config.gemini_root(), "https://g.example");
    }

    #[test]
    fn cors_and_proxies_are_checked_at_start() {
        parse(&["--cors-origins", "*"]).validate().unwrap();
        parse(&["--cors-origins", "https://a.example,http://b.example:8080"])
            .validate()
            .unwrap();
        for bad in [
            "not an origin",
            "https://a.example/path",
            "ftp://a.example",
            "https://",
        ] {
            let err = parse(&["--cors-origins", bad]).validate().unwrap_err();
            assert!(matches!(err, ConfigError::Invalid(_)), "{bad}: {err}");
        }
        parse(&["--trusted-proxies", "10.0.0.0/8,::1"])
            .validate()
            .unwrap();
        assert!(matches!(
            parse(&["--trusted-proxies", "10.0.0.0/40"]).validate(),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let config = parse(&["--jwt-secret", "super-secret-value-that-is-long-enough"]);
        assert!(!format!("{config:?}").contains("super-secret"));
    }
}
