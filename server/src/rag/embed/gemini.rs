//! Gemini embeddings: `models/{model}:batchEmbedContents`.

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::json;

use super::{GEMINI_THRESHOLD, embed_in_batches, post_json};
use crate::config::Secret;
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder};

pub const GEMINI_EMBEDDING_MODEL: &str = "gemini-embedding-001";
/// `batchEmbedContents` refuses more than 100 requests.
pub const GEMINI_MAX_BATCH: usize = 100;

pub struct GeminiEmbedder {
    client: reqwest::Client,
    base_url: String,
    api_key: Secret,
    model: String,
    dimension: usize,
}

impl GeminiEmbedder {
    pub fn new(
        client: reqwest::Client,
        base_url: String,
        api_key: Secret,
        model: String,
        dimension: usize,
    ) -> Self {
        Self {
            client,
            base_url,
            api_key,
            model,
            dimension,
        }
    }

    /// One `batchEmbedContents` request per text, each naming the model, task and size.
    fn batch_body(&self, batch: &[String], kind: EmbedKind) -> serde_json::Value {
        let task = match kind {
            EmbedKind::Document => "RETRIEVAL_DOCUMENT",
            EmbedKind::Query => "RETRIEVAL_QUERY",
        };
        let requests: Vec<_> = batch
            .iter()
            .map(|t| {
                json!({
                    "model": format!("models/{}", self.model),
                    "content": {"parts": [{"text": t}]},
                    "taskType": task,
                    "outputDimensionality": self.dimension,
                })
            })
            .collect();
        json!({ "requests": requests })
    }
}

#[derive(Deserialize)]
struct GeminiBatchResponse {
    #[serde(default)]
    embeddings: Vec<GeminiValues>,
}

#[derive(Deserialize)]
struct GeminiValues {
    values: Vec<f32>,
}

impl Embedder for GeminiEmbedder {
    fn provider(&self) -> &'static str {
        "gemini"
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn relevance_threshold(&self) -> f32 {
        GEMINI_THRESHOLD
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
        kind: EmbedKind,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(async move {
            let url = &format!(
                "{}/v1beta/models/{}:batchEmbedContents",
                self.base_url.trim_end_matches('/'),
                self.model
            );
            embed_in_batches(
                texts,
                GEMINI_MAX_BATCH,
                Some(self.dimension),
                |batch| async move {
                    let body = self.batch_body(batch, kind);
                    let parsed: GeminiBatchResponse = post_json("gemini", || {
                        self.client
                            .post(url)
                            .header("x-goog-api-key", self.api_key.expose())
                            .json(&body)
                    })
                    .await?;
                    Ok(parsed.embeddings.into_iter().map(|e| e.values).collect())
                },
            )
            .await
        })
    }
}
