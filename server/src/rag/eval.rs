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
use crate::rag::support::Relevance;

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
    /// What the relevance decision is taken on, per question (calibration).
    pub points: Vec<Point>,
    pub threshold: f32,
    /// The relevance decision the pipeline ran with.
    pub relevance: Option<Relevance>,
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
        self.fmt_calibration(f)?;
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

impl Summary {
    /// The relevance decision run, the one the sets would choose, and the leave-one-set-out
    /// check (chosen on the other sets, tested on the one left out).
    fn fmt_calibration(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(r) = self.sets.first().and_then(|(_, r)| r.relevance) else {
            return Ok(());
        };
        writeln!(
            f,
            "relevance decision run: answer when the best match ≥ {:.3} and (≥ {:.3} or lexical support ≥ {:.2})",
            r.min_similarity, r.confident_similarity, r.min_support
        )?;
        // Where each question sits relative to the decision, weakest first.
        let mut band: Vec<&Point> = self
            .sets
            .iter()
            .flat_map(|(_, rep)| &rep.points)
            .filter(|p| p.similarity >= r.min_similarity && p.similarity < r.confident_similarity)
            .collect();
        band.sort_by(|a, b| a.support.total_cmp(&b.support));
        let answerable_low = band.iter().find(|p| p.answerable);
        let unanswerable_high = band.iter().rev().find(|p| !p.answerable);
        writeln!(
            f,
            "  between the floor and the confident similarity: {} answerable (lowest support {}), {} unanswerable (highest support {})",
            band.iter().filter(|p| p.answerable).count(),
            answerable_low.map_or("—".into(), |p| format!(
                "{:.3}, {:?}",
                p.support, p.question
            )),
            band.iter().filter(|p| !p.answerable).count(),
            unanswerable_high.map_or("—".into(), |p| format!(
                "{:.3}, {:?}",
                p.support, p.question
            )),
        )?;
        let strongest_unanswerable = self
            .sets
            .iter()
            .flat_map(|(_, rep)| &rep.points)
            .filter(|p| !p.answerable)
            .map(|p| p.similarity)
            .fold(f32::MIN, f32::max);
        writeln!(
            f,
            "  strongest unanswerable best match {strongest_unanswerable:.3} (confident similarity {:.3}, margin {:+.3})",
            r.confident_similarity,
            r.confident_similarity - strongest_unanswerable
        )?;
        let all: Vec<&[Point]> = self.sets.iter().map(|(_, r)| r.points.as_slice()).collect();
        writeln!(f, "calibrated on all {} sets:", all.len())?;
        writeln!(f, "{}", calibrate(&all))?;
        if self.sets.len() > 1 {
            for (i, (path, report)) in self.sets.iter().enumerate() {
                let others: Vec<&[Point]> = self
                    .sets
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, r))| r.points.as_slice())
                    .collect();
                let c = calibrate(&others);
                let (refused, wrongly) = outcome(&report.points, &c.relevance);
                writeln!(
                    f,
                    "leave-one-set-out: chosen without {} (floor {:.3}, confident {:.3}, support {:.2}), on it: unanswerable refused {refused:.3}, answerable wrongly refused {wrongly:.3}",
                    path.display(),
                    c.relevance.min_similarity,
                    c.relevance.confident_similarity,
                    c.relevance.min_support
                )?;
            }
        }
        Ok(())
    }
}

/// Most answerable questions (share, mean over the sets) a calibration may refuse.
const MAX_FALSE_REFUSALS: f64 = 0.02;

/// Refused share of the unanswerable and wrongly refused share of the answerable `points`
/// under `relevance`.
pub fn outcome(points: &[Point], relevance: &Relevance) -> (f64, f64) {
    let (mut refused, mut unanswerable, mut wrongly, mut answerable) = (0, 0, 0, 0);
    for p in points {
        let accepted = relevance.accepts(p.similarity, p.support);
        if p.answerable {
            answerable += 1;
            wrongly += usize::from(!accepted);
        } else {
            unanswerable += 1;
            refused += usize::from(!accepted);
        }
    }
    (
        refused as f64 / unanswerable.max(1) as f64,
        wrongly as f64 / answerable.max(1) as f64,
    )
}

/// A relevance decision chosen from question sets, and how much room each of its values has.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pub relevance: Relevance,
    /// Mean over the sets it was chosen on.
    pub refused: f64,
    pub wrongly_refused: f64,
    /// Per value, the range it can move in (the others fixed) without changing any decision
    /// on those sets; the value is the middle of it.
    pub min_similarity_range: (f32, f32),
    pub confident_similarity_range: (f32, f32),
    pub min_support_range: (f32, f32),
}

/// Mean outcome over the sets; ordered so that greater is better: within the false-refusal
/// limit first, then most unanswerable refused, then fewest answerable refused.
type Score = (bool, i64, i64);

fn score(sets: &[&[Point]], r: &Relevance) -> Score {
    let n = sets.len().max(1) as f64;
    let (mut refused, mut wrongly) = (0.0, 0.0);
    for points in sets {
        let (a, b) = outcome(points, r);
        refused += a / n;
        wrongly += b / n;
    }
    // Rounded so that equal outcomes compare equal.
    (
        wrongly <= MAX_FALSE_REFUSALS + 1e-9,
        (refused * 1e6).round() as i64,
        -(wrongly * 1e6).round() as i64,
    )
}

/// The range `value` can move in without crossing any of `stops` (open below, closed above,
/// as the decision is `>=`), clamped to `lo..=hi`.
fn free_range(value: f32, stops: impl Iterator<Item = f32>, lo: f32, hi: f32) -> (f32, f32) {
    let (mut below, mut above) = (lo, hi);
    for c in stops {
        if c < value {
            below = below.max(c);
        } else {
            above = above.min(c);
        }
    }
    (below, above)
}

/// How far each value of `r` can move, the others fixed, without changing a decision on
/// `points`: (floor, confident similarity, support) ranges. For the support, any question
/// between the floor and the confident similarity counts, so that its range is the gap between
/// the questions the lexical check refuses and those it lets through.
fn ranges(points: &[&Point], r: &Relevance) -> [(f32, f32); 3] {
    let otherwise_accepted =
        |p: &Point| p.similarity >= r.confident_similarity || p.support >= r.min_support;
    let floor = free_range(
        r.min_similarity,
        points
            .iter()
            .filter(|p| otherwise_accepted(p))
            .map(|p| p.similarity),
        0.0,
        r.confident_similarity,
    );
    let confident = free_range(
        r.confident_similarity,
        points
            .iter()
            .filter(|p| p.similarity >= r.min_similarity && p.support < r.min_support)
            .map(|p| p.similarity),
        r.min_similarity,
        1.0,
    );
    let support = free_range(
        r.min_support,
        points
            .iter()
            .filter(|p| p.similarity >= r.min_similarity && p.similarity < r.confident_similarity)
            .map(|p| p.support),
        0.0,
        1.0,
    );
    [floor, confident, support]
}

/// Chooses the similarity floor, the confident similarity and the lexical-support share that
/// refuse the most unanswerable questions of `sets` (mean over the sets) while wrongly refusing
/// at most 2 % of the answerable ones. Among the choices that do equally well, it takes the one
/// with the widest margin for the support (the signal in question), then for the floor, then
/// for the confident similarity, and puts each value in the middle of its range.
pub fn calibrate(sets: &[&[Point]]) -> Calibration {
    const STEP: f32 = 0.005;
    let grid = |from: f32, to: f32, step: f32| {
        let n = ((to - from) / step).round() as usize;
        (0..=n).map(move |i| from + i as f32 * step)
    };
    let all: Vec<&Point> = sets.iter().flat_map(|p| p.iter()).collect();
    let width = |(lo, hi): (f32, f32)| ((hi - lo) * 1000.0).round() as i64;
    // (outcome, margins: support, floor, confident similarity; the choice)
    let mut best: Option<(Score, [i64; 3], Relevance)> = None;
    for t1 in grid(0.0, 1.0, STEP) {
        for t2 in grid(t1, 1.0, STEP) {
            for s in grid(0.0, 1.0, 0.01) {
                let r = Relevance {
                    min_similarity: t1,
                    confident_similarity: t2,
                    min_support: s,
                };
                let sc = score(sets, &r);
                if best.as_ref().is_some_and(|(b, _, _)| sc < *b) {
                    continue;
                }
                let [a, b, c] = ranges(&all, &r);
                let margins = [width(c), width(a), width(b)];
                let better = match &best {
                    None => true,
                    Some((b, m, _)) => sc > *b || margins > *m,
                };
                if better {
                    best = Some((sc, margins, r));
                }
            }
        }
    }
    let chosen = best.map_or(
        Relevance {
            min_similarity: 0.0,
            confident_similarity: 0.0,
            min_support: 0.0,
        },
        |(_, _, r)| r,
    );
    // Centre one value at a time, the support first: each range is taken with the values
    // already centred, so that together they still make the same decisions.
    let mid = |(lo, hi): (f32, f32)| (lo + hi) / 2.0;
    let mut centred = chosen;
    let support = ranges(&all, &centred)[2];
    centred.min_support = mid(support);
    let floor = ranges(&all, &centred)[0];
    centred.min_similarity = mid(floor);
    let confident = ranges(&all, &centred)[1];
    centred.confident_similarity = mid(confident);
    // Centring changes no decision; should rounding ever do so, keep the grid values.
    let relevance = if score(sets, &centred) == score(sets, &chosen) {
        centred
    } else {
        chosen
    };
    let n = sets.len().max(1) as f64;
    let (refused, wrongly_refused) = sets.iter().fold((0.0, 0.0), |(a, b), points| {
        let (x, y) = outcome(points, &relevance);
        (a + x / n, b + y / n)
    });
    Calibration {
        relevance,
        refused,
        wrongly_refused,
        min_similarity_range: floor,
        confident_similarity_range: confident,
        min_support_range: support,
    }
}

impl fmt::Display for Calibration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.relevance;
        let show = |name: &str, v: f32, (lo, hi): (f32, f32)| {
            format!(
                "{name} {v:.3} (same decisions from {lo:.3} to {hi:.3}, margin ±{:.3})",
                (hi - lo) / 2.0
            )
        };
        writeln!(
            f,
            "  {}",
            show(
                "similarity floor",
                r.min_similarity,
                self.min_similarity_range
            )
        )?;
        writeln!(
            f,
            "  {}",
            show(
                "confident similarity",
                r.confident_similarity,
                self.confident_similarity_range
            )
        )?;
        writeln!(
            f,
            "  {}",
            show("lexical support", r.min_support, self.min_support_range)
        )?;
        write!(
            f,
            "  → unanswerable refused {:.3}, answerable wrongly refused {:.3}",
            self.refused, self.wrongly_refused
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn point(answerable: bool, similarity: f32, support: f32) -> Point {
        Point {
            question: String::new(),
            answerable,
            similarity,
            support,
        }
    }

    #[test]
    fn calibration_separates_what_one_similarity_threshold_cannot() {
        // An unanswerable question (0.42) sits above two answerable ones (0.38, 0.40): only
        // its lack of lexical support tells it apart.
        let a = [
            point(true, 0.38, 0.9),
            point(true, 0.40, 0.8),
            point(true, 0.60, 0.1),
            point(false, 0.20, 0.9),
        ];
        let b = [
            point(true, 0.55, 0.5),
            point(false, 0.42, 0.2),
            point(false, 0.10, 0.0),
        ];
        let c = calibrate(&[&a, &b]);
        assert_eq!(c.refused, 1.0, "{c}");
        assert_eq!(c.wrongly_refused, 0.0, "{c}");
        let r = c.relevance;
        assert!(r.min_similarity > 0.20 && r.min_similarity <= 0.38, "{c}");
        assert!(
            r.confident_similarity > 0.42 && r.confident_similarity <= 0.55,
            "{c}"
        );
        assert!(r.min_support > 0.2 && r.min_support <= 0.8, "{c}");
        // Each value sits in the middle of its range.
        let (lo, hi) = c.min_support_range;
        assert!((r.min_support - (lo + hi) / 2.0).abs() < 1e-4, "{c}");
        // A similarity threshold alone refuses the 0.42 question only by refusing 0.38 and 0.40
        // (two of set a's three answerable questions).
        let cosine_only = Relevance {
            min_similarity: 0.43,
            confident_similarity: 0.43,
            min_support: 0.0,
        };
        assert!((outcome(&a, &cosine_only).1 - 2.0 / 3.0).abs() < 1e-9);
        // The margins are printed.
        assert!(c.to_string().contains("margin ±"), "{c}");
    }
}
