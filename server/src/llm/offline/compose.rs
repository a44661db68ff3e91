//! Composing the extractive answer: every sentence of the context scored against the question
//! (shared words weighted by rarity, retrieval rank, position, and meaning when known), the best
//! few kept in source order with what they need to be read, and the documents cited.

use std::collections::{HashMap, HashSet};

use super::sentences::{pieces, plain, terms};
use crate::llm::{Prompt, REFUSAL};

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

/// A sentence of the context that may become part of the answer.
pub(super) struct Candidate {
    /// Rank of its passage in the retrieval.
    rank: usize,
    /// Position within the passage.
    position: usize,
    /// Paragraph within the passage.
    block: usize,
    pub(super) code: bool,
    pub(super) text: String,
    terms: HashSet<String>,
}

pub(super) fn candidates(prompt: &Prompt) -> Vec<Candidate> {
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
pub(super) fn compose(
    prompt: &Prompt,
    candidates: Vec<Candidate>,
    semantic: Option<&[f32]>,
) -> String {
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
