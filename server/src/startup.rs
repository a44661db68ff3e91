//! Building and running the application: storage, services, workers, the listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Config;
use crate::state::AppState;

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
}

impl Application {
    /// Validates the configuration, migrates the database, loads the knowledge base, starts
    /// the background workers and binds the listener (port 0 picks a free one).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        crate::db::ensure_database(&config.database_url).await?;
        crate::db::migrate(&config.database_url).await?;
        let db = crate::db::pool_with(
            &config.database_url,
            config.db_pool_size,
            &crate::db::DbTimeouts::from_config(&config),
        )?;

        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let tokens = Arc::new(crate::auth::TokenService::from_config(&config)?);
        crate::rag::index::configure(config.index_settings());
        crate::auth::password::configure(config.hash_workers, config.hash_queue)
            .context("starting the password-hashing workers")?;
        let trusted_proxies = Arc::new(
            crate::client_ip::TrustedProxies::parse(&config.trusted_proxies)
                .map_err(|e| anyhow::anyhow!(e))?,
        );
        crate::auth::bootstrap_admin(&config, &db).await?;
        let warm = config.db_pool_warm.unwrap_or(config.db_pool_size);
        let opened = crate::db::warm(&db, warm, &crate::chat::HOT_STATEMENTS).await;
        tracing::debug!(opened, "database pool warmed");

        let answerer = Arc::new(crate::grounding::Answerer::start(&config, db.clone()).await?);

        // The registry records session changes; the cluster writer puts them in the shared table.
        let changes = Arc::new(crate::chat::session_changes::SessionChanges::default());
        let cluster = Arc::new(crate::cluster::Cluster::new(
            db.clone(),
            crate::cluster::ClusterSettings::from_config(&config),
            Arc::clone(&changes),
        ));
        let relay = Arc::new(crate::chat::relay::Relay::new(
            db.clone(),
            cluster.instance_id(),
            Duration::from_secs(config.instance_stale_secs),
        ));
        let state = AppState {
            config: Arc::new(config),
            db,
            tokens,
            answerer,
            sessions: Arc::new(crate::chat::sessions::SessionRegistry::with_changes(
                changes,
            )),
            cluster,
            relay,
            metrics: crate::telemetry::metrics_handle(),
            trusted_proxies,
            shutdown,
            tasks,
        };
        // Knowledge-base loads report their progress to the admin event socket.
        let admin_events = state.sessions.event_sender();
        state.answerer.rag().on_progress(move |progress| {
            let _ = admin_events.send(protocol::admin::AdminEvent::KbProgress { progress });
        });
        crate::jobs::start(
            &state.config,
            crate::jobs::Runtime {
                db: state.db.clone(),
                tasks: state.tasks.clone(),
                shutdown: state.shutdown.clone(),
                events: state.sessions.event_sender(),
                instance_id: state.cluster.instance_id(),
            },
        )
        .await?;
        state.tasks.spawn(crate::telemetry::upkeep(
            state.metrics.clone(),
            state.shutdown.clone(),
        ));
        state.tasks.spawn(crate::cluster::run(
            Arc::clone(&state.cluster),
            crate::cluster::TaskInputs {
                database_url: state.config.database_url.clone(),
                sessions: Arc::clone(&state.sessions),
                rag: Arc::clone(state.answerer.rag()),
                shutdown: state.shutdown.clone(),
            },
        ));
        let stale_after = Duration::from_secs(state.config.instance_stale_secs);
        crate::chat::orphans::start(&state.db, state.cluster.instance_id(), stale_after).await?;
        state
            .tasks
            .spawn(crate::chat::orphans::run(crate::chat::orphans::Heartbeat {
                db: state.db.clone(),
                instance_id: state.cluster.instance_id(),
                every: Duration::from_secs(state.config.instance_heartbeat_secs),
                stale_after,
                relay: Arc::clone(&state.relay),
                shutdown: state.shutdown.clone(),
            }));
        state.tasks.spawn(crate::chat::relay::run_sweeper(
            state.db.clone(),
            Duration::from_secs(state.config.instance_stale_secs),
            state.shutdown.clone(),
        ));

        let listener = TcpListener::bind(state.config.bind_addr)
            .await
            .with_context(|| format!("binding {}", state.config.bind_addr))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            listener,
            addr,
            state,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `state.shutdown` is cancelled, then stops accepting, lets requests and
    /// answers in flight finish (bounded by the grace period) and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            listener,
            addr,
            state,
        } = self;
        tracing::info!(%addr, "listening");
        let router = crate::http::router(state.clone());
        serve(listener, router, &state).await;

        state.tasks.close();
        let grace = Duration::from_secs(state.config.shutdown_grace_secs);
        if tokio::time::timeout(grace, state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pending = state.tasks.len(),
                "background work still running after the grace period; exiting anyway"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Accepts connections until shutdown and serves each as HTTP/1.1 (with WebSocket upgrades).
///
/// Written out rather than `axum::serve` for the header-read timeout: a client that never
/// finishes its headers (or sends nothing, or idles between keep-alive requests) is cut off
/// after `HEADER_READ_TIMEOUT_SECS` instead of holding a connection and a descriptor forever.
/// On shutdown each connection finishes its request in flight and closes; upgraded sockets
/// close themselves on the same token. Connection tasks are on `state.tasks`, so the drain
/// waits for them within the grace period.
async fn serve(listener: TcpListener, router: axum::Router, state: &AppState) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(state.config.header_read_timeout_secs));
    let shutdown = state.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors, mostly: wait for some to close instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Answers stream as many small frames: without TCP_NODELAY, Nagle's algorithm holds a
        // frame back until the client's delayed ACK (40 ms) arrives.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        state.tasks.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// Raises the soft open-file limit to the hard one: every socket is a descriptor, and the
/// usual soft limit (1024) would refuse connections long before memory runs short. Returns the
/// limit in force.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct handed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        Some(limit.rlim_cur)
    }
    #[cfg(not(unix))]
    None
}

/// Cancels `token` on ctrl-c or SIGTERM.
pub async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; draining");
    token.cancel();
}
