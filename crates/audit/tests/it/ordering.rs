//! The bad fixtures lose to the good one, each on the dimension that should catch it.

use factory_audit::{AuditReport, Priority, audit};

use crate::*;

fn print(name: &str, report: &AuditReport) {
    println!("{name:12} {}", report.summary_line());
}

#[test]
fn good_fixture_scores_high_everywhere() {
    let good = frameworks_report(GOOD);
    print("good", &good);
    assert_well_formed(&good);
    assert!(good.composite >= 8.5, "{good:#?}");
    for (name, dimension) in good.dimensions() {
        assert!(
            dimension.score.unwrap() >= 7.5,
            "{name} = {} in {good:#?}",
            dimension.score.unwrap()
        );
    }
}

#[test]
fn every_bad_fixture_loses_clearly() {
    let good = frameworks_report(GOOD);
    for (name, content) in [
        ("generic", GENERIC),
        ("placeholders", PLACEHOLDERS),
        ("truncated", TRUNCATED),
        ("unrelated", UNRELATED),
    ] {
        let bad = frameworks_report(content);
        print(name, &bad);
        assert_well_formed(&bad);
        assert!(
            good.composite - bad.composite >= 1.5,
            "{name}: good {} vs bad {}",
            good.composite,
            bad.composite
        );
    }
}

#[test]
fn generic_loses_on_d2() {
    let good = frameworks_report(GOOD);
    let generic = frameworks_report(GENERIC);
    assert!(
        good.d2.score.unwrap() - generic.d2.score.unwrap() >= 4.0,
        "d2 good {} generic {}",
        good.d2.score.unwrap(),
        generic.d2.score.unwrap()
    );
    assert!(generic.d2.score.unwrap() < 5.0);
    assert!(
        generic
            .suggestions
            .iter()
            .any(|s| s.dimension == "d2" && s.message.contains("generic phrase \""))
    );
}

#[test]
fn placeholders_lose_on_d4() {
    let good = frameworks_report(GOOD);
    let placeholders = frameworks_report(PLACEHOLDERS);
    assert!(
        good.d4.score.unwrap() - placeholders.d4.score.unwrap() >= 4.0,
        "d4 good {} placeholders {}",
        good.d4.score.unwrap(),
        placeholders.d4.score.unwrap()
    );
    let messages: Vec<&str> = placeholders
        .suggestions
        .iter()
        .filter(|s| s.dimension == "d4")
        .map(|s| s.message.as_str())
        .collect();
    assert!(
        messages.contains(&"frameworks.json $.frameworks[0].when_to_use: placeholder \"TBD\""),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("placeholder \"{{expert_name}}\"")),
        "{messages:#?}"
    );
}

#[test]
fn truncated_json_loses_on_d3_and_d4() {
    let good = frameworks_report(GOOD);
    let truncated = frameworks_report(TRUNCATED);
    assert_eq!(truncated.d3.score.unwrap(), 0.0);
    assert!(good.d4.score.unwrap() - truncated.d4.score.unwrap() >= 3.0);
    let critical: Vec<&str> = truncated
        .suggestions
        .iter()
        .filter(|s| s.priority == Priority::Critical)
        .map(|s| s.message.as_str())
        .collect();
    assert!(
        critical
            .iter()
            .any(|m| m.starts_with("frameworks.json line ") && m.contains("JSON ends early")),
        "{critical:#?}"
    );
}

#[test]
fn truncated_markdown_loses_on_d3_and_d4() {
    let good = audit(&playbook_input(PLAYBOOK_GOOD)).expect("artifacts declared");
    let truncated = audit(&playbook_input(PLAYBOOK_TRUNCATED)).expect("artifacts declared");
    print("md good", &good);
    print("md truncated", &truncated);
    assert!(good.d4.score.unwrap() - truncated.d4.score.unwrap() >= 3.0);
    assert!(good.d3.score.unwrap() > truncated.d3.score.unwrap());
    assert!(
        truncated
            .suggestions
            .iter()
            .any(|s| s.message.contains("ends mid-sentence"))
    );
}

#[test]
fn ignoring_the_upstream_loses_on_d5() {
    let good = frameworks_report(GOOD);
    let unrelated = frameworks_report(UNRELATED);
    assert!(unrelated.d5.score.unwrap() < 4.0, "{:#?}", unrelated.d5);
    assert!(good.d5.score.unwrap() >= 8.0, "{:#?}", good.d5);
    let high = unrelated
        .suggestions
        .iter()
        .find(|s| s.dimension == "d5" && s.priority == Priority::High)
        .expect("a high-priority d5 suggestion");
    assert!(
        high.message
            .contains("expert-framework-creator.expert-framework"),
        "{}",
        high.message
    );
}

#[test]
fn missing_artifact_hits_d1_and_d3_with_critical_suggestions() {
    let report = audit(&frameworks_input(None)).expect("artifacts declared");
    assert_well_formed(&report);
    assert_eq!(report.d1.score.unwrap(), 0.0);
    assert_eq!(report.d3.score.unwrap(), 0.0);
    let critical: Vec<(&str, &str)> = report
        .suggestions
        .iter()
        .filter(|s| s.priority == Priority::Critical)
        .map(|s| (s.dimension.as_str(), s.message.as_str()))
        .collect();
    assert_eq!(
        critical,
        vec![
            (
                "d1",
                "frameworks.json: declared artifact `frameworks-json` is missing"
            ),
            (
                "d3",
                "frameworks.json: missing, but downstream blocks depend on `frameworks-json`"
            ),
        ]
    );
}
