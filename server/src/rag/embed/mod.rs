//! Text embedders: the local all-MiniLM-L6-v2 model (candle), Gemini `gemini-embedding-001` and
//! any OpenAI-compatible `/v1/embeddings`, each implementing the
//! [`Embedder`](crate::upstream::embedding::Embedder) contract. Every vector leaves here
//! L2-normalised, so inner product is cosine similarity.
//!
//! Layout (as in [`crate::llm`]):
//! - `local`: MiniLM in-process and its batching worker threads.
//! - `gemini`, `openai`: the HTTP embedders, each speaking its provider's wire format.
//! - `query_cache`: question vectors remembered in memory (not the PostgreSQL embedding cache of
//!   passages, which is [`crate::rag::cache`]).
//! - here: the embedder the configuration chooses, the relevance thresholds per model family,
//!   and the batching both HTTP embedders share (HTTP and retries are in [`crate::upstream`]).

mod encoder;
pub mod gemini;
pub mod local;
pub mod openai;
pub mod query_cache;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::config::{Config, EmbeddingProvider};
use crate::upstream::embedding::{Embedder, normalize};
use crate::upstream::{ProviderError, http};
use gemini::{GEMINI_EMBEDDING_MODEL, GeminiEmbedder};
use local::{Batching, LocalEmbedder};
use openai::OpenAiEmbedder;

/// Relevance thresholds per model family, tuned on `eval/questions.json` for MiniLM; the others
/// are starting points from the models' published similarity ranges (unrelated text scores
/// markedly higher with Gemini's embeddings than with MiniLM's).
const LOCAL_THRESHOLD: f32 = 0.36;
const GEMINI_THRESHOLD: f32 = 0.62;
const OPENAI_THRESHOLD: f32 = 0.40;

/// The embedder chosen by the configuration.
pub async fn build(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
    Ok(match config.embedding_provider() {
        EmbeddingProvider::Local => {
            let dir = config.model_dir.clone();
            let batching = Batching {
                window: std::time::Duration::from_millis(config.embed_batch_window_ms),
                max_batch: config.embed_max_batch.max(1),
            };
            let model =
                tokio::task::spawn_blocking(move || LocalEmbedder::load_with(&dir, batching))
                    .await
                    .context("loading the local embedding model")??;
            Arc::new(model)
        }
        EmbeddingProvider::Gemini => {
            let key = config
                .gemini_api_key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("EMBEDDING_PROVIDER=gemini needs GEMINI_API_KEY"))?;
            Arc::new(GeminiEmbedder::new(
                http::client(config)?,
                config.gemini_root(),
                key,
                config
                    .embedding_model
                    .clone()
                    .unwrap_or_else(|| GEMINI_EMBEDDING_MODEL.to_owned()),
                config.embedding_dim,
            )?)
        }
        EmbeddingProvider::Openai => {
            let model = config.embedding_model.clone().ok_or_else(|| {
                anyhow::anyhow!("EMBEDDING_PROVIDER=openai needs EMBEDDING_MODEL")
            })?;
            Arc::new(
                OpenAiEmbedder::connect(
                    http::client(config)?,
                    config.openai_root(),
                    config.openai_api_key.clone(),
                    model,
                )
                .await?,
            )
        }
    })
}

/// Embeds `texts` at most `max_batch` at a time: `embed_batch` speaks the provider's wire format
/// for one batch and returns its vectors in input order. The count and (once known) the size of
/// what comes back are checked here, and every vector is normalised: Gemini normalises only its
/// 3072-d output, and OpenAI-compatible servers vary.
async fn embed_in_batches<'a, F, Fut>(
    texts: &'a [String],
    max_batch: usize,
    dimension: Option<usize>,
    mut embed_batch: F,
) -> Result<Vec<Vec<f32>>, ProviderError>
where
    F: FnMut(&'a [String]) -> Fut,
    Fut: Future<Output = Result<Vec<Vec<f32>>, ProviderError>>,
{
    let mut out = Vec::with_capacity(texts.len());
    for batch in texts.chunks(max_batch) {
        let vectors = embed_batch(batch).await?;
        if vectors.len() != batch.len() {
            return Err(ProviderError::unavailable(
                "the embedding service returned the wrong number of vectors",
            ));
        }
        for mut vector in vectors {
            if dimension.is_some_and(|d| vector.len() != d) {
                return Err(ProviderError::unavailable(
                    "the embedding service returned vectors of the wrong size",
                ));
            }
            normalize(&mut vector);
            out.push(vector);
        }
    }
    Ok(out)
}

/// Sends a request with retries (`request` builds a fresh one per attempt) and reads its JSON.
async fn post_json<T: DeserializeOwned>(
    provider: &str,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Result<T, ProviderError> {
    let response = http::send_with_retry(provider, request).await?;
    response.json().await.map_err(|e| {
        tracing::warn!(provider, error = %e.without_url(), "bad embedding response");
        ProviderError::unavailable("the embedding service sent an unexpected response")
    })
}
