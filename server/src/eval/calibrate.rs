//! Calibration of the relevance decision on question sets: the similarity floor, confident
//! similarity and lexical-support share that refuse the most unanswerable questions while
//! wrongly refusing few answerable ones, and how far each value can move.

use std::fmt;

use super::Point;
use crate::rag::support::Relevance;

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
