//! The offline answerer: picks the sentences of the retrieved context that best match the
//! question and streams them in word-sized deltas. It never writes text that is not in the
//! context, so it cannot hallucinate; with no context it refuses.
//!
//! Layout:
//! - here: the [`ChatModel`] (ranking sentences by meaning with an embedder, when it has one,
//!   and streaming the answer).
//! - `sentences`: a passage read as pieces (sentences, list items, table rows, code blocks) and
//!   their content words.
//! - `compose`: scoring the pieces against the question and composing the cited answer.

pub mod compose;
mod sentences;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use protocol::chat::Usage;

use super::{ChatModel, ChatStream, Chunk, Prompt};
use crate::sync;
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder, dot};

/// Sentence vectors kept between answers; knowledge-base sentences repeat, questions do not.
const SENTENCE_CACHE_MAX: usize = 20_000;

/// The extractive answerer. With an embedder it ranks sentences by meaning as well as by shared
/// words; without one, by shared words only.
#[derive(Default)]
pub struct OfflineChat {
    embedder: Option<Arc<dyn Embedder>>,
    /// Sentence → vector. A plain mutex: held only for lookups and inserts, never across an
    /// await.
    sentence_vectors: Mutex<HashMap<String, Arc<Vec<f32>>>>,
    /// Lets one answer at a time embed missing sentences: answers arriving together over the
    /// same passages wait for the first one and then find the vectors cached, instead of all
    /// embedding the same sentences at once.
    fill: tokio::sync::Mutex<()>,
}

impl OfflineChat {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ranks sentences with `embedder` too (the knowledge base's own embedder is the natural
    /// choice: it is loaded already).
    pub fn with_embedder(embedder: Arc<dyn Embedder>) -> Self {
        Self {
            embedder: Some(embedder),
            ..Self::default()
        }
    }

    /// Cosine similarity of each candidate sentence to the question.
    async fn semantic_scores(
        &self,
        embedder: &dyn Embedder,
        question: &str,
        sentences: &[String],
    ) -> Result<Vec<f32>, ProviderError> {
        let query = embedder
            .embed(&[question.to_owned()], EmbedKind::Query)
            .await?
            .pop()
            .ok_or_else(|| ProviderError::unavailable("no question vector"))?;
        let _filling = self.fill.lock().await;
        let missing: Vec<String> = {
            let cache = sync::lock(&self.sentence_vectors);
            let mut seen = HashSet::new();
            sentences
                .iter()
                .filter(|s| !cache.contains_key(*s) && seen.insert(s.as_str()))
                .cloned()
                .collect()
        };
        let fresh = if missing.is_empty() {
            Vec::new()
        } else {
            embedder.embed(&missing, EmbedKind::Document).await?
        };
        let mut cache = sync::lock(&self.sentence_vectors);
        if cache.len() + fresh.len() > SENTENCE_CACHE_MAX {
            cache.clear();
        }
        for (sentence, vector) in missing.into_iter().zip(fresh) {
            cache.insert(sentence, Arc::new(vector));
        }
        Ok(sentences
            .iter()
            .map(|s| cache.get(s).map_or(0.0, |v| dot(v, &query)))
            .collect())
    }
}

impl ChatModel for OfflineChat {
    fn describe(&self) -> String {
        "offline:extractive".to_owned()
    }

    fn stream<'a>(
        &'a self,
        prompt: &'a Prompt,
    ) -> BoxFuture<'a, Result<ChatStream, ProviderError>> {
        Box::pin(async move {
            let candidates = compose::candidates(prompt);
            let semantic = match &self.embedder {
                Some(embedder) if candidates.iter().any(|c| !c.code) => {
                    // Code is never picked on its own: only prose is compared by meaning.
                    let prose: Vec<usize> = (0..candidates.len())
                        .filter(|&i| !candidates[i].code)
                        .collect();
                    let texts: Vec<String> =
                        prose.iter().map(|&i| candidates[i].text.clone()).collect();
                    match self
                        .semantic_scores(embedder.as_ref(), &prompt.question, &texts)
                        .await
                    {
                        Ok(scores) => {
                            let mut all = vec![0.0; candidates.len()];
                            for (&i, score) in prose.iter().zip(scores) {
                                all[i] = score;
                            }
                            Some(all)
                        }
                        Err(e) => {
                            // Shared words still give a sensible answer.
                            tracing::warn!(error = %e, "sentence ranking by meaning failed");
                            None
                        }
                    }
                }
                _ => None,
            };
            let answer = compose::compose(prompt, candidates, semantic.as_deref());
            let prompt_tokens = prompt.user_message().split_whitespace().count() as u32;
            let deltas: Vec<String> = answer.split_inclusive(' ').map(str::to_owned).collect();
            let completion_tokens = deltas.len() as u32;
            let usage = Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            };
            let items = deltas
                .into_iter()
                .map(|d| Ok(Chunk::Delta(d)))
                .chain(std::iter::once(Ok(Chunk::Finished { usage })));
            Ok(stream::iter(items).boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::compose::compose_answer;
    use super::*;
    use crate::llm::{ContextBlock, REFUSAL, SYSTEM_INSTRUCTION};

    fn prompt(question: &str, blocks: &[(&str, &str)]) -> Prompt {
        Prompt {
            system: SYSTEM_INSTRUCTION.to_owned(),
            history: vec![],
            context: blocks
                .iter()
                .map(|(heading, text)| ContextBlock {
                    document: "doc.md".into(),
                    heading: (*heading).into(),
                    text: (*text).into(),
                })
                .collect(),
            question: question.into(),
        }
    }

    #[test]
    fn no_context_refuses() {
        assert_eq!(compose_answer(&prompt("anything?", &[])), REFUSAL);
    }

    #[test]
    fn picks_the_matching_sentence_and_only_context_text() {
        let p = prompt(
            "How long do refunds take to arrive?",
            &[(
                "Returns > Refunds",
                "We accept returns of unworn items. Refunds arrive within 5 business days of \
                 the parcel reaching our warehouse. Our warehouse is in Leeds.",
            )],
        );
        let answer = compose_answer(&p);
        assert!(answer.contains("5 business days"), "{answer}");
        // Every sentence is the context's own; the citation follows them.
        let (body, citation) = answer.split_once("\n\n").unwrap();
        assert_eq!(citation, "(Source: doc.md)");
        for sentence in body.split_inclusive(". ") {
            assert!(p.context[0].text.contains(sentence.trim()), "{sentence}");
        }
    }

    #[test]
    fn wrapped_lines_are_read_as_whole_sentences() {
        let p = prompt(
            "How long does standard shipping take?",
            &[(
                "Shipping",
                "Parcels are packed in recycled boxes and\nleave the depot every evening.  Standard\n\
                 shipping takes 3 to 5\nbusiness days from dispatch.",
            )],
        );
        let answer = compose_answer(&p);
        assert!(
            answer.contains("Standard shipping takes 3 to 5 business days from dispatch."),
            "{answer}"
        );
        assert!(answer.ends_with("(Source: doc.md)"), "{answer}");
    }

    #[test]
    fn an_introduction_brings_its_code_and_a_bare_yes_its_reason() {
        let p = prompt(
            "How do I reload a module I changed?",
            &[(
                "Modules > Reloading",
                "Python reads a module file only once. To force re-reading of a changed module, \
                 do this::\n\n   import importlib\n   importlib.reload(modname)\n\n\
                 Objects imported before keep the old code.",
            )],
        );
        let answer = compose_answer(&p);
        assert!(
            answer.contains("do this:\n\nimport importlib\nimportlib.reload(modname)"),
            "{answer}"
        );
        let p = prompt(
            "Is Python a good first language for beginners?",
            &[(
                "Beginners",
                "Yes.\n\nIts simple syntax lets students focus on problem decomposition.",
            )],
        );
        let answer = compose_answer(&p);
        assert!(answer.starts_with("Yes. Its simple syntax"), "{answer}");
    }

    #[test]
    fn sentences_keep_source_order_and_cite_every_document() {
        let mut p = prompt(
            "What do express and standard delivery cost?",
            &[
                ("Shipping", "Standard delivery costs 4 euros."),
                ("Express", "Express delivery costs 9 euros."),
            ],
        );
        p.context[1].document = "express.md".into();
        let answer = compose_answer(&p);
        assert_eq!(
            answer,
            "Standard delivery costs 4 euros. Express delivery costs 9 euros.\n\n\
             (Sources: doc.md, express.md)"
        );
    }

    #[test]
    fn markup_is_read_out_as_plain_text() {
        let p = prompt(
            "How do I send mail from a script?",
            &[(
                "Mail",
                "Use the standard library module :mod:`smtplib` to send **mail**.",
            )],
        );
        assert!(
            compose_answer(&p).starts_with("Use the standard library module smtplib to send mail."),
            "{}",
            compose_answer(&p)
        );
    }

    #[tokio::test]
    async fn streams_word_deltas_then_finished() {
        let p = prompt(
            "Where is the warehouse?",
            &[("Contact", "Our warehouse is in Leeds.")],
        );
        let chunks: Vec<Chunk> = OfflineChat::new()
            .stream(&p)
            .await
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        assert!(chunks.len() >= 3);
        let text: String = chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::Delta(d) => Some(d.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Our warehouse is in Leeds.\n\n(Source: doc.md)");
        assert!(matches!(chunks.last(), Some(Chunk::Finished { .. })));
    }

    /// Texts mentioning arrival point one way, everything else the other.
    struct ArrivalEmbedder;

    impl Embedder for ArrivalEmbedder {
        fn provider(&self) -> &'static str {
            "test"
        }
        fn model(&self) -> &str {
            "arrival"
        }
        fn dimension(&self) -> usize {
            2
        }
        fn relevance_threshold(&self) -> f32 {
            0.0
        }
        fn embed<'a>(
            &'a self,
            texts: &'a [String],
            _kind: EmbedKind,
        ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, ProviderError>> {
            let out = texts
                .iter()
                .map(|t| {
                    let t = t.to_lowercase();
                    if t.contains("arriv") || t.contains("get here") {
                        vec![1.0, 0.0]
                    } else {
                        vec![0.0, 1.0]
                    }
                })
                .collect();
            Box::pin(async move { Ok(out) })
        }
    }

    #[tokio::test]
    async fn meaning_finds_the_sentence_that_shares_no_words() {
        // No content word of the question appears in the answering sentence; the distractor
        // shares "parcel".
        let p = prompt(
            "When will my parcel get here?",
            &[(
                "Shipping",
                "Every parcel is packed with recycled paper. Deliveries arrive within 2 working \
                 days.",
            )],
        );
        let lexical = compose_answer(&p);
        assert!(lexical.starts_with("Every parcel"), "{lexical}");
        let model = OfflineChat::with_embedder(Arc::new(ArrivalEmbedder));
        let chunks: Vec<Chunk> = model
            .stream(&p)
            .await
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        let text: String = chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::Delta(d) => Some(d.as_str()),
                _ => None,
            })
            .collect();
        let first = text.split(". ").next().unwrap_or_default();
        assert!(
            first.starts_with("Deliveries arrive within 2 working days"),
            "{text}"
        );
        // The sentence vectors are cached for the next answer.
        assert_eq!(model.sentence_vectors.lock().unwrap().len(), 2);
    }
}
