//! What an evaluation found: one question set's report, and the summary over several sets
//! (with the calibration the sets would choose).

use std::fmt;
use std::path::PathBuf;

use super::Point;
use super::calibrate::{calibrate, outcome};
use crate::rag::support::Relevance;

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
