//! Knowledge-base documents over the admin API, against the real server, PostgreSQL and the
//! local embedder: upload of each format then a question answered from it, replace, delete,
//! refused names and bodies, and two instances seeing the same set.

use std::time::{Duration, Instant};

use protocol::admin::{AdminEvent, KbInfo};
use protocol::documents::{DocumentSource, KbDocument};
use serde_json::{Value, json};
use server::config::{Config, Secret};
use test_support::{TestApp, next_frame, spawn_app_from, spawn_app_with};

const ADMIN_PASSWORD: &str = "admin password for tests";

fn with_admin(c: &mut Config) {
    c.admin_username = Some("boss".into());
    c.admin_password = Some(Secret::new(ADMIN_PASSWORD));
    c.asks_per_minute = 200;
}

async fn spawn() -> (TestApp, String) {
    let app = spawn_app_with(with_admin).await;
    let token = app.login_tokens("boss", ADMIN_PASSWORD).await.access;
    (app, token)
}

async fn put(
    app: &TestApp,
    token: &str,
    name: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = app
        .client
        .put(app.url(&format!("/api/admin/kb/documents/{name}")))
        .bearer_auth(token)
        .body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    request.send().await.unwrap()
}

async fn list(app: &TestApp, token: &str) -> Vec<KbDocument> {
    app.get_json("/api/admin/kb/documents", token).await
}

/// Asks over REST; returns the answer text and the documents of its sources.
async fn ask(app: &TestApp, token: &str, question: &str) -> (String, Vec<String>) {
    let response = app
        .post_json_authed("/api/chat/", token, &json!({ "message": question }))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let documents = body["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["document"].as_str().unwrap().to_owned())
        .collect();
    (body["answer"].as_str().unwrap().to_owned(), documents)
}

/// A one-page PDF whose text is `lines`, in Helvetica (a standard font: no embedding needed).
fn pdf(lines: &[&str]) -> Vec<u8> {
    let mut content = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
    for line in lines {
        content.push_str(&format!("({line}) Tj T*\n"));
    }
    content.push_str("ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_owned(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[tokio::test]
async fn each_format_is_answered_from_right_after_upload_and_gone_after_delete() {
    let (app, admin) = spawn().await;
    let user = app.user_tokens("alice").await.access;
    let before = list(&app, &admin).await;
    assert!(before.iter().all(|d| d.source == DocumentSource::Folder));
    assert!(before.iter().any(|d| d.name == "returns.md"));

    let uploads: [(&str, Option<&str>, Vec<u8>, &str); 4] = [
        (
            "parking.md",
            Some("text/markdown"),
            b"# Parking\n\nCustomers park for free in the garage behind the shop for up to two hours."
                .to_vec(),
            "Where can customers park their car?",
        ),
        (
            "tours.txt",
            Some("text/plain; charset=utf-8"),
            b"Warehouse tours run every Saturday at 10 am and are booked at the front desk."
                .to_vec(),
            "When do the warehouse tours run?",
        ),
        (
            "wrapping.html",
            Some("text/html"),
            b"<!doctype html><html><head><title>Wrapping</title><style>h1{color:red}</style></head>\
              <body><h1>Gift wrapping</h1><p>Gift wrapping costs <b>3 euros</b> per parcel and \
              includes a handwritten card.</p><script>alert('x')</script></body></html>"
                .to_vec(),
            "How much does gift wrapping cost?",
        ),
        (
            "repairs.pdf",
            Some("application/pdf"),
            pdf(&[
                "Espresso machine repairs",
                "Repairs of espresso machines take ten working days in our workshop.",
            ]),
            "How long do espresso machine repairs take?",
        ),
    ];
    for (name, content_type, body, question) in uploads {
        let response = put(&app, &admin, name, content_type, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(status, 201, "{name}: {text}");
        let document: KbDocument = serde_json::from_str(&text).unwrap();
        assert_eq!(document.name, name);
        assert_eq!(document.source, DocumentSource::Database);
        assert!(document.chunks >= 1);
        let (_, sources) = ask(&app, &user, question).await;
        assert_eq!(
            sources.first().map(String::as_str),
            Some(name),
            "{question}"
        );
    }
    let (answer, _) = ask(&app, &user, "How long do espresso machine repairs take?").await;
    assert!(answer.contains("ten working days"), "{answer}");
    let html_answer = ask(&app, &user, "How much does gift wrapping cost?")
        .await
        .0;
    assert!(!html_answer.contains("alert"), "{html_answer}");

    let now = list(&app, &admin).await;
    assert_eq!(now.len(), before.len() + 4);
    let parking = now.iter().find(|d| d.name == "parking.md").unwrap();
    assert_eq!(parking.title, "Parking");
    assert_eq!(parking.kind, "markdown");
    assert!(parking.bytes > 50);
    assert_eq!(
        now.iter().find(|d| d.name == "repairs.pdf").unwrap().kind,
        "pdf"
    );

    // Replace: the new text answers, the old one is gone.
    let response = put(
        &app,
        &admin,
        "parking.md",
        None,
        b"# Parking\n\nThe garage behind the shop is closed; customers park at the station."
            .to_vec(),
    )
    .await;
    assert_eq!(response.status(), 200);
    let (answer, sources) = ask(&app, &user, "Where can customers park their car?").await;
    assert_eq!(sources.first().map(String::as_str), Some("parking.md"));
    assert!(!answer.contains("two hours"), "{answer}");

    // Delete an uploaded document and a folder one: answers no longer come from them.
    for (name, question) in [
        ("parking.md", "Where can customers park their car?"),
        ("returns.md", "How long do I have to return an item?"),
    ] {
        let (_, sources) = ask(&app, &user, question).await;
        assert!(sources.iter().any(|s| s == name), "{name} answers before");
        let response = app
            .delete_authed(&format!("/api/admin/kb/documents/{name}"), &admin)
            .await;
        assert_eq!(response.status(), 204, "{name}");
        let (_, sources) = ask(&app, &user, question).await;
        assert!(!sources.iter().any(|s| s == name), "{name}: {sources:?}");
        let response = app
            .delete_authed(&format!("/api/admin/kb/documents/{name}"), &admin)
            .await;
        assert_eq!(response.status(), 404, "{name} twice");
    }
    let names: Vec<String> = list(&app, &admin)
        .await
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(!names.contains(&"returns.md".to_owned()));
    assert!(!names.contains(&"parking.md".to_owned()));
    let kb: KbInfo = app.get_json("/api/admin/kb", &admin).await;
    assert_eq!(kb.documents, names.len());

    // A folder document deleted, then uploaded again, comes back.
    let response = put(
        &app,
        &admin,
        "returns.md",
        Some("text/markdown"),
        b"# Returns\n\nYou can return items within 60 days.".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 201);
    let (answer, _) = ask(&app, &user, "How long do I have to return an item?").await;
    assert!(answer.contains("60 days"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn bad_names_bodies_and_callers_are_refused_and_change_nothing() {
    let app = spawn_app_with(|c| {
        with_admin(c);
        c.kb_max_document_bytes = 2048;
    })
    .await;
    let admin = app.login_tokens("boss", ADMIN_PASSWORD).await.access;
    let before = list(&app, &admin).await;
    let kb_before: KbInfo = app.get_json("/api/admin/kb", &admin).await;
    let text = b"# Fine\n\nA perfectly good document.".to_vec();

    for name in [
        "..%2Fsecret.md",
        "..%2F..%2Fetc%2Fpasswd.txt",
        "notes%2F..%2F..%2Fx.md",
        ".hidden.md",
        "folder%2F.env.md",
        "%2Fabsolute.md",
        "program.exe",
        "no-extension",
    ] {
        let response = put(&app, &admin, name, Some("text/markdown"), text.clone()).await;
        assert_eq!(response.status(), 422, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "validation_failed", "{name}");
        let response = app
            .delete_authed(&format!("/api/admin/kb/documents/{name}"), &admin)
            .await;
        assert!(
            [404, 422].contains(&response.status().as_u16()),
            "{name}: {}",
            response.status()
        );
    }

    let oversized = vec![b'a'; 4096];
    let response = put(&app, &admin, "big.txt", Some("text/plain"), oversized).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");

    for (name, content_type, body) in [
        ("empty.md", "text/markdown", Vec::new()),
        ("blank.txt", "text/plain", b"  \n\n\t ".to_vec()),
        (
            "latin1.txt",
            "text/plain",
            vec![0x43, 0x61, 0x66, 0xe9, 0x20, 0xff],
        ),
        (
            "broken.pdf",
            "application/pdf",
            b"%PDF-1.4 this is not a PDF".to_vec(),
        ),
        (
            "empty.html",
            "text/html",
            b"<html><body><script>x()</script></body></html>".to_vec(),
        ),
    ] {
        let response = put(&app, &admin, name, Some(content_type), body).await;
        assert_eq!(response.status(), 422, "{name}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(
            error["error"]["code"], "validation_failed",
            "{name}: {error}"
        );
    }
    let response = put(&app, &admin, "photo.md", Some("image/png"), text.clone()).await;
    assert_eq!(response.status(), 415);

    let user = app.user_tokens("alice").await.access;
    let response = put(&app, &user, "fine.md", Some("text/markdown"), text.clone()).await;
    assert_eq!(response.status(), 403);
    let response = app
        .delete_authed("/api/admin/kb/documents/returns.md", &user)
        .await;
    assert_eq!(response.status(), 403);

    // The index kept serving the old set throughout.
    assert_eq!(list(&app, &admin).await, before);
    let kb_after: KbInfo = app.get_json("/api/admin/kb", &admin).await;
    assert_eq!(kb_after.documents, kb_before.documents);
    assert_eq!(kb_after.chunks, kb_before.chunks);
    assert_eq!(app.count("SELECT count(*) FROM kb_documents").await, 0);
    app.stop().await;
}

/// Polls `probe` until it holds, failing after a generous bound.
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_instances_serve_the_same_document_set() {
    let mut config = test_support::test_config().await;
    with_admin(&mut config);
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let admin_a = a.login_tokens("boss", ADMIN_PASSWORD).await.access;
    let admin_b = b.login_tokens("boss", ADMIN_PASSWORD).await.access;
    let user = a.user_tokens("alice").await.access;

    let response = put(
        &a,
        &admin_a,
        "parking.md",
        Some("text/markdown"),
        b"# Parking\n\nCustomers park for free in the garage behind the shop for up to two hours."
            .to_vec(),
    )
    .await;
    assert_eq!(response.status(), 201);
    eventually("instance b to load the upload", async || {
        list(&b, &admin_b)
            .await
            .iter()
            .any(|d| d.name == "parking.md")
    })
    .await;
    let (_, sources) = ask(&b, &user, "Where can customers park their car?").await;
    assert_eq!(sources.first().map(String::as_str), Some("parking.md"));

    let response = b
        .delete_authed("/api/admin/kb/documents/parking.md", &admin_b)
        .await;
    assert_eq!(response.status(), 204);
    eventually("instance a to drop the deleted document", async || {
        !list(&a, &admin_a)
            .await
            .iter()
            .any(|d| d.name == "parking.md")
    })
    .await;
    assert_eq!(list(&a, &admin_a).await, list(&b, &admin_b).await);

    // An instance started later loads the stored set too.
    let response = put(
        &a,
        &admin_a,
        "tours.txt",
        Some("text/plain"),
        b"Warehouse tours run every Saturday at 10 am.".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 201);
    let mut config = test_support::test_config().await;
    with_admin(&mut config);
    config.database_url = a.database_url.clone();
    let c = spawn_app_from(config).await;
    let admin_c = c.login_tokens("boss", ADMIN_PASSWORD).await.access;
    assert!(
        list(&c, &admin_c)
            .await
            .iter()
            .any(|d| d.name == "tours.txt")
    );
    c.stop().await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn a_document_change_reports_reload_progress_on_the_admin_socket() {
    let (app, admin) = spawn().await;
    let mut events = app.ws_connect_path("/api/admin/events", &admin).await;
    let snapshot: AdminEvent = serde_json::from_value(next_frame(&mut events).await).unwrap();
    assert!(matches!(snapshot, AdminEvent::Snapshot { .. }));

    let response = put(
        &app,
        &admin,
        "tours.txt",
        Some("text/plain"),
        b"Warehouse tours run every Saturday at 10 am and are booked at the front desk.".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 201);
    let mut progress = Vec::new();
    let kb = loop {
        match serde_json::from_value(next_frame(&mut events).await).unwrap() {
            AdminEvent::KbProgress { progress: p } => progress.push(p),
            AdminEvent::KbReloaded { kb } => break kb,
            _ => {}
        }
    };
    let phases: Vec<&str> = progress.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(phases.first(), Some(&"reading"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"done"), "{phases:?}");
    assert!(
        phases.contains(&"embedding"),
        "the new chunk is embedded: {phases:?}"
    );
    let last = progress.last().unwrap();
    assert_eq!(last.chunks_total, kb.chunks);
    assert_eq!(last.chunks_ready, kb.chunks);
    assert_eq!(last.documents, kb.documents);
    assert_eq!(last.chunks_embedded, kb.embedded);
    assert!(last.chunks_embedded >= 1);
    assert_eq!(last.cache_hits + last.chunks_embedded, last.chunks_total);
    // Counts only grow during one load.
    for pair in progress.windows(2) {
        assert!(pair[1].chunks_ready >= pair[0].chunks_ready);
    }
    app.stop().await;
}
