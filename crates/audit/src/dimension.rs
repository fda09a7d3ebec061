//! Assembling one dimension: checks per artifact, artifact scores, suggestions.
//!
//! Every dimension scores each artifact (or upstream input) from its rounded
//! check scores and takes the plain mean over artifacts, so an operator can
//! recompute any number in a report from the numbers printed above it. A
//! check with nothing to judge is recorded as n/a and left out; a dimension
//! where no artifact was scored is n/a itself, never a free 10.

use crate::score::{mean, round_score, weighted_mean};
use crate::suggestions::suggestion;
use crate::{Check, Dimension, Priority, Suggestion};

/// A recorded check's rounded score and where it sits, so the artifact score
/// built from it can note the check's weight.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub score: f64,
    index: usize,
}

/// Collects checks, scores and suggestions for one dimension.
pub struct DimensionBuilder {
    name: &'static str,
    checks: Vec<Check>,
    unit_scores: Vec<f64>,
    suggestions: Vec<Suggestion>,
}

impl DimensionBuilder {
    pub fn new(name: &'static str) -> DimensionBuilder {
        DimensionBuilder {
            name,
            checks: Vec::new(),
            unit_scores: Vec::new(),
            suggestions: Vec::new(),
        }
    }

    /// Records check `check:subject` and returns its rounded score.
    pub fn check(&mut self, check: &str, subject: &str, score: f64, detail: String) -> Scored {
        let score = round_score(score);
        self.checks.push(Check {
            name: format!("{check}:{subject}"),
            score: Some(score),
            weight: 0.0,
            detail,
        });
        Scored {
            score,
            index: self.checks.len() - 1,
        }
    }

    /// Records check `check:subject` as not applicable: it had nothing to judge.
    pub fn not_applicable(&mut self, check: &str, subject: &str, detail: String) {
        self.checks.push(Check {
            name: format!("{check}:{subject}"),
            score: None,
            weight: 0.0,
            detail,
        });
    }

    /// Records the score of one artifact (or upstream input) from
    /// `(check, weight)` pairs; each check keeps its share of the weight.
    pub fn unit(&mut self, weighted_checks: &[(Scored, f64)]) -> f64 {
        let total: f64 = weighted_checks.iter().map(|(_, weight)| weight).sum();
        for (scored, weight) in weighted_checks {
            if let Some(check) = self.checks.get_mut(scored.index) {
                check.weight = if total > 0.0 { weight / total } else { 0.0 };
            }
        }
        let parts: Vec<(f64, f64)> = weighted_checks
            .iter()
            .map(|(scored, weight)| (scored.score, *weight))
            .collect();
        let score = weighted_mean(&parts).unwrap_or(0.0);
        self.unit_scores.push(score);
        score
    }

    /// Records the score of one artifact as one check's score.
    pub fn unit_of(&mut self, scored: Scored) {
        self.unit(&[(scored, 1.0)]);
    }

    pub fn suggest(&mut self, priority: Priority, artifact: &str, location: &str, what: &str) {
        self.suggestions
            .push(suggestion(priority, self.name, artifact, location, what));
    }

    /// The dimension: the mean of the artifact scores, or n/a when none was scored.
    pub fn finish(self) -> (Dimension, Vec<Suggestion>) {
        let score = mean(&self.unit_scores).map(round_score);
        (
            Dimension {
                score,
                checks: self.checks,
            },
            self.suggestions,
        )
    }
}
