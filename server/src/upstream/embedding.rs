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
    /// How many document requests a knowledge-base load may have in flight at once: 1 for a
    /// remote provider (its rate limits), one per worker for the local model (each request
    /// then runs on its own core).
    fn concurrent_loads(&self) -> usize {
        1
    }
    /// One normalised vector per text, in order.
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
        kind: EmbedKind,
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>>;
}

/// The inner product of two vectors (of equal length; extra elements of the longer one are
/// ignored), in eight independent sums: a plain `zip().sum()` adds one float after another (the
/// compiler may not reorder float additions), which cannot use the vector units.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (a_lanes, a_rest) = a.as_chunks::<8>();
    let (b_lanes, b_rest) = b.as_chunks::<8>();
    let mut sums = [0.0f32; 8];
    for (x, y) in a_lanes.iter().zip(b_lanes) {
        for i in 0..8 {
            sums[i] += x[i] * y[i];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + rest
}

/// Scales `v` to unit length (a zero vector stays zero), so that inner product is cosine
/// similarity.
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_at_every_length() {
        for n in [0, 1, 7, 8, 9, 16, 383, 384, 768] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - plain).abs() <= 1e-3 * plain.abs().max(1.0),
                "n = {n}"
            );
        }
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0]), 14.0);
    }

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
