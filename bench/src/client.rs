//! What a client of the server does: sign up, log in, open a chat socket, ask.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::target::{PASSWORD, Target};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Longest wait for any single response or frame.
pub const WAIT: Duration = Duration::from_secs(120);

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_default()
}

/// Accounts for one scenario: the first signs up over REST (one real argon2 hash), the rest
/// are copied into the database with the same hash, so thousands cost one hash.
pub async fn make_users(target: &Target, prefix: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = (0..n.max(1)).map(|i| format!("{prefix}_{i}")).collect();
    let response = http()
        .post(format!("{}/api/signup/", target.base))
        .json(&json!({"username": names[0], "email": format!("{}@bench.example", names[0]), "password": PASSWORD}))
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "sign-up answered {}",
        response.status()
    );
    if names.len() == 1 {
        return Ok(names);
    }
    let db = server::db::connect(&target.database_url).await?;
    let hash: String = db
        .query_one(
            "SELECT password_hash FROM users WHERE username = $1",
            &[&names[0]],
        )
        .await?
        .get(0);
    let mut rows = String::new();
    for name in &names[1..] {
        rows.push_str(&format!(
            "{}\t{name}\t{name}@bench.example\t{hash}\n",
            uuid::Uuid::new_v4()
        ));
    }
    copy_in(
        &db,
        "COPY users (id, username, email, password_hash) FROM STDIN",
        rows.into_bytes(),
    )
    .await?;
    Ok(names)
}

/// Streams `data` (COPY text format) into `statement`.
pub async fn copy_in(
    db: &tokio_postgres::Client,
    statement: &str,
    data: Vec<u8>,
) -> anyhow::Result<u64> {
    let sink = db.copy_in::<_, Bytes>(statement).await?;
    futures::pin_mut!(sink);
    for chunk in data.chunks(1 << 20) {
        sink.send(Bytes::copy_from_slice(chunk)).await?;
    }
    Ok(sink.finish().await?)
}

/// Logs in; `Ok(None)` when the server refused for load (503).
pub async fn login(
    client: &reqwest::Client,
    base: &str,
    username: &str,
) -> anyhow::Result<Option<String>> {
    let response = client
        .post(format!("{base}/api/login/"))
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await?;
    if response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return Ok(None);
    }
    anyhow::ensure!(
        response.status().is_success(),
        "login answered {}",
        response.status()
    );
    let body: Value = response.json().await?;
    Ok(body["access"].as_str().map(str::to_owned))
}

/// Access tokens for `users`, four logins at a time (each is an argon2 check on the server).
pub async fn tokens(target: &Target, users: &[String]) -> anyhow::Result<Vec<String>> {
    let client = http();
    let results: Vec<anyhow::Result<String>> = futures::stream::iter(users.iter().cloned())
        .map(|u| {
            let client = client.clone();
            let base = target.base.clone();
            async move {
                loop {
                    match login(&client, &base, &u).await? {
                        Some(token) => return Ok(token),
                        None => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        })
        .buffered(4)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Small client buffers: the bench holds thousands of sockets too.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Opens `/ws/chat` with the token on the upgrade and waits for `ready`.
pub async fn connect(ws_base: &str, token: &str) -> anyhow::Result<Ws> {
    let mut request = format!("{ws_base}/ws/chat").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(request, Some(client_config()), true),
    )
    .await
    .context("connect timed out")??;
    loop {
        let frame = next_json(&mut ws).await?;
        if frame["type"] == "ready" {
            return Ok(ws);
        }
    }
}

/// The next text frame as JSON (pings are answered by the library while reading).
pub async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("no frame in time")?
            .context("socket closed")??;
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(frame) => anyhow::bail!("socket closed: {frame:?}"),
            _ => {}
        }
    }
}

pub async fn ask(ws: &mut Ws, id: &str, question: &str) -> anyhow::Result<()> {
    let frame = json!({"type": "ask", "id": id, "message": question, "conversation_id": null});
    ws.send(Message::Text(frame.to_string().into())).await?;
    Ok(())
}

/// Distinct question strings (so no cache on the server hits) over the shop's topics.
pub fn question(i: usize) -> String {
    const TOPICS: [&str; 8] = [
        "How long does shipping take",
        "Can I return an opened item",
        "How do I reset my password",
        "Which payment methods do you accept",
        "Do gift cards expire",
        "What are your opening hours",
        "How do I track my order",
        "Is there a warranty on electronics",
    ];
    format!("{} (case {i})?", TOPICS[i % TOPICS.len()])
}

/// A shared start line: every task waits here, then all act at the same moment.
pub fn barrier(n: usize) -> Arc<tokio::sync::Barrier> {
    Arc::new(tokio::sync::Barrier::new(n))
}
