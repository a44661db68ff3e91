//! Lexical support: whether the best passages share a *distinctive* word with the question.
//!
//! The embedding's cosine similarity alone cannot tell an in-domain question the knowledge base
//! does not answer ("How much does a Python certification exam cost?" over the Python FAQ) from
//! a paraphrase it does answer: both reach the same middling similarity. What separates them is
//! what the question has in common with the passages found. A paraphrase shares at least one
//! word that only some passages use ("refund", "indentation", "email"); the unanswerable
//! question shares only the knowledge base's everyday word ("Python", found in more than half of
//! the FAQ's passages), which says nothing about which passage would answer it. So the support
//! of a question is 1 − the share of the knowledge base's passages that contain the *rarest*
//! question word found in the top passages (English stemming, stop words removed: the BM25
//! index's analysis); 0 when they share no word. It depends on the knowledge base only, never
//! on the embedding model.

use std::collections::{HashMap, HashSet};

use bm25::{DefaultTokenizer, Language, Tokenizer};

/// Passages, best first, whose words count as covering the question.
pub const SUPPORT_PASSAGES: usize = 3;

/// Document frequencies of the knowledge base's terms and each passage's term set.
pub struct LexicalStats {
    tokenizer: DefaultTokenizer,
    /// Passages (chunks) in the knowledge base.
    passages: usize,
    /// Term → passages containing it.
    document_frequency: HashMap<String, u32>,
    /// Row (as in the index) → its distinct terms.
    terms: Vec<HashSet<String>>,
}

impl LexicalStats {
    /// Builds the statistics over the passages' searchable texts, in index row order.
    pub fn build(texts: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        let tokenizer = DefaultTokenizer::new(Language::English);
        let terms: Vec<HashSet<String>> = texts
            .into_iter()
            .map(|t| tokenizer.tokenize(t.as_ref()).into_iter().collect())
            .collect();
        let mut document_frequency: HashMap<String, u32> = HashMap::new();
        for set in &terms {
            for term in set {
                *document_frequency.entry(term.clone()).or_default() += 1;
            }
        }
        Self {
            tokenizer,
            passages: terms.len(),
            document_frequency,
            terms,
        }
    }

    /// The question's distinct content terms.
    fn question_terms(&self, question: &str) -> Vec<String> {
        let mut seen = HashSet::new();
        self.tokenizer
            .tokenize(question)
            .into_iter()
            .filter(|t| seen.insert(t.clone()))
            .collect()
    }

    /// 1 − the share of all passages that contain the rarest question term found in the
    /// passages at `rows`: near 1 when that term is distinctive, 0 when the question shares no
    /// term with them; 1 for a question with no content word at all (nothing to check).
    pub fn support(&self, question: &str, rows: &[usize]) -> f32 {
        let terms = self.question_terms(question);
        if terms.is_empty() || self.passages == 0 {
            return 1.0;
        }
        let rarest = terms
            .iter()
            .filter(|t| {
                rows.iter()
                    .any(|&r| self.terms.get(r).is_some_and(|set| set.contains(*t)))
            })
            .map(|t| self.document_frequency.get(t).copied().unwrap_or(0))
            .min();
        match rarest {
            Some(df) => 1.0 - df as f32 / self.passages as f32,
            None => 0.0,
        }
    }
}

/// When retrieved passages are used to answer: the best passage's cosine similarity must reach
/// `min_similarity`, and under `confident_similarity` the top passages must also hold at least
/// `min_support` of the question's informative wording. The similarities are per embedding
/// model; the support share is not (it never looks at vectors).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Relevance {
    pub min_similarity: f32,
    pub confident_similarity: f32,
    pub min_support: f32,
}

/// Explicit settings (`RAG_MIN_SIMILARITY`, `RAG_CONFIDENT_SIMILARITY`,
/// `RAG_MIN_LEXICAL_SUPPORT`); each replaces its tuned default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RelevanceSettings {
    pub min_similarity: Option<f32>,
    pub confident_similarity: Option<f32>,
    pub min_support: Option<f32>,
}

/// Lexical support under which a question is refused when its best match is not confident.
/// Calibrated on both eval sets (README, "Refusals"); it does not depend on the model.
pub const MIN_SUPPORT: f32 = 0.6;

/// The confident similarity of the local all-MiniLM-L6-v2, calibrated on both eval sets.
const LOCAL_CONFIDENT_SIMILARITY: f32 = 0.44;
/// For models not measured here (Gemini, OpenAI-compatible): the local model's band between
/// its floor and its confident similarity, laid above their (estimated) floor. An estimate:
/// `make eval` with the provider configured prints what to set instead.
const CONFIDENT_BAND: f32 = LOCAL_CONFIDENT_SIMILARITY - 0.36;

impl Relevance {
    /// The tuned decision for an embedder (`provider`, with its tuned `min_similarity`), with
    /// any explicit settings laid over it.
    pub fn for_embedder(provider: &str, min_similarity: f32, settings: RelevanceSettings) -> Self {
        let tuned_confident = match provider {
            "local" => LOCAL_CONFIDENT_SIMILARITY,
            _ => min_similarity + CONFIDENT_BAND,
        };
        let min = settings.min_similarity.unwrap_or(min_similarity);
        // A floor moved by hand moves the band with it, unless the ceiling is set too.
        let confident = settings
            .confident_similarity
            .unwrap_or(tuned_confident + (min - min_similarity));
        Self {
            min_similarity: min,
            confident_similarity: confident,
            min_support: settings.min_support.unwrap_or(MIN_SUPPORT),
        }
    }

    /// Whether a question whose best passage has `best_similarity` and whose top passages have
    /// `support` is answered.
    pub fn accepts(&self, best_similarity: f32, support: f32) -> bool {
        best_similarity >= self.min_similarity
            && (best_similarity >= self.confident_similarity || support >= self.min_support)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> LexicalStats {
        LexicalStats::build([
            "Shipping > Delivery times\nOrders ship within two working days.",
            "Returns > Refunds\nRefunds are paid within five days of the return arriving.",
            "Gift cards\nGift cards never expire and can be used for any order.",
            "Orders > Changing an order\nAn order can be changed until it ships.",
        ])
    }

    #[test]
    fn support_is_the_rarity_of_the_rarest_shared_word() {
        let s = stats();
        // "refund" (stemmed from "refunds") is in one passage of four.
        assert!((s.support("When are refunds paid?", &[1]) - 0.75).abs() < 1e-6);
        // The question shares no word with passage 2.
        assert_eq!(s.support("When are refunds paid?", &[2]), 0.0);
        // Only "order", found in three passages of four, is shared: little support, however
        // many passages are looked at.
        let low = s.support(
            "How much does an order certification exam cost?",
            &[0, 1, 2, 3],
        );
        assert!((low - 0.25).abs() < 1e-6, "{low}");
        // Stop words only: nothing to check.
        assert_eq!(s.support("what is it?", &[0]), 1.0);
    }

    #[test]
    fn the_lexical_check_applies_only_under_the_confident_similarity() {
        let r = Relevance::for_embedder("local", 0.36, RelevanceSettings::default());
        assert_eq!(r.min_similarity, 0.36);
        assert_eq!(r.confident_similarity, LOCAL_CONFIDENT_SIMILARITY);
        assert_eq!(r.min_support, MIN_SUPPORT);
        // Under the floor: refused whatever the words.
        assert!(!r.accepts(0.30, 1.0));
        // In the band: the words decide.
        assert!(r.accepts(0.40, 0.8));
        assert!(!r.accepts(0.40, 0.2));
        // Confident: answered even when worded nothing like the passages.
        assert!(r.accepts(0.60, 0.0));
    }

    #[test]
    fn settings_replace_the_tuned_values_and_a_moved_floor_moves_the_band() {
        let moved = Relevance::for_embedder(
            "local",
            0.36,
            RelevanceSettings {
                min_similarity: Some(0.40),
                ..RelevanceSettings::default()
            },
        );
        assert!((moved.confident_similarity - (LOCAL_CONFIDENT_SIMILARITY + 0.04)).abs() < 1e-6);
        let off = Relevance::for_embedder(
            "gemini",
            0.62,
            RelevanceSettings {
                min_support: Some(0.0),
                confident_similarity: Some(0.7),
                ..RelevanceSettings::default()
            },
        );
        assert_eq!(off.confident_similarity, 0.7);
        assert!(off.accepts(0.63, 0.0), "support 0 turns the check off");
        let estimated = Relevance::for_embedder("openai", 0.40, RelevanceSettings::default());
        assert!((estimated.confident_similarity - (0.40 + CONFIDENT_BAND)).abs() < 1e-6);
    }
}
