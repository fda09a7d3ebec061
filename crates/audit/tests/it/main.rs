//! Integration tests of the audit against the fixtures in `tests/fixtures`
//! and the golden examples in `templates/golden`.

mod calibration;
mod corpus;
mod golden;
mod ordering;
mod robustness;
mod suggestions;

use std::collections::{BTreeMap, BTreeSet};

use factory_audit::{Artifact, AuditInput, AuditReport, Format, Upstream, audit};

pub const GOLDEN_FRAMEWORKS: &[u8] = include_bytes!("../../../../templates/golden/frameworks.json");
pub const UPSTREAM: &[u8] = include_bytes!("../fixtures/expert-framework.json");
pub const GOOD: &[u8] = include_bytes!("../fixtures/frameworks.good.json");
pub const GENERIC: &[u8] = include_bytes!("../fixtures/frameworks.generic.json");
pub const PLACEHOLDERS: &[u8] = include_bytes!("../fixtures/frameworks.placeholders.json");
pub const TRUNCATED: &[u8] = include_bytes!("../fixtures/frameworks.truncated.json");
pub const UNRELATED: &[u8] = include_bytes!("../fixtures/frameworks.unrelated.json");
pub const PLAYBOOK_GOOD: &[u8] = include_bytes!("../fixtures/playbook.good.md");
pub const PLAYBOOK_TRUNCATED: &[u8] = include_bytes!("../fixtures/playbook.truncated.md");

pub const SUBJECT: &str = "Marisol Vega";

/// The framework-extractor block's input: `frameworks.json` (consumed
/// downstream), its golden example and the expert-framework upstream.
pub fn frameworks_input(content: Option<&[u8]>) -> AuditInput<'_> {
    AuditInput {
        block: "framework-extractor",
        artifacts: vec![Artifact {
            key: "frameworks-json",
            path: "frameworks.json",
            format: Format::Json,
            content,
        }],
        upstream: vec![upstream()],
        golden: BTreeMap::from([("frameworks-json", GOLDEN_FRAMEWORKS)]),
        consumed_downstream: BTreeSet::from(["frameworks-json"]),
        subject: Some(SUBJECT),
        self_score: None,
        previous: None,
    }
}

/// A Markdown-producing block with the same upstream and no golden example.
pub fn playbook_input(content: &[u8]) -> AuditInput<'_> {
    AuditInput {
        block: "playbook-writer",
        artifacts: vec![Artifact {
            key: "playbook",
            path: "playbook.md",
            format: Format::Markdown,
            content: Some(content),
        }],
        upstream: vec![upstream()],
        golden: BTreeMap::new(),
        consumed_downstream: BTreeSet::from(["playbook"]),
        subject: Some(SUBJECT),
        self_score: None,
        previous: None,
    }
}

pub fn upstream() -> Upstream<'static> {
    Upstream {
        block: "expert-framework-creator",
        key: "expert-framework",
        format: Format::Json,
        content: UPSTREAM,
    }
}

pub fn frameworks_report(content: &[u8]) -> AuditReport {
    audit(&frameworks_input(Some(content))).expect("artifacts declared")
}

/// Every score in the report is finite, within 0–10 and has at most one decimal.
pub fn assert_well_formed(report: &AuditReport) {
    let mut scores = vec![report.composite];
    for (_, dimension) in report.dimensions() {
        scores.extend(dimension.score);
        scores.extend(dimension.checks.iter().filter_map(|check| check.score));
        // A dimension is n/a exactly when none of its checks was weighed into a score.
        if dimension.score.is_none() {
            assert!(
                dimension.checks.iter().all(|check| check.weight == 0.0),
                "{report:#?}"
            );
        }
    }
    assert!((0.0..=1.0).contains(&report.judged_weight));
    if let Some(ceiling) = &report.ceiling {
        assert!(report.composite <= ceiling.score, "{report:#?}");
        assert_eq!(ceiling.binding, ceiling.score < ceiling.uncapped);
    }
    for score in scores {
        assert!(
            score.is_finite() && (0.0..=10.0).contains(&score),
            "score {score} out of range in {report:#?}"
        );
        assert!(
            ((score * 10.0).round() - score * 10.0).abs() < 1e-6,
            "score {score} has more than one decimal"
        );
    }
    assert_eq!(report.badge, format!("A:{:.1}", report.composite));
}
