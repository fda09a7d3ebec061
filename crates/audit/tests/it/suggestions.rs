//! Suggestions are concrete: artifact, location, numbers; ranked by priority.

use factory_audit::{Priority, audit};

use crate::*;

#[test]
fn short_arrays_name_the_path_and_both_counts() {
    let report = frameworks_report(PLACEHOLDERS);
    let d1: Vec<&str> = report
        .suggestions
        .iter()
        .filter(|s| s.dimension == "d1")
        .map(|s| s.message.as_str())
        .collect();
    assert!(
        d1.contains(&"frameworks.json $.frameworks[1].steps: 2 items, golden has 5\u{2013}7"),
        "{d1:#?}"
    );
    assert!(
        d1.contains(&"frameworks.json $.program_architecture.modules: 2 items, golden has 6"),
        "{d1:#?}"
    );
    let located = report
        .suggestions
        .iter()
        .find(|s| {
            s.message
                .starts_with("frameworks.json $.frameworks[1].steps:")
        })
        .expect("found");
    assert_eq!(
        (located.artifact.as_str(), located.location.as_str()),
        ("frameworks.json", "$.frameworks[1].steps")
    );
}

#[test]
fn suggestions_are_ranked_by_priority_then_dimension() {
    for content in [GENERIC, PLACEHOLDERS, TRUNCATED, UNRELATED] {
        let report = frameworks_report(content);
        let keys: Vec<(Priority, &str, &str)> = report
            .suggestions
            .iter()
            .map(|s| (s.priority, s.dimension.as_str(), s.artifact.as_str()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for suggestion in &report.suggestions {
            assert!(
                suggestion.message.starts_with(&suggestion.artifact),
                "{suggestion:?}"
            );
            if !suggestion.location.is_empty() {
                assert!(
                    suggestion.message.contains(&suggestion.location),
                    "{suggestion:?}"
                );
            }
        }
    }
}

#[test]
fn markdown_findings_carry_line_numbers() {
    let text = "# Plan\n\nIntro with 3 numbers and Marisol.\n\nTODO: write the close\n\nUnlock your potential with this.\n";
    let report = audit(&playbook_input(text.as_bytes())).expect("artifacts declared");
    let messages: Vec<&str> = report
        .suggestions
        .iter()
        .map(|s| s.message.as_str())
        .collect();
    assert!(
        messages.contains(&"playbook.md line 5: placeholder \"TODO\""),
        "{messages:#?}"
    );
    assert!(
        messages.contains(&"playbook.md line 7: generic phrase \"unlock your potential\""),
        "{messages:#?}"
    );
}

#[test]
fn upstream_consumption_message_names_block_and_key() {
    let report = frameworks_report(UNRELATED);
    let d5 = report
        .suggestions
        .iter()
        .find(|s| s.dimension == "d5")
        .expect("a d5 suggestion");
    assert_eq!(d5.priority, Priority::High);
    assert!(
        d5.message.starts_with("frameworks.json: uses little from upstream expert-framework-creator.expert-framework (")
            || d5.message.starts_with("frameworks.json: does not use anything from upstream expert-framework-creator.expert-framework (0 of "),
        "{}",
        d5.message
    );
    assert!(d5.message.contains(" distinctive terms"));
}

#[test]
fn one_line_values_are_complete_and_not_judged_for_prose() {
    use std::collections::{BTreeMap, BTreeSet};

    use factory_audit::{Artifact, AuditInput, Format};

    let input = AuditInput {
        block: "masterybook-sync",
        artifacts: vec![Artifact {
            key: "notebook-url",
            path: "notebook-url.txt",
            format: Format::Text,
            content: Some(b"https://notebooks.example/abc123\n"),
        }],
        golden: BTreeMap::new(),
        consumed_downstream: BTreeSet::from(["notebook-url"]),
        ..AuditInput::default()
    };
    let report = audit(&input).expect("artifacts declared");
    assert_eq!(report.composite, 10.0, "{report:#?}");
    assert!(report.suggestions.is_empty(), "{:#?}", report.suggestions);
}
