//! The real `chat-admin` binary in a pseudo-terminal, against the real server and PostgreSQL:
//! keys are typed into the terminal, and the screen is read back through a VT100 parser.
//! Every wait is for text to appear (or go) within a bound, never a fixed sleep.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};
use serde_json::{Value, json};
use test_support::fake::chat::{FakeChat, Stream};
use test_support::{Incoming, TestApp, Ws, next_frame, next_incoming, send, spawn_app_with};

const ADMIN_PASSWORD: &str = "admin password for pty tests";
const ROWS: u16 = 45;
const COLS: u16 = 160;
/// How long any one piece of text may take to appear.
const SCREEN_WAIT: Duration = Duration::from_secs(30);

/// `chat-admin` running in a pseudo-terminal, its output parsed into a screen.
struct Console {
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn Child + Send + Sync>,
    // Kept open for the life of the console: dropping it hangs the terminal up.
    _master: Box<dyn MasterPty + Send>,
}

impl Console {
    fn start(server: &str) -> Self {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("a pseudo-terminal");
        let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_chat-admin"));
        command.args(["--server", server, "--username", "boss"]);
        command.env("ADMIN_PASSWORD", ADMIN_PASSWORD);
        command.env("TERM", "xterm-256color");
        command.env_remove("ADMIN_TOKEN");
        let child = pair
            .slave
            .spawn_command(command)
            .expect("chat-admin starts");
        // The child holds its own end now; ours would keep the terminal open after it exits.
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().expect("pty reader");
        let writer = pair.master.take_writer().expect("pty writer");
        let size = |n| std::num::NonZeroU16::new(n).expect("a screen size");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(size(ROWS), size(COLS), 0)));
        let parser = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => parser.lock().unwrap().process(&buf[..n]),
                }
            }
        });
        Self {
            screen,
            writer,
            child,
            _master: pair.master,
        }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Types `keys` (raw bytes: `\r` is Enter, `\x1b` Esc).
    fn keys(&mut self, keys: &str) {
        self.writer.write_all(keys.as_bytes()).expect("key typed");
        self.writer.flush().expect("keys flushed");
    }

    /// Waits until the screen satisfies `test`; fails with the screen after [`SCREEN_WAIT`].
    async fn wait(&self, what: &str, test: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_WAIT;
        loop {
            let screen = self.contents();
            if test(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every one of `texts` is on the screen.
    async fn wait_for(&self, texts: &[&str]) -> String {
        self.wait(&format!("{texts:?}"), |s| {
            texts.iter().all(|t| s.contains(t))
        })
        .await
    }

    async fn wait_gone(&self, text: &str) -> String {
        self.wait(&format!("{text:?} to go"), |s| !s.contains(text))
            .await
    }

    /// The screen row holding the selection marker of a table (`> `).
    fn selected_row(&self) -> Option<String> {
        self.contents()
            .lines()
            .find(|l| l.trim_start_matches('│').starts_with("> "))
            .map(str::to_owned)
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // A failed test must not leave the console running.
        let _ = self.child.kill();
    }
}

// A fake OpenAI-compatible provider: a question with "slowly" is answered `w0 ` … `w39 `, 50 ms
// apart; any other question gets the refusal the knowledge-gaps report counts.

async fn spawn_provider() -> String {
    let fake = FakeChat::start(|call| {
        let pieces: Vec<String> = if call.last_message().contains("slowly") {
            (0..40).map(|i| format!("w{i} ")).collect()
        } else {
            vec!["I don't have that information.".into()]
        };
        Stream::pieces(pieces, Duration::from_millis(50))
            .end_at_once()
            .into()
    })
    .await;
    fake.url
}

async fn spawn_server() -> TestApp {
    let provider = spawn_provider().await;
    spawn_app_with(|c| {
        c.admin_username = Some("boss".into());
        c.admin_password = Some(server::config::Secret::new(ADMIN_PASSWORD));
        c.llm_provider = Some(server::config::LlmProvider::Openai);
        c.openai_base_url = provider;
        c.llm_model = Some("fake-model".into());
    })
    .await
}

/// Reads answer `id` on a chat socket to its `done`; returns the `done` frame.
async fn read_done(ws: &mut Ws, id: &str) -> Value {
    loop {
        let frame = next_frame(ws).await;
        if frame["id"] == id && frame["type"] == "done" {
            return frame;
        }
        assert_ne!(frame["type"], "error", "{frame}");
    }
}

/// A refused, rated-down question (a knowledge gap and a rating to show), asked over REST.
async fn refused_and_rated(app: &TestApp, token: &str) {
    let answer: Value = app
        .post_json_authed(
            "/api/chat/",
            token,
            &json!({"message": "Can I bring my dog into the store?"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = answer["message_id"].as_str().unwrap();
    let rated = app
        .post_json_authed(
            &format!("/api/messages/{id}/feedback"),
            token,
            &json!({"rating": "down", "comment": "Guide dogs at least?"}),
        )
        .await;
    assert_eq!(rated.status(), 200);
    // The question's signals are recorded just after the answer, off its path.
    let admin = app.login_tokens("boss", ADMIN_PASSWORD).await.access;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gaps: protocol::gaps::GapsReport = app.get_json("/api/admin/gaps", &admin).await;
        if !gaps.gaps.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refused question became a gap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_drives_every_view_in_a_terminal() {
    let app = spawn_server().await;
    let alice = app.user_tokens("alice").await;
    refused_and_rated(&app, &alice.access).await;
    let mut chat = app.ws_connect(&alice.access).await;
    assert_eq!(next_frame(&mut chat).await["type"], "ready");

    let mut console = Console::start(&app.base);
    console
        .wait_for(&["1 Sessions (1)", "● live", "alice"])
        .await;

    // `?` lists the keys of the new views; any key closes it.
    console.keys("?");
    let keys = [
        "open the selected session (live answer) or knowledge gap",
        "disconnect it, after a y/n",
        "upload a file from this disk by path",
        "delete the selected document, after a y/n",
        "sparklines of the last hour",
        "sessions, knowledge base, cleanup, stats, gaps, feedback, documents",
    ];
    // The title can reach the terminal before the rest of the frame: wait for the whole list.
    let mut expected = vec!["Keys (any key closes)"];
    expected.extend(keys);
    let help = console.wait_for(&expected).await;
    for key in keys {
        assert!(help.contains(key), "help lacks {key:?}:\n{help}");
    }
    console.keys(" ");
    console.wait_gone("Keys (any key closes)").await;

    // Sessions → Enter: the detail, with the user's question and the answer streaming live.
    console.keys("\r");
    console
        .wait_for(&[
            "Recent questions, newest first:",
            "Can I bring my dog into the store?",
            "Live answer: none since the detail was opened.",
        ])
        .await;
    send(
        &mut chat,
        json!({"type": "ask", "id": "live1", "message": "Tell me slowly about returns"}),
    )
    .await;
    console
        .wait_for(&["Live answer (live1, streaming):", "w0 w1"])
        .await;
    read_done(&mut chat, "live1").await;
    let screen = console
        .wait_for(&["Last answer (live1, ended: stop):", "w39"])
        .await;
    assert!(screen.contains("Tell me slowly about returns"), "{screen}");

    // `k` in the open session, then `y`: the user's socket closes with 4010.
    console.keys("k");
    console.wait_for(&["Disconnect session"]).await;
    console.keys("y");
    let close = loop {
        match next_incoming(&mut chat).await {
            Incoming::Closed(frame) => break frame,
            Incoming::Json(_) => {}
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4010));
    console
        .wait_for(&["1 Sessions (0)", "No one is connected."])
        .await;

    // Stats: counts and the sparklines of the last hour.
    console.keys("4");
    console
        .wait_for(&["asks/min, last hour", "latency p95, last hour", "users"])
        .await;

    // Gaps: the refused question's group; Enter opens it, Esc goes back.
    console.keys("5");
    console
        .wait_for(&["Knowledge gaps since", "Can I bring my dog into the store?"])
        .await;
    console.keys("\r");
    console
        .wait_for(&["Examples, newest first:", "comment: Guide dogs at least?"])
        .await;
    console.keys("\x1b");
    console.wait_gone("Examples, newest first:").await;

    // Feedback: the rating with its question and comment.
    console.keys("6");
    console
        .wait_for(&["Latest answer ratings", "down", "Guide dogs at least?"])
        .await;

    // Documents: upload a file from disk by path, then delete it after a y/n.
    let dir = std::env::temp_dir().join(format!("chat-admin-pty-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pets.md");
    std::fs::write(
        &path,
        "# Pets in the store\n\nDogs on a lead are welcome in every store.",
    )
    .unwrap();
    console.keys("7");
    console
        .wait_for(&["Documents (u: upload", "returns.md"])
        .await;
    console.keys("u");
    console.wait_for(&["Upload file:"]).await;
    console.keys(&format!("{}\r", path.display()));
    console
        .wait_for(&["uploaded pets.md (1 chunks)", "Pets in the store"])
        .await;
    let admin = app.login_tokens("boss", ADMIN_PASSWORD).await.access;
    let listed: Vec<protocol::documents::KbDocument> =
        app.get_json("/api/admin/kb/documents", &admin).await;
    assert!(listed.iter().any(|d| d.name == "pets.md"));
    // Select pets.md: move down until the marked row is it.
    console.keys("\x1b[H");
    for _ in 0..listed.len() {
        if console
            .selected_row()
            .is_some_and(|row| row.contains("pets.md"))
        {
            break;
        }
        let before = console.selected_row();
        console.keys("j");
        console
            .wait("the selection to move", |_| {
                console.selected_row() != before
            })
            .await;
    }
    console.keys("d");
    console.wait_for(&["Delete the document pets.md?"]).await;
    console.keys("y");
    console.wait_for(&["deleted pets.md"]).await;
    console.wait_gone("Pets in the store").await;
    let listed: Vec<protocol::documents::KbDocument> =
        app.get_json("/api/admin/kb/documents", &admin).await;
    assert!(!listed.iter().any(|d| d.name == "pets.md"));
    let _ = std::fs::remove_dir_all(&dir);

    // Knowledge base: `r`, `y`: the reload's progress bar ends full.
    console.keys("2");
    console
        .wait_for(&["Knowledge base (r: reload)", "embeddings"])
        .await;
    console.keys("r");
    console.wait_for(&["Reload the knowledge base"]).await;
    console.keys("y");
    let screen = console
        .wait_for(&["Reload finished", "last load:", "████████████████████"])
        .await;
    assert!(!screen.contains('░'), "the bar is full:\n{screen}");

    // `q` quits and gives the terminal back.
    console.keys("q");
    let deadline = Instant::now() + SCREEN_WAIT;
    let status = loop {
        if let Some(status) = console.child.try_wait().expect("child status") {
            break status;
        }
        assert!(Instant::now() < deadline, "chat-admin did not quit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        !console.screen.lock().unwrap().screen().alternate_screen(),
        "the alternate screen was left"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_reads_plainly_in_the_terminal() {
    let app = spawn_server().await;
    let mut command = CommandBuilder::new(env!("CARGO_BIN_EXE_chat-admin"));
    command.args(["--server", &app.base, "--username", "boss"]);
    command.env("ADMIN_PASSWORD", "not the password");
    command.env_remove("ADMIN_TOKEN");
    let pair = native_pty_system()
        .openpty(PtySize {
            rows: ROWS,
            cols: COLS,
            pixel_width: 0,
            pixel_height: 0,
        })
        .unwrap();
    let mut child = pair.slave.spawn_command(command).unwrap();
    drop(pair.slave);
    let mut reader = pair.master.try_clone_reader().unwrap();
    let output = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the child has exited and its end of the terminal is closed (EIO on Linux).
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(!status.success());
    drop(pair.master);
    let output = tokio::time::timeout(SCREEN_WAIT, output)
        .await
        .expect("the output ends")
        .unwrap();
    assert!(
        output.contains("chat-admin: logging in to"),
        "a plain message, not a screen: {output}"
    );
    app.stop().await;
}
