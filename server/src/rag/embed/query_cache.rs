//! The query cache: question vectors remembered in memory, in front of any embedder.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::sync;
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder};

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

    fn concurrent_loads(&self) -> usize {
        self.inner.concurrent_loads()
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
                let cache = sync::lock(&self.cache);
                texts.iter().map(|t| cache.get(t).cloned()).collect()
            };
            if let Some(vectors) = known {
                return Ok(vectors);
            }
            let vectors = self.inner.embed(texts, kind).await?;
            let mut cache = sync::lock(&self.cache);
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
