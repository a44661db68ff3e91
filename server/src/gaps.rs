//! Knowledge gaps: which questions the knowledge base serves badly, grouped by meaning.
//!
//! Each answer that ended normally is stored with its question's [`signals`] in
//! `question_signals` (one statement): the question's vector and the best cosine similarity
//! any passage reached with its document (the vector index's nearest chunk), both from the
//! answer's own retrieval (no second embedding or search), and whether the answer was a
//! refusal. [`report`] reads the questions of a window that were refused, rated down, or
//! answered from passages under the weak-grounding bar, and groups them by meaning with
//! centroid leader clustering at a cosine threshold ([`cluster`], pure and unit-tested): each
//! question joins the group whose centre is most similar if that similarity reaches the
//! threshold, else starts a group. Groups are ranked by size × recency.
//!
//! Vectors are only compared within one embedding model: rows of another provider, model or
//! dimension (written before a provider change) are left out of the report. The thresholds
//! default from the embedder's own relevance threshold, so every provider gets a sensible
//! scale; `GAPS_SIMILARITY` and `GAPS_WEAK_SCORE` override them.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use protocol::gaps::{Gap, GapExample, GapReason, GapsReport};

use crate::chat::store::QuestionSignals;
use crate::error::ApiError;
use crate::llm::REFUSAL;
use crate::rag::QuestionReading;
use crate::state::AppState;
use crate::upstream::embedding::dot;

/// Questions a report looks at, newest first: bounds the clustering's time and memory.
pub const MAX_QUESTIONS: i64 = 5000;
/// Examples listed per group.
const EXAMPLES: usize = 5;
/// Recency halves every week by default.
pub const DEFAULT_HALF_LIFE_HOURS: f64 = 168.0;

/// The thresholds in force for the loaded embedder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Two questions this similar (cosine) belong to one group.
    pub similarity: f32,
    /// An answered question whose best passage scored under this is weakly grounded.
    pub weak_score: f32,
}

impl Thresholds {
    /// From the configuration, else derived from the embedder's relevance threshold `t`:
    /// grouping halfway between `t` and 1 (paraphrases score well above unrelated text with
    /// every model, and the scale of "unrelated" is what `t` captures), weak under `t + 0.05`.
    pub fn for_state(state: &AppState) -> Self {
        let t = state.answerer.rag().relevance_threshold();
        Self {
            similarity: state.config.gaps_similarity.unwrap_or(t + (1.0 - t) * 0.5),
            weak_score: state.config.gaps_weak_score.unwrap_or(t + 0.05),
        }
    }
}

/// Whether an answer is the refusal the prompt asks for when the context does not hold the
/// answer (models sometimes add a sentence after it).
pub fn is_refusal(answer: &str) -> bool {
    let refusal = REFUSAL.trim_end_matches('.');
    answer
        .trim_start()
        .to_lowercase()
        .starts_with(&refusal.to_lowercase())
}

/// The signals of an answered question, stored with its answer (see
/// [`store_answer`](crate::chat::store::store_answer)): its vector and nearest chunk as its
/// retrieval found them (`reading`), so they cost no second embedding or search.
pub(crate) fn signals(
    state: &AppState,
    reading: QuestionReading,
    answer: &str,
) -> Option<QuestionSignals> {
    let embedder = state.answerer.rag().embedder();
    let dimension = i32::try_from(reading.vector.len()).ok()?;
    let embedding: Vec<u8> = reading
        .vector
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let (best_score, best_document) = reading.nearest.map_or((None, None), |(score, document)| {
        (Some(score), Some(document))
    });
    Some(QuestionSignals {
        provider: embedder.provider(),
        model: embedder.model().to_owned(),
        dimension,
        embedding,
        best_score,
        best_document,
        refused: is_refusal(answer),
    })
}

/// A question that counts as a gap, as the clustering reads it.
#[derive(Debug, Clone)]
pub struct GapQuestion {
    pub question: String,
    pub asked_at: DateTime<Utc>,
    /// L2-normalised.
    pub vector: Vec<f32>,
    pub best_score: Option<f32>,
    pub best_document: Option<String>,
    pub reasons: Vec<GapReason>,
    pub comment: Option<String>,
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = dot(&v, &v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Groups `questions` by meaning: oldest first, each joins the group whose centre (the
/// normalised mean of its members) is most similar, if at least `similarity`, else starts a
/// group. Returns the members (indexes into `questions`) of each group.
pub fn cluster(questions: &[GapQuestion], similarity: f32) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by_key(|&i| questions[i].asked_at);
    // (sum of member vectors, its normalised form, members)
    let mut groups: Vec<(Vec<f32>, Vec<f32>, Vec<usize>)> = Vec::new();
    for i in order {
        let v = &questions[i].vector;
        let best = groups
            .iter()
            .enumerate()
            .map(|(g, (_, centre, _))| (g, dot(centre, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((g, s)) if s >= similarity => {
                let (sum, centre, members) = &mut groups[g];
                sum.iter_mut().zip(v).for_each(|(a, b)| *a += b);
                *centre = normalized(sum.clone());
                members.push(i);
            }
            _ => groups.push((v.clone(), normalized(v.clone()), vec![i])),
        }
    }
    groups.into_iter().map(|(_, _, members)| members).collect()
}

/// Builds the ranked report from the gap questions (blocking: call off the async workers).
pub fn build_report(
    questions: Vec<GapQuestion>,
    thresholds: Thresholds,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    half_life_hours: f64,
    limit: usize,
) -> GapsReport {
    let groups = cluster(&questions, thresholds.similarity);
    let mut gaps: Vec<Gap> = groups
        .into_iter()
        .map(|members| gap_of(&questions, &members, now, half_life_hours))
        .collect();
    gaps.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.size.cmp(&a.size))
            .then(b.last_asked.cmp(&a.last_asked))
    });
    gaps.truncate(limit);
    GapsReport {
        since,
        questions: questions.len(),
        similarity: thresholds.similarity,
        weak_score: thresholds.weak_score,
        half_life_hours,
        gaps,
    }
}

fn gap_of(questions: &[GapQuestion], members: &[usize], now: DateTime<Utc>, half_life: f64) -> Gap {
    let dimension = questions[members[0]].vector.len();
    let mut sum = vec![0.0f32; dimension];
    for &i in members {
        sum.iter_mut()
            .zip(&questions[i].vector)
            .for_each(|(a, b)| *a += b);
    }
    let centre = normalized(sum);
    let representative = members
        .iter()
        .copied()
        .max_by(|&a, &b| {
            dot(&centre, &questions[a].vector).total_cmp(&dot(&centre, &questions[b].vector))
        })
        .map(|i| questions[i].question.clone())
        .unwrap_or_default();
    let mut newest: Vec<usize> = members.to_vec();
    newest.sort_by(|&a, &b| questions[b].asked_at.cmp(&questions[a].asked_at));
    // Repeated wordings are listed once: five different examples say more.
    let mut seen = HashSet::new();
    let examples: Vec<GapExample> = newest
        .iter()
        .filter(|&&i| seen.insert(questions[i].question.trim().to_lowercase()))
        .take(EXAMPLES)
        .map(|&i| {
            let q = &questions[i];
            GapExample {
                question: q.question.clone(),
                asked_at: q.asked_at,
                reasons: q.reasons.clone(),
                best_score: q.best_score,
                comment: q.comment.clone(),
            }
        })
        .collect();
    let best = members
        .iter()
        .filter_map(|&i| {
            let q = &questions[i];
            Some((q.best_score?, q.best_document.clone()?))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let count = |reason: GapReason| {
        members
            .iter()
            .filter(|&&i| questions[i].reasons.contains(&reason))
            .count()
    };
    let last_asked = newest
        .first()
        .map(|&i| questions[i].asked_at)
        .unwrap_or(now);
    let age_hours = (now - last_asked).num_seconds().max(0) as f64 / 3600.0;
    let recency = 0.5f64.powf(age_hours / half_life.max(0.01));
    Gap {
        size: members.len(),
        representative,
        examples,
        best_score: best.as_ref().map(|b| b.0),
        best_document: best.map(|b| b.1),
        refused: count(GapReason::Refused),
        rated_down: count(GapReason::RatedDown),
        weakly_grounded: count(GapReason::WeaklyGrounded),
        last_asked,
        score: members.len() as f64 * recency,
    }
}

/// Reads the gap questions asked since `since` (newest first, at most [`MAX_QUESTIONS`]) whose
/// vectors come from the loaded embedder, and builds the report.
pub async fn report(
    state: &AppState,
    since: DateTime<Utc>,
    half_life_hours: f64,
    limit: usize,
) -> Result<GapsReport, ApiError> {
    let thresholds = Thresholds::for_state(state);
    let embedder = state.answerer.rag().embedder();
    let dimension = i32::try_from(embedder.dimension())
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("embedding dimension out of range")))?;
    let client = state.db.get().await?;
    let stmt = client
        .prepare_cached(
            "SELECT q.content, q.created_at, s.embedding, s.best_score, s.best_document, s.refused, \
                    coalesce(bool_or(f.rating = 'down'), false), \
                    max(f.comment) FILTER (WHERE f.rating = 'down') \
             FROM question_signals s \
             JOIN messages q ON q.id = s.question_id \
             LEFT JOIN messages a ON a.reply_to = s.question_id \
             LEFT JOIN message_feedback f ON f.message_id = a.id \
             WHERE s.created_at >= $1 AND s.provider = $2 AND s.model = $3 AND s.dimension = $4 \
             GROUP BY s.question_id, q.id \
             HAVING s.refused OR coalesce(s.best_score, -1) < $5 \
                 OR coalesce(bool_or(f.rating = 'down'), false) \
             ORDER BY q.created_at DESC LIMIT $6",
        )
        .await?;
    let rows = client
        .query(
            &stmt,
            &[
                &since,
                &embedder.provider(),
                &embedder.model(),
                &dimension,
                &thresholds.weak_score,
                &MAX_QUESTIONS,
            ],
        )
        .await?;
    drop(client);
    let questions: Vec<GapQuestion> = rows
        .iter()
        .map(|row| {
            let bytes: &[u8] = row.get(2);
            let vector = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let best_score: Option<f32> = row.get(3);
            let refused: bool = row.get(5);
            let rated_down: bool = row.get(6);
            let mut reasons = Vec::new();
            if refused {
                reasons.push(GapReason::Refused);
            } else if best_score.is_none_or(|s| s < thresholds.weak_score) {
                reasons.push(GapReason::WeaklyGrounded);
            }
            if rated_down {
                reasons.push(GapReason::RatedDown);
            }
            GapQuestion {
                question: row.get(0),
                asked_at: row.get(1),
                vector: normalized(vector),
                best_score,
                best_document: row.get(4),
                reasons,
                comment: row.get(7),
            }
        })
        .collect();
    let now = Utc::now();
    tokio::task::spawn_blocking(move || {
        build_report(questions, thresholds, since, now, half_life_hours, limit)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("the gaps task failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn q(text: &str, v: &[f32], minute: u32) -> GapQuestion {
        GapQuestion {
            question: text.into(),
            asked_at: Utc.with_ymd_and_hms(2026, 11, 30, 12, minute, 0).unwrap(),
            vector: normalized(v.to_vec()),
            best_score: Some(0.2),
            best_document: Some("returns.md".into()),
            reasons: vec![GapReason::Refused],
            comment: None,
        }
    }

    #[test]
    fn close_vectors_group_and_distant_ones_stay_apart() {
        let questions = vec![
            q("a1", &[1.0, 0.1, 0.0], 0),
            q("b1", &[0.0, 1.0, 0.0], 1),
            q("a2", &[0.95, 0.15, 0.05], 2),
            q("a3", &[0.9, 0.0, 0.1], 3),
            q("c1", &[0.0, 0.0, 1.0], 4),
        ];
        let groups = cluster(&questions, 0.9);
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|&i| questions[i].question.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a1", "a2", "a3"], vec!["b1"], vec!["c1"]]);
    }

    #[test]
    fn ranking_is_size_times_recency() {
        let now = Utc.with_ymd_and_hms(2026, 11, 30, 13, 0, 0).unwrap();
        let mut old_big: Vec<GapQuestion> = (0..4)
            .map(|i| {
                let mut g = q(&format!("old{i}"), &[1.0, 0.0, 0.0], i);
                g.asked_at = now - chrono::Duration::days(21);
                g
            })
            .collect();
        let fresh_small: Vec<GapQuestion> = (0..2)
            .map(|i| q(&format!("new{i}"), &[0.0, 1.0, 0.0], 50 + i))
            .collect();
        old_big.extend(fresh_small);
        let thresholds = Thresholds {
            similarity: 0.9,
            weak_score: 0.4,
        };
        let report = build_report(old_big, thresholds, now, now, 168.0, 10);
        // 4 × 0.5^3 = 0.5 < 2 × ~1.0
        assert_eq!(report.gaps.len(), 2);
        assert_eq!(report.gaps[0].size, 2);
        assert_eq!(report.gaps[1].size, 4);
        assert!(report.gaps[0].score > report.gaps[1].score);
        assert_eq!(report.gaps[1].examples.len(), 4);
    }

    #[test]
    fn examples_are_capped_and_distinct() {
        let questions: Vec<GapQuestion> = (0..9)
            .map(|i| q(&format!("same {}", i % 7), &[1.0, 0.0], i))
            .collect();
        let report = build_report(
            questions,
            Thresholds {
                similarity: 0.5,
                weak_score: 0.4,
            },
            Utc::now(),
            Utc::now(),
            168.0,
            10,
        );
        let gap = &report.gaps[0];
        assert_eq!(gap.size, 9);
        assert_eq!(gap.examples.len(), EXAMPLES);
        let distinct: HashSet<&str> = gap.examples.iter().map(|e| e.question.as_str()).collect();
        assert_eq!(distinct.len(), EXAMPLES);
        assert_eq!(gap.examples[0].question, "same 1", "newest first");
    }

    #[test]
    fn refusals_are_recognised() {
        assert!(is_refusal("I don't have that information."));
        assert!(is_refusal("  I don't have that information about parking."));
        assert!(!is_refusal("Refunds take 5 days."));
    }
}
