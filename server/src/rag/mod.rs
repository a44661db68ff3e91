//! Retrieval: the knowledge base loaded, chunked, embedded (through the PostgreSQL cache) and
//! indexed, held behind an atomic swap so a reload never blocks or fails a question in flight.
//!
//! Layout:
//! - `loader`: files → chunks (headings, paragraphs, size bound, overlap).
//! - `embed`: the local, Gemini and OpenAI forms of the [`Embedder`] contract, and the query
//!   cache.
//! - `cache`: the embedding cache table.
//! - `documents`: documents stored through the admin API, laid over the folder.
//! - `index`: FAISS + BM25 and their fusion.
//! - `progress`: where loads report how far they have got (the admin event socket).
//!
//! Why one file: the `Rag` handle's one lifecycle (load, swap, reload lock, search, gap signals over
//! the loaded set); every step reads and replaces the same loaded state, and the parts with a life of
//! their own (loading, embedding, indexing, documents) are already rooms below it.

pub mod cache;
pub mod documents;
pub mod embed;
pub mod html;
pub mod index;
pub mod loader;
pub mod progress;
pub mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use deadpool_postgres::Pool;
use futures::StreamExt;
use protocol::admin::KbInfo;
use protocol::error::ErrorCode;

use crate::config::Config;
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder};
use index::KbIndex;
use support::{LexicalStats, Relevance, RelevanceSettings, SUPPORT_PASSAGES};

/// Chunks embedded per provider call during a load; each batch is cached as soon as it is done,
/// so an interrupted load keeps its progress.
const EMBED_BATCH: usize = 32;

/// A retrieved passage, best first in [`Rag::retrieve`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieved {
    /// Path relative to the knowledge base.
    pub document: String,
    /// Index of the chunk within its document.
    pub chunk: u32,
    pub heading: String,
    pub text: String,
    /// Cosine similarity to the question.
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum RagError {
    #[error("a knowledge-base reload is already running")]
    ReloadInProgress,
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// Database, index or task failures: logged, never shown verbatim.
    #[error("retrieval failed: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl RagError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ReloadInProgress => ErrorCode::Conflict,
            Self::Provider(_) => ErrorCode::ProviderUnavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// A message safe to show to a user or admin.
    pub fn public_message(&self) -> String {
        match self {
            Self::ReloadInProgress => self.to_string(),
            Self::Provider(e) => e.message.clone(),
            Self::Internal(_) => "retrieval failed; see the server log".to_owned(),
        }
    }
}

/// What questions are answered from: the index and its description, swapped as one.
struct Snapshot {
    index: Arc<KbIndex>,
    /// Term statistics for the lexical-support check, in the index's row order.
    lexical: Arc<LexicalStats>,
    info: KbInfo,
}

/// What a retrieval learnt about the question itself, for its knowledge-gap signals.
#[derive(Debug, Clone, PartialEq)]
pub struct QuestionReading {
    /// The question's vector, as the embedder gave it.
    pub vector: Vec<f32>,
    /// The chunk nearest to it over the whole knowledge base, whatever the similarity floor:
    /// its cosine similarity and document.
    pub nearest: Option<(f32, String)>,
}

/// Passages for a question before the relevance decision, with what it is taken on.
#[derive(Debug, Clone)]
pub struct Assessed {
    /// Best first, as ranked; none under the similarity floor it was searched with.
    pub passages: Vec<Retrieved>,
    /// Best cosine similarity among the passages (`f32::MIN` when there are none).
    pub best_similarity: f32,
    /// Lexical support of the top passages ([`support`]).
    pub support: f32,
    /// The question's vector and nearest chunk.
    pub reading: QuestionReading,
}

/// The knowledge base service: load, reload, search.
pub struct Rag {
    embedder: Arc<dyn Embedder>,
    db: Pool,
    kb_dir: PathBuf,
    /// When passages are used at all: the cosine floor (`RAG_MIN_SIMILARITY`, else the
    /// embedder's tuned default) and the lexical-support check under the confident similarity.
    relevance: Relevance,
    /// The loaded knowledge base. Readers take a cheap snapshot (`load_full`) and keep it for
    /// the whole question, so a reload swapping in a new one never disturbs them.
    current: ArcSwap<Snapshot>,
    /// One reload at a time; a second caller gets [`RagError::ReloadInProgress`] instead of
    /// paying for the same embeddings twice.
    reload_lock: tokio::sync::Mutex<()>,
    /// Where reloads report their progress.
    progress: progress::ProgressSink,
}

impl Rag {
    /// Loads the knowledge base named by the configuration with the configured embedder.
    /// Files that fail to load are listed in [`KbInfo::errors`]; an unusable embedder, database
    /// or knowledge-base folder fails the start.
    pub async fn start(config: &Config, db: Pool) -> anyhow::Result<Arc<Rag>> {
        let embedder = embed::build(config).await?;
        Self::load(
            embedder,
            db,
            config.knowledge_base_dir.clone(),
            RelevanceSettings {
                min_similarity: config.rag_min_similarity,
                confident_similarity: config.rag_confident_similarity,
                min_support: config.rag_min_lexical_support,
            },
        )
        .await
    }

    /// Like [`Rag::start`] with a given embedder (tests, tools).
    pub async fn with_embedder(
        embedder: Arc<dyn Embedder>,
        db: Pool,
        kb_dir: PathBuf,
    ) -> anyhow::Result<Arc<Rag>> {
        Self::load(embedder, db, kb_dir, RelevanceSettings::default()).await
    }

    async fn load(
        embedder: Arc<dyn Embedder>,
        db: Pool,
        kb_dir: PathBuf,
        settings: RelevanceSettings,
    ) -> anyhow::Result<Arc<Rag>> {
        let relevance = Relevance::for_embedder(
            embedder.provider(),
            embedder.relevance_threshold(),
            settings,
        );
        let embedder: Arc<dyn Embedder> = Arc::new(embed::query_cache::QueryCache::new(embedder));
        let progress = progress::ProgressSink::default();
        let snapshot = build_snapshot(embedder.as_ref(), &db, &kb_dir, &progress).await?;
        log_loaded(&snapshot.info);
        Ok(Arc::new(Rag {
            embedder,
            db,
            kb_dir,
            relevance,
            current: ArcSwap::from_pointee(snapshot),
            reload_lock: tokio::sync::Mutex::new(()),
            progress,
        }))
    }

    /// Reloads the folder and swaps the new index in atomically. Questions already retrieving
    /// keep the old index; on failure the old index stays in place.
    pub async fn reload(&self) -> Result<KbInfo, RagError> {
        let _guard = self
            .reload_lock
            .try_lock()
            .map_err(|_| RagError::ReloadInProgress)?;
        let snapshot = build_snapshot(
            self.embedder.as_ref(),
            &self.db,
            &self.kb_dir,
            &self.progress,
        )
        .await?;
        let info = snapshot.info.clone();
        log_loaded(&info);
        self.current.store(Arc::new(snapshot));
        Ok(info)
    }

    /// What the loaded knowledge base holds.
    pub fn info(&self) -> KbInfo {
        self.current.load().info.clone()
    }

    /// The embedder of questions and passages.
    pub fn embedder(&self) -> Arc<dyn Embedder> {
        Arc::clone(&self.embedder)
    }

    /// The cosine similarity under which passages are not used.
    pub fn relevance_threshold(&self) -> f32 {
        self.relevance.min_similarity
    }

    /// The whole relevance decision (similarity floor, confident similarity, lexical support).
    pub fn relevance(&self) -> Relevance {
        self.relevance
    }

    /// The `k` most relevant passages, best first; empty when nothing in the knowledge base is
    /// relevant: the best passage is under the similarity floor, or under the confident
    /// similarity with too little of the question's rare wording in the top passages.
    /// Embedding and search run off the async workers.
    pub async fn retrieve(&self, question: &str, k: usize) -> Result<Vec<Retrieved>, RagError> {
        Ok(self.retrieve_reading(question, k).await?.0)
    }

    /// [`retrieve`](Self::retrieve), with what the search learnt about the question.
    pub async fn retrieve_reading(
        &self,
        question: &str,
        k: usize,
    ) -> Result<(Vec<Retrieved>, QuestionReading), RagError> {
        let assessed = self
            .assess(question, k, self.relevance.min_similarity)
            .await?;
        if self
            .relevance
            .accepts(assessed.best_similarity, assessed.support)
        {
            Ok((assessed.passages, assessed.reading))
        } else {
            Ok((Vec::new(), assessed.reading))
        }
    }

    /// The passages over `threshold` and the lexical support of the top ones, with no relevance
    /// decision taken (what [`Rag::retrieve`] decides on; the eval calibrates with it).
    pub async fn assess(
        &self,
        question: &str,
        k: usize,
        threshold: f32,
    ) -> Result<Assessed, RagError> {
        let started = Instant::now();
        let snapshot = self.current.load_full();
        let query = self
            .embedder
            .embed(&[question.to_owned()], EmbedKind::Query)
            .await?
            .pop()
            .context("the embedder returned no vector")?;
        let index = Arc::clone(&snapshot.index);
        let lexical = Arc::clone(&snapshot.lexical);
        let question = question.to_owned();
        let searched = tokio::task::spawn_blocking(move || {
            index
                .search_with_nearest(&question, &query, k, threshold)
                .map(|(hits, nearest)| {
                    let rows: Vec<usize> =
                        hits.iter().take(SUPPORT_PASSAGES).map(|h| h.row).collect();
                    let support = lexical.support(&question, &rows);
                    (index, hits, nearest, support, query)
                })
        })
        .await
        .context("the search task failed")??;
        let (index, hits, nearest, support, vector) = searched;
        let reading = QuestionReading {
            vector,
            nearest: nearest.map(|(row, score)| (score, index.chunks[row].document.clone())),
        };
        metrics::histogram!("rag_retrieval_seconds").record(started.elapsed().as_secs_f64());
        let passages: Vec<Retrieved> = hits
            .into_iter()
            .map(|hit| {
                let chunk = &index.chunks[hit.row];
                Retrieved {
                    document: chunk.document.clone(),
                    chunk: chunk.index,
                    heading: chunk.heading.clone(),
                    text: chunk.text.clone(),
                    score: hit.similarity,
                }
            })
            .collect();
        let best_similarity = passages.iter().map(|p| p.score).fold(f32::MIN, f32::max);
        Ok(Assessed {
            passages,
            best_similarity,
            support,
            reading,
        })
    }
}

/// Embeds one batch of (hash, text) pairs as documents; the batch comes back with its vectors.
async fn embed_documents<'a>(
    embedder: &dyn Embedder,
    batch: &'a [(String, String)],
) -> (&'a [(String, String)], Result<Vec<Vec<f32>>, ProviderError>) {
    let texts: Vec<String> = batch.iter().map(|(_, t)| t.clone()).collect();
    (batch, embedder.embed(&texts, EmbedKind::Document).await)
}

fn log_loaded(info: &KbInfo) {
    tracing::info!(
        documents = info.documents,
        chunks = info.chunks,
        embedded = info.embedded,
        cached = info.cached,
        errors = info.errors.len(),
        index = %info.index_kind,
        took_ms = info.took_ms,
        "knowledge base loaded"
    );
}

/// Loads, embeds (cache first) and indexes the folder.
async fn build_snapshot(
    embedder: &dyn Embedder,
    db: &Pool,
    kb_dir: &std::path::Path,
    progress: &progress::ProgressSink,
) -> Result<Snapshot, RagError> {
    let started = Instant::now();
    let dir = kb_dir.to_owned();
    let mut loaded = tokio::task::spawn_blocking(move || loader::load_dir(&dir))
        .await
        .context("the loader task failed")?
        .with_context(|| format!("reading the knowledge base folder {}", kb_dir.display()))?;
    documents::overlay(db, kb_dir, &mut loaded)
        .await
        .context("reading the stored documents")?;

    let key = cache::CacheKey {
        provider: embedder.provider(),
        model: embedder.model(),
        dimension: embedder.dimension(),
    };
    let texts: Vec<String> = loaded.chunks.iter().map(|c| c.embedding_text()).collect();
    let hashes: Vec<String> = texts.iter().map(|t| cache::content_hash(t)).collect();
    let mut known = cache::lookup(db, &key, &hashes)
        .await
        .context("reading the embedding cache")?;

    // Embed each distinct missing text once.
    let mut missing: Vec<(String, String)> = Vec::new();
    for (hash, text) in hashes.iter().zip(&texts) {
        if !known.contains_key(hash) && !missing.iter().any(|(h, _)| h == hash) {
            missing.push((hash.clone(), text.clone()));
        }
    }
    let mut embedded = 0;
    let cache_hits = texts.len() - missing.len();
    let report = |phase: &str, embedded: usize| {
        progress.report(protocol::admin::KbProgress {
            phase: phase.to_owned(),
            documents: loaded.documents,
            chunks_total: texts.len(),
            chunks_ready: cache_hits + embedded,
            chunks_embedded: embedded,
            cache_hits,
        })
    };
    report("reading", 0);
    // Batches are embedded `concurrent_loads` at a time and cached in order as they finish.
    let parallel = embedder.concurrent_loads().max(1);
    let mut pending = missing.chunks(EMBED_BATCH);
    let mut in_flight = futures::stream::FuturesOrdered::new();
    loop {
        while in_flight.len() < parallel
            && let Some(batch) = pending.next()
        {
            in_flight.push_back(embed_documents(embedder, batch));
        }
        let Some((batch, vectors)) = in_flight.next().await else {
            break;
        };
        let vectors = vectors?;
        let entries: Vec<(String, Vec<f32>)> =
            batch.iter().map(|(h, _)| h.clone()).zip(vectors).collect();
        cache::store(db, &key, &entries)
            .await
            .context("writing the embedding cache")?;
        embedded += entries.len();
        known.extend(entries);
        report("embedding", embedded);
    }
    report("indexing", embedded);
    metrics::counter!("rag_chunks_embedded_total").increment(embedded as u64);

    let dimension = embedder.dimension();
    let mut vectors = Vec::with_capacity(hashes.len() * dimension);
    for hash in &hashes {
        let v = known.get(hash).context("a chunk has no vector")?;
        vectors.extend_from_slice(v);
    }
    let documents = loaded.documents;
    let chunk_count = loaded.chunks.len();
    let chunks = loaded.chunks;
    let (index, lexical) = tokio::task::spawn_blocking(move || {
        let lexical = LexicalStats::build(chunks.iter().map(|c| c.embedding_text()));
        KbIndex::build(chunks, dimension, vectors, index::settings()).map(|i| (i, lexical))
    })
    .await
    .context("the index task failed")??;
    report("done", embedded);
    let info = KbInfo {
        documents,
        chunks: chunk_count,
        embedding_provider: embedder.provider().to_owned(),
        embedding_model: embedder.model().to_owned(),
        dimension,
        index_kind: index.index_kind().to_owned(),
        loaded_at: chrono::Utc::now(),
        embedded,
        // Duplicated passages are embedded once; their twins count as cached.
        cached: chunk_count - embedded,
        took_ms: started.elapsed().as_millis() as u64,
        errors: loaded.errors,
    };
    Ok(Snapshot {
        index: Arc::new(index),
        lexical: Arc::new(lexical),
        info,
    })
}
