//! Settings and data of the retrieval and provider tests, which drive the server's library
//! (the answerer, the index) without a running server.

use std::path::{Path, PathBuf};

use server::config::Config;
use server::grounding::AnswerRequest;

use crate::{fixture, workspace_dir};

/// The small fixture knowledge base.
pub fn fixture_kb() -> PathBuf {
    fixture("kb")
}

/// The local embedding model's folder.
pub fn model_dir() -> PathBuf {
    workspace_dir().join("models/all-MiniLM-L6-v2")
}

/// A request for `question` asked with no earlier turns.
pub fn standalone(question: &str) -> AnswerRequest {
    AnswerRequest {
        question: question.into(),
        history: vec![],
    }
}

/// Settings with the given flags over test defaults (fixture KB, local model, offline).
pub fn config(db_url: &str, kb: &Path, extra: &[&str]) -> Config {
    let mut args: Vec<String> = vec![
        "chat-server".into(),
        "--database-url".into(),
        db_url.into(),
        "--knowledge-base-dir".into(),
        kb.display().to_string(),
        "--model-dir".into(),
        model_dir().display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut config = Config::parse_from(args).expect("config");
    // The environment must not switch providers under the tests.
    if !extra.contains(&"--gemini-api-key") {
        config.gemini_api_key = None;
    }
    if !extra.contains(&"--llm-provider") {
        config.llm_provider = None;
    }
    if !extra.contains(&"--embedding-provider") {
        config.embedding_provider = None;
    }
    config
}

/// A copy of a folder in a fresh temporary directory.
pub fn copy_dir(from: &Path) -> PathBuf {
    let to = std::env::temp_dir().join(format!("kb-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}
