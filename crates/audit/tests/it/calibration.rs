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
    audit(&input).expect("artifacts declared")
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
        Some(((after.d2.score.unwrap() - before.d2.score.unwrap()) * 10.0).round() / 10.0)
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
    assert!(deltas.d3.unwrap() <= -1.0);
    assert!(deltas.regression);

    // One dimension down by exactly 1.0 is enough; a composite move of 0.4 alone is not.
    let mut slightly_better = before.clone();
    slightly_better.d4.score = Some(10.0);
    slightly_better.d1.score = Some((before.d1.score.unwrap() + 1.0).min(10.0));
    slightly_better.composite = before.composite + 0.4;
    let again = with_history(GOOD, None, Some(&slightly_better));
    let deltas = again.deltas.expect("deltas");
    assert_eq!(deltas.composite, -0.4);
    assert_eq!(deltas.regression, deltas.d1.unwrap() <= -1.0);
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
    // The generic fixture is mostly stock phrases: D2 caps it, and says so.
    let ceiling = report.ceiling.clone().expect("a generic cap");
    assert!(
        ceiling.binding && ceiling.reason.contains("generic"),
        "{ceiling:?}"
    );
    let expected = format!(
        "A:{:.1} (d1 {:.1} d2 {:.1} d3 {:.1} d4 {:.1} d5 {:.1}) weakest {}; capped at {:.1}: {}",
        report.composite,
        report.d1.score.unwrap(),
        report.d2.score.unwrap(),
        report.d3.score.unwrap(),
        report.d4.score.unwrap(),
        report.d5.score.unwrap(),
        report.weakest,
        ceiling.score,
        ceiling.reason
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
    assert_eq!(json["judged_weight"], 1.0);
    // The weights make the uncapped composite; the cap lowers it.
    let weighted: f64 = [
        report.d1.score.unwrap(),
        report.d2.score.unwrap(),
        report.d3.score.unwrap(),
        report.d4.score.unwrap(),
        report.d5.score.unwrap(),
    ]
    .iter()
    .zip(factory_audit::WEIGHTS)
    .map(|(score, (_, weight))| score * weight)
    .sum();
    assert_eq!(ceiling.uncapped, (weighted * 10.0).round() / 10.0);
    assert_eq!(report.composite, ceiling.score.min(ceiling.uncapped));
}

#[test]
fn a_dimension_with_nothing_to_judge_is_left_out_not_given_ten() {
    // No upstream input: D5 is n/a and the other weights are renormalised.
    let mut input = crate::playbook_input(crate::PLAYBOOK_GOOD);
    input.upstream.clear();
    let report = audit(&input).expect("artifacts declared");
    assert_eq!(report.d5.score, None);
    assert_eq!(report.judged_weight, 0.8);
    assert!(!report.low_evidence);
    assert!(
        report.summary_line().contains("d5 n/a"),
        "{}",
        report.summary_line()
    );
    let weighted: f64 = [&report.d1, &report.d2, &report.d3, &report.d4]
        .iter()
        .zip(factory_audit::WEIGHTS)
        .map(|(dimension, (_, weight))| dimension.score.unwrap() * weight)
        .sum();
    assert_eq!(report.composite, ((weighted / 0.8) * 10.0).round() / 10.0);
    let explained = factory_audit::explain(&report);
    assert!(
        explained.contains("(d5 n/a, weights renormalised)"),
        "{explained}"
    );
    assert!(
        explained.contains("n/a         upstream:none"),
        "{explained}"
    );

    // One-line values have no prose: D2 is n/a too, and D5 with it.
    let url = b"https://notebooks.example/abc123\n";
    let report = audit(&factory_audit::AuditInput {
        artifacts: vec![factory_audit::Artifact {
            key: "url",
            path: "url.txt",
            format: factory_audit::Format::Text,
            content: Some(url),
        }],
        ..factory_audit::AuditInput::default()
    })
    .expect("artifacts declared");
    assert_eq!((report.d2.score, report.d5.score), (None, None));
    assert_eq!(report.judged_weight, 0.55);
    assert_eq!(report.weakest, "d1");
}
