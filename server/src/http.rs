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
        .merge(crate::web::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api_router)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", api))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(cors)
        .with_state(state)
}

/// The origins of `CORS_ORIGINS`: `None` for `*` (any origin, never with credentials), else
/// each one checked to be `http(s)://host[:port]`.
pub fn parse_origins(origins: &[String]) -> Result<Option<Vec<HeaderValue>>, String> {
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.contains(&"*") {
        return if origins.len() == 1 {
            Ok(None)
        } else {
            Err("CORS_ORIGINS: `*` means any origin and cannot be listed with others".into())
        };
    }
    origins
        .into_iter()
        .map(|origin| {
            let bad = || {
                format!("CORS_ORIGINS: `{origin}` is not an origin like https://chat.example.com")
            };
            let uri: axum::http::Uri = origin.parse().map_err(|_| bad())?;
            let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
            let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
            if !scheme_ok || uri.host().is_none_or(str::is_empty) || !bare {
                return Err(bad());
            }
            HeaderValue::from_str(origin.trim_end_matches('/')).map_err(|_| bad())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    // Checked at start (`Config::validate`); an unreadable list allows no origin.
    let allow = match parse_origins(origins) {
        Ok(None) => AllowOrigin::any(),
        Ok(Some(list)) => AllowOrigin::list(list),
        Err(_) => AllowOrigin::list(Vec::<HeaderValue>::new()),
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(3600))
}

/// Bounds a REST request, body included, by `REQUEST_TIMEOUT_SECS` (503 past it). The bound
/// is on producing the response head, so the streams are exempt by construction: a WebSocket
/// upgrade answers 101 at once and lives on in a task of its own, and an SSE answer streams its
/// body after its head.
async fn request_timeout(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = Duration::from_secs(state.config.request_timeout_secs);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("http_requests_timed_out_total").increment(1);
            ApiError::Unavailable("the request took too long; try again").into_response()
        }
    }
}

/// Content-Security-Policy of the API documentation page (Swagger UI styles its elements
/// inline, so styles may be inline there; scripts may not).
const DOCS_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Headers every response gets (no MIME sniffing, no referrer leaks), plus, on HTML pages, a
/// Content-Security-Policy forbidding framing. Pages that set their own policy keep it.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let docs = request.uri().path().starts_with("/docs");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        headers
            .entry(header::X_FRAME_OPTIONS)
            .or_insert(HeaderValue::from_static("DENY"));
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            let policy = if docs {
                DOCS_CSP
            } else {
                // Any other page: at least no framing, no plugins, no foreign base.
                "frame-ancestors 'none'; object-src 'none'; base-uri 'none'"
            };
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(policy),
            );
        }
    }
    response
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
