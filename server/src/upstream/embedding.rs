//! The embedding contract: what an [`Embedder`] is, shared by retrieval (which implements it
//! in [`crate::rag::embed`]: local MiniLM, Gemini, OpenAI-compatible) and the offline answerer
//! (which ranks sentences with the knowledge base's embedder).

use futures::future::BoxFuture;

use super::ProviderError;

/// What a text is embedded for: some models embed questions and passages differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedKind {
    Document,
    Query,
}

/// A text embedder, local or remote. Every vector it returns is L2-normalised.
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

/// Scales `v` to unit length (a zero vector stays zero), so that inner product is cosine
/// similarity.
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
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
}
