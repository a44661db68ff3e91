//! The browser chat page.

mod common;

#[tokio::test]
async fn chat_page_is_served_at_the_root() {
    let app = common::spawn_app().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    // The page speaks the documented protocol: REST login, then the socket with an auth frame.
    for needle in [
        "/api/login/",
        "/api/signup/",
        "/ws/chat",
        r#"type: "auth""#,
        r#"type: "ask""#,
    ] {
        assert!(page.contains(needle), "page lacks {needle}");
    }
    app.stop().await;
}
