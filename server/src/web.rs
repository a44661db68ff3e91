//! The browser chat page at `/` and its script and style under `/static/`: embedded in the
//! binary, served with the security headers of a page a browser renders.
//!
//! The page is the reference client of the REST API and the chat socket (see
//! `server/static/app.js`). Its Content-Security-Policy allows only same-origin script, style and
//! connections (`connect-src 'self'` covers `ws:`/`wss:` to the same host), so the page holds no
//! inline code and makes no third-party request.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The page's Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The headers every page a browser renders gets (and its assets, so a stray response that a
/// browser sniffs or frames is covered too).
pub const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
];

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const APP_CSS: &str = include_str!("../static/app.css");

/// Revalidate on every load: the files are small and change with the binary.
const CACHE_CONTROL: &str = "no-cache";

/// `/`, `/static/app.js` and `/static/app.css`, with [`SECURITY_HEADERS`].
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .layer(axum::middleware::from_fn(security_headers))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        body,
    )
        .into_response()
}

/// Middleware: sets [`SECURITY_HEADERS`] on every response of the routes it wraps.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small() {
        let total = INDEX_HTML.len() + APP_JS.len() + APP_CSS.len();
        assert!(total < 64 * 1024, "page is {total} bytes");
    }

    #[test]
    fn the_html_holds_no_inline_script_or_style() {
        let html = INDEX_HTML.to_ascii_lowercase();
        // Every <script> loads a file; no <style> blocks, style attributes or event handlers.
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap_or(0)];
            assert!(tag.contains(" src=\"/static/"), "inline script: {tag}");
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "style attribute");
        assert!(!html.contains(" onclick="), "inline event handler");
        assert!(!html.contains("javascript:"), "javascript: URL");
    }

    #[test]
    fn the_page_names_no_other_origin() {
        for (name, text) in [("html", INDEX_HTML), ("js", APP_JS), ("css", APP_CSS)] {
            assert!(!text.contains("http://"), "{name} names an http:// URL");
            assert!(!text.contains("https://"), "{name} names an https:// URL");
            assert!(!text.contains("@import"), "{name} imports a stylesheet");
        }
    }

    #[test]
    fn model_text_never_reaches_the_page_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn the_policy_allows_only_the_own_origin() {
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'none';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    }
}
