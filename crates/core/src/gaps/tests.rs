use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::run::{EventRecord, RunDoc};

/// `offers` → `analyzer` (finds gaps) → `compiler` (reads the gaps and the
/// offers), `page` (reads the offers only), `notes` (reads neither).
fn pipeline() -> Pipeline {
    let block = |id: &str, layer: &str, depends: Value, artifacts: Value| {
        json!({"id": id, "name": id, "layer": layer, "type": "build", "runtime": "command",
               "inputs": {"config": {"command": ["true"]}, "depends": depends},
               "outputs": {"artifacts": artifacts}})
    };
    let mut analyzer = block(
        "analyzer",
        "L1",
        json!([{"block": "offers", "key": "offers-json"}]),
        json!([{"key": "gaps-json", "path": "gaps.json", "format": "json"}]),
    );
    analyzer["outputs"]["gaps"] = json!("gaps-json");
    let template = json!({"id": "t", "name": "T", "version": "1", "blocks": [
        block("offers", "L0", json!([]), json!([{"key": "offers-json", "path": "offers.json", "format": "json"}])),
        analyzer,
        block("compiler", "L2", json!([{"block": "analyzer", "key": "gaps-json"}, {"block": "offers", "key": "offers-json"}]),
              json!([{"key": "prompt", "path": "prompt.md", "format": "md"}])),
        block("page", "L2", json!([{"block": "offers", "key": "offers-json"}]),
              json!([{"key": "html", "path": "page.html", "format": "html"}])),
        block("notes", "L2", json!([{"block": "analyzer", "key": "gaps-json"}]),
              json!([{"key": "notes", "path": "notes.md", "format": "md"}])),
    ]});
    let validated = crate::validate::validate_value(&template);
    assert!(!validated.has_errors(), "{:?}", validated.diagnostics);
    validated.pipeline.unwrap()
}

const GAPS: &str = r#"{
  "gaps": [
    {"id": "g01", "severity": "critical", "artifact": "offers-json", "path": "$.offers[1].price_usd",
     "skill_target": "offers", "finding": "The VIP Day price 4500 contradicts the objection script",
     "resolution": {"action": "Never state the VIP Day price; offer the Clarity Call", "question_for_expert": "Which price is right?"}},
    {"id": "g02", "severity": "low", "artifact": "voice-json", "skill_target": "voice",
     "finding": "Signature phrase spelled two ways"},
    {"severity": "high", "finding": "no id: skipped"},
    {"id": "g01", "finding": "a duplicate id: skipped"}
  ],
  "compiler_guidance": [{"gap_id": "g01", "instruction": "Say pricing is shared on the discovery call."}]
}"#;

fn doc(pipeline: &Pipeline) -> RunDoc {
    crate::run::test_run(pipeline, BTreeMap::new())
}

fn apply(doc: &mut RunDoc, event: Event) {
    let record = EventRecord {
        seq: doc.seq + 1,
        at: 100 + doc.seq as i64,
        actor: "test".into(),
        event,
    };
    doc.apply(&record).unwrap();
}

fn found(doc: &mut RunDoc) {
    let (gaps, skipped) = parse(GAPS).unwrap();
    assert_eq!(skipped, 2);
    let event = found_event(doc, "analyzer", 1, gaps);
    apply(doc, event);
}

#[test]
fn a_gaps_artifact_parses_into_items_with_their_guidance() {
    let (gaps, _) = parse(GAPS).unwrap();
    assert_eq!(gaps.len(), 2);
    let g01 = &gaps[0];
    assert_eq!(g01.severity, "critical");
    assert_eq!(g01.target_block.as_deref(), Some("offers"));
    assert_eq!(g01.target_artifact.as_deref(), Some("offers-json"));
    assert!(g01.description.contains("4500"));
    assert!(
        g01.resolution.contains("Clarity Call") && g01.resolution.ends_with("discovery call."),
        "{}",
        g01.resolution
    );
    assert_eq!(gaps[1].severity, "low");
    assert!(parse("[]").unwrap().0.is_empty());
    assert!(parse("{\"summary\": 1}").unwrap_err().contains("`gaps`"));
    assert!(parse("not json").unwrap_err().contains("not JSON"));
}

#[test]
fn gaps_concern_the_blocks_that_read_what_they_are_about() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    let ids = |block: &str| -> Vec<String> {
        open_for(&pipeline, &doc, block)
            .iter()
            .map(|g| g.gap.id.clone())
            .collect()
    };
    // Blocks after the analyzer that read its gaps: all of them, most
    // severe first.
    assert_eq!(ids("compiler"), ["g01", "g02"]);
    assert_eq!(ids("notes"), ["g01", "g02"]);
    // The page reads the offers but does not wait for the analyzer (what
    // it saw would depend on timing); the source and upstream blocks never.
    assert!(ids("page").is_empty());
    assert!(ids("analyzer").is_empty() && ids("offers").is_empty());
    let section = prompt_section(&open_for(&pipeline, &doc, "compiler")).unwrap();
    assert!(section.starts_with("## OPEN GAPS"));
    assert!(
        section.contains("- g01 (critical) in offers-json at $.offers[1].price_usd: The VIP Day")
    );
    assert!(section.contains("What to do: Never state the VIP Day price"));
    assert_eq!(prompt_section(&[]), None);
}

#[test]
fn a_block_whose_output_covers_a_gap_addresses_it_and_says_how() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    // Output that does not take the gap up leaves it open.
    let unrelated = BTreeMap::from([("notes".to_string(), "Book a call".to_string())]);
    assert!(reconcile(&pipeline, &doc, "notes", &unrelated, None).is_empty());
    let prompt = "Never state the VIP Day price (4500 is contradicted); offer the Clarity Call \
                  and say pricing is shared on the discovery call."
        .to_string();
    let events = reconcile(
        &pipeline,
        &doc,
        "compiler",
        &BTreeMap::from([("prompt".to_string(), prompt)]),
        None,
    );
    assert_eq!(events.len(), 1, "g02's terms are not there: {events:?}");
    let Event::GapChanged {
        id,
        status,
        by,
        reason,
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (id.as_str(), *status, by.as_str()),
        ("g01", GapStatus::Addressed, "compiler")
    );
    assert!(reason.starts_with("compiler.prompt covers "), "{reason}");
    apply(&mut doc, events[0].clone());
    assert_eq!(doc.gaps["g01"].status, GapStatus::Addressed);
    assert_eq!(open_for(&pipeline, &doc, "notes").len(), 1);
}

/// Found against a real model: SmolLM2-135M restated the OPEN GAPS line in
/// its output, which covered every term of the gap.
#[test]
fn an_output_that_echoes_the_gap_does_not_address_it() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    // The gap restated (a small model copying its prompt) addresses nothing.
    let echo = "OPEN GAPS: g01 (critical): The VIP Day price 4500 contradicts the objection \
                script. We will look into the VIP Day price."
        .to_string();
    let events = reconcile(
        &pipeline,
        &doc,
        "compiler",
        &BTreeMap::from([("prompt".to_string(), echo)]),
        None,
    );
    assert!(events.is_empty(), "{events:?}");
    // Quoting the finding and then acting on it does: what is said beyond
    // the quote counts.
    let acted = "Known gap: the VIP Day price 4500 contradicts the objection script. Never \
                 state the VIP Day price; offer the Clarity Call; pricing is shared on the \
                 discovery call."
        .to_string();
    let events = reconcile(
        &pipeline,
        &doc,
        "compiler",
        &BTreeMap::from([("prompt".to_string(), acted)]),
        None,
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(echoes(
        "The VIP Day price 4500 contradicts the objection script",
        "… the vip-day PRICE 4500 contradicts the objection script!"
    ));
    assert!(!echoes(
        "The VIP Day price 4500 contradicts the objection script",
        "The VIP Day price is shared on the call; the objection script stays."
    ));
    assert!(
        !echoes("Too short", "Too short"),
        "a finding under five words never echoes"
    );
}

#[test]
fn people_accept_and_reopen_gaps_and_acceptance_survives_a_rerun() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    let accept = decide(
        &doc,
        "g02",
        GapStatus::Accepted,
        "lead",
        "Both spellings are fine",
    )
    .unwrap();
    apply(&mut doc, accept);
    assert_eq!(doc.gaps["g02"].by.as_deref(), Some("lead"));
    assert_eq!(
        decide(&doc, "g02", GapStatus::Accepted, "lead", "").unwrap_err(),
        DecisionError::Unchanged {
            id: "g02".into(),
            status: "accepted"
        }
    );
    assert_eq!(
        decide(&doc, "g09", GapStatus::Open, "lead", "").unwrap_err(),
        DecisionError::Unknown("g09".into())
    );
    assert_eq!(
        decide(&doc, "g01", GapStatus::Addressed, "lead", "").unwrap_err(),
        DecisionError::NotAPersonsStatus
    );
    assert_eq!(
        decide(&doc, "g01", GapStatus::Accepted, "lead", &"x".repeat(2_001)).unwrap_err(),
        DecisionError::NoteTooLong
    );
    // The analyzer runs again: its gaps are replaced, the accepted one stays
    // accepted, the others are open again.
    found(&mut doc);
    assert_eq!(doc.gaps["g02"].status, GapStatus::Accepted);
    assert_eq!(doc.gaps["g01"].status, GapStatus::Open);
    let reopen = decide(&doc, "g02", GapStatus::Open, "lead", "Pick one").unwrap();
    apply(&mut doc, reopen);
    assert_eq!(doc.gaps["g02"].status, GapStatus::Open);
    assert_eq!(doc.gaps["g02"].reason, "Pick one");
    // An unknown gap's event is refused by the document.
    let mut copy = doc.clone();
    let bad = EventRecord {
        seq: copy.seq + 1,
        at: 1,
        actor: "t".into(),
        event: Event::GapChanged {
            id: "nope".into(),
            status: GapStatus::Accepted,
            by: "x".into(),
            reason: String::new(),
        },
    };
    assert!(copy.apply(&bad).is_err());
}

#[test]
fn terms_skip_common_words_and_keep_numbers() {
    let gap = Gap {
        id: "g".into(),
        severity: "high".into(),
        description: "The clone states 4500 without the Clarity Call".into(),
        target_block: None,
        target_artifact: None,
        path: None,
        resolution: "Offer $450 sessions".into(),
    };
    let terms = terms(&gap);
    for t in ["4500", "clarity", "offer", "sessions", "450"] {
        assert!(terms.contains(t), "{t} in {terms:?}");
    }
    for t in ["clone", "states", "without", "the"] {
        assert!(!terms.contains(t), "{t} in {terms:?}");
    }
}

#[test]
fn a_reset_reopens_what_the_block_addressed_and_acceptance_needs_the_same_gap() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    apply(
        &mut doc,
        Event::GapChanged {
            id: "g01".into(),
            status: GapStatus::Addressed,
            by: "compiler".into(),
            reason: "covered".into(),
        },
    );
    apply(
        &mut doc,
        Event::BlockReset {
            block: "compiler".into(),
            reason: "corrections".into(),
            fresh: false,
            regroup: false,
        },
    );
    assert_eq!(doc.gaps["g01"].status, GapStatus::Open);
    assert!(doc.gaps["g01"].reason.contains("compiler was reset"));

    // g02 accepted; the analyzer's next pass numbers a different gap g02.
    let accept = decide(&doc, "g02", GapStatus::Accepted, "lead", "fine").unwrap();
    apply(&mut doc, accept);
    let (mut gaps, _) = parse(GAPS).unwrap();
    gaps[1].description = "A different hole altogether".into();
    let event = found_event(&doc, "analyzer", 2, gaps);
    apply(&mut doc, event);
    assert_eq!(
        doc.gaps["g02"].status,
        GapStatus::Open,
        "not the gap that was accepted"
    );
}

#[test]
fn a_second_source_with_the_same_ids_gets_its_own() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    let (gaps, _) = parse(GAPS).unwrap();
    let Event::GapsFound { gaps, .. } = found_event(&doc, "other", 1, gaps) else {
        panic!()
    };
    let ids: Vec<&str> = gaps.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["other/g01", "other/g02"]);
    // The first source's own ids stay its own when it runs again.
    let (gaps, _) = parse(GAPS).unwrap();
    let Event::GapsFound { gaps, .. } = found_event(&doc, "analyzer", 2, gaps) else {
        panic!()
    };
    assert_eq!(gaps[0].id, "g01");
}

#[test]
fn terms_match_whole_words_and_instances_address_nothing() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    // "contradicts", "objection" … inside other words do not count.
    let text = "Never state the VIPDay priced 45000; offer a ClarityCall; discoveryx".to_string();
    assert!(
        reconcile(
            &pipeline,
            &doc,
            "compiler",
            &BTreeMap::from([("prompt".into(), text)]),
            None
        )
        .is_empty()
    );
    let covering = "Never state the VIP Day price 4500; offer the Clarity Call; pricing is shared on the discovery call, the objection script contradicts it".to_string();
    assert!(
        reconcile(
            &pipeline,
            &doc,
            "compiler[a]",
            &BTreeMap::from([("prompt".into(), covering)]),
            None
        )
        .is_empty(),
        "an instance does not address a gap for its group"
    );
}

/// `gap_check: "llm"`: the model's verdicts decide the gaps they name (with
/// its reason), the terms the rest; a junk answer decides nothing.
#[test]
fn a_model_check_decides_the_gaps_it_names() {
    let pipeline = pipeline();
    let mut doc = doc(&pipeline);
    found(&mut doc);
    let open = open_for(&pipeline, &doc, "compiler");
    let (system, user, schema, cut) = check_ask(
        &open,
        &BTreeMap::from([(
            "prompt".to_string(),
            "Say pricing is shared on the call.".to_string(),
        )]),
    );
    assert!(system.contains("Repeating or paraphrasing the gap's description is not"));
    assert!(!cut);
    // A long artifact shows its beginning and its end (where a prompt's
    // Known Gaps section is), and says it was cut.
    let long = format!(
        "{}\n## Known Gaps\nPricing is shared on the call.",
        "x".repeat(20_000)
    );
    let (_, user_long, _, cut_long) =
        check_ask(&open, &BTreeMap::from([("prompt".to_string(), long)]));
    assert!(cut_long && user_long.contains("## Known Gaps\nPricing is shared on the call."));
    assert!(user_long.contains("[… cut …]") && user_long.len() < 16_000);
    assert!(user.contains("## OPEN GAPS") && user.contains("=== prompt ===\nSay pricing"));
    assert_eq!(
        schema["properties"]["gaps"]["items"]["properties"]["id"]["enum"],
        json!(["g01", "g02"])
    );
    let answer = r#"Sure. {"gaps": [
        {"id": "g01", "addressed": true, "reason": "It says pricing is shared on the call."},
        {"id": "g02", "addressed": false, "reason": "Nothing about the spelling."},
        {"id": "g09", "addressed": true, "reason": "?"},
        {"id": "g01", "addressed": false, "reason": "again"}
    ]}"#;
    let (verdicts, skipped) = parse_checks(answer, &open).unwrap();
    assert_eq!(skipped, 2);
    // Found on SmolLM2: the instructions' placeholder returned as the reason.
    let parroted = format!(
        r#"{{"gaps": [{{"id": "g01", "addressed": true, "reason": "{REASON_PLACEHOLDER}"}}]}}"#
    );
    assert_eq!(
        parse_checks(&parroted, &open).unwrap(),
        (BTreeMap::new(), 1)
    );
    let dotted = parroted.replace(REASON_PLACEHOLDER, &format!("{REASON_PLACEHOLDER}."));
    assert_eq!(parse_checks(&dotted, &open).unwrap(), (BTreeMap::new(), 1));
    assert!(verdicts["g01"].addressed && !verdicts["g02"].addressed);
    let mut checks = GapChecks {
        model: "m1".into(),
        verdicts,
        problem: None,
        cut: false,
    };
    // Words alone would not address g01 here; the model's verdict does.
    let events = reconcile(
        &pipeline,
        &doc,
        "compiler",
        &BTreeMap::from([(
            "prompt".to_string(),
            "Say pricing is shared on the call.".to_string(),
        )]),
        Some(&checks),
    );
    let [Event::GapChanged { id, reason, .. }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(id, "g01");
    assert_eq!(
        reason,
        "compiler: m1 judged it addressed: It says pricing is shared on the call."
    );
    // An echo is refused even when the model calls it addressed.
    let echo = "The VIP Day price 4500 contradicts the objection script.".to_string();
    assert!(
        reconcile(
            &pipeline,
            &doc,
            "compiler",
            &BTreeMap::from([("prompt".to_string(), echo)]),
            Some(&checks),
        )
        .is_empty()
    );
    // "Not addressed" decides when the model saw everything; when an
    // artifact was cut, the terms (which read all of it) decide.
    let covering = BTreeMap::from([(
        "prompt".to_string(),
        "Never state the VIP Day price 4500; offer the Clarity Call; pricing is shared on the discovery call, the objection script contradicts it".to_string(),
    )]);
    checks.verdicts.get_mut("g01").unwrap().addressed = false;
    assert!(reconcile(&pipeline, &doc, "compiler", &covering, Some(&checks)).is_empty());
    checks.cut = true;
    let events = reconcile(&pipeline, &doc, "compiler", &covering, Some(&checks));
    assert_eq!(events.len(), 1, "{events:?}");
    for (answer, says) in [
        ("", "empty"),
        ("no", "no JSON object"),
        ("{\"verdicts\": []}", "no `gaps` array"),
    ] {
        assert!(
            parse_checks(answer, &open).unwrap_err().contains(says),
            "{answer}"
        );
    }
}
