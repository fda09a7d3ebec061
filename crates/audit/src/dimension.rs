//! Assembling one dimension: checks per artifact, artifact scores, suggestions.
//!
//! Every dimension scores each artifact (or upstream input) from its rounded
//! check scores and takes the plain mean over artifacts, so an operator can
//! recompute any number in a report from the numbers printed above it.

use crate::score::{mean, round_score, weighted_mean};
use crate::suggestions::suggestion;
use crate::{Check, Dimension, Priority, Suggestion};

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
    pub fn check(&mut self, check: &str, subject: &str, score: f64, detail: String) -> f64 {
        let score = round_score(score);
        self.checks.push(Check {
            name: format!("{check}:{subject}"),
            score,
            detail,
        });
        score
    }

    /// Records the score of one artifact (or upstream input) from `(check score, weight)` pairs.
    pub fn unit(&mut self, weighted_checks: &[(f64, f64)]) {
        self.unit_scores
            .push(weighted_mean(weighted_checks).unwrap_or(0.0));
    }

    /// Records the score of one artifact directly.
    pub fn unit_score(&mut self, score: f64) {
        self.unit_scores.push(score);
    }

    pub fn suggest(&mut self, priority: Priority, artifact: &str, location: &str, what: &str) {
        self.suggestions
            .push(suggestion(priority, self.name, artifact, location, what));
    }

    /// The dimension (mean of unit scores, or `score_without_units` when none
    /// were scored) and its suggestions.
    pub fn finish(self, score_without_units: f64) -> (Dimension, Vec<Suggestion>) {
        let score = round_score(mean(&self.unit_scores).unwrap_or(score_without_units));
        (
            Dimension {
                score,
                checks: self.checks,
            },
            self.suggestions,
        )
    }
}
