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

mod caps;
mod content;
mod d1_completeness;
mod d2_specificity;
mod d3_readiness;
mod d4_auditability;
mod d5_consumption;
mod dimension;
mod document;
mod explain;
mod golden;
mod html;
mod json_shape;
mod markdown;
pub mod media;
mod model;
mod patterns;
mod score;
mod specificity;
mod suggestions;
mod term_search;
mod text;

pub use explain::{DIMENSION_NAMES, costs, explain};
pub use model::{
    Artifact, AuditInput, AuditReport, Ceiling, Check, Deltas, Dimension, Format, Priority,
    Suggestion, Upstream,
};
pub use patterns::GENERIC_PHRASES;
pub use specificity::{Specificity, TermUse, specificity, upstream_terms};

use std::collections::BTreeMap;

use document::Document;
use golden::Golden;
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
/// A composite resting on less than this share of the weights is flagged.
pub const MIN_JUDGED_WEIGHT: f64 = 0.5;

/// Audits one block execution. Pure and deterministic; never panics.
///
/// `None` when the block declares no artifacts: there is nothing to judge,
/// and a score for nothing would be a free one.
pub fn audit(input: &AuditInput<'_>) -> Option<AuditReport> {
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
        return None;
    }
    let golden: BTreeMap<&str, Golden<'_>> = input
        .golden
        .iter()
        .map(|(key, bytes)| (*key, Golden::new(bytes)))
        .collect();
    let (d1, mut suggestions) = d1_completeness::audit(&outputs, &golden);
    let (d2, more, generic_caps) = d2_specificity::audit(&outputs, input.subject);
    suggestions.extend(more);
    let (d3, more) = d3_readiness::audit(&outputs, &golden, &input.consumed_downstream);
    suggestions.extend(more);
    let (d4, more) = d4_auditability::audit(&outputs);
    suggestions.extend(more);
    let (d5, more) = d5_consumption::audit(&outputs, &upstream);
    suggestions.extend(more);

    let ceiling = ceiling(&outputs, &golden, generic_caps);
    Some(finish(input, [d1, d2, d3, d4, d5], ceiling, suggestions))
}

/// The mean over artifacts of each one's cap (10 without one), and the
/// reasons, when any artifact has a cap.
fn ceiling(
    outputs: &[Document<'_>],
    golden: &BTreeMap<&str, Golden<'_>>,
    generic_caps: Vec<caps::Cap>,
) -> Option<(f64, String)> {
    let caps: Vec<Option<caps::Cap>> = outputs
        .iter()
        .map(|document| {
            // D2 sets its caps by artifact; the rest come from the content signals.
            let from_d2 = generic_caps
                .iter()
                .filter(|cap| cap.artifact == document.path)
                .cloned();
            caps::artifact_cap(document, golden.get(document.key))
                .into_iter()
                .chain(from_d2)
                .min_by(|a, b| a.score.total_cmp(&b.score))
        })
        .collect();
    if caps.iter().all(Option::is_none) {
        return None;
    }
    let score = caps
        .iter()
        .map(|cap| cap.as_ref().map_or(10.0, |cap| cap.score))
        .sum::<f64>()
        / caps.len() as f64;
    let reasons: Vec<String> = caps
        .iter()
        .flatten()
        .map(|cap| format!("{}: {}", cap.artifact, cap.reason))
        .collect();
    Some((round_score(score), reasons.join("; ")))
}

/// Composite, ranking and the comparisons with the previous attempt and the self-score.
fn finish(
    input: &AuditInput<'_>,
    dimensions: [Dimension; 5],
    ceiling: Option<(f64, String)>,
    suggestions: Vec<Suggestion>,
) -> AuditReport {
    let [d1, d2, d3, d4, d5] = dimensions;
    let (uncapped, judged_weight) = composite([d1.score, d2.score, d3.score, d4.score, d5.score]);
    let ceiling = ceiling.map(|(score, reason)| Ceiling {
        score,
        reason,
        uncapped,
        binding: score < uncapped,
    });
    let composite = ceiling
        .as_ref()
        .map_or(uncapped, |ceiling| ceiling.score.min(uncapped));
    let self_score = input.self_score.filter(|score| score.is_finite());
    let mut report = AuditReport {
        d1,
        d2,
        d3,
        d4,
        d5,
        composite,
        judged_weight: round2(judged_weight),
        low_evidence: judged_weight < MIN_JUDGED_WEIGHT,
        ceiling,
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

/// The weighted mean of the judged dimensions' scores (weights renormalised
/// over them), rounded to one decimal, and the share of the weights judged.
fn composite(scores: [Option<f64>; 5]) -> (f64, f64) {
    let judged: Vec<(f64, f64)> = scores
        .iter()
        .zip(WEIGHTS)
        .filter_map(|(score, (_, weight))| Some(((*score)?, weight)))
        .collect();
    let judged_weight: f64 = judged.iter().map(|(_, weight)| weight).sum();
    let composite = score::weighted_mean(&judged).map_or(0.0, round_score);
    (composite, judged_weight)
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The lowest judged dimension; ties go to the earlier one.
fn weakest(report: &AuditReport) -> &'static str {
    let mut weakest: Option<(&str, f64)> = None;
    for (name, dimension) in report.dimensions() {
        if let Some(score) = dimension.score
            && weakest.is_none_or(|(_, lowest)| score < lowest)
        {
            weakest = Some((name, score));
        }
    }
    weakest.map_or("d1", |(name, _)| name)
}

fn deltas(current: &AuditReport, previous: &AuditReport) -> Deltas {
    let change = |now: Option<f64>, before: Option<f64>| Some(round1(now? - before?));
    let deltas = Deltas {
        d1: change(current.d1.score, previous.d1.score),
        d2: change(current.d2.score, previous.d2.score),
        d3: change(current.d3.score, previous.d3.score),
        d4: change(current.d4.score, previous.d4.score),
        d5: change(current.d5.score, previous.d5.score),
        composite: round1(current.composite - previous.composite),
        regression: false,
    };
    // Deltas are rounded to one decimal, so compare with a little slack for binary fractions.
    let slack = 1e-9;
    let regression = deltas.composite <= -COMPOSITE_REGRESSION + slack
        || [deltas.d1, deltas.d2, deltas.d3, deltas.d4, deltas.d5]
            .iter()
            .any(|delta| delta.is_some_and(|delta| delta <= -DIMENSION_REGRESSION + slack));
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
