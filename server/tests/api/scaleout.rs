//! Any instance serves any socket: answers resumed and cancelled on another instance than the
//! one generating them, limits shared by all instances, a real HAProxy in front of two
//! instances, and a rolling restart (SIGTERM) of real `chat-server` processes mid-answer.
//!
//! The HAProxy test needs Debian's `haproxy` (`scripts/setup.sh` installs it); without it the
//! test says so and passes, unless `CI` is set, where it fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protocol::admin::{KbInfo, SessionInfo};
use protocol::auth::TokenPair;
use serde_json::{Value, json};
use server::config::{Config, LlmProvider, Secret};
use test_support::fake::chat::{ChatStats, FakeChat, Stream};
use test_support::{
    Incoming, TestApp, Ws, free_port, next_frame, next_incoming, send, spawn_app_from,
};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery";
const ADMIN_PASSWORD: &str = "admin password for tests";
/// Bound on any wait for the cluster to converge.
const PATIENCE: Duration = Duration::from_secs(30);
/// Deltas of a slow answer.
const SLOW_WORDS: usize = 30;

// ----------------------------------------------------------------------------- a fake provider

/// An OpenAI-compatible fake: "slowly" in the question → [`SLOW_WORDS`] deltas `pause` apart;
/// anything else → three quick deltas. Counts requests, and streams dropped before their end.
async fn spawn_fake(pause: Duration) -> (String, Arc<ChatStats>) {
    let fake = FakeChat::start(move |call| {
        if call.last_message().contains("slowly") {
            Stream::words(SLOW_WORDS, pause).into()
        } else {
            Stream::words(3, Duration::ZERO).into()
        }
    })
    .await;
    (fake.url, fake.stats)
}

/// Two-instance settings: the fake provider, a fast heartbeat, a bootstrap admin.
async fn cluster_config(fake_url: &str) -> Config {
    let mut config = test_support::test_config().await;
    config.llm_provider = Some(LlmProvider::Openai);
    config.openai_base_url = fake_url.to_owned();
    config.llm_model = Some("fake-model".into());
    config.provider_timeout_secs = 10;
    config.instance_heartbeat_secs = 1;
    config.instance_stale_secs = 3;
    config.admin_username = Some("boss".into());
    config.admin_password = Some(Secret::new(ADMIN_PASSWORD));
    config
}

// ------------------------------------------------------------------------------------ helpers

fn ws_request(
    url: &str,
    token: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Opens a chat socket at `url`, reads `ready`; returns it with its session id.
async fn chat_at(url: &str, token: &str) -> (Ws, Uuid) {
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(url, token))
        .await
        .expect("socket connects");
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    (ws, ready["session_id"].as_str().unwrap().parse().unwrap())
}

async fn chat_on(addr: SocketAddr, token: &str) -> Ws {
    chat_at(&format!("ws://{addr}/ws/chat"), token).await.0
}

async fn ask(ws: &mut Ws, id: &str, message: &str) {
    send(
        ws,
        json!({"type":"ask","id":id,"message":message,"conversation_id":null}),
    )
    .await;
}

/// What one answer sent, possibly over several sockets.
#[derive(Debug, Default)]
struct Collected {
    /// Deltas by seq; a seq seen twice is recorded in `repeated`.
    deltas: BTreeMap<u64, String>,
    repeated: Vec<u64>,
    done: Option<Value>,
    errors: Vec<Value>,
}

impl Collected {
    fn absorb(&mut self, frame: &Value) {
        match frame["type"].as_str().unwrap_or_default() {
            "delta" => {
                let seq = frame["seq"].as_u64().unwrap();
                let text = frame["text"].as_str().unwrap_or_default().to_owned();
                if self.deltas.insert(seq, text).is_some() {
                    self.repeated.push(seq);
                }
            }
            "done" => self.done = Some(frame.clone()),
            "error" => self.errors.push(frame.clone()),
            _ => {}
        }
    }

    fn last_seq(&self) -> Option<u64> {
        self.deltas.keys().next_back().copied()
    }

    /// Every seq from 0 once, the whole answer, ended with `stop`.
    fn assert_complete(&self, words: usize) {
        assert!(
            self.repeated.is_empty(),
            "repeated seqs {:?}",
            self.repeated
        );
        assert!(self.errors.is_empty(), "errors {:?}", self.errors);
        let seqs: Vec<u64> = self.deltas.keys().copied().collect();
        assert_eq!(seqs, (0..words as u64).collect::<Vec<_>>(), "no gap");
        let text: String = self.deltas.values().map(String::as_str).collect();
        assert_eq!(
            text,
            (0..words).map(|i| format!("w{i} ")).collect::<String>()
        );
        let done = self.done.as_ref().expect("a done frame");
        assert_eq!(done["finish_reason"], "stop", "{done}");
    }
}

/// Reads frames of answer `id` into `collected` until `stop` says so or the answer ends;
/// false if the socket closed first.
async fn read_until(
    ws: &mut Ws,
    id: &str,
    collected: &mut Collected,
    mut stop: impl FnMut(&Collected) -> bool,
) -> bool {
    loop {
        if collected.done.is_some() || stop(collected) {
            return true;
        }
        match next_incoming(ws).await {
            Incoming::Json(frame) if frame["id"] == id => collected.absorb(&frame),
            Incoming::Json(_) => {}
            Incoming::Closed(_) => return false,
        }
    }
}

async fn resume(ws: &mut Ws, id: &str, after: Option<u64>) {
    send(ws, json!({"type":"resume","id":id,"after_seq":after})).await;
}

/// Two instances over one database, behind a fake whose slow answers pause 60 ms per delta,
/// and a user of theirs.
async fn two_instances(username: &str) -> (TestApp, TestApp, TokenPair) {
    let (fake, _stats) = spawn_fake(Duration::from_millis(60)).await;
    let config = cluster_config(&fake).await;
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let user = a.user_tokens(username).await;
    (a, b, user)
}

/// Reads answer `id` on `on_a` until a few deltas came, drops that socket, and resumes the
/// answer on a new socket to `b` from the last seq seen, to its complete end; returns that
/// socket.
async fn drop_and_resume(
    mut on_a: Ws,
    id: &str,
    b: SocketAddr,
    token: &str,
    answer: &mut Collected,
) -> Ws {
    assert!(read_until(&mut on_a, id, answer, |c| c.deltas.len() >= 4).await);
    drop(on_a);
    let mut on_b = chat_on(b, token).await;
    resume(&mut on_b, id, answer.last_seq()).await;
    assert!(read_until(&mut on_b, id, answer, |_| false).await);
    answer.assert_complete(SLOW_WORDS);
    on_b
}

async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------- two in-process instances

#[tokio::test]
async fn an_answer_asked_on_one_instance_resumes_on_another_with_every_seq_once() {
    let (a, b, user) = two_instances("alice").await;

    // Asked on A, dropped after a few deltas, resumed on B to the end.
    let mut on_a = chat_on(a.addr, &user.access).await;
    ask(&mut on_a, "q1", "tell me slowly about refunds").await;
    let mut answer = Collected::default();
    let mut on_b = drop_and_resume(on_a, "q1", b.addr, &user.access, &mut answer).await;
    assert!(
        answer.deltas.len() == SLOW_WORDS,
        "B relayed the rest, A the start"
    );

    // Just finished: the whole answer again from B, sources first.
    resume(&mut on_b, "q1", None).await;
    let first = next_frame(&mut on_b).await;
    assert_eq!(first["type"], "sources", "{first}");
    let mut replay = Collected::default();
    assert!(read_until(&mut on_b, "q1", &mut replay, |_| false).await);
    replay.assert_complete(SLOW_WORDS);
    assert_eq!(
        replay.done.as_ref().unwrap()["message_id"],
        answer.done.as_ref().unwrap()["message_id"]
    );

    // An unknown id is still a not_found.
    resume(&mut on_b, "nope", Some(0)).await;
    let error = next_frame(&mut on_b).await;
    assert_eq!(error["code"], "not_found", "{error}");

    // The relay wrote batches, not a row per round trip per chunk... and keeps events only
    // for streams of the resume window.
    let events = a
        .count("SELECT count(*) FROM answer_events e JOIN answer_streams s USING (stream_id)")
        .await;
    assert_eq!(events, SLOW_WORDS as i64 + 2, "sources, deltas, done");
    // Past the resume window the sweep deletes the stream and its events together.
    a.db()
        .await
        .execute(
            "UPDATE answer_streams SET finished_at = now() - interval '1 hour'",
            &[],
        )
        .await
        .unwrap();
    let swept = server::chat::relay::sweep(&a.state.db, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(swept, 1);
    assert_eq!(a.count("SELECT count(*) FROM answer_events").await, 0);
    resume(&mut on_b, "q1", None).await;
    let error = next_frame(&mut on_b).await;
    assert_eq!(error["code"], "not_found", "{error}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_follow_up_resumes_on_another_instance_and_a_refused_ask_leaves_no_stream() {
    // The stream row is written by the question's own statement, in both of its forms.
    let (a, b, user) = two_instances("carol").await;

    // A quick question opens the conversation; a slow follow-up in it is dropped after a few
    // deltas on A and resumed on B.
    let mut on_a = chat_on(a.addr, &user.access).await;
    ask(&mut on_a, "f1", "what about refunds").await;
    let mut first = Collected::default();
    assert!(read_until(&mut on_a, "f1", &mut first, |_| false).await);
    let conversation = first.done.as_ref().expect("f1 done")["conversation_id"].clone();
    send(
        &mut on_a,
        json!({"type":"ask","id":"f2","message":"and tell me slowly about returns",
               "conversation_id":conversation}),
    )
    .await;
    let mut answer = Collected::default();
    let mut on_b = drop_and_resume(on_a, "f2", b.addr, &user.access, &mut answer).await;
    assert_eq!(
        answer.done.as_ref().unwrap()["conversation_id"],
        conversation
    );

    // A follow-up in a conversation that is not the user's stores nothing, not even a stream.
    let streams = "SELECT count(*) FROM answer_streams";
    assert_eq!(a.count(streams).await, 2, "f1 and f2");
    send(
        &mut on_b,
        json!({"type":"ask","id":"f3","message":"hello","conversation_id":Uuid::new_v4()}),
    )
    .await;
    let mut refused = Collected::default();
    assert!(read_until(&mut on_b, "f3", &mut refused, |c| !c.errors.is_empty()).await);
    assert_eq!(
        refused.errors[0]["code"], "not_found",
        "{:?}",
        refused.errors
    );
    assert_eq!(a.count(streams).await, 2, "no stream for a refused ask");
    a.stop().await;
    b.stop().await;
}

/// The instance's one writer of `answer_events`: the batches of answers streaming at the same
/// moment go into the table together. A statement-level trigger counts the statements that
/// insert into it; publishers writing their own batches would take at least one per answer per
/// 50 ms of streaming (here over ten per answer); merged, a tick's batches take one or two.
#[tokio::test]
async fn answers_streaming_together_share_their_relay_statements() {
    const ANSWERS: usize = 40;
    let (fake, _stats) = spawn_fake(Duration::from_millis(20)).await;
    let mut config = cluster_config(&fake).await;
    config.ws_max_in_flight = ANSWERS;
    config.asks_per_minute = 1000;
    let a = spawn_app_from(config).await;
    let user = a.user_tokens("together").await;
    a.db()
        .await
        .batch_execute(
            "CREATE TABLE relay_writes (at timestamptz DEFAULT clock_timestamp()); \
             CREATE FUNCTION count_relay_write() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN INSERT INTO relay_writes DEFAULT VALUES; RETURN NULL; END $$; \
             CREATE TRIGGER counted AFTER INSERT ON answer_events \
               FOR EACH STATEMENT EXECUTE FUNCTION count_relay_write()",
        )
        .await
        .unwrap();

    let mut ws = chat_on(a.addr, &user.access).await;
    for i in 0..ANSWERS {
        ask(
            &mut ws,
            &format!("t{i}"),
            &format!("tell me slowly about refunds {i}"),
        )
        .await;
    }
    let mut answers: BTreeMap<String, Collected> = BTreeMap::new();
    while answers.values().filter(|c| c.done.is_some()).count() < ANSWERS {
        match next_incoming(&mut ws).await {
            Incoming::Json(frame) if frame["id"].is_string() => {
                let id = frame["id"].as_str().unwrap().to_owned();
                answers.entry(id).or_default().absorb(&frame);
            }
            Incoming::Json(_) => {}
            Incoming::Closed(close) => panic!("socket closed: {close:?}"),
        }
    }
    for answer in answers.values() {
        answer.assert_complete(SLOW_WORDS);
    }

    // Every event of every answer is in the table, each answer marked finished.
    let events = (ANSWERS * (SLOW_WORDS + 2)) as i64;
    eventually("every event written", || async {
        let written = a.count("SELECT count(*) FROM answer_events").await;
        let finished = a
            .count("SELECT count(*) FROM answer_streams WHERE finished_at IS NOT NULL")
            .await;
        (written == events && finished == ANSWERS as i64).then_some(())
    })
    .await;
    let statements = a.count("SELECT count(*) FROM relay_writes").await;
    assert!(
        statements <= 2 * ANSWERS as i64,
        "{statements} statements wrote the events of {ANSWERS} answers"
    );
    a.stop().await;
}

#[tokio::test]
async fn a_cancel_sent_to_another_instance_stops_the_answer_where_it_is_generated() {
    let (fake, stats) = spawn_fake(Duration::from_millis(100)).await;
    let config = cluster_config(&fake).await;
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let user = a.user_tokens("bob").await;

    let mut on_a = chat_on(a.addr, &user.access).await;
    ask(&mut on_a, "c1", "tell me slowly about shipping").await;
    let mut answer = Collected::default();
    assert!(read_until(&mut on_a, "c1", &mut answer, |c| !c.deltas.is_empty()).await);

    let mut on_b = chat_on(b.addr, &user.access).await;
    send(&mut on_b, json!({"type":"cancel","id":"c1"})).await;
    assert!(read_until(&mut on_a, "c1", &mut answer, |_| false).await);
    let done = answer.done.unwrap();
    assert_eq!(done["finish_reason"], "cancelled", "{done}");
    assert!(answer.deltas.len() < SLOW_WORDS);
    eventually("the provider stream to be dropped", || async {
        (stats.dropped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    // B's socket hears nothing back for the cancel (it was passed on), and an unknown id is
    // a not_found there as before.
    send(&mut on_b, json!({"type":"cancel","id":"never"})).await;
    let error = next_frame(&mut on_b).await;
    assert_eq!(error["id"], "never");
    assert_eq!(error["code"], "not_found");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn asks_per_minute_and_sockets_per_user_hold_across_instances() {
    let (fake, _stats) = spawn_fake(Duration::ZERO).await;
    let mut config = cluster_config(&fake).await;
    config.asks_per_minute = 3;
    config.ws_max_sockets_per_user = 2;
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let user = a.user_tokens("carol").await;

    // Asks: two on A, one on B, then a fourth anywhere is refused.
    for (app, n) in [(&a, 1), (&a, 2), (&b, 3)] {
        let response = app
            .post_json_authed(
                "/api/chat/",
                &user.access,
                &json!({"message": format!("question {n}")}),
            )
            .await;
        assert_eq!(response.status(), 200, "ask {n}");
    }
    for app in [&a, &b] {
        let response = app
            .post_json_authed("/api/chat/", &user.access, &json!({"message": "one more"}))
            .await;
        assert_eq!(response.status(), 429);
        let retry = test_support::retry_after_secs(&response);
        assert!((1..=60).contains(&retry), "{retry}");
    }
    let mut on_b = chat_on(b.addr, &user.access).await;
    ask(&mut on_b, "x", "and on the socket?").await;
    let error = next_frame(&mut on_b).await;
    assert_eq!(error["code"], "rate_limited", "{error}");
    assert!(error["retry_after"].as_u64().is_some());

    // Sockets: one on B (above), one on A, a third on either is closed with 4029.
    let _on_a = chat_on(a.addr, &user.access).await;
    for app in [&a, &b] {
        let mut third = app.ws_connect(&user.access).await;
        let close = test_support::next_close(&mut third)
            .await
            .expect("a close frame");
        assert_eq!(u16::from(close.code), protocol::ws::CLOSE_TOO_MANY_SOCKETS);
    }
    // A closed socket gives its slot back (the lease is returned in the background).
    drop(on_b);
    eventually("the slot to come back", || async {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(ws_request(&b.ws_url("/ws/chat"), &user.access))
                .await
                .ok()?;
        match next_incoming(&mut ws).await {
            Incoming::Json(frame) if frame["type"] == "ready" => Some(()),
            _ => None,
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}

// -------------------------------------------------------------------------------- real HAProxy

fn haproxy_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// HAProxy on loopback in front of `servers`: round-robin, WebSockets through (HTTP mode
/// handles the upgrade), `X-Forwarded-For` added, health checks on `/readyz`.
struct Haproxy {
    child: tokio::process::Child,
    port: u16,
    dir: PathBuf,
}

impl Haproxy {
    async fn start(binary: &PathBuf, servers: &[SocketAddr]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sct-haproxy-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let backends: String = servers
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("    server app{i} {addr} check inter 500ms fall 2 rise 1\n"))
            .collect();
        let config = format!(
            "global\n    maxconn 2000\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 60s\n\
             \x20   timeout server 60s\n    timeout tunnel 1h\n    retries 2\n    option redispatch\n\
             frontend chat\n    bind 127.0.0.1:{port}\n    default_backend servers\n\
             backend servers\n    balance roundrobin\n    option forwardfor\n\
             \x20   option httpchk GET /readyz\n    http-check expect status 200\n{backends}"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = std::process::Command::new(binary)
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(binary)
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        let proxy = Self { child, port, dir };
        let client = reqwest::Client::new();
        eventually("haproxy to serve", || async {
            let response = client.get(proxy.url("/healthz")).send().await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
        proxy
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws/chat", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which of `apps` holds `session_id`.
fn holder(apps: &[&TestApp], session_id: Uuid) -> Option<usize> {
    apps.iter()
        .position(|app| app.state.sessions.get(session_id).is_some())
}

#[tokio::test]
async fn behind_haproxy_a_dropped_socket_resumes_on_the_other_instance() {
    let Some(binary) = haproxy_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "haproxy is required under CI (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: haproxy not installed (apt-get install haproxy, or scripts/setup.sh)");
        return;
    };
    let (fake, _stats) = spawn_fake(Duration::from_millis(60)).await;
    let mut config = cluster_config(&fake).await;
    config.trusted_proxies = vec!["127.0.0.1/32".into()];
    config.asks_per_minute = 4;
    let a = spawn_app_from(config.clone()).await;
    let b = spawn_app_from(config).await;
    let apps = [&a, &b];
    let proxy = Haproxy::start(&binary, &[a.addr, b.addr]).await;
    let client = reqwest::Client::new();

    // Sign-up and login through the proxy.
    let response = client
        .post(proxy.url("/api/signup/"))
        .json(&json!({"username":"dave","email":"dave@example.com","password":PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let tokens: protocol::auth::TokenPair = client
        .post(proxy.url("/api/login/"))
        .json(&json!({"username":"dave","password":PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Ask through the proxy, drop mid-answer.
    let (mut first, first_session) = chat_at(&proxy.ws_url(), &tokens.access).await;
    let first_at = holder(&apps, first_session).expect("a session on one instance");
    ask(&mut first, "p1", "tell me slowly about refunds").await;
    let mut answer = Collected::default();
    assert!(read_until(&mut first, "p1", &mut answer, |c| c.deltas.len() >= 3).await);
    drop(first);

    // Reconnect through the proxy until round-robin lands on the other instance (the next
    // connection does, unless a health check's timing interleaves), then resume to the end.
    let mut second = None;
    for _ in 0..6 {
        let (ws, session) = chat_at(&proxy.ws_url(), &tokens.access).await;
        if holder(&apps, session).is_some_and(|at| at != first_at) {
            second = Some(ws);
            break;
        }
    }
    let mut second = second.expect("round-robin reaches the other instance");
    resume(&mut second, "p1", answer.last_seq()).await;
    assert!(read_until(&mut second, "p1", &mut answer, |_| false).await);
    answer.assert_complete(SLOW_WORDS);

    // The admin, through the proxy, sees the sessions of both instances.
    let admin = {
        let response = client
            .post(proxy.url("/api/login/"))
            .json(&json!({"username":"boss","password":ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        let tokens: protocol::auth::TokenPair = response.json().await.unwrap();
        tokens.access
    };
    // `third` and `fourth` are on different instances: round-robin alternates.
    let (_third, third_session) = chat_at(&proxy.ws_url(), &tokens.access).await;
    let (_fourth, fourth_session) = chat_at(&proxy.ws_url(), &tokens.access).await;
    let held: Vec<Option<usize>> = [third_session, fourth_session]
        .iter()
        .map(|s| holder(&apps, *s))
        .collect();
    assert!(
        held.contains(&Some(0)) && held.contains(&Some(1)),
        "{held:?}"
    );
    eventually("sessions of both instances in the admin list", || async {
        let listed: Vec<SessionInfo> = client
            .get(proxy.url("/api/admin/sessions"))
            .bearer_auth(&admin)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let on = |i: usize| {
            listed
                .iter()
                .any(|s| holder(&apps, s.session_id) == Some(i))
        };
        (on(0)
            && on(1)
            && listed
                .iter()
                .all(|s| s.remote_addr.as_deref() == Some("127.0.0.1")))
        .then_some(())
    })
    .await;

    // A reload through the proxy reaches both instances.
    let before: Vec<KbInfo> = futures::future::join_all(
        apps.iter()
            .map(|app| app.get_json::<KbInfo>("/api/admin/kb", &admin)),
    )
    .await;
    let response = client
        .post(proxy.url("/api/admin/kb/reload"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for (app, before) in apps.iter().zip(&before) {
        eventually("the reload on both instances", || async {
            let now: KbInfo = app.get_json("/api/admin/kb", &admin).await;
            (now.loaded_at != before.loaded_at).then_some(())
        })
        .await;
    }

    // Asks per minute hold across both: 4 allowed in all (one used above), whichever
    // instance each request reaches.
    let mut statuses = Vec::new();
    for n in 0..5 {
        let response = client
            .post(proxy.url("/api/chat/"))
            .bearer_auth(&tokens.access)
            .json(&json!({"message": format!("quick question {n}")}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    drop(proxy);
    a.stop().await;
    b.stop().await;
}

// ------------------------------------------------------------ rolling restart of real processes

/// The chat server binary as cargo built it, on `port`.
fn server_binary(port: u16, database_url: &str, fake_url: &str) -> Command {
    let mut cmd = test_support::server_process(
        env!("CARGO_BIN_EXE_chat-server"),
        port,
        database_url,
        fake_url,
    );
    cmd.env("INSTANCE_STALE_SECS", "3");
    cmd.env("ASKS_PER_MINUTE", "1000");
    cmd.env("WS_MAX_SOCKETS_PER_USER", "200");
    cmd.env("SHUTDOWN_GRACE_SECS", "30");
    cmd
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    eventually("the instance to be ready", || async {
        let response = client.get(format!("{base}/readyz")).send().await.ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
}

/// One streaming answer that follows its socket's instance around: asked on `first`, on a
/// close (1012 from a draining instance, or any drop) it reconnects to `fallback` and resumes
/// after the last seq it has.
async fn answer_through_restart(
    first: String,
    fallback: String,
    token: String,
    id: String,
    asked: Arc<tokio::sync::Barrier>,
) -> (Collected, Vec<u16>) {
    let (mut ws, _) = chat_at(&first, &token).await;
    ask(&mut ws, &id, "tell me slowly about refunds").await;
    let mut answer = Collected::default();
    // Everyone waits until every answer has streamed something, then the restart happens.
    let _ = read_until(&mut ws, &id, &mut answer, |c| !c.deltas.is_empty()).await;
    asked.wait().await;
    let mut closes = Vec::new();
    let mut socket = Some(ws);
    for _ in 0..5 {
        let ws = socket.as_mut().unwrap();
        loop {
            if answer.done.is_some() {
                return (answer, closes);
            }
            match next_incoming(ws).await {
                Incoming::Json(frame) if frame["id"] == id.as_str() => answer.absorb(&frame),
                Incoming::Json(_) => {}
                Incoming::Closed(close) => {
                    closes.push(close.map_or(1006, |c| u16::from(c.code)));
                    break;
                }
            }
        }
        let (mut next, _) = chat_at(&fallback, &token).await;
        resume(&mut next, &id, answer.last_seq()).await;
        socket = Some(next);
    }
    panic!("answer {id} did not finish after five reconnects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_mid_answer_completes_every_answer_through_resume() {
    const ANSWERS: usize = 50;
    let (fake, stats) = spawn_fake(Duration::from_millis(150)).await;
    let database_url = test_support::fresh_database().await;
    let client = reqwest::Client::new();
    let (port_a, port_b) = (free_port(), free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let mut instance_a = server_binary(port_a, &database_url, &fake)
        .spawn()
        .expect("instance A starts");
    // A migrates first; B then starts on the migrated database.
    wait_ready(&client, &base_a).await;
    let mut instance_b = server_binary(port_b, &database_url, &fake)
        .spawn()
        .expect("instance B starts");
    wait_ready(&client, &base_b).await;

    let signup = client
        .post(format!("{base_a}/api/signup/"))
        .json(&json!({"username":"erin","email":"erin@example.com","password":PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let tokens: protocol::auth::TokenPair = client
        .post(format!("{base_b}/api/login/"))
        .json(&json!({"username":"erin","password":PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // 50 answers, half asked on A and half on B; B falls back to B itself (never used).
    let ws_a = format!("ws://127.0.0.1:{port_a}/ws/chat");
    let ws_b = format!("ws://127.0.0.1:{port_b}/ws/chat");
    let asked = Arc::new(tokio::sync::Barrier::new(ANSWERS + 1));
    let answers: Vec<_> = (0..ANSWERS)
        .map(|i| {
            let first = if i % 2 == 0 { &ws_a } else { &ws_b };
            tokio::spawn(answer_through_restart(
                first.clone(),
                ws_b.clone(),
                tokens.access.clone(),
                format!("r{i}"),
                Arc::clone(&asked),
            ))
        })
        .collect();
    asked.wait().await;

    // Every answer is streaming: SIGTERM A.
    let pid = instance_a.id().expect("A's pid");
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let mut restarted = 0;
    for answer in answers {
        let (answer, closes) = tokio::time::timeout(Duration::from_secs(120), answer)
            .await
            .expect("every answer completes in time")
            .unwrap();
        answer.assert_complete(SLOW_WORDS);
        if !closes.is_empty() {
            assert_eq!(
                closes,
                vec![protocol::ws::CLOSE_SERVICE_RESTART],
                "a draining instance says restart"
            );
            restarted += 1;
        }
    }
    assert_eq!(restarted, ANSWERS / 2, "every socket on A was moved to B");
    let status = tokio::time::timeout(Duration::from_secs(60), instance_a.wait())
        .await
        .expect("A exits after draining")
        .unwrap();
    assert!(status.success(), "A exits cleanly: {status:?}");

    // Nothing was cut short: every provider stream was read to its end, every answer stored.
    assert_eq!(stats.dropped.load(Ordering::SeqCst), 0);
    let db = server::db::connect(&database_url).await.unwrap();
    let complete: i64 = db
        .query_one(
            "SELECT count(*) FROM messages WHERE role = 'assistant' AND status = 'complete'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(complete, ANSWERS as i64);
    instance_b.start_kill().unwrap();
    let _ = instance_b.wait().await;
    drop(db);
    test_support::drop_database(&database_url).await;
}
