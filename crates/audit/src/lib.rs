//! The D1–D5 structural quality audit of a block's artifacts.
//!
//! After every block execution the engine calls [`audit`] with the artifacts
//! the block produced, the upstream artifacts it consumed, golden examples
//! and the previous attempt's report. The audit scores five dimensions:
//!
//! | | dimension | weight | question |
//! |---|---|---|---|
//! | D1 | completeness | 25% | is everything there, in the amounts a good example has? |
//! | D2 | specificity | 25% | does the text say something only this subject would say? |
//! | D3 | downstream readiness | 20% | can consuming blocks parse and use it? |
//! | D4 | human auditability | 10% | no placeholders, not cut off, reviewable structure? |
//! | D5 | second-order effects | 20% | does the output build on its upstream inputs? |
//!
//! and returns ranked, located fix suggestions, deltas against the previous
//! attempt, a calibration warning when the block's self-score disagrees, and
//! a score-inflation flag. Every check is documented in `docs/audit.md`.
//!
//! Architecture Invariant: this crate is pure. No files, clock, network or
//! async runtime; the same input always gives the same report (ordered maps,
//! fixed tie-breaks), and no input (invalid UTF-8, truncated JSON, megabytes
//! of text) makes it panic. It depends on no other workspace crate, so
//! `factory-core` and the CLI can both use it.
//!
//! Heuristics, not judgement: no model is asked anything. Dictionaries are
//! matched with one Aho-Corasick pass per text, so an audit of a 1 MB
//! artifact takes milliseconds.

mod d1_completeness;
mod d2_specificity;
mod d3_readiness;
mod d4_auditability;
mod d5_consumption;
mod dimension;
mod document;
mod html;
mod json_shape;
mod markdown;
mod model;
mod patterns;
mod score;
mod suggestions;
mod text;

pub use model::{
    Artifact, AuditInput, AuditReport, Check, Deltas, Dimension, Format, Priority, Suggestion,
    Upstream,
};
pub use patterns::GENERIC_PHRASES;

use document::Document;
use score::{round_score, round1};

/// Dimension weights in the composite. They sum to 1.
pub const WEIGHTS: [(&str, f64); 5] = [
    ("d1", 0.25),
    ("d2", 0.25),
    ("d3", 0.20),
    ("d4", 0.10),
    ("d5", 0.20),
];

/// A self-score further than this from the composite raises a calibration warning.
pub const CALIBRATION_TOLERANCE: f64 = 2.0;
/// A composite drop of at least this much against the previous attempt is a regression.
pub const COMPOSITE_REGRESSION: f64 = 0.5;
/// A drop of at least this much in any dimension is a regression.
pub const DIMENSION_REGRESSION: f64 = 1.0;

/// Audits one block execution. Pure and deterministic; never panics.
pub fn audit(input: &AuditInput<'_>) -> AuditReport {
    let outputs: Vec<Document<'_>> = input
        .artifacts
        .iter()
        .map(|artifact| {
            Document::new(
                artifact.key,
                artifact.path,
                artifact.format,
                artifact.content,
            )
        })
        .collect();
    let upstream_labels: Vec<String> = input
        .upstream
        .iter()
        .map(|upstream| format!("{}.{}", upstream.block, upstream.key))
        .collect();
    let upstream: Vec<Document<'_>> = input
        .upstream
        .iter()
        .zip(&upstream_labels)
        .map(|(upstream, label)| {
            Document::new(upstream.key, label, upstream.format, Some(upstream.content))
        })
        .collect();

    if outputs.is_empty() {
        return nothing_declared(input);
    }
    let (d1, mut suggestions) = d1_completeness::audit(&outputs, &input.golden);
    let (d2, more) = d2_specificity::audit(&outputs, input.subject);
    suggestions.extend(more);
    let (d3, more) = d3_readiness::audit(&outputs, &input.golden, &input.consumed_downstream);
    suggestions.extend(more);
    let (d4, more) = d4_auditability::audit(&outputs);
    suggestions.extend(more);
    let (d5, more) = d5_consumption::audit(&outputs, &upstream);
    suggestions.extend(more);

    finish(input, [d1, d2, d3, d4, d5], suggestions)
}

/// A block that declares no artifacts has nothing that could be incomplete,
/// vague, unreadable or disconnected: every dimension is 10, and says why.
fn nothing_declared(input: &AuditInput<'_>) -> AuditReport {
    let dimension = || Dimension {
        score: 10.0,
        checks: vec![Check {
            name: "artifacts:none".to_string(),
            score: 10.0,
            detail: "the block declares no artifacts; nothing to audit".to_string(),
        }],
    };
    finish(
        input,
        [
            dimension(),
            dimension(),
            dimension(),
            dimension(),
            dimension(),
        ],
        Vec::new(),
    )
}

/// Composite, ranking and the comparisons with the previous attempt and the self-score.
fn finish(
    input: &AuditInput<'_>,
    dimensions: [Dimension; 5],
    suggestions: Vec<Suggestion>,
) -> AuditReport {
    let [d1, d2, d3, d4, d5] = dimensions;
    let composite = composite([d1.score, d2.score, d3.score, d4.score, d5.score]);
    let self_score = input.self_score.filter(|score| score.is_finite());
    let mut report = AuditReport {
        d1,
        d2,
        d3,
        d4,
        d5,
        composite,
        badge: format!("A:{composite:.1}"),
        weakest: String::new(),
        suggestions: suggestions::rank(suggestions),
        deltas: None,
        calibration_warning: None,
        score_inflation: false,
        self_score,
    };
    report.weakest = weakest(&report).to_string();
    report.deltas = input.previous.map(|previous| deltas(&report, previous));
    report.calibration_warning = self_score.and_then(|score| calibration_warning(score, composite));
    report.score_inflation = input.previous.is_some_and(|previous| {
        matches!((self_score, previous.self_score), (Some(now), Some(before)) if now > before)
            && composite < previous.composite
    });
    report
}

/// The weighted sum of dimension scores, rounded to one decimal.
fn composite(scores: [f64; 5]) -> f64 {
    round_score(
        scores
            .iter()
            .zip(WEIGHTS)
            .map(|(score, (_, weight))| score * weight)
            .sum(),
    )
}

/// The lowest dimension; ties go to the earlier one.
fn weakest(report: &AuditReport) -> &'static str {
    let mut weakest = ("d1", report.d1.score);
    for (name, dimension) in report.dimensions() {
        if dimension.score < weakest.1 {
            weakest = (name, dimension.score);
        }
    }
    weakest.0
}

fn deltas(current: &AuditReport, previous: &AuditReport) -> Deltas {
    let change = |now: f64, before: f64| round1(now - before);
    let deltas = Deltas {
        d1: change(current.d1.score, previous.d1.score),
        d2: change(current.d2.score, previous.d2.score),
        d3: change(current.d3.score, previous.d3.score),
        d4: change(current.d4.score, previous.d4.score),
        d5: change(current.d5.score, previous.d5.score),
        composite: change(current.composite, previous.composite),
        regression: false,
    };
    // Deltas are rounded to one decimal, so compare with a little slack for binary fractions.
    let slack = 1e-9;
    let regression = deltas.composite <= -COMPOSITE_REGRESSION + slack
        || [deltas.d1, deltas.d2, deltas.d3, deltas.d4, deltas.d5]
            .iter()
            .any(|delta| *delta <= -DIMENSION_REGRESSION + slack);
    Deltas {
        regression,
        ..deltas
    }
}

fn calibration_warning(self_score: f64, composite: f64) -> Option<String> {
    let gap = (self_score - composite).abs();
    (gap > CALIBRATION_TOLERANCE).then(|| {
        let direction = if self_score > composite { "higher" } else { "lower" };
        format!(
            "self-score {self_score:.1} is {:.1} points {direction} than the audit composite {composite:.1} (tolerance {CALIBRATION_TOLERANCE:.1})",
            round1(gap)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one() {
        let total: f64 = WEIGHTS.iter().map(|(_, weight)| weight).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }

    #[test]
    fn format_from_path() {
        assert_eq!(Format::from_path("out/frameworks.JSON"), Format::Json);
        assert_eq!(Format::from_path("a.markdown"), Format::Markdown);
        assert_eq!(Format::from_path("page.htm"), Format::Html);
        assert_eq!(Format::from_path("notes"), Format::Text);
        assert_eq!(Format::from_path("dir.v2/notes"), Format::Text);
    }

    #[test]
    fn calibration_message_has_both_numbers() {
        assert_eq!(
            calibration_warning(9.0, 5.4).as_deref(),
            Some(
                "self-score 9.0 is 3.6 points higher than the audit composite 5.4 (tolerance 2.0)"
            )
        );
        assert_eq!(calibration_warning(7.0, 5.0), None);
    }
}
