//! Gemini embeddings: `models/{model}:batchEmbedContents`.

use anyhow::Context;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{GEMINI_THRESHOLD, embed_in_batches, post_json};
use crate::config::Secret;
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder};

pub const GEMINI_EMBEDDING_MODEL: &str = "gemini-embedding-001";
/// `batchEmbedContents` refuses more than 100 requests.
pub const GEMINI_MAX_BATCH: usize = 100;

pub struct GeminiEmbedder {
    client: reqwest::Client,
    api_key: Secret,
    model: String,
    /// `models/{model}`, as each request of a batch names it.
    model_path: String,
    /// The model's `batchEmbedContents` address, parsed once.
    url: reqwest::Url,
    dimension: usize,
}

/// A `batchEmbedContents` body, serialised straight from the texts.
#[derive(Serialize)]
struct BatchRequest<'a> {
    requests: Vec<EmbedRequest<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EmbedRequest<'a> {
    model: &'a str,
    content: EmbedContent<'a>,
    task_type: &'static str,
    output_dimensionality: usize,
}

#[derive(Serialize)]
struct EmbedContent<'a> {
    parts: [EmbedPart<'a>; 1],
}

#[derive(Serialize)]
struct EmbedPart<'a> {
    text: &'a str,
}

impl GeminiEmbedder {
    /// Fails if the base URL and model do not make a valid address.
    pub fn new(
        client: reqwest::Client,
        base_url: String,
        api_key: Secret,
        model: String,
        dimension: usize,
    ) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&format!(
            "{}/v1beta/models/{model}:batchEmbedContents",
            base_url.trim_end_matches('/'),
        ))
        .context("the Gemini base URL and embedding model do not make a valid address")?;
        Ok(Self {
            client,
            api_key,
            model_path: format!("models/{model}"),
            model,
            url,
            dimension,
        })
    }

    /// One `batchEmbedContents` request per text, each naming the model, task and size.
    fn batch_body<'a>(&'a self, batch: &'a [String], kind: EmbedKind) -> BatchRequest<'a> {
        let task_type = match kind {
            EmbedKind::Document => "RETRIEVAL_DOCUMENT",
            EmbedKind::Query => "RETRIEVAL_QUERY",
        };
        let requests = batch
            .iter()
            .map(|text| EmbedRequest {
                model: &self.model_path,
                content: EmbedContent {
                    parts: [EmbedPart { text }],
                },
                task_type,
                output_dimensionality: self.dimension,
            })
            .collect();
        BatchRequest { requests }
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
            embed_in_batches(
                texts,
                GEMINI_MAX_BATCH,
                Some(self.dimension),
                |batch| async move {
                    let body = self.batch_body(batch, kind);
                    let parsed: GeminiBatchResponse = post_json("gemini", || {
                        self.client
                            .post(self.url.clone())
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
