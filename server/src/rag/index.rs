//! The searchable form of a loaded knowledge base: a FAISS vector index (inner product on
//! normalised vectors = cosine), a BM25 lexical index (English stemming and stop words), and
//! their reciprocal-rank fusion, ordered with the cosine similarity weighing in.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bm25::{Language, SearchEngine, SearchEngineBuilder};
use faiss::index::autotune::ParameterSpace;
use faiss::index::flat::FlatIndexImpl;
use faiss::index::{ConcurrentIndex, IndexImpl, TryClone};
use faiss::{Index, MetricType, index_factory};

use super::loader::ChunkData;
use crate::sync;
use crate::upstream::embedding::dot;

/// Past this many chunks an approximate (HNSW) index replaces exact search (default of
/// `RAG_HNSW_THRESHOLD`). Below it an exact scan is a few milliseconds at most (BENCHMARKS.md:
/// ~1 ms at 10k × 384) and exact.
pub const HNSW_THRESHOLD: usize = 20_000;

/// How the vector index is chosen and tuned (`RAG_HNSW_*`; README "Large knowledge bases").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSettings {
    /// Chunks from which HNSW replaces the flat index.
    pub hnsw_threshold: usize,
    pub params: HnswParams,
}

/// HNSW parameters: `m` links per node (FAISS `HNSW<m>`), `ef_search` candidates kept while
/// searching (recall against time). FAISS's own efConstruction (40) is used when building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    pub m: usize,
    pub ef_search: usize,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self {
            hnsw_threshold: HNSW_THRESHOLD,
            params: HnswParams::default(),
        }
    }
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 32,
            ef_search: 64,
        }
    }
}

/// The settings every knowledge-base load uses; set once at start from the configuration.
static SETTINGS: std::sync::RwLock<Option<IndexSettings>> = std::sync::RwLock::new(None);

/// Sets the index settings for the loads that follow (start-up).
pub fn configure(settings: IndexSettings) {
    *sync::write(&SETTINGS) = Some(settings);
}

/// The configured settings, else the defaults.
pub fn settings() -> IndexSettings {
    sync::read(&SETTINGS).unwrap_or_default()
}
/// Candidates each ranking contributes to the fusion.
const CANDIDATES: usize = 20;
/// The usual RRF constant: damps the weight of the very first ranks.
const RRF_K: f32 = 60.0;
/// Weight of a candidate's cosine similarity added to its reciprocal-rank-fusion score (which
/// is at most 2/61 ≈ 0.033): pure RRF ranked the right document first for 0.869 of the eval
/// questions (mean of both sets), RRF + 0.2·cosine 0.906, + 0.5·cosine 0.911, cosine alone
/// 0.911 but with a worse hit@3. See the README's answer-quality table.
const COSINE_WEIGHT: f32 = 0.5;

/// FAISS index shared by concurrent searches.
pub enum VectorIndex {
    /// Exact search; FAISS's flat index searches through `&self`, so no lock is needed.
    Flat(FlatIndexImpl),
    /// HNSW search takes `&mut self` in the bindings: a few clones, each behind its own mutex,
    /// so concurrent searches rarely wait for one another.
    Hnsw {
        replicas: Vec<Mutex<IndexImpl>>,
        next: AtomicUsize,
    },
}

impl VectorIndex {
    /// Builds the index over `vectors` (row-major, `dim` wide); HNSW from `hnsw_threshold` rows.
    pub fn build(
        dim: usize,
        vectors: &[f32],
        hnsw_threshold: usize,
        params: HnswParams,
    ) -> anyhow::Result<Self> {
        let rows = vectors.len().checked_div(dim).unwrap_or(0);
        let d = u32::try_from(dim)?;
        if rows < hnsw_threshold {
            let mut index = FlatIndexImpl::new_ip(d)?;
            if rows > 0 {
                index.add(vectors)?;
            }
            Ok(Self::Flat(index))
        } else {
            let mut index = index_factory(
                d,
                format!("HNSW{}", params.m.clamp(4, 128)),
                MetricType::InnerProduct,
            )?;
            index.add(vectors)?;
            // Clones copy it, so set once before cloning.
            ParameterSpace::new()?.set_index_parameter(
                &index,
                "efSearch",
                params.ef_search.max(1) as f64,
            )?;
            let copies = std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 4);
            let mut replicas = Vec::with_capacity(copies);
            for _ in 1..copies {
                replicas.push(Mutex::new(index.try_clone()?));
            }
            replicas.push(Mutex::new(index));
            Ok(Self::Hnsw {
                replicas,
                next: AtomicUsize::new(0),
            })
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Flat(_) => "flat",
            Self::Hnsw { .. } => "hnsw",
        }
    }

    /// The `k` nearest rows as (row, cosine), best first. Blocking: call off the async workers.
    pub fn search(&self, query: &[f32], k: usize) -> anyhow::Result<Vec<(usize, f32)>> {
        let result = match self {
            Self::Flat(index) => {
                if index.ntotal() == 0 {
                    return Ok(Vec::new());
                }
                ConcurrentIndex::search(index, query, k)?
            }
            Self::Hnsw { replicas, next } => {
                // Take a free replica if any; otherwise wait on one in round-robin order.
                let mut guard = replicas.iter().find_map(|r| r.try_lock().ok());
                if guard.is_none() {
                    let i = next.fetch_add(1, Ordering::Relaxed) % replicas.len();
                    guard = Some(sync::lock(&replicas[i]));
                }
                match guard {
                    Some(mut index) => Index::search(&mut *index, query, k)?,
                    None => return Ok(Vec::new()),
                }
            }
        };
        Ok(result
            .labels
            .iter()
            .zip(result.distances.iter())
            .filter_map(|(label, score)| label.get().map(|row| (row as usize, *score)))
            .collect())
    }
}

/// The chunk nearest to a query vector: its row and cosine similarity.
pub type Nearest = (usize, f32);

/// One retrieved passage with its scores.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Row of the chunk in [`KbIndex::chunks`].
    pub row: usize,
    /// Cosine similarity between question and chunk.
    pub similarity: f32,
    /// Ranking key: reciprocal-rank-fusion score plus the weighted cosine similarity.
    pub fused: f32,
}

/// A loaded knowledge base, ready to search. Immutable once built: a reload builds a new one.
pub struct KbIndex {
    pub chunks: Vec<ChunkData>,
    pub dimension: usize,
    /// Row-major normalised vectors, kept to score lexical candidates by cosine too.
    vectors: Vec<f32>,
    vector_index: VectorIndex,
    lexical: SearchEngine<u32>,
}

impl KbIndex {
    pub fn build(
        chunks: Vec<ChunkData>,
        dimension: usize,
        vectors: Vec<f32>,
        settings: IndexSettings,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            vectors.len() == chunks.len() * dimension,
            "vector count mismatch"
        );
        let vector_index = VectorIndex::build(
            dimension,
            &vectors,
            settings.hnsw_threshold,
            settings.params,
        )?;
        // The section path is part of each passage's searchable text (the embedded text);
        // counting it twice as a heavier field changed nothing on the eval sets.
        let documents: Vec<bm25::Document<u32>> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| bm25::Document::new(i as u32, c.embedding_text()))
            .collect();
        let lexical =
            SearchEngineBuilder::<u32>::with_documents(Language::English, documents).build();
        Ok(Self {
            chunks,
            dimension,
            vectors,
            vector_index,
            lexical,
        })
    }

    pub fn index_kind(&self) -> &'static str {
        self.vector_index.kind()
    }

    fn cosine(&self, row: usize, query: &[f32]) -> f32 {
        let v = &self.vectors[row * self.dimension..(row + 1) * self.dimension];
        dot(v, query)
    }
    /// Hybrid search: vector and BM25 rankings fused by reciprocal rank plus
    /// [`COSINE_WEIGHT`]·cosine; hits under
    /// `threshold` cosine are dropped; at most `k` returned, best first. Blocking.
    pub fn search(
        &self,
        question: &str,
        query_vector: &[f32],
        k: usize,
        threshold: f32,
    ) -> anyhow::Result<Vec<Hit>> {
        Ok(self
            .search_with_nearest(question, query_vector, k, threshold)?
            .0)
    }

    /// [`search`](Self::search), and the vector search's nearest chunk whatever `threshold`
    /// (row and similarity), from the same search.
    pub fn search_with_nearest(
        &self,
        question: &str,
        query_vector: &[f32],
        k: usize,
        threshold: f32,
    ) -> anyhow::Result<(Vec<Hit>, Option<Nearest>)> {
        if self.chunks.is_empty() || k == 0 {
            return Ok((Vec::new(), None));
        }
        let depth = CANDIDATES.max(k);
        let dense = self.vector_index.search(query_vector, depth)?;
        let nearest = dense
            .iter()
            .find(|(row, _)| *row < self.chunks.len())
            .copied();
        let lexical = self.lexical.search(question, depth);
        // At most 2 × depth candidates: a list scanned in place costs less than a hash map.
        // A vector-search candidate keeps the search's own score (the same inner product of
        // normalised vectors); a candidate only BM25 found is scored here.
        let mut fused: Vec<(usize, f32, Option<f32>)> = Vec::with_capacity(2 * depth);
        for (rank, &(row, score)) in dense.iter().enumerate() {
            let rrf = 1.0 / (RRF_K + rank as f32 + 1.0);
            match fused.iter_mut().find(|(r, _, _)| *r == row) {
                Some(entry) => entry.1 += rrf,
                None => fused.push((row, rrf, Some(score))),
            }
        }
        for (rank, result) in lexical.iter().enumerate() {
            let (row, rrf) = (
                result.document.id as usize,
                1.0 / (RRF_K + rank as f32 + 1.0),
            );
            match fused.iter_mut().find(|(r, _, _)| *r == row) {
                Some(entry) => entry.1 += rrf,
                None => fused.push((row, rrf, None)),
            }
        }
        let mut hits: Vec<Hit> = fused
            .into_iter()
            .filter(|(row, _, _)| *row < self.chunks.len())
            .map(|(row, fused, score)| Hit {
                row,
                similarity: score.unwrap_or_else(|| self.cosine(row, query_vector)),
                fused,
            })
            .filter(|h| h.similarity >= threshold)
            .collect();
        // Rank fusion finds the candidates; their cosine similarity weighs in on the order.
        for h in &mut hits {
            h.fused += COSINE_WEIGHT * h.similarity;
        }
        hits.sort_by(|a, b| {
            b.fused
                .total_cmp(&a.fused)
                .then(b.similarity.total_cmp(&a.similarity))
                .then(a.row.cmp(&b.row))
        });
        hits.truncate(k);
        Ok((hits, nearest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::embedding::normalize;

    fn chunk(i: u32, text: &str) -> ChunkData {
        ChunkData {
            document: format!("d{i}.md"),
            index: 0,
            heading: String::new(),
            text: text.into(),
        }
    }

    /// Deterministic pseudo-random unit vectors.
    fn vectors(n: usize, dim: usize) -> Vec<f32> {
        let mut state = 42u64;
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect();
            normalize(&mut v);
            out.extend(v);
        }
        out
    }

    #[test]
    fn flat_and_hnsw_find_the_exact_vector() {
        let dim = 16;
        let n = 300;
        let data = vectors(n, dim);
        for threshold in [usize::MAX, 10] {
            let index = VectorIndex::build(dim, &data, threshold, HnswParams::default()).unwrap();
            assert_eq!(index.kind(), if threshold == 10 { "hnsw" } else { "flat" });
            let row = 123;
            let hits = index.search(&data[row * dim..(row + 1) * dim], 3).unwrap();
            assert_eq!(hits[0].0, row);
            assert!((hits[0].1 - 1.0).abs() < 1e-4, "{}", hits[0].1);
            assert!(hits[1].1 < hits[0].1);
        }
    }

    #[test]
    fn a_search_reports_the_nearest_chunk_whatever_the_threshold() {
        let dim = 16;
        let n = 40;
        let data = vectors(n, dim);
        let chunks = (0..n as u32).map(|i| chunk(i, "some words")).collect();
        let kb = KbIndex::build(chunks, dim, data.clone(), IndexSettings::default()).unwrap();
        for row in [0, 7, 39] {
            let query = &data[row * dim..(row + 1) * dim];
            // A threshold no chunk reaches: no hits, the nearest all the same.
            let (hits, nearest) = kb.search_with_nearest("words", query, 4, 2.0).unwrap();
            assert!(hits.is_empty());
            assert_eq!(
                nearest,
                kb.vector_index.search(query, 1).unwrap().first().copied()
            );
            assert_eq!(nearest.map(|(r, _)| r), Some(row));
        }
    }

    #[test]
    fn empty_index_finds_nothing() {
        let kb = KbIndex::build(vec![], 8, vec![], IndexSettings::default()).unwrap();
        assert!(kb.search("anything", &[0.0; 8], 4, 0.0).unwrap().is_empty());
    }

    #[test]
    fn fusion_prefers_agreement_and_threshold_drops_weak_hits() {
        let dim = 4;
        let chunks = vec![
            chunk(0, "gift cards never expire"),
            chunk(1, "parcels ship within two days"),
            chunk(2, "refunds take five days"),
        ];
        let mut data = Vec::new();
        for v in [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.7, 0.7, 0.0, 0.0],
        ] {
            let mut v = v.to_vec();
            normalize(&mut v);
            data.extend(v);
        }
        let kb = KbIndex::build(chunks, dim, data, IndexSettings::default()).unwrap();
        let query = [1.0, 0.0, 0.0, 0.0];
        let hits = kb
            .search("when do gift cards expire", &query, 4, 0.5)
            .unwrap();
        // Row 0: best by vector and by words; row 2 passes the threshold (0.707); row 1 (0.0)
        // does not.
        assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), vec![0, 2]);
        assert!((hits[0].similarity - 1.0).abs() < 1e-5);
        assert!(
            kb.search("when do gift cards expire", &query, 4, 1.01)
                .unwrap()
                .is_empty()
        );
    }
}
