//! The browser chat page: its files and their security headers. The page itself is driven in
//! headless Chromium by `browser.rs`.

use server::web::{CONTENT_SECURITY_POLICY, SECURITY_HEADERS};

/// GETs `path`, asserts 200, the content type and every security header; returns the body.
async fn fetch_page_file(app: &test_support::TestApp, path: &str, content_type: &str) -> String {
    let response = app.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    let headers = response.headers();
    let got = headers["content-type"].to_str().unwrap();
    assert!(got.starts_with(content_type), "{path}: {got}");
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(headers[&name], value, "{path}: {name}");
    }
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
    response.text().await.unwrap()
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_security_headers() {
    let app = test_support::spawn_app().await;
    let page = fetch_page_file(&app, "/", "text/html").await;
    assert!(page.contains(r#"<script type="module" src="/static/app.js"></script>"#));
    assert!(page.contains(r#"<link rel="stylesheet" href="/static/app.css">"#));
    assert!(page.contains(r#"type="email""#), "the signup email field");

    let script = fetch_page_file(&app, "/static/app.js", "text/javascript").await;
    // The script speaks the documented protocol: REST accounts, then the socket.
    for needle in [
        "/api/login/",
        "/api/signup/",
        "/api/logout/",
        "/api/token/refresh/",
        "/api/conversations/",
        "/ws/chat",
        r#"type: "auth""#,
        r#"type: "ask""#,
        r#"type: "cancel""#,
        r#"type: "resume""#,
        r#"type: "feedback""#,
        "4001",
    ] {
        assert!(script.contains(needle), "app.js lacks {needle}");
    }
    let style = fetch_page_file(&app, "/static/app.css", "text/css").await;
    assert!(style.contains("@media (max-width: 720px)"));

    // Other paths are not the page: the API's JSON 404.
    let missing = app.get("/static/other.js").await;
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    app.stop().await;
}
