//! The shipped golden examples are themselves good artifacts: audited against
//! themselves with the expert-framework upstream, they score high everywhere.

use std::collections::{BTreeMap, BTreeSet};

use factory_audit::{Artifact, AuditInput, Format, audit};

use crate::*;

const GOLDEN: &[(&str, &str, &[u8])] = &[
    (
        "soul-json",
        "soul.json",
        include_bytes!("../../../../templates/golden/soul.json"),
    ),
    (
        "voice-json",
        "voice.json",
        include_bytes!("../../../../templates/golden/voice.json"),
    ),
    (
        "frameworks-json",
        "frameworks.json",
        include_bytes!("../../../../templates/golden/frameworks.json"),
    ),
    (
        "resources-json",
        "resources.json",
        include_bytes!("../../../../templates/golden/resources.json"),
    ),
    (
        "offers-json",
        "offers.json",
        include_bytes!("../../../../templates/golden/offers.json"),
    ),
];

#[test]
fn golden_examples_score_high_against_themselves() {
    for (key, path, content) in GOLDEN {
        assert!(
            (2_000..=8_192).contains(&content.len()),
            "{path} is {} bytes",
            content.len()
        );
        let input = AuditInput {
            block: "extractor",
            artifacts: vec![Artifact {
                key,
                path,
                format: Format::from_path(path),
                content: Some(content),
            }],
            upstream: vec![upstream()],
            golden: BTreeMap::from([(*key, *content)]),
            consumed_downstream: BTreeSet::from([*key]),
            subject: Some(SUBJECT),
            ..AuditInput::default()
        };
        let report = audit(&input).expect("artifacts declared");
        println!("{path:16} {}", report.summary_line());
        assert_well_formed(&report);
        assert!(report.composite >= 8.5, "{path}: {report:#?}");
        assert!(
            report
                .suggestions
                .iter()
                .all(|s| s.priority > factory_audit::Priority::High),
            "{path}: {:#?}",
            report.suggestions
        );
    }
}

#[test]
fn the_audit_doc_lists_every_generic_phrase() {
    let doc = include_str!("../../../../docs/audit.md");
    for phrase in factory_audit::GENERIC_PHRASES {
        assert!(
            doc.contains(&format!("`{phrase}`")),
            "docs/audit.md does not list `{phrase}`"
        );
    }
    assert!(doc.contains(&format!(
        "Generic phrases** ({},",
        factory_audit::GENERIC_PHRASES.len()
    )));
}
