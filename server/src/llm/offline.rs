//! The offline answerer: picks the sentences of the retrieved context that best match the
//! question and streams them in word-sized deltas. It never writes text that is not in the
//! context, so it cannot hallucinate; with no context it refuses.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use protocol::chat::Usage;

use super::{ChatModel, ChatStream, Prompt, ProviderError, REFUSAL};
use crate::answer::Chunk;
use crate::rag::embed::{EmbedKind, Embedder};

/// Sentences in an answer at most: enough for a fact and its condition, short enough to read.
const MAX_SENTENCES: usize = 3;
/// A further sentence joins the answer only if it scores at least this share of the best one.
const FOLLOW_SHARE: f32 = 0.6;

/// Weight of the question–sentence cosine similarity against the lexical score (which runs
/// from 0 to about 3). Tuned on `eval/questions.json`.
const SEMANTIC_WEIGHT: f32 = 10.0;
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
            let cache = self
                .sentence_vectors
                .lock()
                .unwrap_or_else(|e| e.into_inner());
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
        let mut cache = self
            .sentence_vectors
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if cache.len() + fresh.len() > SENTENCE_CACHE_MAX {
            cache.clear();
        }
        for (sentence, vector) in missing.into_iter().zip(fresh) {
            cache.insert(sentence, Arc::new(vector));
        }
        Ok(sentences
            .iter()
            .map(|s| {
                cache
                    .get(s)
                    .map_or(0.0, |v| v.iter().zip(&query).map(|(a, b)| a * b).sum())
            })
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
            let candidates = candidates(prompt);
            let semantic = match &self.embedder {
                Some(embedder) if !candidates.is_empty() => {
                    let texts: Vec<String> = candidates.iter().map(|c| c.text.clone()).collect();
                    match self
                        .semantic_scores(embedder.as_ref(), &prompt.question, &texts)
                        .await
                    {
                        Ok(scores) => Some(scores),
                        Err(e) => {
                            // Shared words still give a sensible answer.
                            tracing::warn!(error = %e, "sentence ranking by meaning failed");
                            None
                        }
                    }
                }
                _ => None,
            };
            let answer = compose(prompt, candidates, semantic.as_deref());
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

/// Words that carry no topic: ignored when matching sentences to the question.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been",
    "before", "being", "but", "by", "can", "could", "did", "do", "does", "doing", "for", "from",
    "get", "got", "had", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me",
    "my", "of", "on", "or", "our", "please", "should", "so", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "to", "us", "was", "we", "were", "what", "when",
    "where", "which", "who", "why", "will", "with", "would", "you", "your", "yours", "i'm", "im",
    "want", "need", "know", "tell", "there's", "much", "many", "long",
];

/// Lower-cased content words with a crude suffix stem, so "refunds" meets "refund".
fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty() && !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

fn stem(word: &str) -> String {
    for suffix in ["ing", "ed", "es", "s"] {
        if word.len() > suffix.len() + 3
            && let Some(base) = word.strip_suffix(suffix)
        {
            return base.to_owned();
        }
    }
    word.to_owned()
}

/// Splits a passage into sentences: by line (list items), then at `. `, `? `, `! `. Table rows
/// become one sentence each, their cells labelled with the header (`Cost: €4.95`), so a row
/// reads on its own.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut table_header: Option<Vec<String>> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('|') {
            let cells: Vec<String> = trimmed
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect();
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
            {
                continue; // the |---|---| separator
            }
            match &table_header {
                None => table_header = Some(cells),
                Some(header) => {
                    let row: Vec<String> = cells
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| !c.is_empty())
                        .map(|(i, c)| match header.get(i) {
                            Some(h) if i > 0 && !h.is_empty() => format!("{h}: {c}"),
                            _ => c.clone(),
                        })
                        .collect();
                    out.push(format!("{}.", row.join("; ")));
                }
            }
            continue;
        }
        table_header = None;
        let line = trimmed.trim_start_matches(['-', '*', '+', '>']).trim();
        let line = strip_ordinal(line);
        if line.is_empty() {
            continue;
        }
        let mut start = 0;
        let bytes: Vec<(usize, char)> = line.char_indices().collect();
        for (i, &(pos, c)) in bytes.iter().enumerate() {
            let next_is_space = bytes.get(i + 1).is_some_and(|&(_, n)| n == ' ');
            if matches!(c, '.' | '?' | '!') && next_is_space {
                let sentence = line[start..=pos].trim();
                if !sentence.is_empty() {
                    out.push(sentence.to_owned());
                }
                start = pos + 1;
            }
        }
        let rest = line[start..].trim();
        if !rest.is_empty() {
            out.push(rest.to_owned());
        }
    }
    out
}

/// Drops a leading `1.` / `12)` list number.
fn strip_ordinal(line: &str) -> &str {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 {
        let rest = &line[digits..];
        if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return r.trim();
        }
    }
    line
}

/// Markdown emphasis removed so the answer reads as plain text.
fn plain(sentence: &str) -> String {
    sentence
        .replace("**", "")
        .replace('`', "")
        .replace('|', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sentence of the context that may become part of the answer.
struct Candidate {
    /// Rank of its passage in the retrieval.
    rank: usize,
    /// Position within the passage.
    position: usize,
    text: String,
    terms: HashSet<String>,
}

fn candidates(prompt: &Prompt) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (rank, block) in prompt.context.iter().enumerate() {
        for (position, sentence) in sentences(&block.text).into_iter().enumerate() {
            let text = plain(&sentence);
            let terms = terms(&text).into_iter().collect();
            out.push(Candidate {
                rank,
                position,
                text,
                terms,
            });
        }
    }
    out
}

/// The extractive answer for a prompt, ranking sentences by shared words only; the refusal when
/// there is no context.
pub fn compose_answer(prompt: &Prompt) -> String {
    compose(prompt, candidates(prompt), None)
}

/// Picks the best sentences. `semantic[i]`, when given, is candidate `i`'s cosine similarity to
/// the question.
fn compose(prompt: &Prompt, candidates: Vec<Candidate>, semantic: Option<&[f32]>) -> String {
    if candidates.is_empty() {
        return REFUSAL.to_owned();
    }
    let question: HashSet<String> = terms(&prompt.question).into_iter().collect();
    // Inverse sentence frequency: a question word found in few sentences ("combine",
    // "PO box") says more about which sentence answers than one found everywhere ("order").
    let total = candidates.len() as f32;
    let weights: HashMap<&String, f32> = question
        .iter()
        .map(|t| {
            let df = candidates.iter().filter(|c| c.terms.contains(t)).count() as f32;
            (
                t,
                if df == 0.0 {
                    0.0
                } else {
                    (1.0 + total / df).ln()
                },
            )
        })
        .collect();
    let headings: Vec<HashSet<String>> = prompt
        .context
        .iter()
        .map(|b| terms(&b.heading).into_iter().collect())
        .collect();
    let mut scored: Vec<(f32, &Candidate)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let overlap: f32 = weights
                .iter()
                .filter(|(t, _)| c.terms.contains(**t))
                .map(|(_, w)| w)
                .sum();
            let heading_overlap: f32 = weights
                .iter()
                .filter(|(t, _)| headings[c.rank].contains(**t))
                .map(|(_, w)| w)
                .sum();
            // Long sentences match more words by chance; a gentle length penalty evens that
            // out.
            let length = (c.terms.len() as f32 + 4.0).sqrt();
            let meaning = semantic.and_then(|s| s.get(i)).copied().unwrap_or(0.0);
            // Retrieval rank breaks near-ties: the passage ranked first is the likelier source.
            let score = overlap / length * 2.0
                + heading_overlap * 0.1
                + 0.2 / (c.rank as f32 + 1.0)
                + meaning * SEMANTIC_WEIGHT;
            (score, c)
        })
        .collect();
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.rank.cmp(&b.1.rank))
            .then(a.1.position.cmp(&b.1.position))
    });
    let best = scored[0].0;
    let mut chosen: Vec<&Candidate> = scored
        .iter()
        .take(MAX_SENTENCES)
        .filter(|s| s.0 >= best * FOLLOW_SHARE)
        .map(|s| s.1)
        .collect();
    chosen.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.position.cmp(&b.position)));
    chosen
        .iter()
        .map(|c| c.text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{ContextBlock, SYSTEM_INSTRUCTION};

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
        assert!(
            p.context[0]
                .text
                .contains(answer.split(". ").next().unwrap_or_default())
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
        assert_eq!(text, "Our warehouse is in Leeds.");
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
