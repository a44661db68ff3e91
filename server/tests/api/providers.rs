//! The Gemini and OpenAI-compatible clients against fakes of their HTTP APIs on loopback:
//! request shapes, SSE split at awkward byte boundaries, retries, disconnects, blocked prompts,
//! embeddings batching, and the whole answer pipeline over them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use protocol::chat::Usage;
use protocol::error::ErrorCode;
use serde_json::{Value, json};
use server::grounding::{Answerer, collect_text};
use server::llm::{ChatModel, Chunk, ContextBlock, Prompt, REFUSAL, SYSTEM_INSTRUCTION, Turn};
use server::upstream::ProviderErrorKind;
use server::upstream::embedding::EmbedKind;
use test_support::TestDb;
use test_support::fake::scripted::{FakeProvider, Reply, split_bytes};
use test_support::rag::{config, fixture_kb, standalone};

const DIM: usize = 768;

fn gemini_flags(fake: &FakeProvider) -> Vec<String> {
    vec![
        "--llm-provider".into(),
        "gemini".into(),
        "--embedding-provider".into(),
        "gemini".into(),
        "--gemini-api-key".into(),
        "test-gemini-key".into(),
        "--gemini-base-url".into(),
        fake.base.clone(),
        "--provider-timeout-secs".into(),
        "5".into(),
    ]
}

fn openai_flags(fake: &FakeProvider) -> Vec<String> {
    vec![
        "--llm-provider".into(),
        "openai".into(),
        "--embedding-provider".into(),
        "openai".into(),
        "--llm-model".into(),
        "test-chat-model".into(),
        "--embedding-model".into(),
        "test-embed-model".into(),
        "--openai-base-url".into(),
        fake.base.clone(),
        "--openai-api-key".into(),
        "sk-test-key".into(),
        "--provider-timeout-secs".into(),
        "5".into(),
    ]
}

fn settings(db_url: &str, flags: &[String]) -> server::config::Config {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    config(db_url, &fixture_kb(), &flags)
}

/// A config for model-only tests (no database is touched).
fn model_config(flags: &[String]) -> server::config::Config {
    settings("postgres://root@127.0.0.1:5432/unused", flags)
}

/// Topic vectors: texts about the same topic point the same way, others elsewhere. Sent
/// unnormalised (length 3) so the clients' normalisation is exercised.
fn topic_vector(text: &str) -> Vec<f32> {
    let lower = text.to_lowercase();
    let mut v = vec![0.0; DIM];
    let mut any = false;
    for (i, topic) in ["refund", "shipping", "gift", "parcel"].iter().enumerate() {
        if lower.contains(topic) {
            v[i] = 3.0;
            any = true;
        }
    }
    if !any {
        v[100 + lower.len() % 600] = 3.0;
    }
    v
}

fn prompt() -> Prompt {
    Prompt {
        system: SYSTEM_INSTRUCTION.into(),
        history: vec![Turn {
            question: "Hi, earlier question".into(),
            answer: "Earlier answer".into(),
        }],
        context: vec![ContextBlock {
            document: "returns.md".into(),
            heading: "Returns > Refund times".into(),
            text: "Refunds take 5 business days.".into(),
        }],
        question: "How long do refunds take?".into(),
    }
}

fn gemini_event(text: Option<&str>, finish: Option<&str>, tokens: u32) -> String {
    let mut candidate = json!({"content": {"parts": [], "role": "model"}, "index": 0});
    if let Some(t) = text {
        candidate["content"]["parts"] = json!([{"text": t}]);
    }
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    let event = json!({
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": tokens, "totalTokenCount": 20 + tokens},
        "modelVersion": "gemini-2.5-flash",
    });
    // Gemini's line ends are CRLF or LF: the tests use CRLF, the clean-up path LF.
    format!("data: {event}\r\n\r\n")
}

fn gemini_ok_stream(words: &[&str]) -> String {
    let mut body = String::new();
    // A thought part first: it must not reach the answer.
    body.push_str(&format!(
        "data: {}\r\n\r\n",
        json!({"candidates":[{"content":{"parts":[{"text":"Let me think","thought":true}],"role":"model"}}]})
    ));
    for (i, w) in words.iter().enumerate() {
        let last = i + 1 == words.len();
        body.push_str(&gemini_event(Some(w), last.then_some("STOP"), i as u32 + 1));
    }
    body
}

async fn collect(
    model: &dyn ChatModel,
    prompt: &Prompt,
) -> Vec<Result<Chunk, server::upstream::ProviderError>> {
    model
        .stream(prompt)
        .await
        .expect("stream opens")
        .collect()
        .await
}

fn text_of(chunks: &[Result<Chunk, server::upstream::ProviderError>]) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            Ok(Chunk::Delta(d)) => Some(d.as_str()),
            _ => None,
        })
        .collect()
}

// ------------------------------------------------------------------------------------ Gemini

#[tokio::test]
async fn gemini_request_shape_and_sse_split_at_awkward_bytes() {
    let fake = FakeProvider::start().await;
    // Non-ASCII text, cut every 7 bytes: pieces end inside UTF-8 sequences and CRLF pairs.
    fake.push(Reply::Sse {
        pieces: split_bytes(
            &gemini_ok_stream(&["Refunds ", "take 5 ", "business days — ", "¡sí!"]),
            7,
        ),
        pause: Duration::from_millis(1),
        then_break: false,
    });
    let model = server::llm::build(&model_config(&gemini_flags(&fake))).unwrap();
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "Refunds take 5 business days — ¡sí!");
    assert_eq!(
        chunks.last().unwrap().as_ref().unwrap(),
        &Chunk::Finished {
            usage: Usage {
                prompt_tokens: 20,
                completion_tokens: 4,
                total_tokens: 24
            }
        }
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(
        request.path_and_query,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );
    assert_eq!(request.headers["x-goog-api-key"], "test-gemini-key");
    let body = &request.body;
    assert_eq!(
        body["systemInstruction"]["parts"][0]["text"],
        SYSTEM_INSTRUCTION
    );
    assert_eq!(
        body["generationConfig"]["thinkingConfig"]["thinkingBudget"],
        0
    );
    assert_eq!(body["generationConfig"]["maxOutputTokens"], 1024);
    let contents = body["contents"].as_array().unwrap();
    let roles: Vec<&str> = contents
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["user", "model", "user"]);
    assert_eq!(contents[0]["parts"][0]["text"], "Hi, earlier question");
    let last = contents[2]["parts"][0]["text"].as_str().unwrap();
    assert!(
        last.contains("Refunds take 5 business days."),
        "context missing: {last}"
    );
    assert!(last.contains("returns.md"), "source label missing: {last}");
    assert!(
        last.ends_with("Question: How long do refunds take?"),
        "{last}"
    );
}

#[tokio::test]
async fn gemini_429_with_retry_delay_is_retried_then_succeeds() {
    let fake = FakeProvider::start().await;
    let error = json!({"error": {"code": 429, "message": "Resource has been exhausted (secret detail)",
        "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]}});
    fake.push(Reply::Json {
        status: 429,
        headers: vec![],
        body: error.to_string(),
    });
    fake.push(Reply::Sse {
        pieces: split_bytes(&gemini_ok_stream(&["ok"]), 13),
        pause: Duration::ZERO,
        then_break: false,
    });
    let model = server::llm::build(&model_config(&gemini_flags(&fake))).unwrap();
    let started = Instant::now();
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "ok");
    assert_eq!(fake.seen().len(), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retryDelay not honoured: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn gemini_daily_quota_and_client_errors_are_not_retried_and_do_not_leak() {
    let fake = FakeProvider::start().await;
    let daily = json!({"error": {"code": 429, "message": "Quota exceeded (secret detail)", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                     "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]}});
    fake.push(Reply::Json {
        status: 429,
        headers: vec![],
        body: daily.to_string(),
    });
    let bad = json!({"error": {"code": 400, "message": "API key not valid (secret detail)", "status": "INVALID_ARGUMENT"}});
    fake.push(Reply::Json {
        status: 400,
        headers: vec![],
        body: bad.to_string(),
    });
    let model = server::llm::build(&model_config(&gemini_flags(&fake))).unwrap();

    let err = model
        .stream(&prompt())
        .await
        .err()
        .expect("daily quota fails");
    assert_eq!(err.kind, ProviderErrorKind::Unavailable);
    assert!(!err.message.contains("secret"), "{}", err.message);
    assert_eq!(fake.seen().len(), 1, "a daily quota is not retried");

    let err = model.stream(&prompt()).await.err().expect("400 fails");
    assert_eq!(err.kind, ProviderErrorKind::Rejected);
    assert!(!err.message.contains("secret") && !err.message.contains("test-gemini-key"));
    assert_eq!(fake.seen().len(), 2, "a 400 is not retried");
}

#[tokio::test]
async fn gemini_disconnect_before_the_first_delta_is_retried() {
    let fake = FakeProvider::start().await;
    fake.push(Reply::Sse {
        pieces: vec![],
        pause: Duration::ZERO,
        then_break: true,
    });
    fake.push(Reply::Sse {
        pieces: split_bytes(&gemini_ok_stream(&["second ", "try"]), 5),
        pause: Duration::ZERO,
        then_break: false,
    });
    let model = server::llm::build(&model_config(&gemini_flags(&fake))).unwrap();
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "second try");
    assert!(chunks.iter().all(Result::is_ok));
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn gemini_disconnect_after_a_delta_is_an_error_and_not_retried() {
    let fake = FakeProvider::start().await;
    fake.push(Reply::Sse {
        pieces: split_bytes(&gemini_event(Some("Refunds take"), None, 2), 9),
        pause: Duration::ZERO,
        then_break: true,
    });
    let model = server::llm::build(&model_config(&gemini_flags(&fake))).unwrap();
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "Refunds take");
    let err = chunks.last().unwrap().as_ref().unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::Unavailable);
    assert_eq!(fake.seen().len(), 1, "no retry once text was delivered");
}

#[tokio::test]
async fn gemini_stream_closed_without_finish_reason_is_an_error() {
    let fake = FakeProvider::start().await;
    fake.push(Reply::Sse {
        pieces: vec![
            gemini_event(Some("Half an answer"), None, 3)
                .replace("\r\n", "\n")
                .into_bytes(),
        ],
        pause: Duration::ZERO,
        then_break: false,
    });
    let model = server::llm::build(&model_config(&gemini_flags(&fake))).unwrap();
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "Half an answer");
    assert!(chunks.last().unwrap().is_err());
}

#[tokio::test]
async fn gemini_embeddings_batch_by_100_with_task_types_and_are_normalised() {
    let fake = FakeProvider::start().await;
    fake.set_embedder(topic_vector);
    let embedder = server::rag::embed::build(&model_config(&gemini_flags(&fake)))
        .await
        .unwrap();
    assert_eq!(
        (embedder.provider(), embedder.model(), embedder.dimension()),
        ("gemini", "gemini-embedding-001", DIM)
    );
    let texts: Vec<String> = (0..250)
        .map(|i| format!("text number {i} about refunds"))
        .collect();
    let vectors = embedder.embed(&texts, EmbedKind::Document).await.unwrap();
    assert_eq!(vectors.len(), 250);
    for v in &vectors {
        assert_eq!(v.len(), DIM);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    embedder
        .embed(&["a question about gifts".to_owned()], EmbedKind::Query)
        .await
        .unwrap();

    let seen = fake.seen();
    let sizes: Vec<usize> = seen
        .iter()
        .map(|s| s.body["requests"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![100, 100, 50, 1]);
    for s in &seen {
        assert_eq!(
            s.path_and_query,
            "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        );
        assert_eq!(s.headers["x-goog-api-key"], "test-gemini-key");
    }
    let first = &seen[0].body["requests"][0];
    assert_eq!(first["taskType"], "RETRIEVAL_DOCUMENT");
    assert_eq!(first["outputDimensionality"], DIM);
    assert_eq!(first["model"], "models/gemini-embedding-001");
    assert_eq!(
        first["content"]["parts"][0]["text"],
        "text number 0 about refunds"
    );
    assert_eq!(seen[3].body["requests"][0]["taskType"], "RETRIEVAL_QUERY");
}

#[tokio::test]
async fn gemini_answer_pipeline_end_to_end_with_blocked_prompt_and_paid_nothing_for_refusals() {
    let db = TestDb::new().await;
    let fake = FakeProvider::start().await;
    fake.set_embedder(topic_vector);
    let config = settings(&db.url, &gemini_flags(&fake));
    let answerer = Answerer::start(&config, db.pool.clone()).await.unwrap();
    let info = answerer.rag().info();
    assert_eq!(
        (info.embedding_provider.as_str(), info.dimension),
        ("gemini", DIM)
    );

    fake.push(Reply::Sse {
        pieces: split_bytes(&gemini_ok_stream(&["5 business days."]), 11),
        pause: Duration::ZERO,
        then_break: false,
    });
    let prepared = answerer
        .prepare(standalone("How long do refunds take?"))
        .await
        .unwrap();
    assert_eq!(prepared.sources[0].document, "returns.md");
    let (answer, usage) = collect_text(prepared.stream).await.unwrap();
    assert_eq!(answer, "5 business days.");
    assert_eq!(usage.total_tokens, 21);
    let chat_calls: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.path_and_query.contains("streamGenerateContent"))
        .collect();
    assert_eq!(chat_calls.len(), 1);
    let user_text = chat_calls[0].body["contents"][0]["parts"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        user_text.contains("within 5 business days after the warehouse receives the return"),
        "{user_text}"
    );

    // Nothing relevant: the refusal, and no model call is paid for.
    let prepared = answerer
        .prepare(standalone("What is the capital of Australia?"))
        .await
        .unwrap();
    assert!(prepared.sources.is_empty());
    assert_eq!(collect_text(prepared.stream).await.unwrap().0, REFUSAL);
    let chat_calls = fake
        .seen()
        .into_iter()
        .filter(|s| s.path_and_query.contains("streamGenerateContent"))
        .count();
    assert_eq!(chat_calls, 1);

    // A blocked prompt is reported before any delta, with its own code.
    fake.push(Reply::Sse {
        pieces: vec![
            format!(
                "data: {}\n\n",
                json!({"promptFeedback": {"blockReason": "SAFETY"}})
            )
            .into_bytes(),
        ],
        pause: Duration::ZERO,
        then_break: false,
    });
    let err = answerer
        .prepare(standalone("Tell me about refunds, rudely"))
        .await
        .err()
        .expect("blocked");
    assert_eq!(err.code, ErrorCode::ContentBlocked);
    db.drop_db().await;
}

#[tokio::test]
async fn dropping_the_answer_stream_aborts_the_upstream_request() {
    let fake = FakeProvider::start().await;
    fake.push(Reply::Endless {
        piece: gemini_event(Some("tick "), None, 1).into_bytes(),
        pause: Duration::from_millis(20),
    });
    let model = server::llm::build(&model_config(&gemini_flags(&fake))).unwrap();
    let p = prompt();
    let mut stream = model.stream(&p).await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            Chunk::Delta("tick ".into())
        );
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fake.state.client_gone.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the upstream request kept running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_silent_provider_times_out_once_without_retries() {
    let fake = FakeProvider::start().await;
    fake.push(Reply::Silent);
    let mut flags = gemini_flags(&fake);
    let last = flags.len() - 1;
    flags[last] = "1".into(); // --provider-timeout-secs 1
    let model = server::llm::build(&model_config(&flags)).unwrap();
    let started = Instant::now();
    let err = model.stream(&prompt()).await.err().expect("times out");
    assert_eq!(err.kind, ProviderErrorKind::Unavailable);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.seen().len(), 1);
}

// ------------------------------------------------------------------------------------ OpenAI

fn openai_chunk(content: Option<&str>, reasoning: Option<&str>, finish: Option<&str>) -> String {
    let mut delta = json!({});
    if let Some(c) = content {
        delta["content"] = json!(c);
    }
    if let Some(r) = reasoning {
        delta["reasoning_content"] = json!(r);
    }
    let event = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {event}\n\n")
}

fn openai_ok_stream(words: &[&str]) -> String {
    let mut body = openai_chunk(None, Some("thinking..."), None);
    for w in words {
        body.push_str(&openai_chunk(Some(w), None, None));
    }
    body.push_str(&openai_chunk(None, None, Some("stop")));
    body.push_str(&format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}})
    ));
    body
}

#[tokio::test]
async fn openai_request_shape_stream_done_and_usage() {
    let fake = FakeProvider::start().await;
    fake.push(Reply::Sse {
        pieces: split_bytes(&openai_ok_stream(&["Five ", "business ", "days"]), 6),
        pause: Duration::ZERO,
        then_break: false,
    });
    let model = server::llm::build(&model_config(&openai_flags(&fake))).unwrap();
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "Five business days");
    assert_eq!(
        chunks.last().unwrap().as_ref().unwrap(),
        &Chunk::Finished {
            usage: Usage {
                prompt_tokens: 30,
                completion_tokens: 3,
                total_tokens: 33
            }
        }
    );
    let seen = fake.seen();
    assert_eq!(seen[0].path_and_query, "/v1/chat/completions");
    assert_eq!(seen[0].headers["authorization"], "Bearer sk-test-key");
    let body: &Value = &seen[0].body;
    assert_eq!(body["model"], "test-chat-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["system", "user", "assistant", "user"]);
    assert_eq!(body["messages"][0]["content"], SYSTEM_INSTRUCTION);
    assert!(
        body["messages"][3]["content"]
            .as_str()
            .unwrap()
            .contains("Refunds take 5 business days.")
    );
}

#[tokio::test]
async fn openai_503_with_retry_after_is_retried_and_a_mid_stream_break_is_an_error() {
    let fake = FakeProvider::start().await;
    fake.push(Reply::Json {
        status: 503,
        headers: vec![("retry-after", "1".into())],
        body: json!({"error": {"message": "overloaded (secret detail)", "type": "server_error", "param": null, "code": null}}).to_string(),
    });
    fake.push(Reply::Sse {
        pieces: split_bytes(&openai_ok_stream(&["ok"]), 3),
        pause: Duration::ZERO,
        then_break: false,
    });
    let model = server::llm::build(&model_config(&openai_flags(&fake))).unwrap();
    let started = Instant::now();
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "ok");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fake.seen().len(), 2);

    fake.push(Reply::Sse {
        pieces: vec![openai_chunk(Some("partial"), None, None).into_bytes()],
        pause: Duration::ZERO,
        then_break: true,
    });
    let chunks = collect(model.as_ref(), &prompt()).await;
    assert_eq!(text_of(&chunks), "partial");
    assert!(chunks.last().unwrap().is_err());
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test]
async fn openai_embeddings_and_answers_run_the_whole_pipeline() {
    let db = TestDb::new().await;
    let fake = FakeProvider::start().await;
    fake.set_embedder(topic_vector);
    let config = settings(&db.url, &openai_flags(&fake));
    let answerer = Answerer::start(&config, db.pool.clone()).await.unwrap();
    let info = answerer.rag().info();
    assert_eq!(
        (
            info.embedding_provider.as_str(),
            info.embedding_model.as_str(),
            info.dimension
        ),
        ("openai", "test-embed-model", DIM)
    );
    let embed_calls: Vec<_> = fake
        .seen()
        .into_iter()
        .filter(|s| s.path_and_query == "/v1/embeddings")
        .collect();
    assert!(embed_calls.len() >= 2, "a dimension probe, then the chunks");
    assert_eq!(embed_calls[1].body["model"], "test-embed-model");
    assert_eq!(embed_calls[1].body["encoding_format"], "float");
    assert_eq!(
        embed_calls[1].headers["authorization"],
        "Bearer sk-test-key"
    );

    fake.push(Reply::Sse {
        pieces: split_bytes(&openai_ok_stream(&["Within ", "30 days."]), 4),
        pause: Duration::ZERO,
        then_break: false,
    });
    let prepared = answerer
        .prepare(standalone("Can I still get a refund after two weeks?"))
        .await
        .unwrap();
    assert_eq!(prepared.sources[0].document, "returns.md");
    assert_eq!(
        collect_text(prepared.stream).await.unwrap().0,
        "Within 30 days."
    );
    db.drop_db().await;
}
