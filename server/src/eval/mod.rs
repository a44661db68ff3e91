//! Quality evaluation on a question set (`chat-server eval`, `make eval`): it drives the whole
//! answer pipeline ([`crate::grounding`] over [`crate::rag`] and [`crate::llm`]) and scores
//! retrieval (hit@1, hit@3, MRR), answers (share that contain the expected fact) and refusals
//! (share of out-of-knowledge questions refused).
//!
//! Layout:
//! - here: the question sets and the runner that scores a pipeline on them.
//! - `report`: what a run found, per set and as the mean over the sets.
//! - `calibrate`: the relevance decision the sets would choose, and each value's margin.

pub mod calibrate;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use deadpool_postgres::Pool;
use serde::Deserialize;

use crate::config::Config;
use crate::grounding::{AnswerRequest, Answerer, collect_text};
use crate::llm::REFUSAL;
use report::{EvalReport, Summary};

/// A question set file (`eval/questions.json`, `eval/python-faq/questions.json`).
#[derive(Debug, Deserialize)]
pub struct QuestionSet {
    /// Knowledge-base folder the questions are about (relative to the working directory);
    /// `KNOWLEDGE_BASE_DIR` when absent.
    #[serde(default)]
    pub knowledge_base: Option<PathBuf>,
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

/// One question's best passage similarity and lexical support (no threshold applied).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub question: String,
    pub answerable: bool,
    pub similarity: f32,
    pub support: f32,
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

/// Loads the knowledge base and answer model as configured and scores them on `questions`
/// (on the set's own knowledge base when it names one).
pub async fn run(config: &Config, db: Pool, questions: &Path) -> anyhow::Result<EvalReport> {
    let set: QuestionSet = serde_json::from_str(
        &std::fs::read_to_string(questions)
            .with_context(|| format!("reading {}", questions.display()))?,
    )
    .with_context(|| format!("parsing {}", questions.display()))?;
    let mut config = config.clone();
    if let Some(kb) = &set.knowledge_base {
        config.knowledge_base_dir = kb.clone();
    }
    let answerer = Answerer::start(&config, db).await?;
    let llm = answerer.model_name();
    evaluate(&answerer, &set, llm).await
}

/// Scores every question set in turn (`make eval`).
pub async fn run_all(config: &Config, db: Pool, sets: &[PathBuf]) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for path in sets {
        let report = run(config, db.clone(), path).await?;
        summary.sets.push((path.clone(), report));
    }
    Ok(summary)
}

/// The best passage similarity and the lexical support of a question, no threshold applied.
async fn measure(answerer: &Answerer, question: &str, answerable: bool) -> anyhow::Result<Point> {
    let assessed = answerer.rag().assess(question, 20, f32::MIN).await?;
    Ok(Point {
        question: question.to_owned(),
        answerable,
        similarity: assessed.best_similarity,
        support: assessed.support,
    })
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
        relevance: Some(answerer.rag().relevance()),
        lowest_answerable_similarity: f32::MAX,
        highest_unanswerable_similarity: f32::MIN,
        ..EvalReport::default()
    };
    let (mut hit1, mut hit3, mut rr, mut facts, mut false_refusals) =
        (0usize, 0usize, 0f64, 0usize, 0usize);
    let mut timings: Vec<f64> = Vec::new();
    for q in &set.answerable {
        let request = AnswerRequest {
            question: q.question.clone(),
            history: vec![],
        };
        let started = Instant::now();
        let passages = answerer.retrieve(&request).await?;
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
        let point = measure(answerer, &q.question, true).await?;
        let best = point.similarity;
        report.points.push(point);
        report.lowest_answerable_similarity = report.lowest_answerable_similarity.min(best);
        report.answerable_similarities.push(best);
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
        let point = measure(answerer, &q.question, false).await?;
        let best = point.similarity;
        report.points.push(point);
        report.highest_unanswerable_similarity = report.highest_unanswerable_similarity.max(best);
        report.unanswerable_similarities.push(best);
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
    report.answerable_similarities.sort_by(f32::total_cmp);
    report
        .unanswerable_similarities
        .sort_by(|a, b| b.total_cmp(a));
    timings.sort_by(f64::total_cmp);
    report.retrieval_p50_ms = timings.get(timings.len() / 2).copied().unwrap_or(0.0);
    let n = set.answerable.len().max(1) as f64;
    report.hit_at_1 = hit1 as f64 / n;
    report.hit_at_3 = hit3 as f64 / n;
    report.mrr = rr / n;
    report.fact_share = facts as f64 / n;
    report.false_refusal_share = false_refusals as f64 / n;
    report.refusal_share = refused as f64 / set.unanswerable.len().max(1) as f64;
    Ok(report)
}
