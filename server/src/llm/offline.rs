//! The offline answerer: picks the sentences of the retrieved context that best match the
//! question and streams them in word-sized deltas. It never writes text that is not in the
//! context, so it cannot hallucinate; with no context it refuses.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use protocol::chat::Usage;

use super::{ChatModel, ChatStream, Chunk, Prompt, REFUSAL};
use crate::upstream::ProviderError;
use crate::upstream::embedding::{EmbedKind, Embedder};

/// Sentences in an answer at most: enough for a fact and its condition, short enough to read.
const MAX_SENTENCES: usize = 3;
/// A further sentence joins the answer only if it scores at least this share of the best one.
const FOLLOW_SHARE: f32 = 0.6;

/// Weight of the question–sentence cosine similarity against the lexical score (which runs
/// from 0 to about 3). Tuned on the mean of both eval sets.
const SEMANTIC_WEIGHT: f32 = 10.0;
/// Bonus of a sentence from the first-ranked passage (halved for the second, and so on). Mean
/// fact-in-answer over both eval sets: 0.744 at 0.2, 0.788 at 2, 0.781 at 3.
const RANK_WEIGHT: f32 = 2.0;
/// Bonus of the first sentence of a passage.
const LEAD_WEIGHT: f32 = 0.3;
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

/// One piece of a passage: a sentence of prose or of a list item, a table row, or a code block.
#[derive(Debug, Clone, PartialEq)]
struct Piece {
    text: String,
    /// Code (a fenced or literal block, an interactive session): shown only after the sentence
    /// that introduces it, never picked on its own.
    code: bool,
    /// Index of the paragraph (blank-line separated block) the piece comes from.
    block: usize,
}

/// Whether an indented block is a quotation in prose rather than code or program output:
/// lines of several plain words, no assignments or calls.
fn reads_as_prose(lines: &[&str]) -> bool {
    let text = lines.join(" ");
    let words = text.split_whitespace().count();
    words >= 6 * lines.len().max(1)
        && !text.contains(" = ")
        && !text.contains("()")
        && text.trim_end().ends_with(['.', '!', '?', ')', '"'])
}

/// Whether a line of a block reads as code rather than prose.
fn code_line(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with(">>>") || t.starts_with("...") || t.starts_with("$ ") || t.starts_with("```")
}

/// Splits a passage into pieces. Lines of a paragraph wrapped in the source are joined before
/// the split into sentences (at `. `, `? `, `! `); each list item is read on its own; table rows
/// become one sentence each, their cells labelled with the header (`Cost: €4.95`), so a row
/// reads on its own; code blocks (fenced, after a `::` introduction, interactive sessions) stay
/// whole.
fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if line.trim().is_empty() && !in_fence {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    let mut literal_next = false;
    for (block, lines) in blocks.iter().enumerate() {
        let indented = lines.iter().all(|l| l.starts_with([' ', '\t']));
        let is_code = lines
            .first()
            .is_some_and(|l| l.trim_start().starts_with("```"))
            || (literal_next && indented)
            || (indented && !reads_as_prose(lines))
            || lines.iter().all(|l| code_line(l));
        literal_next =
            lines.last().is_some_and(|l| l.trim_end().ends_with("::")) || (literal_next && is_code);
        if is_code {
            let code: Vec<&str> = lines
                .iter()
                .filter(|l| !l.trim_start().starts_with("```"))
                .copied()
                .collect();
            out.push(Piece {
                text: dedent(&code),
                code: true,
                block,
            });
            continue;
        }
        let mut table_header: Option<Vec<String>> = None;
        // Prose and list items, each joined across its wrapped lines.
        let mut items: Vec<String> = Vec::new();
        let mut item = String::new();
        let flush = |item: &mut String, items: &mut Vec<String>| {
            if !item.trim().is_empty() {
                items.push(std::mem::take(item));
            }
            item.clear();
        };
        for line in lines {
            let trimmed = line.trim();
            if trimmed.starts_with('|') {
                flush(&mut item, &mut items);
                if let Some(row) = table_row(trimmed, &mut table_header) {
                    items.push(row);
                }
                continue;
            }
            table_header = None;
            let bare = trimmed.trim_start_matches(['>']).trim();
            let bullet = bare
                .strip_prefix(['-', '*', '+', '•'])
                .filter(|rest| rest.starts_with(' '));
            if let Some(rest) = bullet {
                flush(&mut item, &mut items);
                item.push_str(rest.trim());
            } else if strip_ordinal(bare) != bare {
                flush(&mut item, &mut items);
                item.push_str(strip_ordinal(bare));
            } else {
                if !item.is_empty() {
                    item.push(' ');
                }
                item.push_str(bare);
            }
        }
        flush(&mut item, &mut items);
        for item in items {
            for sentence in split_sentences(&item) {
                out.push(Piece {
                    text: sentence,
                    code: false,
                    block,
                });
            }
        }
    }
    out
}

/// A table row as one sentence; `None` for the header row and the `|---|` separator.
fn table_row(line: &str, header: &mut Option<Vec<String>>) -> Option<String> {
    let cells: Vec<String> = line
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect();
    if cells
        .iter()
        .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | ' ')))
    {
        return None; // the |---|---| separator
    }
    match header {
        None => {
            *header = Some(cells);
            None
        }
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
            Some(format!("{}.", row.join("; ")))
        }
    }
}

/// Splits prose at `.`, `?`, `!` followed by a space, keeping the punctuation.
fn split_sentences(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    // Inside a ``literal`` nothing ends a sentence (`match ... case`).
    let mut literal = false;
    for (i, &(pos, c)) in chars.iter().enumerate() {
        if line[pos..].starts_with("``") && !line[..pos].ends_with('`') {
            literal = !literal;
        }
        if literal {
            continue;
        }
        let next_is_space = chars.get(i + 1).is_some_and(|&(_, n)| n == ' ');
        // "e.g. " and "i.e. " do not end a sentence.
        let abbreviation = c == '.' && {
            let before = &line[start..pos];
            before.ends_with("e.g") || before.ends_with("i.e") || before.ends_with("etc")
        };
        if matches!(c, '.' | '?' | '!') && next_is_space && !abbreviation {
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
    out
}

/// Code lines without their common indentation.
fn dedent(lines: &[&str]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or(l.trim_start()).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
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

/// Inline markup removed so the answer reads as plain text (a reStructuredText `::` that
/// introduces code reads as `:`).
fn plain(sentence: &str) -> String {
    let text = crate::markup::plain(sentence)
        .replace('|', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match text.strip_suffix("::") {
        Some(intro) => format!("{}:", intro.trim_end()),
        None => text,
    }
}

/// A sentence of the context that may become part of the answer.
struct Candidate {
    /// Rank of its passage in the retrieval.
    rank: usize,
    /// Position within the passage.
    position: usize,
    /// Paragraph within the passage.
    block: usize,
    code: bool,
    text: String,
    terms: HashSet<String>,
}

fn candidates(prompt: &Prompt) -> Vec<Candidate> {
    let mut out = Vec::new();
    for (rank, context) in prompt.context.iter().enumerate() {
        for (position, piece) in pieces(&context.text).into_iter().enumerate() {
            let text = if piece.code {
                piece.text
            } else {
                plain(&piece.text)
            };
            let terms = if piece.code {
                HashSet::new()
            } else {
                terms(&text).into_iter().collect()
            };
            out.push(Candidate {
                rank,
                position,
                block: piece.block,
                code: piece.code,
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

/// Words that make a sentence lean on the one before it.
const LEANING: &[&str] = &[
    "it",
    "this",
    "that",
    "these",
    "those",
    "they",
    "such",
    "however",
    "otherwise",
    "then",
];

/// Characters of an introduced list or code block shown after its introduction, at most.
const MAX_ATTACHED_CHARS: usize = 400;

/// Picks the best sentences. `semantic[i]`, when given, is candidate `i`'s cosine similarity to
/// the question. The answer keeps the order of the sources, brings along what a chosen sentence
/// needs to be read (the list or code it introduces, the sentence an answer like "Yes." leads
/// into, the sentence a "This ..." refers to), and ends by citing its documents.
fn compose(prompt: &Prompt, candidates: Vec<Candidate>, semantic: Option<&[f32]>) -> String {
    if candidates.is_empty() {
        return REFUSAL.to_owned();
    }
    let prose: Vec<usize> = (0..candidates.len())
        .filter(|&i| !candidates[i].code)
        .collect();
    if prose.is_empty() {
        // Only code in the context: show the best passage's.
        return cite(prompt, &[&candidates[0]]);
    }
    let question: HashSet<String> = terms(&prompt.question).into_iter().collect();
    // Inverse sentence frequency: a question word found in few sentences ("combine",
    // "PO box") says more about which sentence answers than one found everywhere ("order").
    let total = prose.len() as f32;
    let weights: HashMap<&String, f32> = question
        .iter()
        .map(|t| {
            let df = prose
                .iter()
                .filter(|&&i| candidates[i].terms.contains(t))
                .count() as f32;
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
    let mut scored: Vec<(f32, usize)> = prose
        .iter()
        .map(|&i| {
            let c = &candidates[i];
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
            // Retrieval rank weighs in: the passage ranked first is the likelier source.
            // The first sentence of a passage often is the direct answer of an FAQ entry.
            let lead = if c.position == 0 { LEAD_WEIGHT } else { 0.0 };
            let score = overlap / length * 2.0
                + heading_overlap * 0.1
                + RANK_WEIGHT / (c.rank as f32 + 1.0)
                + lead
                + meaning * SEMANTIC_WEIGHT;
            (score, i)
        })
        .collect();
    scored.sort_by(|a, b| {
        let (ca, cb) = (&candidates[a.1], &candidates[b.1]);
        b.0.total_cmp(&a.0)
            .then(ca.rank.cmp(&cb.rank))
            .then(ca.position.cmp(&cb.position))
    });
    let best = scored[0].0;
    let mut chosen: Vec<usize> = scored
        .iter()
        .take(MAX_SENTENCES)
        .filter(|s| s.0 >= best * FOLLOW_SHARE)
        .map(|s| s.1)
        .collect();
    // Neighbours needed to read the chosen sentences.
    let mut extra: Vec<usize> = Vec::new();
    // The best sentence comes with the next one of its paragraph: an FAQ answer often states
    // the topic first ("Python comes with two testing frameworks.") and the fact right after.
    let top = chosen[0];
    if candidates.get(top + 1).is_some_and(|n| {
        n.rank == candidates[top].rank && n.block == candidates[top].block && !n.code
    }) {
        extra.push(top + 1);
    }
    for &i in &chosen {
        let c = &candidates[i];
        let next = |j: usize| candidates.get(j).filter(|n| n.rank == c.rank);
        if c.text.trim_end().ends_with(':') {
            // The list or code it introduces.
            let mut shown = 0;
            let mut j = i + 1;
            while let Some(n) = next(j) {
                // The next paragraph, or the rest of this one (list items).
                let follows = n.block == c.block + 1 || (n.block == c.block && !n.code);
                if !follows {
                    break;
                }
                shown += n.text.chars().count();
                if shown > MAX_ATTACHED_CHARS && j > i + 1 {
                    break;
                }
                extra.push(j);
                j += 1;
            }
        } else if c.terms.len() < 3 {
            // "Yes." / "Very stable.": the sentence that says more.
            if next(i + 1).is_some_and(|n| !n.code) {
                extra.push(i + 1);
            }
        }
        let first_word = c
            .text
            .split(|ch: char| !ch.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_lowercase();
        if LEANING.contains(&first_word.as_str())
            && i > 0
            && candidates[i - 1].rank == c.rank
            && candidates[i - 1].block == c.block
            && !candidates[i - 1].code
        {
            extra.push(i - 1);
        }
    }
    chosen.extend(extra);
    chosen.sort_by(|&a, &b| {
        let (ca, cb) = (&candidates[a], &candidates[b]);
        ca.rank.cmp(&cb.rank).then(ca.position.cmp(&cb.position))
    });
    chosen.dedup();
    let picked: Vec<&Candidate> = chosen.iter().map(|&i| &candidates[i]).collect();
    cite(prompt, &picked)
}

/// The picked pieces in order (code on lines of its own), then the documents they come from.
fn cite(prompt: &Prompt, picked: &[&Candidate]) -> String {
    let mut answer = String::new();
    for c in picked {
        if c.code {
            answer.push_str("\n\n");
            answer.push_str(&c.text);
            answer.push_str("\n\n");
        } else {
            if !answer.is_empty() && !answer.ends_with('\n') {
                answer.push(' ');
            }
            answer.push_str(&c.text);
        }
    }
    let mut documents: Vec<&str> = Vec::new();
    for c in picked {
        if let Some(block) = prompt.context.get(c.rank)
            && !documents.contains(&block.document.as_str())
        {
            documents.push(&block.document);
        }
    }
    let answer = answer.trim().to_owned();
    match documents.as_slice() {
        [] => answer,
        [one] => format!("{answer}\n\n(Source: {one})"),
        many => format!("{answer}\n\n(Sources: {})", many.join(", ")),
    }
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
