//! No input makes the audit panic, and scores stay in range.

use std::collections::{BTreeMap, BTreeSet};

use factory_audit::{Artifact, AuditInput, Format, Upstream, audit};
use proptest::prelude::*;

use crate::*;

fn format_strategy() -> impl Strategy<Value = Format> {
    prop_oneof![
        Just(Format::Json),
        Just(Format::Markdown),
        Just(Format::Html),
        Just(Format::Text)
    ]
}

/// Bytes that are mostly text-like, with the characters the scanners care about.
fn texty_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            any::<u8>(),
            prop::sample::select(b"{}[]<>\":,.!? \n\t#-*`~|0123456789aAeTODO".to_vec()),
        ],
        0..600,
    )
}

fn run(format: Format, content: &[u8], golden: &[u8], upstream: &[u8], upstream_format: Format) {
    let mut input = AuditInput {
        block: "b",
        artifacts: vec![
            Artifact {
                key: "out",
                path: "out.x",
                format,
                content: Some(content),
            },
            Artifact {
                key: "gone",
                path: "gone.json",
                format: Format::Json,
                content: None,
            },
        ],
        upstream: vec![Upstream {
            block: "up",
            key: "in",
            format: upstream_format,
            content: upstream,
        }],
        golden: BTreeMap::from([("out", golden)]),
        consumed_downstream: BTreeSet::from(["out", "gone"]),
        subject: Some("Marisol Vega"),
        self_score: Some(7.0),
        previous: None,
    };
    let first = audit(&input).expect("artifacts declared");
    assert_well_formed(&first);
    input.previous = Some(&first);
    let second = audit(&input).expect("artifacts declared");
    assert_well_formed(&second);
    assert_eq!(second.deltas.map(|d| d.composite), Some(0.0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        format in format_strategy(),
        upstream_format in format_strategy(),
        content in texty_bytes(),
        golden in texty_bytes(),
        upstream in texty_bytes(),
    ) {
        run(format, &content, &golden, &upstream, upstream_format);
    }

    #[test]
    fn cut_and_corrupted_fixtures_never_panic(cut in 0usize..GOOD.len(), flip in 0usize..GOOD.len(), byte in any::<u8>()) {
        let mut content = GOOD[..cut].to_vec();
        if let Some(target) = content.get_mut(flip) {
            *target = byte;
        }
        run(Format::Json, &content, GOLDEN_FRAMEWORKS, UPSTREAM, Format::Json);
        run(Format::Markdown, &content, PLAYBOOK_GOOD, &content, Format::Markdown);
    }
}

#[test]
fn pathological_inputs() {
    let deep = "[".repeat(100_000);
    let nested_object = "{\"a\":".repeat(5_000);
    let placeholders = "TODO {{x}} [INSERT y] <Z_Z> ... ".repeat(20_000);
    let no_whitespace = "a".repeat(1_000_000);
    let tags = "<".repeat(200_000);
    let invalid_utf8: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    for content in [
        deep.as_bytes(),
        nested_object.as_bytes(),
        placeholders.as_bytes(),
        no_whitespace.as_bytes(),
        tags.as_bytes(),
        &invalid_utf8,
    ] {
        for format in [Format::Json, Format::Markdown, Format::Html, Format::Text] {
            run(format, content, content, content, format);
        }
    }
}

#[test]
fn invalid_utf8_markdown_is_read_lossily_and_marked() {
    let mut content = PLAYBOOK_GOOD.to_vec();
    content.extend_from_slice(&[0xff, 0xfe, b'\n']);
    let report = audit(&playbook_input(&content)).expect("artifacts declared");
    assert!(
        report
            .d3
            .checks
            .iter()
            .any(|check| check.name == "parses:playbook.md" && check.score.unwrap() == 4.0)
    );
}

#[test]
fn a_block_without_artifacts_is_not_audited() {
    // Nothing to judge is no report at all, never a free 10.
    assert_eq!(audit(&AuditInput::default()), None);
}
