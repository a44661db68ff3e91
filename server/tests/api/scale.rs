//! Settings for many sockets and large knowledge bases, and the local model's batching,
//! against the real server, PostgreSQL and model. Behaviour only: the figures are in
//! BENCHMARKS.md (from `chat-bench`), never asserted here.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use server::rag::embed::local::{Batching, LocalEmbedder};
use server::upstream::embedding::{EmbedKind, Embedder};
use test_support::{next_frame, send, spawn_app_with, workspace_dir};

#[tokio::test]
async fn tiny_socket_buffers_still_read_big_frames_and_stream_answers() {
    let app = spawn_app_with(|c| {
        c.ws_read_buffer_bytes = 256;
        c.ws_write_buffer_bytes = 0;
        c.ws_max_write_buffer_bytes = 2048;
        c.max_question_chars = 100;
    })
    .await;
    let tokens = app.user_tokens("alice").await;
    let mut ws = app.ws_connect(&tokens.access).await;
    assert_eq!(next_frame(&mut ws).await["type"], "ready");

    // A 12 KB frame through a 256-byte read buffer arrives whole: the server reads the
    // question and refuses it for its length (not for a broken frame), and the socket lives.
    let long = "why ".repeat(3000);
    send(&mut ws, json!({"type":"ask","id":"big","message":long})).await;
    let refused = next_frame(&mut ws).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "validation_failed", "{refused}");
    assert_eq!(refused["id"], "big");

    // An answer streams whole through the small write buffer (its sources frame alone is
    // larger than the read buffer).
    send(
        &mut ws,
        json!({"type":"ask","id":"a1","message":"How long does shipping take?"}),
    )
    .await;
    let mut text = String::new();
    loop {
        let frame = next_frame(&mut ws).await;
        assert_eq!(frame["id"], "a1", "{frame}");
        match frame["type"].as_str().unwrap() {
            "delta" => text.push_str(frame["text"].as_str().unwrap()),
            "done" => {
                assert_eq!(frame["finish_reason"], "stop", "{frame}");
                break;
            }
            "sources" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    assert!(!text.trim().is_empty());
}

#[tokio::test]
async fn questions_arriving_together_share_forward_passes_and_get_their_own_vectors() {
    let dir = workspace_dir().join("models/all-MiniLM-L6-v2");
    let batching = Batching {
        window: Duration::from_millis(200),
        max_batch: 64,
    };
    let model = tokio::task::spawn_blocking(move || LocalEmbedder::load_with(&dir, batching))
        .await
        .unwrap()
        .expect("model loads");
    let model = Arc::new(model);
    let questions: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "How long does parcel number {i} take to arrive in region {}?",
                i * 7
            )
        })
        .collect();

    // One at a time: one pass each.
    let mut alone = Vec::new();
    for q in &questions {
        let before = model.forward_passes();
        let v = model
            .embed(std::slice::from_ref(q), EmbedKind::Query)
            .await
            .unwrap();
        assert_eq!(model.forward_passes(), before + 1);
        alone.push(v.into_iter().next().unwrap());
    }

    // All at once: gathered into far fewer passes, each caller still gets its own vector.
    let before = model.forward_passes();
    let together = futures::future::join_all(questions.iter().map(|q| {
        let model = Arc::clone(&model);
        let q = q.clone();
        async move { model.embed(&[q], EmbedKind::Query).await.unwrap() }
    }))
    .await;
    let passes = model.forward_passes() - before;
    assert!(passes < 6, "12 questions at once took {passes} passes");
    for (i, (v, a)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(v.len(), 1);
        let cosine: f32 = v[0].iter().zip(a).map(|(x, y)| x * y).sum();
        assert!(
            cosine > 0.999,
            "question {i}: batched vector differs ({cosine})"
        );
    }

    // A request of many texts (sentences of a passage) keeps its order.
    let texts: Vec<String> = vec![
        "Refunds take five business days.".into(),
        "Gift cards never expire and can be used online or in stores.".into(),
        "Shipping".into(),
    ];
    let many = model.embed(&texts, EmbedKind::Document).await.unwrap();
    for (text, v) in texts.iter().zip(&many) {
        let one = model
            .embed(std::slice::from_ref(text), EmbedKind::Document)
            .await
            .unwrap();
        let cosine: f32 = v.iter().zip(&one[0]).map(|(x, y)| x * y).sum();
        assert!(cosine > 0.999, "{text}: {cosine}");
    }

    // A request bigger than one part (a knowledge-base load: parts of 64 texts, one per
    // worker in flight at once) keeps its order across the parts.
    let texts: Vec<String> = (0..150)
        .map(|i| {
            format!(
                "Passage {i}: orders to zone {} ship on day {}.",
                i * 3,
                i % 7
            )
        })
        .collect();
    let many = model.embed(&texts, EmbedKind::Document).await.unwrap();
    assert_eq!(many.len(), texts.len());
    for i in [0, 63, 64, 65, 127, 128, 149] {
        let one = model
            .embed(std::slice::from_ref(&texts[i]), EmbedKind::Document)
            .await
            .unwrap();
        let cosine: f32 = many[i].iter().zip(&one[0]).map(|(x, y)| x * y).sum();
        assert!(cosine > 0.999, "text {i}: {cosine}");
        let neighbour = if i == 0 { 1 } else { i - 1 };
        let other: f32 = many[neighbour]
            .iter()
            .zip(&one[0])
            .map(|(x, y)| x * y)
            .sum();
        assert!(
            other < cosine,
            "text {i} matches its neighbour as well ({other})"
        );
    }
}

/// Connections to the app's database other than the one asking.
async fn open_connections(app: &test_support::TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await
}

#[tokio::test]
async fn the_pool_opens_its_warm_connections_at_start() {
    let warm = spawn_app_with(|c| {
        c.db_pool_size = 16;
        c.db_pool_warm = Some(12);
    })
    .await;
    let cold = spawn_app_with(|c| {
        c.db_pool_size = 16;
        c.db_pool_warm = Some(0);
    })
    .await;
    let (warm_open, cold_open) = (open_connections(&warm).await, open_connections(&cold).await);
    assert!(warm_open >= 12, "{warm_open} connections open after start");
    assert!(
        cold_open < 12,
        "{cold_open} connections open without warming"
    );
}

/// The statements of the names in `texts` that `client`'s session has prepared.
async fn prepared_on(client: &deadpool_postgres::Client, texts: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for text in texts {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%' || $1 || '%'",
                &[text],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) > 0 {
            found.push((*text).to_owned());
        }
    }
    found
}

#[tokio::test]
async fn warm_connections_have_the_hot_statements_prepared() {
    // Fragments of the ask limit, both question stores, the answer store and the relay's rows.
    let hot = [
        "INSERT INTO rate_logs",
        "INSERT INTO conversations",
        "UPDATE conversations SET updated_at = now() WHERE id = $4 AND user_id = $5",
        "INSERT INTO question_signals",
        "INSERT INTO answer_streams",
        "INSERT INTO answer_events",
    ];
    let warm = spawn_app_with(|c| {
        c.db_pool_size = 3;
        c.db_pool_warm = Some(3);
    })
    .await;
    // Every connection of the pool at once: each was opened, and prepared, at start.
    let held = futures::future::join_all((0..3).map(|_| warm.state.db.get())).await;
    for client in &held {
        let client = client.as_ref().expect("a pooled connection");
        assert_eq!(prepared_on(client, &hot).await, hot, "a warm connection");
    }
    drop(held);

    let cold = spawn_app_with(|c| {
        c.db_pool_size = 3;
        c.db_pool_warm = Some(0);
    })
    .await;
    let client = cold.state.db.get().await.unwrap();
    assert_eq!(
        prepared_on(&client, &hot).await,
        Vec::<String>::new(),
        "a connection opened on demand"
    );
}

/// The local model's workers run the parallel loops of a forward pass (softmax, layer norm, the
/// tokenizer's batch) themselves. Handed to rayon's global pool instead, the workers queued
/// behind each other on its threads; here every thread of that pool is held busy, and the
/// embedding must still finish.
#[tokio::test]
async fn the_local_model_does_not_wait_for_rayons_global_pool() {
    let dir = workspace_dir().join("models/all-MiniLM-L6-v2");
    let model = tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir))
        .await
        .unwrap()
        .expect("model loads");
    let texts: Vec<String> = (0..8)
        .map(|i| format!("Refunds for order {i} take five business days after we receive it."))
        .collect();

    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let closed = gate.write().await;
    let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let threads = rayon::current_num_threads();
    for _ in 0..threads {
        let (gate, busy) = (Arc::clone(&gate), Arc::clone(&busy));
        rayon::spawn(move || {
            busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(gate.blocking_read());
        });
    }
    while busy.load(std::sync::atomic::Ordering::SeqCst) < threads {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        model.embed(&texts, EmbedKind::Document),
    )
    .await;
    drop(closed);
    let vectors = result
        .expect("the embedding waited for rayon's global pool")
        .unwrap();
    assert_eq!(vectors.len(), texts.len());
}
