//! The offline retrieval pipeline end to end with the real MiniLM model, FAISS, BM25 and the
//! PostgreSQL embedding cache, on the small fixture knowledge base.

use std::sync::Arc;

use protocol::error::ErrorCode;
use server::grounding::{AnswerRequest, Answerer, collect_text};
use server::llm::{REFUSAL, Turn};
use server::rag::{Rag, RagError};
use test_support::TestDb;
use test_support::rag::{config, copy_dir, fixture_kb, standalone};

#[tokio::test]
async fn offline_answers_come_from_the_knowledge_base_with_sources() {
    let db = TestDb::new().await;
    let config = config(&db.url, &fixture_kb(), &[]);
    let answerer = Answerer::start(&config, db.pool.clone()).await.unwrap();

    let prepared = answerer
        .prepare(standalone("How long does it take to get my refund?"))
        .await
        .unwrap();
    assert!(!prepared.sources.is_empty());
    assert_eq!(prepared.sources[0].document, "returns.md");
    assert_eq!(
        prepared.sources[0].heading.as_deref(),
        Some("Returns and refunds > Refund timing")
    );
    assert!(
        prepared
            .sources
            .iter()
            .all(|s| s.score >= answerer.rag().relevance_threshold())
    );
    assert!(
        prepared
            .sources
            .windows(2)
            .all(|w| w[0].snippet != w[1].snippet)
    );
    let (answer, usage) = collect_text(prepared.stream).await.unwrap();
    assert!(answer.contains("5 business days"), "{answer}");
    assert!(usage.completion_tokens > 0);

    // A .txt file without headings is searchable too.
    let prepared = answerer
        .prepare(standalone("Do gift vouchers expire?"))
        .await
        .unwrap();
    assert_eq!(prepared.sources[0].document, "gift-cards.txt");
    let (answer, _) = collect_text(prepared.stream).await.unwrap();
    assert!(answer.contains("24 months"), "{answer}");
    db.drop_db().await;
}

#[tokio::test]
async fn off_topic_questions_are_refused_without_sources() {
    let db = TestDb::new().await;
    let config = config(&db.url, &fixture_kb(), &[]);
    let answerer = Answerer::start(&config, db.pool.clone()).await.unwrap();
    for question in [
        "Who won the football World Cup in 2018?",
        "Give me a lasagne recipe.",
    ] {
        let prepared = answerer.prepare(standalone(question)).await.unwrap();
        assert!(
            prepared.sources.is_empty(),
            "{question}: {:?}",
            prepared.sources
        );
        let (answer, _) = collect_text(prepared.stream).await.unwrap();
        assert_eq!(answer, REFUSAL);
    }
    db.drop_db().await;
}

#[tokio::test]
async fn a_follow_up_is_read_with_the_previous_question() {
    let db = TestDb::new().await;
    let config = config(&db.url, &fixture_kb(), &[]);
    let answerer = Answerer::start(&config, db.pool.clone()).await.unwrap();
    let history = vec![Turn {
        question: "How long does standard shipping take?".into(),
        answer: "Standard shipping takes 2 to 4 business days.".into(),
    }];
    let alone = answerer
        .retrieve(&standalone("and what does it cost?"))
        .await
        .unwrap();
    let with_history = answerer
        .retrieve(&AnswerRequest {
            question: "and what does it cost?".into(),
            history,
        })
        .await
        .unwrap();
    assert!(
        with_history
            .first()
            .is_some_and(|p| p.document == "shipping.md"),
        "alone: {alone:?}, with history: {with_history:?}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn a_second_start_embeds_nothing_and_a_new_model_key_embeds_again() {
    let db = TestDb::new().await;
    let config = config(&db.url, &fixture_kb(), &[]);
    let first = Rag::start(&config, db.pool.clone()).await.unwrap().info();
    assert!(first.chunks >= 5, "{first:?}");
    assert_eq!((first.embedded, first.cached), (first.chunks, 0));
    let files = std::fs::read_dir(fixture_kb()).unwrap().count();
    assert_eq!(first.documents, files);
    assert_eq!(first.dimension, 384);
    assert_eq!(first.index_kind, "flat");
    assert_eq!(first.embedding_provider, "local");

    let second = Rag::start(&config, db.pool.clone()).await.unwrap().info();
    assert_eq!((second.embedded, second.cached), (0, first.chunks));

    let client = db.pool.get().await.unwrap();
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM embedding_cache WHERE provider = 'local' AND dimension = 384",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, first.chunks);
    // Vectors cached under another model never serve this one.
    client
        .execute("UPDATE embedding_cache SET model = 'some-other-model'", &[])
        .await
        .unwrap();
    drop(client);
    let third = Rag::start(&config, db.pool.clone()).await.unwrap().info();
    assert_eq!(third.embedded, first.chunks);
    db.drop_db().await;
}

#[tokio::test]
async fn bad_files_are_reported_and_the_rest_loads() {
    let db = TestDb::new().await;
    let kb = copy_dir(&fixture_kb());
    std::fs::write(kb.join("latin1.md"), b"# Caf\xe9\nPrices in \xa3.").unwrap();
    std::fs::write(kb.join("empty.md"), b"").unwrap();
    let config = config(&db.url, &kb, &[]);
    let rag = Rag::start(&config, db.pool.clone()).await.unwrap();
    let info = rag.info();
    assert_eq!(info.errors.len(), 1, "{:?}", info.errors);
    assert_eq!(info.errors[0].document, "latin1.md");
    assert!(info.errors[0].message.contains("UTF-8"));
    let fixtures = std::fs::read_dir(fixture_kb()).unwrap().count();
    assert_eq!(
        info.documents,
        fixtures + 1,
        "the fixtures and the empty file"
    );
    let hits = rag.retrieve("refund times", 4).await.unwrap();
    assert_eq!(hits[0].document, "returns.md");
    std::fs::remove_dir_all(kb).unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn reload_swaps_the_index_while_questions_keep_being_answered() {
    let db = TestDb::new().await;
    let kb = copy_dir(&fixture_kb());
    let config = config(&db.url, &kb, &[]);
    let rag = Rag::start(&config, db.pool.clone()).await.unwrap();
    let before = rag.info();
    let question = "How many loyalty points do I earn per euro spent?";
    assert!(rag.retrieve(question, 4).await.unwrap().is_empty());

    std::fs::write(
        kb.join("loyalty.md"),
        "# Loyalty programme\n\n## Earning points\n\nYou earn 1 loyalty point for every euro spent.",
    )
    .unwrap();

    // Questions keep flowing during the reload and all succeed.
    let asking = {
        let rag = Arc::clone(&rag);
        tokio::spawn(async move {
            let mut answered = 0;
            for _ in 0..20 {
                let hits = rag.retrieve("How long do refunds take?", 4).await.unwrap();
                assert_eq!(hits[0].document, "returns.md");
                answered += 1;
            }
            answered
        })
    };
    // `join!` polls in order: the first reload takes the lock at its first poll and cannot
    // finish there (it waits for the loader thread), so the second always finds it taken.
    let (first, second) = tokio::join!(rag.reload(), rag.reload());
    let after = first.unwrap();
    // The second reload ran into the first one.
    assert!(matches!(second, Err(RagError::ReloadInProgress)));
    assert_eq!(RagError::ReloadInProgress.code(), ErrorCode::Conflict);
    assert_eq!(asking.await.unwrap(), 20);

    assert_eq!(after.documents, before.documents + 1);
    assert_eq!(
        after.embedded, 1,
        "only the new chunk is embedded: {after:?}"
    );
    assert!(after.loaded_at > before.loaded_at);
    assert_eq!(rag.info(), after);
    let hits = rag.retrieve(question, 4).await.unwrap();
    assert_eq!(hits[0].document, "loyalty.md");
    std::fs::remove_dir_all(kb).unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn eval_scores_the_pipeline_on_a_question_set() {
    let db = TestDb::new().await;
    let config = config(&db.url, &fixture_kb(), &[]);
    let questions = std::env::temp_dir().join(format!("questions-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(
        &questions,
        serde_json::json!({
            "answerable": [
                {"question": "When will my refund arrive?", "document": "returns.md", "fact": "5 business days"},
                {"question": "What does delivery cost?", "document": "shipping.md", "fact": "4.90 euros"}
            ],
            "unanswerable": [{"question": "How many moons does Jupiter have?"}]
        })
        .to_string(),
    )
    .unwrap();
    let report = server::eval::run(&config, db.pool.clone(), &questions)
        .await
        .unwrap();
    std::fs::remove_file(&questions).unwrap();
    assert_eq!(report.hit_at_3, 1.0, "{report}");
    assert_eq!(report.refusal_share, 1.0, "{report}");
    let printed = report.to_string();
    assert!(
        printed.contains("hit@1") && printed.contains("MRR"),
        "{printed}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn rag_min_similarity_overrides_the_model_threshold() {
    let db = TestDb::new().await;
    let strict = config(&db.url, &fixture_kb(), &["--rag-min-similarity", "0.99"]);
    let answerer = Answerer::start(&strict, db.pool.clone()).await.unwrap();
    assert_eq!(answerer.rag().relevance_threshold(), 0.99);
    let prepared = answerer
        .prepare(standalone("How long does it take to get my refund?"))
        .await
        .unwrap();
    assert!(prepared.sources.is_empty(), "nothing is that similar");
    let (answer, _) = collect_text(prepared.stream).await.unwrap();
    assert_eq!(answer, REFUSAL);
    db.drop_db().await;
}

#[tokio::test]
async fn under_the_confident_similarity_a_question_must_share_a_distinctive_word() {
    let db = TestDb::new().await;
    // Floor -1 and confident similarity 1: the lexical check alone decides.
    let lexical_only = config(
        &db.url,
        &fixture_kb(),
        &["--rag-min-similarity=-1", "--rag-confident-similarity", "1"],
    );
    let answerer = Answerer::start(&lexical_only, db.pool.clone())
        .await
        .unwrap();
    let relevance = answerer.rag().relevance();
    assert_eq!(relevance.confident_similarity, 1.0);
    assert_eq!(
        relevance.min_support,
        server::rag::support::MIN_SUPPORT,
        "the tuned support share applies unless set"
    );

    // None of its words is in the knowledge base: refused, though passages exist above the
    // floor.
    let off = "Which planet is the largest in the solar system?";
    let assessed = answerer.rag().assess(off, 4, -1.0).await.unwrap();
    assert!(!assessed.passages.is_empty());
    assert_eq!(assessed.support, 0.0);
    assert!(answerer.rag().retrieve(off, 4).await.unwrap().is_empty());
    let (answer, _) = collect_text(answerer.prepare(standalone(off)).await.unwrap().stream)
        .await
        .unwrap();
    assert_eq!(answer, REFUSAL);

    // Paraphrases sharing one distinctive word ("refund", "gift") are answered.
    for (question, fact) in [
        ("How long does it take to get my refund?", "5 business days"),
        ("Do gift vouchers expire?", "24 months"),
    ] {
        let assessed = answerer.rag().assess(question, 4, -1.0).await.unwrap();
        assert!(
            assessed.support >= relevance.min_support,
            "{question}: {}",
            assessed.support
        );
        let prepared = answerer.prepare(standalone(question)).await.unwrap();
        assert!(!prepared.sources.is_empty(), "{question}");
        let (answer, _) = collect_text(prepared.stream).await.unwrap();
        assert!(answer.contains(fact), "{question}: {answer}");
    }

    // A support share of 0 turns the check off: the off-topic question then gets passages.
    let unchecked = config(
        &db.url,
        &fixture_kb(),
        &[
            "--rag-min-similarity=-1",
            "--rag-confident-similarity",
            "1",
            "--rag-min-lexical-support",
            "0",
        ],
    );
    let answerer = Answerer::start(&unchecked, db.pool.clone()).await.unwrap();
    assert!(!answerer.rag().retrieve(off, 4).await.unwrap().is_empty());
    db.drop_db().await;
}
