//! The one application state every handler receives: pools and shared services, cheap to clone.
//!
//! Rooms below the handlers (the auth and client-address extractors, the cluster tasks, the
//! jobs, the answer writes) never see this type: they take the parts they use, as arguments or
//! as axum sub-states ([`FromRef`], derived here for every field).

use std::sync::Arc;

use axum::extract::FromRef;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::tokens::TokenService;
use crate::chat::relay::Relay;
use crate::chat::sessions::SessionRegistry;
use crate::client_ip::TrustedProxies;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::grounding::Answerer;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Pool,
    /// Issues and verifies JWTs.
    pub tokens: Arc<TokenService>,
    /// Retrieval + model: the answer pipeline.
    pub answerer: Arc<Answerer>,
    /// Live chat sockets, for the admin view and the per-user limits.
    pub sessions: Arc<SessionRegistry>,
    /// This instance's id and its view of the other instances (shared live sessions, events).
    pub cluster: Arc<Cluster>,
    /// Answers published for resuming on any instance, and the limits all instances share.
    pub relay: Arc<Relay>,
    pub metrics: PrometheusHandle,
    /// Reverse proxies whose forwarding headers name the client (`TRUSTED_PROXIES`).
    pub trusted_proxies: Arc<TrustedProxies>,
    /// Cancelled on SIGTERM: sockets close, workers stop taking new work.
    pub shutdown: CancellationToken,
    /// Every background task (answers, workers) registers here so shutdown can wait for them.
    pub tasks: TaskTracker,
}
