//! Abuse resistance, against the real server and PostgreSQL: client addresses behind a trusted
//! proxy, sign-up and login throttles, socket caps, resume limits, slow clients, metrics labels,
//! security headers, expired tokens on sockets, CORS.

use std::time::Duration;

use futures::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{
    Incoming, TestApp, next_close, next_frame, next_incoming, send, spawn_app_with, test_config,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const PASSWORD: &str = "correct horse battery";

/// A sign-up as relayed by a proxy on behalf of `client` (in `X-Forwarded-For`).
async fn signup_via(app: &TestApp, client: &str, username: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/signup/"))
        .header("x-forwarded-for", client)
        .json(&json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

async fn login_via(app: &TestApp, client: &str, username: &str, password: &str) -> StatusCode {
    app.client
        .post(app.url("/api/login/"))
        .header("x-forwarded-for", client)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

fn close_code(frame: Option<CloseFrame>) -> u16 {
    u16::from(frame.expect("a close frame").code)
}

#[tokio::test]
async fn signups_are_throttled_per_client_address_named_by_a_trusted_proxy() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.0/8".into()];
        c.signup_max_per_addr = 3;
    })
    .await;
    test_support::within_one_window(app.state.config.signup_window_secs, Duration::from_secs(30))
        .await;
    for n in 0..3 {
        // The right-most hop that is not one of our proxies is the client.
        let response = signup_via(
            &app,
            "6.6.6.6, 203.0.113.1, 127.0.0.5",
            &format!("alpha{n}"),
        )
        .await;
        assert_eq!(response.status(), 201);
    }
    let response = signup_via(&app, "203.0.113.1", "alpha3").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another client behind the same proxy is not affected.
    assert_eq!(
        signup_via(&app, "203.0.113.2", "bravo0").await.status(),
        201
    );
    // An IPv6 client counts by its /64: rotating the interface id does not help.
    for (n, addr) in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            signup_via(&app, addr, &format!("victor{n}")).await.status(),
            201
        );
    }
    assert_eq!(
        signup_via(&app, "2001:db8:1:2:abcd::1", "victor3")
            .await
            .status(),
        429
    );
    assert_eq!(
        signup_via(&app, "2001:db8:1:3::1", "whiskey0")
            .await
            .status(),
        201
    );

    // Taken names and addresses (any case) are refused.
    let taken = signup_via(&app, "198.51.100.1", "ALPHA0").await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let taken = app.signup("fresh", "Alpha0@EXAMPLE.com", PASSWORD).await;
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let body: Value = taken.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("email"),
        "{body}"
    );
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let app = spawn_app_with(|c| c.signup_max_per_addr = 2).await;
    test_support::within_one_window(app.state.config.signup_window_secs, Duration::from_secs(30))
        .await;
    // No trusted proxies: every "client" below is really 127.0.0.1.
    assert_eq!(
        signup_via(&app, "203.0.113.1", "charlie0").await.status(),
        201
    );
    assert_eq!(
        signup_via(&app, "203.0.113.2", "charlie1").await.status(),
        201
    );
    assert_eq!(
        signup_via(&app, "203.0.113.3", "charlie2").await.status(),
        429
    );
}

#[tokio::test]
async fn an_attackers_failed_logins_lock_neither_other_users_nor_the_victim_at_home() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.login_max_failures = 3;
        c.login_max_failures_per_addr = 5;
        c.login_lockout_secs = 3600;
    })
    .await;
    // Every failure below must land in one fixed window.
    test_support::within_one_window(3600, Duration::from_secs(90)).await;
    for name in ["victim", "bystander", "mallory"] {
        assert_eq!(
            signup_via(&app, &format!("198.51.100.{}", name.len()), name)
                .await
                .status(),
            201
        );
    }
    let attacker = "203.0.113.66";
    for _ in 0..3 {
        assert_eq!(
            login_via(&app, attacker, "victim", "guess").await,
            StatusCode::UNAUTHORIZED
        );
    }
    // The attacker is locked out of that account, even with the right password...
    assert_eq!(
        login_via(&app, attacker, "victim", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...but the victim, at their own address, is not, nor is anyone else.
    assert_eq!(
        login_via(&app, "198.51.100.7", "Victim", PASSWORD).await,
        StatusCode::OK
    );
    assert_eq!(
        login_via(&app, "198.51.100.9", "bystander", PASSWORD).await,
        StatusCode::OK
    );
    // Spraying other usernames from the attacker's address adds up to the address's limit
    // (5; the locked attempt above counted): its own account is locked there too.
    assert_eq!(
        login_via(&app, attacker, "ghost", "guess").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_via(&app, attacker, "mallory", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_via(&app, "198.51.100.10", "mallory", PASSWORD).await,
        StatusCode::OK
    );

    // A success forgets that pair's failures.
    let home = "192.0.2.50";
    for _ in 0..2 {
        assert_eq!(login_via(&app, home, "bystander", "oops").await, 401);
    }
    assert_eq!(login_via(&app, home, "bystander", PASSWORD).await, 200);
    for _ in 0..2 {
        assert_eq!(login_via(&app, home, "bystander", "oops").await, 401);
    }
    assert_eq!(login_via(&app, home, "bystander", PASSWORD).await, 200);
}

#[tokio::test]
async fn parallel_guesses_get_no_extra_tries() {
    let app = spawn_app_with(|c| {
        c.trusted_proxies = vec!["127.0.0.1".into()];
        c.login_max_failures = 3;
    })
    .await;
    app.user_tokens("target").await;
    test_support::within_one_window(app.state.config.login_lockout_secs, Duration::from_secs(30))
        .await;
    let guesses = (0..16).map(|n| {
        let app = &app;
        async move { login_via(app, "203.0.113.77", "target", &format!("guess {n}")).await }
    });
    let statuses = futures::future::join_all(guesses).await;
    let tried = statuses.iter().filter(|s| **s == 401).count();
    let locked = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((tried, locked), (3, 13), "{statuses:?}");
}

#[tokio::test]
async fn sockets_are_capped_per_user_and_while_waiting_to_authenticate() {
    let app = spawn_app_with(|c| {
        c.ws_max_sockets_per_user = 2;
        c.ws_max_unauthenticated = 2;
    })
    .await;
    let tokens = app.user_tokens("sam").await;
    let mut first = app.ws_connect(&tokens.access).await;
    assert_eq!(next_frame(&mut first).await["type"], "ready");
    let mut second = app.ws_connect(&tokens.access).await;
    assert_eq!(next_frame(&mut second).await["type"], "ready");
    let mut third = app.ws_connect(&tokens.access).await;
    assert_eq!(
        close_code(next_close(&mut third).await),
        protocol::ws::CLOSE_TOO_MANY_SOCKETS
    );
    // Another user is not affected; a closed socket frees its place.
    let other = app.user_tokens("tia").await;
    let mut theirs = app.ws_connect(&other.access).await;
    assert_eq!(next_frame(&mut theirs).await["type"], "ready");
    first.close(None).await.unwrap();
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let mut ws = app.ws_connect(&tokens.access).await;
        if let Incoming::Json(frame) = next_incoming(&mut ws).await {
            assert_eq!(frame["type"], "ready");
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "a place freed up");

    // Sockets that have not authenticated are capped too: the next upgrade is refused (503).
    let mut waiting = [
        app.try_ws_connect("/ws/chat", None).await.unwrap(),
        app.try_ws_connect("/ws/chat", None).await.unwrap(),
    ];
    match app.try_ws_connect("/ws/chat", None).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected a refused upgrade, got {:?}", other.map(|_| ())),
    }
    // Once one authenticates, a new one may wait.
    send(
        &mut waiting[0],
        json!({"type":"auth","token": other.access}),
    )
    .await;
    assert_eq!(next_frame(&mut waiting[0]).await["type"], "ready");
    app.try_ws_connect("/ws/chat", None)
        .await
        .expect("a place to wait freed up");
}

#[tokio::test]
async fn a_resume_flood_is_limited_and_the_socket_stays_up() {
    let app = spawn_app_with(|c| c.asks_per_minute = 4).await;
    let tokens = app.user_tokens("rex").await;
    let mut ws = app.ws_connect(&tokens.access).await;
    assert_eq!(next_frame(&mut ws).await["type"], "ready");
    send(
        &mut ws,
        json!({"type":"ask","id":"q1","message":"Can I return an item?","conversation_id":null}),
    )
    .await;
    loop {
        if next_frame(&mut ws).await["type"] == "done" {
            break;
        }
    }
    for _ in 0..200 {
        send(&mut ws, json!({"type":"resume","id":"q1","after_seq":0})).await;
    }
    send(&mut ws, json!({"type":"ping"})).await;
    let (mut dones, mut limited) = (0, 0);
    loop {
        let frame = next_frame(&mut ws).await;
        match frame["type"].as_str().unwrap() {
            "pong" => break,
            "done" => dones += 1,
            "error" => {
                assert!(
                    ["rate_limited", "too_many_in_flight"]
                        .contains(&frame["code"].as_str().unwrap()),
                    "{frame}"
                );
                limited += 1;
            }
            _ => {}
        }
    }
    // The replays still being read when the pong arrives come after it.
    while dones + limited < 200 {
        let frame = next_frame(&mut ws).await;
        match frame["type"].as_str().unwrap() {
            "done" => dones += 1,
            "error" => limited += 1,
            _ => {}
        }
    }
    assert!(dones <= 4, "{dones} replays");
    assert_eq!(dones + limited, 200);
    send(&mut ws, json!({"type":"ping"})).await;
    assert_eq!(next_frame(&mut ws).await["type"], "pong");
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut received))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let app = spawn_app_with(|c| {
        c.header_read_timeout_secs = 1;
        c.request_timeout_secs = 2;
    })
    .await;
    // Headers never finished.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    read_until_closed(&mut stream).await;
    // Nothing sent at all.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    read_until_closed(&mut stream).await;
    // A body that never arrives: the request times out with the JSON error.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/login/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"username\":",
        )
        .await
        .unwrap();
    let response = read_until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(response.contains("\"unavailable\""), "{response}");
    // A well-behaved client is served.
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn invented_methods_do_not_create_metric_series() {
    let app = spawn_app_with(|_| {}).await;
    for n in 0..20 {
        let method = reqwest::Method::from_bytes(format!("FOO{n}").as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url(&format!("/nowhere/{n}")))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
        let method = reqwest::Method::from_bytes(format!("BAR{n}").as_bytes()).unwrap();
        let response = app
            .client
            .request(method, app.url("/api/login/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("FOO") && !metrics.contains("BAR"));
    assert!(!metrics.contains("/nowhere"));
    assert!(metrics.contains(r#"method="other""#), "{metrics}");
}

#[tokio::test]
async fn pages_send_security_headers() {
    let app = spawn_app_with(|_| {}).await;
    for path in ["/", "/docs/"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert!(headers.contains_key("referrer-policy"), "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    }
    let csp = app.get("/docs/").await.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(
        app.get("/healthz").await.headers()["x-content-type-options"],
        "nosniff"
    );
}

#[tokio::test]
async fn expired_tokens_close_sockets_with_4001_and_the_scheme_is_case_insensitive() {
    let app = spawn_app_with(|c| c.access_token_ttl_secs = 1).await;
    let tokens = app.user_tokens("una").await;
    // Lower-case scheme on the upgrade.
    let mut request = app.ws_url("/ws/chat").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("bearer {}", tokens.access).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_frame(&mut ws).await["type"], "ready");
    // Mid-session expiry.
    assert_eq!(
        close_code(next_close(&mut ws).await),
        protocol::ws::CLOSE_TOKEN_EXPIRED
    );
    // Expiry is checked to the second: let the token's last second pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // An expired token in the first frame.
    let mut ws = app.try_ws_connect("/ws/chat", None).await.unwrap();
    send(&mut ws, json!({"type":"auth","token": tokens.access})).await;
    let error = next_frame(&mut ws).await;
    assert_eq!(error["code"], "token_expired", "{error}");
    assert_eq!(
        close_code(next_close(&mut ws).await),
        protocol::ws::CLOSE_TOKEN_EXPIRED
    );
    // An expired token on the upgrade: upgraded, then closed with 4001 (a browser can read that).
    let mut ws = app.ws_connect(&tokens.access).await;
    assert_eq!(
        close_code(next_close(&mut ws).await),
        protocol::ws::CLOSE_TOKEN_EXPIRED
    );
    // A forged one is still refused at the upgrade.
    assert!(matches!(
        app.try_ws_connect("/ws/chat", Some("forged")).await,
        Err(WsError::Http(_))
    ));
}

#[tokio::test]
async fn the_admin_event_socket_follows_its_token_and_role() {
    let app = spawn_app_with(|c| {
        c.access_token_ttl_secs = 4;
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new(PASSWORD));
    })
    .await;
    let boss = app.login_tokens("boss", PASSWORD).await;
    let boss_id = app.state.tokens.verify_access(&boss.access).unwrap().id;
    let mint = || {
        app.state
            .tokens
            .issue_access(boss_id, "boss", protocol::auth::Role::Admin)
            .unwrap()
    };
    // Unrenewed, the socket ends with its token.
    let mut events = app.ws_connect_path("/api/admin/events", &boss.access).await;
    assert_eq!(next_frame(&mut events).await["type"], "snapshot");
    assert_eq!(
        close_code(next_close(&mut events).await),
        protocol::ws::CLOSE_TOKEN_EXPIRED
    );
    // Renewed, it lives on past the first token (renewed 2 s before the first token ends,
    // pinged 1.5 s before the second does: margins a busy machine does not eat)...
    let mut events = app.ws_connect_path("/api/admin/events", &mint()).await;
    assert_eq!(next_frame(&mut events).await["type"], "snapshot");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    send(&mut events, json!({"type":"auth","token": mint()})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    events.send(Message::Ping(vec![1].into())).await.unwrap();
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut events),
        )
        .await
        .expect("a pong")
        {
            Some(Ok(Message::Pong(_))) => break,
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
    // ...until the admin is demoted: the next renewal closes it.
    app.db()
        .await
        .execute(
            "UPDATE users SET role = 'user' WHERE username = 'boss'",
            &[],
        )
        .await
        .unwrap();
    send(&mut events, json!({"type":"auth","token": mint()})).await;
    assert_eq!(
        close_code(next_close(&mut events).await),
        protocol::ws::CLOSE_UNAUTHENTICATED
    );
}

#[tokio::test]
async fn cors_star_means_any_origin_and_a_bad_origin_stops_the_start() {
    let app = spawn_app_with(|c| c.cors_origins = vec!["*".into()]).await;
    let response = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/login/"))
        .header("origin", "https://anywhere.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-credentials")
    );

    let mut config = test_config().await;
    config.cors_origins = vec!["https://ok.example".into(), "not an origin".into()];
    let error = server::startup::Application::build(config)
        .await
        .err()
        .expect("a bad origin is refused");
    assert!(error.to_string().contains("CORS_ORIGINS"), "{error}");
}

#[tokio::test]
async fn a_plain_get_of_a_socket_route_gets_the_json_error() {
    let app = spawn_app_with(|_| {}).await;
    for path in ["/ws/chat", "/api/admin/events"] {
        let response = app.get(path).await;
        let status = response.status();
        let body: Value = response.json().await.expect("a JSON error body");
        // The admin route checks the token first.
        let expected = if path == "/ws/chat" {
            (StatusCode::BAD_REQUEST, "bad_request")
        } else {
            (StatusCode::UNAUTHORIZED, "unauthorized")
        };
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            expected,
            "{path}: {body}"
        );
    }
}
