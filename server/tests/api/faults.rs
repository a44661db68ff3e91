//! Faults, against real components: a private PostgreSQL cluster the test stops and starts
//! (created with initdb/pg_ctl on a free port), the real `chat-server` binary killed with
//! SIGKILL, a PostgreSQL with TLS only, and a fake OpenAI-compatible provider on loopback that
//! streams slowly, storms with 429/503, or is down for good.
//!
//! Timings are printed (`--nocapture`) for BENCHMARKS.md; the assertions are about behaviour.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use server::config::{Config, LlmProvider};
use test_support::fake::chat::{ChatReply, FakeChat, Stream};
use test_support::{TestApp, Ws, free_port, next_frame, spawn_app_from, test_config};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

/// Bound on any single wait in these tests (a hang fails the test instead of blocking it).
const PATIENCE: Duration = Duration::from_secs(90);

// ------------------------------------------------------------------------- a private cluster

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/setup.sh)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().expect("a PostgreSQL installation")
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A PostgreSQL cluster of this test alone: created, started, stopped and removed by it.
/// PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
struct PgCluster {
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    root: bool,
    /// Extra `-c` settings (TLS).
    settings: Vec<String>,
}

impl PgCluster {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }

    async fn run(&self, mut cmd: Command, what: &str) {
        let out = cmd.output().await.expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn create(settings: Vec<String>, hba: Option<&str>) -> Self {
        let data = PathBuf::from(format!("/var/tmp/sct-pg-{}", uuid::Uuid::new_v4().simple()));
        let cluster = Self {
            data,
            port: free_port(),
            bin: pg_bin(),
            root: is_root(),
            settings,
        };
        let mut initdb = cluster.command("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        cluster.run(initdb, "initdb").await;
        if let Some(hba) = hba {
            // Root may write into the cluster's folder; the file stays the cluster owner's.
            std::fs::write(cluster.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        }
        cluster.start().await;
        cluster
    }

    async fn start(&self) {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.data.display()
        );
        for s in &self.settings {
            options.push_str(&format!(" -c {s}"));
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-w", "-o", &options, "start"]);
        self.run(cmd, "pg_ctl start").await;
    }

    /// Stops the server; `fast` ends every open connection at once, as an outage does.
    async fn stop(&self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        self.run(cmd, "pg_ctl stop").await;
    }

    fn url(&self, db: &str, params: &str) -> String {
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("postgres://postgres@127.0.0.1:{}/{db}{query}", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let mut cmd = if self.root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

// ----------------------------------------------------------------------------- a fake provider

/// How the fake provider behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Three words at once.
    Fast,
    /// 25 words, 300 ms apart (an answer that takes about 7 s).
    Slow,
    /// Every fifth call is refused with 429 or 503 and `Retry-After: 1`; the others are fast.
    Storm,
    /// Every call is refused with 503.
    Down,
}

#[derive(Default)]
struct Fake {
    mode: AtomicU32,
    calls: AtomicUsize,
    refused: AtomicUsize,
}

impl Fake {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u32, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Fast,
            1 => Mode::Slow,
            2 => Mode::Storm,
            _ => Mode::Down,
        }
    }
}

fn completions(fake: &Fake) -> ChatReply {
    let n = fake.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let mode = fake.mode();
    let refuse = match mode {
        Mode::Down => Some(503),
        Mode::Storm if n.is_multiple_of(5) => Some(if n.is_multiple_of(10) { 503 } else { 429 }),
        _ => None,
    };
    if let Some(status) = refuse {
        fake.refused.fetch_add(1, Ordering::SeqCst);
        return ChatReply::overloaded(status);
    }
    match mode {
        Mode::Slow => Stream::words(25, Duration::from_millis(300)),
        _ => Stream::words(3, Duration::ZERO),
    }
    .usage(11)
    .into()
}

async fn spawn_fake() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let shared = Arc::clone(&fake);
    let chat = FakeChat::start(move |_| completions(&shared)).await;
    (chat.url, fake)
}

fn use_fake(config: &mut Config, url: &str) {
    config.llm_provider = Some(LlmProvider::Openai);
    config.openai_base_url = url.to_owned();
    config.llm_model = Some("fake-model".into());
    config.provider_timeout_secs = 5;
}

// ------------------------------------------------------------------------------------ helpers

async fn ask(ws: &mut Ws, id: &str, message: &str) {
    let frame = json!({"type":"ask","id":id,"message":message,"conversation_id":null});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("frame sent");
}

async fn connect_ready(app: &TestApp, token: &str) -> Ws {
    let mut ws = app.ws_connect(token).await;
    let ready = next_frame(&mut ws).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    ws
}

/// Frames of one answer, collected while frames of other answers are set aside.
#[derive(Default, Debug)]
struct Collected {
    text: String,
    errors: Vec<Value>,
    done: Option<Value>,
}

fn absorb(collected: &mut Collected, frame: &Value) {
    match frame["type"].as_str().unwrap_or_default() {
        "delta" => collected
            .text
            .push_str(frame["text"].as_str().unwrap_or_default()),
        "error" => collected.errors.push(frame.clone()),
        "done" => collected.done = Some(frame.clone()),
        _ => {}
    }
}

async fn status_of(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client
        .get(url)
        .timeout(PATIENCE)
        .send()
        .await
        .expect("the server answers (never hangs)");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn wait_for_status(client: &reqwest::Client, url: &str, want: u16) -> Duration {
    let started = Instant::now();
    loop {
        let response = client
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if response.is_ok_and(|r| r.status().as_u16() == want) {
            return started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "{url} never answered {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Questions that have no answer stored (what history would show as still being written).
async fn pending_answers(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM messages q WHERE q.role = 'user' \
         AND NOT EXISTS (SELECT 1 FROM messages a WHERE a.reply_to = q.id)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

// ---------------------------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_in_flight_survives_a_database_outage_and_service_recovers_without_restart() {
    let cluster = PgCluster::create(Vec::new(), None).await;
    let (fake_url, fake) = spawn_fake().await;
    let mut config = test_config().await;
    test_support::drop_database(&config.database_url).await;
    config.database_url = cluster.url("support_chat", "");
    use_fake(&mut config, &fake_url);
    config.db_pool_wait_secs = 2;
    config.db_connect_timeout_secs = 2;
    config.instance_heartbeat_secs = 1;
    config.instance_stale_secs = 3;
    let app = spawn_app_from(config).await;
    let tokens = app.user_tokens("outage").await;
    let mut ws = connect_ready(&app, &tokens.access).await;

    fake.set(Mode::Slow);
    ask(&mut ws, "a", "tell me slowly about refunds").await;
    let mut answer = Collected::default();
    let mut other = Collected::default();
    // Wait until the answer is streaming.
    while answer.text.is_empty() {
        let frame = next_frame(&mut ws).await;
        assert_eq!(frame["id"], "a", "{frame}");
        absorb(&mut answer, &frame);
    }

    let outage = Instant::now();
    cluster.stop().await;
    let stopped_in = outage.elapsed();

    // The process is alive, but not ready, and REST answers 503 quickly instead of hanging.
    let (health, _) = status_of(&app.client, &app.url("/healthz")).await;
    assert_eq!(health, 200);
    let to_not_ready = wait_for_status(&app.client, &app.url("/readyz"), 503).await;
    let rest_started = Instant::now();
    let response = app
        .client
        .get(app.url("/api/conversations/"))
        .bearer_auth(&tokens.access)
        .timeout(PATIENCE)
        .send()
        .await
        .expect("REST answers during the outage");
    let rest_took = rest_started.elapsed();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    // A new question gets a clear error frame; the answer in flight streams on to its end.
    ask(&mut ws, "b", "where is my parcel?").await;
    while answer.done.is_none() || other.errors.is_empty() {
        let frame = next_frame(&mut ws).await;
        match frame["id"].as_str() {
            Some("a") => absorb(&mut answer, &frame),
            Some("b") => absorb(&mut other, &frame),
            _ => panic!("unexpected frame {frame}"),
        }
    }
    assert_eq!(other.errors[0]["code"], "unavailable", "{:?}", other.errors);
    let done = answer.done.clone().unwrap();
    assert_eq!(done["finish_reason"], "stop", "{done}");
    assert!(answer.errors.is_empty(), "{:?}", answer.errors);
    let expected: String = (0..25).map(|i| format!("w{i} ")).collect();
    assert_eq!(answer.text, expected);
    let message_id: uuid::Uuid = done["message_id"].as_str().unwrap().parse().unwrap();

    // The database stays away a while longer, then comes back.
    let outage_min = Duration::from_secs(10);
    if outage.elapsed() < outage_min {
        tokio::time::sleep(outage_min - outage.elapsed()).await;
    }
    let (ready, _) = status_of(&app.client, &app.url("/readyz")).await;
    assert_eq!(ready, 503);
    cluster.start().await;
    let back = Instant::now();
    let outage_lasted = outage.elapsed();
    let to_ready = wait_for_status(&app.client, &app.url("/readyz"), 200).await;

    // The answer written while the database was away lands, complete.
    let db = server::db::connect(&cluster.url("support_chat", ""))
        .await
        .unwrap();
    let stored = loop {
        let row = db
            .query_opt(
                "SELECT content, status FROM messages WHERE id = $1",
                &[&message_id],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break (row.get::<_, String>(0), row.get::<_, String>(1));
        }
        assert!(back.elapsed() < PATIENCE, "the answer was never stored");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored_after = back.elapsed();
    assert_eq!(stored, (expected, "complete".to_owned()));
    assert_eq!(pending_answers(&db).await, 0);

    // Recovered without a restart: REST and new questions work again.
    let (status, _) = {
        let r = app
            .client
            .get(app.url("/api/conversations/"))
            .bearer_auth(&tokens.access)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 200);
    fake.set(Mode::Fast);
    ask(&mut ws, "c", "tell me about refunds").await;
    let mut again = Collected::default();
    while again.done.is_none() {
        let frame = next_frame(&mut ws).await;
        if frame["id"] == "c" {
            absorb(&mut again, &frame);
        }
    }
    assert_eq!(again.done.unwrap()["finish_reason"], "stop");
    eprintln!(
        "outage timeline: pg_ctl stop took {stopped_in:?}; /readyz 503 after {to_not_ready:?}; \
         REST 503 in {rest_took:?}; outage lasted {outage_lasted:?}; /readyz 200 {to_ready:?} \
         after the database was back; deferred answer stored {stored_after:?} after it was back"
    );
    drop(ws);
    app.stop().await;
}

/// The chat server binary, as cargo built it.
fn server_binary(port: u16, database_url: &str, fake_url: &str) -> Command {
    let mut cmd = test_support::server_process(
        env!("CARGO_BIN_EXE_chat-server"),
        port,
        database_url,
        fake_url,
    );
    cmd.env("INSTANCE_STALE_SECS", "2");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_answer_then_restart_leaves_no_pending_answer() {
    let (fake_url, fake) = spawn_fake().await;
    fake.set(Mode::Slow);
    let database_url = test_support::fresh_database().await;
    let client = reqwest::Client::new();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut first = server_binary(port, &database_url, &fake_url)
        .spawn()
        .expect("chat-server starts");
    wait_for_status(&client, &format!("{base}/readyz"), 200).await;

    // Sign up and ask through the first process.
    let signup = client
        .post(format!("{base}/api/signup/"))
        .json(&json!({"username":"killed","email":"killed@example.com","password":"correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signup.status(), 201);
    let login: Value = client
        .post(format!("{base}/api/login/"))
        .json(&json!({"username":"killed","password":"correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access"].as_str().unwrap().to_owned();
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://127.0.0.1:{port}/ws/chat"
        ))
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_frame(&mut ws).await["type"], "ready");
    ask(&mut ws, "a", "tell me slowly about refunds").await;
    loop {
        let frame = next_frame(&mut ws).await;
        if frame["type"] == "delta" {
            break;
        }
    }

    // SIGKILL mid-answer: nothing gets to clean up.
    first.start_kill().expect("kill -9");
    first.wait().await.unwrap();
    drop(ws);
    let db = server::db::connect(&database_url).await.unwrap();
    assert_eq!(
        pending_answers(&db).await,
        1,
        "the question is stored, its answer is not"
    );

    // A new process (new instance id) marks the dead one's answer interrupted.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut second = server_binary(port, &database_url, &fake_url)
        .spawn()
        .expect("chat-server restarts");
    wait_for_status(&client, &format!("{base}/readyz"), 200).await;
    let started = Instant::now();
    let item = loop {
        let page: Value = client
            .get(format!("{base}/api/chat-history/"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let item = page["items"][0].clone();
        if item["status"] != "pending" {
            break item;
        }
        assert!(started.elapsed() < PATIENCE, "still pending: {item}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(item["status"], "error", "{item}");
    assert_eq!(item["error_code"], "interrupted", "{item}");
    assert_eq!(pending_answers(&db).await, 0);

    // The user can ask again.
    fake.set(Mode::Fast);
    let response = client
        .post(format!("{base}/api/chat/"))
        .bearer_auth(&token)
        .json(&json!({"message":"tell me about refunds"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    drop(db);
    test_support::drop_database(&database_url).await;
}

/// A CA and a server certificate for `names` (subjectAltName entries), made with openssl.
async fn make_certificates(dir: &Path, names: &str) {
    let run = |args: Vec<String>| async move {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .await
            .expect("the openssl command (scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName={names}\n"
        ),
    )
    .unwrap();
    run(vec![
        "req".into(),
        "-x509".into(),
        "-newkey".into(),
        "rsa:2048".into(),
        "-nodes".into(),
        "-days".into(),
        "2".into(),
        "-subj".into(),
        "/CN=faults-test-ca".into(),
        "-keyout".into(),
        p("ca.key"),
        "-out".into(),
        p("ca.crt"),
    ])
    .await;
    run(vec![
        "req".into(),
        "-newkey".into(),
        "rsa:2048".into(),
        "-nodes".into(),
        "-subj".into(),
        "/CN=db.example".into(),
        "-keyout".into(),
        p("server.key"),
        "-out".into(),
        p("server.csr"),
    ])
    .await;
    run(vec![
        "x509".into(),
        "-req".into(),
        "-in".into(),
        p("server.csr"),
        "-CA".into(),
        p("ca.crt"),
        "-CAkey".into(),
        p("ca.key"),
        "-CAcreateserial".into(),
        "-days".into(),
        "2".into(),
        "-extfile".into(),
        p("server.ext"),
        "-out".into(),
        p("server.crt"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_against_a_tls_only_cluster() {
    let certs = PathBuf::from(format!(
        "/var/tmp/sct-tls-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&certs).unwrap();
    make_certificates(&certs, "DNS:localhost").await;
    let key = certs.join("server.key");
    if is_root() {
        // PostgreSQL (as `postgres`) must own its key and nobody else may read it.
        let out = Command::new("chown")
            .arg("postgres")
            .arg(&key)
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
    }
    std::fs::set_permissions(
        &key,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let settings = vec![
        "ssl=on".to_owned(),
        format!("ssl_cert_file={}", certs.join("server.crt").display()),
        format!("ssl_key_file={}", key.display()),
    ];
    // TLS or nothing: plaintext connections match no line and are refused.
    let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\n";
    let cluster = PgCluster::create(settings, Some(hba)).await;
    let ca = certs.join("ca.crt").display().to_string();

    // require: encrypted (certificate not checked, as libpq does without a root).
    let client = server::db::connect(&cluster.url("postgres", "sslmode=require"))
        .await
        .expect("sslmode=require connects");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    // disable: plaintext, refused by this server.
    assert!(
        server::db::connect(&cluster.url("postgres", "sslmode=disable"))
            .await
            .is_err()
    );
    // verify-ca: the chain is checked (the host name is not: the certificate names localhost).
    server::db::connect(&cluster.url("postgres", &format!("sslmode=verify-ca&sslrootcert={ca}")))
        .await
        .expect("verify-ca with the right root");
    // verify-full: 127.0.0.1 is not a name in the certificate; localhost is.
    assert!(
        server::db::connect(
            &cluster.url("postgres", &format!("sslmode=verify-full&sslrootcert={ca}"))
        )
        .await
        .is_err()
    );
    server::db::connect(&format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
        cluster.port
    ))
    .await
    .expect("verify-full with the right root and name");
    // A root that did not sign the server's certificate is refused.
    let other = certs.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_certificates(&other, "DNS:localhost").await;
    let wrong = other.join("ca.crt").display().to_string();
    assert!(
        server::db::connect(&cluster.url(
            "postgres",
            &format!("sslmode=verify-ca&sslrootcert={wrong}")
        ))
        .await
        .is_err()
    );

    // The whole service over TLS: database creation, migrations, pool, LISTEN, outbox.
    let mut config = test_config().await;
    test_support::drop_database(&config.database_url).await;
    config.database_url = cluster.url("support_chat", "sslmode=require");
    let app = spawn_app_from(config).await;
    let tokens = app.user_tokens("tls").await;
    let response = app
        .client
        .post(app.url("/api/chat/"))
        .bearer_auth(&tokens.access)
        .json(&json!({"message":"Can I return an item?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let plaintext: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = 'support_chat' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plaintext, 0);
    app.stop().await;
    drop(client);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&certs);
}

/// Asks `count` questions over REST, `parallel` at a time; returns the latencies of the
/// answered ones and the number not answered.
async fn ask_many(
    app: &TestApp,
    token: &str,
    count: usize,
    parallel: usize,
) -> (Vec<Duration>, usize) {
    let results: Vec<Option<Duration>> = futures::stream::iter(0..count)
        .map(|i| async move {
            let started = Instant::now();
            let response = app
                .client
                .post(app.url("/api/chat/"))
                .bearer_auth(token)
                .json(&json!({"message": format!("tell me about refunds ({i})")}))
                .timeout(PATIENCE)
                .send()
                .await
                .ok()?;
            if response.status() != 200 {
                return None;
            }
            let body: Value = response.json().await.ok()?;
            (body["finish_reason"] == "stop" && !body["answer"].as_str()?.is_empty())
                .then(|| started.elapsed())
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let failed = results.iter().filter(|r| r.is_none()).count();
    (results.into_iter().flatten().collect(), failed)
}

/// Median, 90th percentile and mean of `v`, for the printed figures.
fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or_default()
    };
    let mean = v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap_or(1);
    format!("median {:?}, p90 {:?}, mean {:?}", at(0.5), at(0.9), mean)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_storm_of_429_and_503_loses_no_ask_and_a_dead_provider_fails_clearly() {
    let (fake_url, fake) = spawn_fake().await;
    let mut config = test_config().await;
    use_fake(&mut config, &fake_url);
    config.asks_per_minute = 100_000;
    let app = spawn_app_from(config).await;
    let tokens = app.user_tokens("storm").await;

    fake.set(Mode::Fast);
    // Warm-up (first embeddings, pooled connections), then the calm baseline.
    let (_, warm_failed) = ask_many(&app, &tokens.access, 20, 8).await;
    assert_eq!(warm_failed, 0);
    let (calm, calm_failed) = ask_many(&app, &tokens.access, 200, 8).await;
    assert_eq!(calm_failed, 0);

    fake.set(Mode::Storm);
    let calls_before = fake.calls.load(Ordering::SeqCst);
    let (stormy, failed) = ask_many(&app, &tokens.access, 200, 8).await;
    let calls = fake.calls.load(Ordering::SeqCst) - calls_before;
    let refused = fake.refused.load(Ordering::SeqCst);
    assert!(refused >= 40, "the storm refused {refused} calls");
    assert_eq!(failed, 0, "every ask answered under the storm");
    let db = app.db().await;
    let complete: i64 = db
        .query_one(
            "SELECT count(*) FROM messages WHERE role = 'assistant' AND status = 'complete'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(complete, 420);
    eprintln!(
        "storm: {} of 200 asks answered; {refused} of {calls} provider calls refused (429/503, \
         Retry-After: 1); latency calm: {}; in the storm: {}",
        stormy.len(),
        summary(calm),
        summary(stormy)
    );

    // Down for good: a clear provider_unavailable within the deadline, stored with that code.
    fake.set(Mode::Down);
    let mut ws = connect_ready(&app, &tokens.access).await;
    let started = Instant::now();
    ask(&mut ws, "down", "tell me about refunds").await;
    let mut answer = Collected::default();
    while answer.done.is_none() {
        let frame = next_frame(&mut ws).await;
        absorb(&mut answer, &frame);
    }
    let took = started.elapsed();
    assert_eq!(answer.errors.len(), 1, "{:?}", answer.errors);
    assert_eq!(answer.errors[0]["code"], "provider_unavailable");
    assert_eq!(answer.done.as_ref().unwrap()["finish_reason"], "error");
    // PROVIDER_TIMEOUT_SECS (5) bounds the retries; the margin covers retrieval.
    assert!(took < Duration::from_secs(5 + 5), "gave up after {took:?}");
    let (status, code): (String, Option<String>) = {
        let row = db
            .query_one(
                "SELECT status, error_code FROM messages WHERE role = 'assistant' \
                 ORDER BY created_at DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(status, "error");
    assert_eq!(code.as_deref(), Some("provider_unavailable"));
    eprintln!("provider down: provider_unavailable after {took:?}");
    drop(ws);
    app.stop().await;
}
