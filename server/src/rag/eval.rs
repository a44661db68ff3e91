//! Quality evaluation on a question set: retrieval (hit@1, hit@3, MRR), answers (share that
//! contain the expected fact) and refusals (share of out-of-knowledge questions refused).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use deadpool_postgres::Pool;
use serde::Deserialize;

use crate::answer::{AnswerRequest, Answerer, collect_text};
use crate::config::Config;
use crate::llm::REFUSAL;

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
    /// Best passage similarity of every answerable question, ascending (for calibration).
    pub answerable_similarities: Vec<f32>,
    /// Best passage similarity of every unanswerable question, descending.
    pub unanswerable_similarities: Vec<f32>,
    pub threshold: f32,
    /// Median time to retrieve passages for a question not seen before (embedding included).
    pub retrieval_p50_ms: f64,
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
        let show = |v: &[f32]| {
            v.iter()
                .take(5)
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            f,
            "  weakest answerable best matches: {}; strongest unanswerable: {}",
            show(&self.answerable_similarities),
            show(&self.unanswerable_similarities)
        )?;
        writeln!(
            f,
            "retrieval p50 for a new question: {:.1} ms",
            self.retrieval_p50_ms
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

/// Several question sets scored one after the other, and their mean: quality decisions are
/// taken on the mean, so that no single knowledge base is tuned for.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub sets: Vec<(PathBuf, EvalReport)>,
}

impl Summary {
    fn mean(&self, metric: impl Fn(&EvalReport) -> f64) -> f64 {
        let n = self.sets.len().max(1) as f64;
        self.sets.iter().map(|(_, r)| metric(r)).sum::<f64>() / n
    }

    pub fn hit_at_1(&self) -> f64 {
        self.mean(|r| r.hit_at_1)
    }

    pub fn hit_at_3(&self) -> f64 {
        self.mean(|r| r.hit_at_3)
    }

    pub fn fact_share(&self) -> f64 {
        self.mean(|r| r.fact_share)
    }

    pub fn refusal_share(&self) -> f64 {
        self.mean(|r| r.refusal_share)
    }

    pub fn false_refusal_share(&self) -> f64 {
        self.mean(|r| r.false_refusal_share)
    }

    /// The weakest answerable and strongest unanswerable best match over all sets: a threshold
    /// between them answers and refuses every question of every set.
    pub fn margin(&self) -> (f32, f32) {
        let low = self
            .sets
            .iter()
            .map(|(_, r)| r.lowest_answerable_similarity)
            .fold(f32::MAX, f32::min);
        let high = self
            .sets
            .iter()
            .map(|(_, r)| r.highest_unanswerable_similarity)
            .fold(f32::MIN, f32::max);
        (low, high)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, report) in &self.sets {
            writeln!(f, "=== {}", path.display())?;
            writeln!(f, "{report}")?;
        }
        writeln!(f, "=== mean of {} sets", self.sets.len())?;
        writeln!(f, "  hit@1                 {:.3}", self.hit_at_1())?;
        writeln!(f, "  hit@3                 {:.3}", self.hit_at_3())?;
        writeln!(f, "  MRR                   {:.3}", self.mean(|r| r.mrr))?;
        writeln!(f, "  answer has the fact   {:.3}", self.fact_share())?;
        writeln!(
            f,
            "  wrongly refused       {:.3}",
            self.false_refusal_share()
        )?;
        writeln!(f, "  unanswerable refused  {:.3}", self.refusal_share())?;
        writeln!(
            f,
            "  retrieval p50         {:.1} ms",
            self.mean(|r| r.retrieval_p50_ms)
        )?;
        let (low, high) = self.margin();
        let threshold = self.sets.first().map_or(0.0, |(_, r)| r.threshold);
        if low > high {
            writeln!(
                f,
                "relevance threshold {threshold:.2}; over all sets the weakest answerable best match is {low:.3} and the strongest unanswerable {high:.3}: any threshold between them works (midpoint {:.3}, margin ±{:.3})",
                (low + high) / 2.0,
                (low - high) / 2.0
            )
        } else {
            writeln!(
                f,
                "relevance threshold {threshold:.2}; over all sets the weakest answerable best match ({low:.3}) is below the strongest unanswerable ({high:.3}): no threshold separates them"
            )
        }
    }
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
    let mut timings: Vec<f64> = Vec::new();
    for q in &set.answerable {
        let request = AnswerRequest {
            question: q.question.clone(),
            history: vec![],
        };
        let started = Instant::now();
        let passages = answerer.retrieve(&request).await?;
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
        let best = best_similarity(answerer, &q.question).await?;
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
        let best = best_similarity(answerer, &q.question).await?;
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
