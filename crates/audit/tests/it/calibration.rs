//! Deltas against the previous attempt, regression, calibration warnings,
//! score inflation, and determinism.

use factory_audit::{AuditReport, audit};

use crate::*;

fn with_history(
    content: &[u8],
    self_score: Option<f64>,
    previous: Option<&AuditReport>,
) -> AuditReport {
    let mut input = frameworks_input(Some(content));
    input.self_score = self_score;
    input.previous = previous;
    audit(&input)
}

#[test]
fn deltas_show_improvement_without_regression() {
    let before = frameworks_report(GENERIC);
    let after = with_history(GOOD, None, Some(&before));
    let deltas = after.deltas.clone().expect("deltas with a previous report");
    assert_eq!(
        deltas.composite,
        ((after.composite - before.composite) * 10.0).round() / 10.0
    );
    assert_eq!(
        deltas.d2,
        ((after.d2.score - before.d2.score) * 10.0).round() / 10.0
    );
    assert!(deltas.composite >= 1.5);
    assert!(!deltas.regression);
    assert!(frameworks_report(GOOD).deltas.is_none());
}

#[test]
fn a_drop_is_flagged_as_regression() {
    let before = frameworks_report(GOOD);
    let after = with_history(TRUNCATED, None, Some(&before));
    let deltas = after.deltas.expect("deltas");
    assert!(deltas.d3 <= -1.0);
    assert!(deltas.regression);

    // One dimension down by exactly 1.0 is enough; a composite move of 0.4 alone is not.
    let mut slightly_better = before.clone();
    slightly_better.d4.score = 10.0;
    slightly_better.d1.score = (before.d1.score + 1.0).min(10.0);
    slightly_better.composite = before.composite + 0.4;
    let again = with_history(GOOD, None, Some(&slightly_better));
    let deltas = again.deltas.expect("deltas");
    assert_eq!(deltas.composite, -0.4);
    assert_eq!(deltas.regression, deltas.d1 <= -1.0);
}

#[test]
fn calibration_warning_when_self_score_is_far_off() {
    let generic = with_history(GENERIC, Some(9.5), None);
    let warning = generic.calibration_warning.clone().expect("a warning");
    assert!(
        warning.contains("9.5") && warning.contains(&format!("{:.1}", generic.composite)),
        "{warning}"
    );
    assert_eq!(generic.self_score, Some(9.5));

    let good = with_history(GOOD, Some(9.0), None);
    assert_eq!(good.calibration_warning, None);
    assert_eq!(with_history(GOOD, Some(f64::NAN), None).self_score, None);
}

#[test]
fn score_inflation_when_self_score_rises_while_the_audit_falls() {
    let before = with_history(GOOD, Some(7.0), None);
    let inflated = with_history(GENERIC, Some(9.0), Some(&before));
    assert!(inflated.score_inflation);

    let honest = with_history(GENERIC, Some(6.0), Some(&before));
    assert!(!honest.score_inflation);
    let no_self_score = with_history(GENERIC, None, Some(&before));
    assert!(!no_self_score.score_inflation);
    let improved = with_history(
        GOOD,
        Some(9.0),
        Some(&with_history(GENERIC, Some(7.0), None)),
    );
    assert!(!improved.score_inflation);
}

#[test]
fn same_input_same_report() {
    for content in [GOOD, GENERIC, PLACEHOLDERS, TRUNCATED, UNRELATED] {
        let first = frameworks_report(content);
        let second = frameworks_report(content);
        assert_eq!(first, second);
        let json = serde_json::to_string(&first).expect("serialises");
        assert_eq!(json, serde_json::to_string(&second).expect("serialises"));
        let back: AuditReport = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, first);
    }
}

#[test]
fn summary_line_and_optional_fields() {
    let report = frameworks_report(GENERIC);
    let expected = format!(
        "A:{:.1} (d1 {:.1} d2 {:.1} d3 {:.1} d4 {:.1} d5 {:.1}) weakest {}",
        report.composite,
        report.d1.score,
        report.d2.score,
        report.d3.score,
        report.d4.score,
        report.d5.score,
        report.weakest
    );
    assert_eq!(report.summary_line(), expected);
    let json = serde_json::to_value(&report).expect("serialises");
    for absent in ["deltas", "calibration_warning", "self_score"] {
        assert!(
            json.get(absent).is_none(),
            "{absent} should be skipped when empty"
        );
    }
    assert_eq!(json["score_inflation"], false);
    // The weights make the composite.
    let weighted: f64 = [
        report.d1.score,
        report.d2.score,
        report.d3.score,
        report.d4.score,
        report.d5.score,
    ]
    .iter()
    .zip(factory_audit::WEIGHTS)
    .map(|(score, (_, weight))| score * weight)
    .sum();
    assert_eq!(report.composite, (weighted * 10.0).round() / 10.0);
}
