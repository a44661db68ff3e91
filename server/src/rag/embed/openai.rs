//! OpenAI-compatible embeddings (Ollama, vLLM, llama.cpp server): `/v1/embeddings`.

use anyhow::Context;
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use super::{OPENAI_THRESHOLD, embed_in_batches, post_json};
use crate::config::Secret;
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder};

/// Inputs per `/v1/embeddings` call: small enough for modest local servers.
const OPENAI_MAX_BATCH: usize = 64;

pub struct OpenAiEmbedder {
    client: reqwest::Client,
    base_url: String,
    api_key: Option<Secret>,
    model: String,
    /// Learned from the server at start (0 before the probe).
    dimension: usize,
}

#[derive(Deserialize)]
struct OpenAiEmbeddings {
    data: Vec<OpenAiEmbedding>,
}

#[derive(Deserialize)]
struct OpenAiEmbedding {
    embedding: Vec<f32>,
    #[serde(default)]
    index: usize,
}

impl OpenAiEmbedder {
    /// Connects to the server and asks it for one vector: the server decides the dimension,
    /// learned once here so the cache key and index are right.
    pub async fn connect(
        client: reqwest::Client,
        base_url: String,
        api_key: Option<Secret>,
        model: String,
    ) -> anyhow::Result<Self> {
        let mut embedder = Self {
            client,
            base_url,
            api_key,
            model,
            dimension: 0,
        };
        let probe = embedder
            .embed_batch(&["dimension probe".to_owned()])
            .await
            .context("probing the OpenAI-compatible embedding endpoint")?;
        embedder.dimension = probe.first().map_or(0, Vec::len);
        anyhow::ensure!(
            embedder.dimension > 0,
            "the embedding endpoint returned an empty vector"
        );
        Ok(embedder)
    }

    async fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ProviderError> {
        let url = &format!("{}/v1/embeddings", self.base_url.trim_end_matches('/'));
        // Unknown (0) until the start-up probe has learned it.
        let dimension = (self.dimension != 0).then_some(self.dimension);
        embed_in_batches(texts, OPENAI_MAX_BATCH, dimension, |batch| async move {
            let body = json!({"model": self.model, "input": batch, "encoding_format": "float"});
            let mut parsed: OpenAiEmbeddings = post_json("openai", || {
                let request = self.client.post(url).json(&body);
                match &self.api_key {
                    Some(key) => request.bearer_auth(key.expose()),
                    None => request,
                }
            })
            .await?;
            parsed.data.sort_by_key(|d| d.index);
            Ok(parsed.data.into_iter().map(|d| d.embedding).collect())
        })
        .await
    }
}

impl Embedder for OpenAiEmbedder {
    fn provider(&self) -> &'static str {
        "openai"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn relevance_threshold(&self) -> f32 {
        OPENAI_THRESHOLD
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
        _kind: EmbedKind,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(self.embed_batch(texts))
    }
}
