//! The account API and the service's plumbing, against the real server and PostgreSQL.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode as AxumStatus};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::auth::TokenPair;
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::auth::{AdminUser, AuthUser};
use server::error::ApiError;
use server::startup::Application;
use test_support::{
    TestApp, fresh_database, spawn_app, spawn_app_from, spawn_app_with, test_config,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

const TEST_SECRET: &str = "test-secret-of-at-least-32-bytes!!";
const PASSWORD: &str = "correct horse battery";

async fn error_of(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON error body");
    (status, body)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/api/token/refresh/", &json!({"refresh": token}))
        .await
}

async fn logout(app: &TestApp, access: &str, refresh: &str) -> reqwest::Response {
    app.post_json_authed("/api/logout/", access, &json!({"refresh": refresh}))
        .await
}

#[tokio::test]
async fn signup_login_refresh_logout() {
    let app = spawn_app().await;

    let response = app.signup("alice", "alice@example.com", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("argon2") && !text.contains("password"),
        "{text}"
    );
    let user: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "email", "id", "role", "username"]);
    assert_eq!(user["username"], "alice");
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["role"], "user");

    // The stored hash is argon2id with the OWASP parameters.
    let stored: String = app
        .db()
        .await
        .query_one(
            "SELECT password_hash FROM users WHERE username = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );

    let response = app.login("alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(!text.contains("argon2"));
    let first: TokenPair = serde_json::from_str(&text).unwrap();
    assert_eq!(first.token_type, "Bearer");
    assert_eq!(first.expires_in, 15 * 60);
    let me = app.state.tokens.verify_access(&first.access).unwrap();
    assert_eq!(me.username, "alice");
    assert_eq!(me.id.to_string(), user["id"].as_str().unwrap());

    // The username matches in any case.
    assert_eq!(app.login("ALICE", PASSWORD).await.status(), StatusCode::OK);

    let response = refresh(&app, &first.refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    let second: TokenPair = response.json().await.unwrap();
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.access, first.access);
    app.state.tokens.verify_access(&second.access).unwrap();

    // Only hashes are stored.
    let db = app.db().await;
    let rows = db
        .query("SELECT token_hash FROM refresh_tokens", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let hash: Vec<u8> = row.get(0);
        assert_eq!(hash.len(), 32);
        assert_ne!(hash, second.refresh.as_bytes());
    }

    // Logging out needs the access token.
    let response = app
        .client
        .post(app.url("/api/logout/"))
        .json(&json!({"refresh": second.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    let response = logout(&app, &second.access, &second.refresh).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let (status, body) = error_of(refresh(&app, &second.refresh).await).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
}

#[tokio::test]
async fn reusing_a_refresh_token_revokes_its_family() {
    let app = spawn_app().await;
    let first = app.user_tokens("bob").await;
    let other_login: TokenPair = app.login("bob", PASSWORD).await.json().await.unwrap();

    let second: TokenPair = refresh(&app, &first.refresh).await.json().await.unwrap();
    // The first token again: refused, and the whole family dies with it.
    let (status, body) = error_of(refresh(&app, &first.refresh).await).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _) = error_of(refresh(&app, &second.refresh).await).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the newer token of the family is revoked too"
    );

    let live = app
        .count("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")
        .await;
    assert_eq!(live, 1, "only the other login's token is live");

    // Another login of the same user is a different family and still works.
    assert_eq!(
        refresh(&app, &other_login.refresh).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn logout_checks_whose_refresh_token_it_is() {
    let app = spawn_app().await;
    let carol = app.user_tokens("carol").await;
    let dave = app.user_tokens("dave").await;

    let (status, body) = error_of(logout(&app, &carol.access, &dave.refresh).await).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(
        refresh(&app, &dave.refresh).await.status(),
        StatusCode::OK,
        "not revoked"
    );

    // An access token is not a refresh token.
    let (status, _) = error_of(logout(&app, &carol.access, &carol.access).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A refresh token is not an access token.
    let (status, _) = error_of(logout(&app, &carol.refresh, &carol.refresh).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(&app, &carol.refresh).await.status(), StatusCode::OK);
}

// --- tokens ---------------------------------------------------------------------------------

fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims as the server issues them for `user`, valid for a minute.
fn access_claims(user: &AuthUser) -> Value {
    json!({
        "sub": user.id, "exp": now() + 60, "iat": now(), "jti": uuid::Uuid::new_v4(),
        "iss": "support-chat", "aud": "support-chat", "typ": "access",
        "name": user.username, "role": "user",
    })
}

fn sign(alg: Algorithm, claims: &Value) -> String {
    let key = EncodingKey::from_secret(TEST_SECRET.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
}

fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        signature
    )
}

/// Both the protected route and `verify_access` refuse `token` with `expected_code`.
async fn assert_refused(app: &TestApp, token: &str, expected_code: &str, what: &str) {
    let response = logout(app, token, "irrelevant").await;
    assert!(
        response.headers().contains_key("www-authenticate"),
        "{what}"
    );
    let (status, body) = error_of(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
    assert_eq!(code(&body), expected_code, "{what}");
    match (app.state.tokens.verify_access(token), expected_code) {
        (Err(ApiError::TokenExpired), "token_expired")
        | (Err(ApiError::Unauthorized(_)), "unauthorized") => {}
        (other, _) => panic!("{what}: verify_access gave {other:?}"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let app = spawn_app().await;
    let pair = app.user_tokens("erin").await;
    let user = app.state.tokens.verify_access(&pair.access).unwrap();

    // Sanity: a token crafted like the server's is accepted, so the refusals below are about
    // the one thing each changes.
    let good = sign(Algorithm::HS256, &access_claims(&user));
    app.state.tokens.verify_access(&good).unwrap();
    let response = logout(&app, &good, &pair.refresh).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    let mut expired = access_claims(&user);
    expired["exp"] = json!(now() - 5);
    expired["iat"] = json!(now() - 65);
    assert_refused(
        &app,
        &sign(Algorithm::HS256, &expired),
        "token_expired",
        "expired",
    )
    .await;

    // Tampered: the payload changed after signing, or the signature itself.
    let mut parts: Vec<String> = pair.access.split('.').map(str::to_owned).collect();
    let mut admin = access_claims(&user);
    admin["role"] = json!("admin");
    parts[1] = b64url(admin.to_string().as_bytes());
    assert_refused(&app, &parts.join("."), "unauthorized", "tampered payload").await;
    let mut bad_signature = pair.access.clone();
    let last = bad_signature.pop().unwrap();
    bad_signature.push(if last == 'A' { 'B' } else { 'A' });
    assert_refused(&app, &bad_signature, "unauthorized", "tampered signature").await;

    // A refresh token where an access token is expected.
    assert_refused(&app, &pair.refresh, "unauthorized", "refresh as access").await;
    let mut no_type = access_claims(&user);
    no_type.as_object_mut().unwrap().remove("typ");
    assert_refused(
        &app,
        &sign(Algorithm::HS256, &no_type),
        "unauthorized",
        "no typ",
    )
    .await;

    // Other algorithms, with or without a signature.
    let claims = access_claims(&user);
    let none = unsigned(&json!({"alg": "none", "typ": "JWT"}), &claims, "");
    assert_refused(&app, &none, "unauthorized", "alg none").await;
    let none_upper = unsigned(&json!({"alg": "NONE", "typ": "JWT"}), &claims, "");
    assert_refused(&app, &none_upper, "unauthorized", "alg NONE").await;
    assert_refused(
        &app,
        &sign(Algorithm::HS512, &claims),
        "unauthorized",
        "HS512",
    )
    .await;
    assert_refused(
        &app,
        &sign(Algorithm::HS384, &claims),
        "unauthorized",
        "HS384",
    )
    .await;
    let hs256 = sign(Algorithm::HS256, &claims);
    let signature = hs256.rsplit('.').next().unwrap();
    let rs256 = unsigned(&json!({"alg": "RS256", "typ": "JWT"}), &claims, signature);
    assert_refused(&app, &rs256, "unauthorized", "RS256 header").await;

    // Right algorithm and key, wrong issuer or audience, or another secret.
    let mut wrong_iss = access_claims(&user);
    wrong_iss["iss"] = json!("someone-else");
    assert_refused(
        &app,
        &sign(Algorithm::HS256, &wrong_iss),
        "unauthorized",
        "iss",
    )
    .await;
    let mut wrong_aud = access_claims(&user);
    wrong_aud["aud"] = json!("someone-else");
    assert_refused(
        &app,
        &sign(Algorithm::HS256, &wrong_aud),
        "unauthorized",
        "aud",
    )
    .await;
    let other_key = EncodingKey::from_secret(b"another-secret-of-at-least-32-bytes!!").unwrap();
    let foreign =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &other_key).unwrap();
    assert_refused(&app, &foreign, "unauthorized", "other secret").await;
    assert_refused(&app, "not-a-jwt", "unauthorized", "garbage").await;

    // Not a bearer header at all.
    let response = app
        .client
        .post(app.url("/api/logout/"))
        .header("authorization", format!("Basic {}", pair.access))
        .json(&json!({"refresh": pair.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn access_tokens_expire() {
    let app = spawn_app_with(|c| c.access_token_ttl_secs = 1).await;
    let pair = app.user_tokens("frank").await;
    assert_eq!(pair.expires_in, 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let response = logout(&app, &pair.access, &pair.refresh).await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );
    assert!(matches!(
        app.state.tokens.verify_access(&pair.access),
        Err(ApiError::TokenExpired)
    ));

    // The refresh token still gets a fresh pair.
    let fresh: TokenPair = refresh(&app, &pair.refresh).await.json().await.unwrap();
    app.state.tokens.verify_access(&fresh.access).unwrap();
}

#[tokio::test]
async fn refresh_tokens_expire() {
    let app = spawn_app_with(|c| c.refresh_token_ttl_secs = 1).await;
    let pair = app.user_tokens("grace").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = error_of(refresh(&app, &pair.refresh).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // Logging out with it still works: it names the family to end.
    assert_eq!(
        logout(&app, &pair.access, &pair.refresh).await.status(),
        StatusCode::NO_CONTENT
    );

    // The next login drops the user's expired tokens.
    assert_eq!(app.login("grace", PASSWORD).await.status(), StatusCode::OK);
    let expired = app
        .count("SELECT count(*) FROM refresh_tokens WHERE expires_at < now()")
        .await;
    assert_eq!(expired, 0);
}

#[tokio::test]
async fn one_refresh_token_used_twice_at_once_wins_at_most_once() {
    let app = spawn_app().await;
    let pair = app.user_tokens("hank").await;
    let (a, b) = tokio::join!(refresh(&app, &pair.refresh), refresh(&app, &pair.refresh));
    let mut statuses = [a.status(), b.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::UNAUTHORIZED]);
    // The second use counts as reuse: the pair the first one got is dead too.
    let winner: TokenPair = if a.status() == StatusCode::OK { a } else { b }
        .json()
        .await
        .unwrap();
    assert_eq!(
        refresh(&app, &winner.refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

// --- accounts --------------------------------------------------------------------------------

#[tokio::test]
async fn duplicates_conflict_regardless_of_case() {
    let app = spawn_app().await;
    assert_eq!(
        app.signup("Heidi", "heidi@example.com", PASSWORD)
            .await
            .status(),
        201
    );

    let (status, body) = error_of(app.signup("heidi", "other@example.com", PASSWORD).await).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("username"),
        "{body}"
    );

    let (status, body) = error_of(app.signup("ivan", "HEIDI@Example.COM", PASSWORD).await).await;
    assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"));
    assert!(
        body["error"]["message"].as_str().unwrap().contains("email"),
        "{body}"
    );

    let count = app.count("SELECT count(*) FROM users").await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn every_validation_error_names_its_field() {
    let app = spawn_app().await;
    let long_email = format!("{}@example.com", "a".repeat(243));
    let long_name = "u".repeat(33);
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("ab", "a@example.com".into(), PASSWORD.into(), "username"),
        (
            &long_name,
            "a@example.com".into(),
            PASSWORD.into(),
            "username",
        ),
        (
            "with space",
            "a@example.com".into(),
            PASSWORD.into(),
            "username",
        ),
        (
            "semi;colon",
            "a@example.com".into(),
            PASSWORD.into(),
            "username",
        ),
        ("", "a@example.com".into(), PASSWORD.into(), "username"),
        ("judy", "not-an-email".into(), PASSWORD.into(), "email"),
        ("judy", "judy@localhost".into(), PASSWORD.into(), "email"),
        ("judy", "ju dy@example.com".into(), PASSWORD.into(), "email"),
        ("judy", "@example.com".into(), PASSWORD.into(), "email"),
        ("judy", long_email.clone(), PASSWORD.into(), "email"),
        (
            "judy",
            "judy@example.com".into(),
            "short".into(),
            "password",
        ),
        ("judy", "judy@example.com".into(), "".into(), "password"),
        (
            "judy",
            "judy@example.com".into(),
            "x".repeat(1025),
            "password",
        ),
    ];
    assert_eq!(long_email.len(), 255);
    for (username, email, password, field) in &cases {
        let (status, body) = error_of(app.signup(username, email, password).await).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {body}");
        assert_eq!(code(&body), "validation_failed");
        let fields = body["error"]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 1, "{body}");
        assert_eq!(fields[0]["field"], *field);
        assert!(!body.to_string().contains(password.as_str()) || password.is_empty());
    }

    // All at once: each is reported.
    let (status, body) = error_of(app.signup("x", "y", "z").await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["username", "email", "password"]);

    // A missing field or a wrong type is a validation error of the body.
    let response = app
        .post_json("/api/signup/", &json!({"username": "judy"}))
        .await;
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed")
    );
    let response = app
        .post_json(
            "/api/signup/",
            &json!({"username": 5, "email": "a@b.cd", "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Login bounds its input before doing any work.
    let (status, body) = error_of(app.login("judy", &"x".repeat(1025)).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["fields"][0]["field"], "password");
    let (status, body) = error_of(app.login("", PASSWORD).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["fields"][0]["field"], "username");

    // The limits themselves are accepted.
    let max = "x".repeat(1024);
    assert_eq!(
        app.signup(&"u".repeat(32), "judy@example.com", &max)
            .await
            .status(),
        201
    );
    assert_eq!(app.login(&"u".repeat(32), &max).await.status(), 200);
    assert_eq!(
        app.signup("kim", "kim@example.com", "12345678")
            .await
            .status(),
        201
    );
    let count = app.count("SELECT count(*) FROM users").await;
    assert_eq!(count, 2);
}

#[tokio::test]
async fn unreadable_bodies_get_json_errors() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url("/api/signup/"))
        .header("content-type", "application/json")
        .body("{\"username\": \"judy\", ")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    assert!(body["error"]["message"].is_string());

    let response = app
        .client
        .post(app.url("/api/login/"))
        .header("content-type", "text/plain")
        .body(json!({"username": "judy", "password": PASSWORD}).to_string())
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    let huge = "x".repeat(app.state.config.max_body_bytes + 1);
    let response = app
        .post_json(
            "/api/signup/",
            &json!({"username": "judy", "email": "j@example.com", "password": huge}),
        )
        .await;
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
}

// --- login -----------------------------------------------------------------------------------

/// A client whose requests come from `ip` (any 127.x address reaches the server).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn login_from(
    app: &TestApp,
    client: &reqwest::Client,
    username: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(app.url("/api/login/"))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn repeated_failures_lock_the_username_at_that_address_and_the_address() {
    let app = spawn_app_with(|c| {
        c.login_max_failures = 3;
        c.login_max_failures_per_addr = 4;
        c.login_lockout_secs = 3600;
    })
    .await;
    // Every failure below must land in one fixed window.
    test_support::within_one_window(3600, Duration::from_secs(90)).await;
    for name in ["mallory", "nina", "oscar"] {
        assert_eq!(
            app.signup(name, &format!("{name}@example.com"), PASSWORD)
                .await
                .status(),
            201
        );
    }
    let first = client_from([127, 0, 0, 2]);
    let second = client_from([127, 0, 0, 3]);
    let third = client_from([127, 0, 0, 4]);

    // Per (username, address): three wrong passwords, and even the right one is refused from
    // that address...
    for _ in 0..3 {
        let response = login_from(&app, &first, "mallory", "wrong password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = login_from(&app, &first, "Mallory", PASSWORD).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    let (status, body) = error_of(response).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert_eq!(body["error"]["retry_after"], retry_after);
    // ...but not from another address: nobody can lock a user out of their own account.
    assert_eq!(
        login_from(&app, &second, "mallory", PASSWORD)
            .await
            .status(),
        200
    );

    // Per address: failures for different (even unknown) usernames add up, and then the
    // address is locked for everyone (the locked attempt above was its fourth).
    assert_eq!(
        login_from(&app, &first, "nina", PASSWORD).await.status(),
        429
    );
    for name in ["ghost1", "ghost2", "nina", "ghost3"] {
        assert_eq!(
            login_from(&app, &third, name, "wrong password")
                .await
                .status(),
            401
        );
    }
    assert_eq!(
        login_from(&app, &third, "oscar", PASSWORD).await.status(),
        429
    );
    assert_eq!(
        login_from(&app, &second, "oscar", PASSWORD).await.status(),
        200
    );
}

#[tokio::test]
async fn lockout_ends_after_the_window() {
    let app = spawn_app_with(|c| {
        c.login_max_failures = 2;
        c.login_lockout_secs = 4;
    })
    .await;
    app.user_tokens("peggy").await;
    // Failures count in fixed windows [n·4 s, (n+1)·4 s): start right after a boundary so the
    // three attempts below fall in one window however slow the machine is.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let window_end = Duration::from_secs((now.as_secs() / 4 + 1) * 4);
    tokio::time::sleep(window_end - now + Duration::from_millis(50)).await;
    for _ in 0..2 {
        assert_eq!(app.login("peggy", "wrong password").await.status(), 401);
    }
    assert_eq!(app.login("peggy", PASSWORD).await.status(), 429);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let locked_until = window_end + Duration::from_secs(4);
    tokio::time::sleep(locked_until.saturating_sub(now) + Duration::from_millis(300)).await;
    assert_eq!(app.login("peggy", PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_the_same() {
    let app = spawn_app_with(|c| c.login_max_failures = 100).await;
    app.user_tokens("quentin").await;

    let mut unknown_times = Vec::new();
    let mut wrong_times = Vec::new();
    let mut answers = Vec::new();
    for round in 0..4 {
        let started = Instant::now();
        let response = app.login("quentin", "wrong password").await;
        wrong_times.push(started.elapsed());
        answers.push((
            response.status(),
            response.headers().get("www-authenticate").cloned(),
            response.text().await.unwrap(),
        ));

        let started = Instant::now();
        let response = app.login(&format!("nobody{round}"), "wrong password").await;
        unknown_times.push(started.elapsed());
        answers.push((
            response.status(),
            response.headers().get("www-authenticate").cloned(),
            response.text().await.unwrap(),
        ));
    }
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    for answer in &answers {
        assert_eq!(answer, &answers[0]);
    }
    // The unknown user is checked against a dummy hash: as slow as a real check (the fastest
    // of each kind, to damp scheduling noise on a busy machine).
    let unknown = unknown_times.iter().min().unwrap().as_secs_f64();
    let wrong = wrong_times.iter().min().unwrap().as_secs_f64();
    assert!(
        unknown > wrong / 4.0 && unknown < wrong * 4.0,
        "unknown {unknown:.4}s, wrong {wrong:.4}s"
    );
}

// --- roles -----------------------------------------------------------------------------------

#[tokio::test]
async fn bootstrap_admin_and_the_admin_extractor() {
    let app = spawn_app_with(|c| {
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new("boss password 123"));
    })
    .await;
    let boss: TokenPair = app
        .login("boss", "boss password 123")
        .await
        .json()
        .await
        .unwrap();
    let user = app.state.tokens.verify_access(&boss.access).unwrap();
    assert_eq!(user.role, protocol::auth::Role::Admin);
    let regular = app.user_tokens("rita").await;

    // A route guarded by `AdminUser`, on the real state.
    let router = axum::Router::new()
        .route(
            "/admin-only",
            axum::routing::get(|AdminUser(admin): AdminUser| async move { admin.username }),
        )
        .with_state(app.state.clone());
    let call = |token: String| {
        let router = router.clone();
        async move {
            let request = Request::get("/admin-only")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            router.oneshot(request).await.unwrap().status()
        }
    };
    assert_eq!(call(boss.access.clone()).await, AxumStatus::OK);
    assert_eq!(call(regular.access.clone()).await, AxumStatus::FORBIDDEN);
    assert_eq!(call("garbage".into()).await, AxumStatus::UNAUTHORIZED);

    // The role is read from the database, not the token: a demoted admin is refused at once.
    let db = app.db().await;
    db.execute(
        "UPDATE users SET role = 'user' WHERE username = 'boss'",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(call(boss.access.clone()).await, AxumStatus::FORBIDDEN);

    // Bootstrapping an existing account gives it the role and leaves its password alone.
    let mut config = (*app.state.config).clone();
    config.admin_username = Some("RITA".into());
    config.admin_password = Some(server::config::Secret::new("some other password"));
    server::auth::bootstrap_admin(&config, &app.state.db)
        .await
        .unwrap();
    assert_eq!(call(regular.access.clone()).await, AxumStatus::OK);
    assert_eq!(app.login("rita", PASSWORD).await.status(), StatusCode::OK);
    // And again: nothing changes, nothing fails.
    server::auth::bootstrap_admin(&config, &app.state.db)
        .await
        .unwrap();
    let admins: i64 = db
        .query_one("SELECT count(*) FROM users WHERE role = 'admin'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(admins, 1);
}

// --- plumbing --------------------------------------------------------------------------------

#[tokio::test]
async fn health_metrics_and_api_docs() {
    let app = spawn_app().await;

    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);

    app.signup("sybil", "sybil@example.com", PASSWORD).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("/api/signup/"),
        "requests are labelled by route"
    );

    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let api: Value = response.json().await.unwrap();
    for path in [
        "/api/signup/",
        "/api/login/",
        "/api/token/refresh/",
        "/api/logout/",
    ] {
        assert!(api["paths"][path]["post"].is_object(), "{path} documented");
    }
    assert_eq!(
        api["paths"]["/api/logout/"]["post"]["security"][0]["bearer"],
        json!([])
    );
    assert!(api["components"]["securitySchemes"]["bearer"].is_object());

    let response = app.get("/docs").await;
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.to_lowercase().contains("<html"), "{html}");

    // Unknown routes and methods answer with the JSON error shape too.
    let (status, body) = error_of(app.get("/api/nope").await).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = error_of(app.get("/api/login/").await).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

/// A TCP forwarder to PostgreSQL that can be taken down (closing every connection) and back.
struct Proxy {
    addr: SocketAddr,
    target: String,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            target,
            tasks: Default::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(pipe);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    /// Stops listening and cuts every forwarded connection.
    fn down(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

async fn wait_for_readyz(app: &TestApp, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = app.get("/readyz").await.status();
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readyz_follows_the_database() {
    let mut config = test_config().await;
    let pg: tokio_postgres::Config = config.database_url.parse().unwrap();
    let Some(tokio_postgres::config::Host::Tcp(host)) = pg.get_hosts().first().cloned() else {
        eprintln!("skipped: the test PostgreSQL is not reached over TCP");
        return;
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("{host}:{port}")).await;
    config.database_url =
        config
            .database_url
            .replacen(&format!("@{host}:{port}/"), &format!("@{}/", proxy.addr), 1);
    assert!(config.database_url.contains(&proxy.addr.to_string()));
    let app = spawn_app_from(config).await;

    wait_for_readyz(&app, StatusCode::OK).await;
    proxy.down();
    wait_for_readyz(&app, StatusCode::SERVICE_UNAVAILABLE).await;
    let response = app.get("/readyz").await;
    let (_, body) = error_of(response).await;
    assert_eq!(code(&body), "unavailable");
    // Meanwhile the process is up, and a request needing the database fails cleanly.
    assert_eq!(app.get("/healthz").await.status(), 200);
    let (status, body) = error_of(app.signup("trent", "trent@example.com", PASSWORD).await).await;
    assert!(status.is_server_error(), "{status}");
    assert!(body["error"]["code"].is_string());

    proxy.up().await;
    wait_for_readyz(&app, StatusCode::OK).await;
    assert_eq!(
        app.signup("trent", "trent@example.com", PASSWORD)
            .await
            .status(),
        201
    );
    app.stop().await;
}

#[tokio::test]
async fn two_servers_migrate_one_empty_database_at_once() {
    let url = fresh_database().await;
    let mut first = test_config().await;
    let mut second = test_config().await;
    first.database_url = url.clone();
    second.database_url = url.clone();
    let (a, b) = tokio::join!(Application::build(first), Application::build(second));
    let servers = [
        a.expect("first server builds"),
        b.expect("second server builds"),
    ];

    let db = server::db::connect(&url).await.unwrap();
    let applied: i64 = db
        .query_one(
            "SELECT count(*) FROM refinery_schema_history WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 1);

    // One system of record: an account made on one server logs in on the other.
    let bases: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.local_addr()))
        .collect();
    let states: Vec<_> = servers.iter().map(|s| s.state().clone()).collect();
    let running: Vec<_> = servers
        .into_iter()
        .map(|s| tokio::spawn(s.run_until_stopped()))
        .collect();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/api/signup/", bases[0]))
        .json(&json!({"username": "uma", "email": "uma@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = client
        .post(format!("{}/api/login/", bases[1]))
        .json(&json!({"username": "uma", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let pair: TokenPair = response.json().await.unwrap();
    let response = client
        .post(format!("{}/api/token/refresh/", bases[0]))
        .json(&json!({"refresh": pair.refresh}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    for state in &states {
        state.shutdown.cancel();
    }
    for server in running {
        server.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let app = spawn_app().await;
    let body = json!({"username": "victor", "email": "victor@example.com", "password": PASSWORD})
        .to_string();
    let (head, tail) = body.split_at(body.len() / 2);

    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let request_head = format!(
        "POST /api/signup/ HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{head}",
        app.addr,
        body.len()
    );
    stream.write_all(request_head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Shutdown begins while the request is half sent.
    app.state.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(app.addr).await.is_err(),
        "no new connections while draining"
    );

    stream.write_all(tail.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the response arrives")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the server exits");
}
