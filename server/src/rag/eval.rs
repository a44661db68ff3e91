//! Quality evaluation on a question set: retrieval (hit@1, hit@3, MRR), answers (share that
//! contain the expected fact) and refusals (share of out-of-knowledge questions refused).

use std::fmt;
use std::path::Path;

use anyhow::Context;
use deadpool_postgres::Pool;
use serde::Deserialize;

use crate::answer::{AnswerRequest, Answerer, collect_text};
use crate::config::Config;
use crate::llm::REFUSAL;

/// The question set file (`eval/questions.json`).
#[derive(Debug, Deserialize)]
pub struct QuestionSet {
    pub answerable: Vec<AnswerableQuestion>,
    pub unanswerable: Vec<UnanswerableQuestion>,
}

#[derive(Debug, Deserialize)]
pub struct AnswerableQuestion {
    pub question: String,
    /// Document (relative path) that answers it.
    pub document: String,
    /// Text the answer must contain (case-insensitive).
    pub fact: String,
}

#[derive(Debug, Deserialize)]
pub struct UnanswerableQuestion {
    pub question: String,
}

#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    pub answerable: usize,
    pub unanswerable: usize,
    pub hit_at_1: f64,
    pub hit_at_3: f64,
    pub mrr: f64,
    /// Share of answerable questions whose answer contains the expected fact.
    pub fact_share: f64,
    /// Share of answerable questions wrongly refused.
    pub false_refusal_share: f64,
    /// Share of unanswerable questions refused.
    pub refusal_share: f64,
    /// Best passage similarity per question, ignoring the threshold: the lowest among
    /// answerable and the highest among unanswerable questions show the threshold's margin.
    pub lowest_answerable_similarity: f32,
    pub highest_unanswerable_similarity: f32,
    pub threshold: f32,
    pub llm: String,
    pub embedding: String,
    /// One line per miss, for tuning.
    pub misses: Vec<String>,
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "embedding {} · answers {}", self.embedding, self.llm)?;
        writeln!(f, "answerable questions:   {}", self.answerable)?;
        writeln!(f, "  hit@1                 {:.3}", self.hit_at_1)?;
        writeln!(f, "  hit@3                 {:.3}", self.hit_at_3)?;
        writeln!(f, "  MRR                   {:.3}", self.mrr)?;
        writeln!(f, "  answer has the fact   {:.3}", self.fact_share)?;
        writeln!(f, "  wrongly refused       {:.3}", self.false_refusal_share)?;
        writeln!(f, "unanswerable questions: {}", self.unanswerable)?;
        writeln!(f, "  refused               {:.3}", self.refusal_share)?;
        writeln!(
            f,
            "relevance threshold {:.2}: weakest answerable best match {:.2}, strongest unanswerable {:.2}",
            self.threshold, self.lowest_answerable_similarity, self.highest_unanswerable_similarity
        )?;
        if !self.misses.is_empty() {
            writeln!(f, "misses:")?;
            for m in &self.misses {
                writeln!(f, "  - {m}")?;
            }
        }
        Ok(())
    }
}

fn normalized(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn is_refusal(answer: &str) -> bool {
    answer.trim() == REFUSAL || answer.contains(REFUSAL)
}

/// Loads the knowledge base and answer model as configured and scores them on `questions`.
pub async fn run(config: &Config, db: Pool, questions: &Path) -> anyhow::Result<EvalReport> {
    let set: QuestionSet = serde_json::from_str(
        &std::fs::read_to_string(questions)
            .with_context(|| format!("reading {}", questions.display()))?,
    )
    .with_context(|| format!("parsing {}", questions.display()))?;
    let answerer = Answerer::start(config, db).await?;
    let llm = answerer.model_name();
    evaluate(&answerer, &set, llm).await
}

async fn best_similarity(answerer: &Answerer, question: &str) -> anyhow::Result<f32> {
    let all = answerer
        .rag()
        .retrieve_above(question, 20, f32::MIN)
        .await?;
    Ok(all.iter().map(|p| p.score).fold(f32::MIN, f32::max))
}

/// Scores an assembled pipeline on a question set.
pub async fn evaluate(
    answerer: &Answerer,
    set: &QuestionSet,
    llm: String,
) -> anyhow::Result<EvalReport> {
    let info = answerer.rag().info();
    let mut report = EvalReport {
        answerable: set.answerable.len(),
        unanswerable: set.unanswerable.len(),
        llm,
        embedding: format!(
            "{}:{} ({}-d)",
            info.embedding_provider, info.embedding_model, info.dimension
        ),
        threshold: answerer.rag().relevance_threshold(),
        lowest_answerable_similarity: f32::MAX,
        highest_unanswerable_similarity: f32::MIN,
        ..EvalReport::default()
    };
    let (mut hit1, mut hit3, mut rr, mut facts, mut false_refusals) =
        (0usize, 0usize, 0f64, 0usize, 0usize);
    for q in &set.answerable {
        let request = AnswerRequest {
            question: q.question.clone(),
            history: vec![],
        };
        let passages = answerer.retrieve(&request).await?;
        let best = best_similarity(answerer, &q.question).await?;
        report.lowest_answerable_similarity = report.lowest_answerable_similarity.min(best);
        let rank = passages.iter().position(|p| p.document == q.document);
        if let Some(r) = rank {
            hit1 += usize::from(r == 0);
            hit3 += usize::from(r < 3);
            rr += 1.0 / (r as f64 + 1.0);
        }
        let prepared = answerer.prepare(request).await?;
        let (answer, _) = collect_text(prepared.stream).await?;
        let has_fact = normalized(&answer).contains(&normalized(&q.fact));
        facts += usize::from(has_fact);
        false_refusals += usize::from(is_refusal(&answer));
        if rank.is_none_or(|r| r >= 3) || !has_fact {
            let top: Vec<String> = passages
                .iter()
                .map(|p| format!("{}#{} {:.2}", p.document, p.chunk, p.score))
                .collect();
            report.misses.push(format!(
                "{:?} → expected {} / {:?}; got [{}]; answer {:?}",
                q.question,
                q.document,
                q.fact,
                top.join(", "),
                answer.chars().take(160).collect::<String>()
            ));
        }
    }
    let mut refused = 0usize;
    for q in &set.unanswerable {
        let best = best_similarity(answerer, &q.question).await?;
        report.highest_unanswerable_similarity = report.highest_unanswerable_similarity.max(best);
        let request = AnswerRequest {
            question: q.question.clone(),
            history: vec![],
        };
        let prepared = answerer.prepare(request).await?;
        let sources: Vec<String> = prepared
            .sources
            .iter()
            .map(|s| format!("{}#{} {:.2}", s.document, s.chunk, s.score))
            .collect();
        let (answer, _) = collect_text(prepared.stream).await?;
        if is_refusal(&answer) {
            refused += 1;
        } else {
            report.misses.push(format!(
                "{:?} should be refused; got [{}]",
                q.question,
                sources.join(", ")
            ));
        }
    }
    let n = set.answerable.len().max(1) as f64;
    report.hit_at_1 = hit1 as f64 / n;
    report.hit_at_3 = hit3 as f64 / n;
    report.mrr = rr / n;
    report.fact_share = facts as f64 / n;
    report.false_refusal_share = false_refusals as f64 / n;
    report.refusal_share = refused as f64 / set.unanswerable.len().max(1) as f64;
    Ok(report)
}
