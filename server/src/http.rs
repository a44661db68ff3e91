//! The router: every route, the shared middleware, health, metrics and the API documentation.

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Support chat API", description = "Accounts, grounded answers, history, admin."),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

mod error_docs;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The whole application router, state applied.
pub fn router(state: AppState) -> Router {
    let (api_router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::auth::routes())
        .merge(crate::chat::routes())
        .merge(crate::admin::routes())
        .split_for_parts();
    // After the merge, so every route's operation is there to complete.
    error_docs::CommonErrors.modify(&mut api);

    let cors = cors_layer(&state.config.cors_origins);
    Router::new()
        .route("/", get(index_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api_router)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(cors)
        .with_state(state)
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| !o.trim().is_empty())
        .filter_map(|o| HeaderValue::from_str(o.trim()).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(3600))
}

/// The browser chat page: sign up or log in, ask, watch the answer stream, see its sources.
async fn index_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("../static/index.html"))
}

/// The process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// Ready to serve: the database answers (503 while it does not; no restart needed after).
async fn readyz(State(state): State<AppState>) -> Response {
    let check = async {
        let client = state.db.get().await.ok()?;
        client.simple_query("SELECT 1").await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Some(_)) => (StatusCode::OK, "ready").into_response(),
        _ => ApiError::Unavailable("the database is unreachable").into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let status = state.db.status();
    metrics::gauge!("db_pool_connections").set(status.size as f64);
    metrics::gauge!("db_pool_available").set(status.available as f64);
    metrics::gauge!("db_pool_waiting").set(status.waiting as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

async fn method_not_allowed() -> Response {
    let body = protocol::ErrorBody::new(
        protocol::ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    );
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}
