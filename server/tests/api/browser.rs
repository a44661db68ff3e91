//! The chat page in a real browser: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (`server/tests/e2e/page.mjs`), against the real server and PostgreSQL, with a
//! fake OpenAI-compatible provider on loopback. `scripts/setup.sh` installs both.

use std::process::Stdio;
use std::time::Duration;

use server::config::LlmProvider;
use test_support::fake::chat::{ChatReply, FakeChat, Stream};

/// The quick answer: paragraphs, a numbered list and markup that must stay text.
const QUICK_ANSWER: &str = "Refunds go back to your original payment method within 5 business \
days after the warehouse receives the return.\n\nTo start a return:\n\n1. Open your orders.\n\
2. Choose the item and select Return.\n3. Pack it in its original packaging.\n\n\
Keep the <b>receipt</b> until the refund arrives.";

/// Words of a slow answer, one delta each.
const SLOW_WORDS: usize = 80;
/// Pause between the deltas of a slow answer: long enough to stop it or drop the connection
/// while it streams.
const SLOW_PAUSE: Duration = Duration::from_millis(100);

/// A fake OpenAI-compatible provider: a question with "slowly" gets `w0 w1 ...` slowly, one
/// with "(fail)" a 400 error, any other the quick answer in small pieces.
async fn spawn_fake_provider() -> String {
    let fake = FakeChat::start(|call| {
        let last = call.last_message();
        if last.contains("(fail)") {
            return ChatReply::bad_model();
        }
        let stream = if last.contains("slowly") {
            Stream::words(SLOW_WORDS, SLOW_PAUSE)
        } else {
            let chars: Vec<char> = QUICK_ANSWER.chars().collect();
            let pieces = chars.chunks(12).map(|c| c.iter().collect()).collect();
            Stream::pieces(pieces, Duration::from_millis(50))
        };
        stream.end_at_once().usage(10).into()
    })
    .await;
    fake.url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_end_to_end_in_headless_chromium() {
    let e2e = test_support::workspace_dir().join("server/tests/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").is_dir()
            && std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium or playwright-core is missing: run scripts/setup.sh (it installs both)"
    );
    let provider = spawn_fake_provider().await;
    let app = test_support::spawn_app_with(|c| {
        c.llm_provider = Some(LlmProvider::Openai);
        c.openai_base_url = provider;
        c.llm_model = Some("fake-model".into());
        c.provider_timeout_secs = 30;
        // Short-lived access tokens, so the page renews one in-band during the test.
        c.access_token_ttl_secs = 20;
        // Low enough that the page's quick asks at the end meet the limit within a minute.
        c.asks_per_minute = 8;
    })
    .await;

    let mut command = tokio::process::Command::new("node");
    command
        .arg(e2e.join("page.mjs"))
        .arg(&app.base)
        .current_dir(&e2e)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // The script stops itself after 240 s; this is the backstop.
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the browser test ends")
        .expect("node runs (install Node.js with scripts/setup.sh)");
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the browser test failed: {}",
        output.status
    );

    // What the browser did is what the database holds: of its two conversations one was
    // deleted; the stopped answer is stored as cancelled.
    assert_eq!(app.count("SELECT count(*) FROM conversations").await, 1);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM messages WHERE role = 'assistant' AND status = 'cancelled'"
        )
        .await,
        1
    );
    app.stop().await;
}
