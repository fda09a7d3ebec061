use serde_json::json;

use super::*;
use crate::run::{
    Attempt, AttemptOutcome, BlockState, CorrectionItem, Event, GatePhase, RunStatus,
};
use crate::template::Autonomy;
use crate::validate_value;

fn template(runtime: &str, cache: Option<bool>) -> Template {
    let mut block = json!({
        "id": "writer", "name": "Writer", "layer": "L1", "type": "build",
        "runtime": runtime,
        "outputs": {"artifacts": [{"key": "out", "path": "out.md", "format": "md"}]}
    });
    match runtime {
        "llm" => block["skill"] = json!("writer"),
        "command" => block["inputs"] = json!({"config": {"command": ["sh", "-c", "echo hi"]}}),
        "http" => block["inputs"] = json!({"config": {"url": "http://127.0.0.1:9/x"}}),
        _ => block["inputs"] = json!({"config": {"builtin": "noop"}}),
    }
    if let Some(cache) = cache {
        block["execution"] = json!({"cache": cache});
    }
    let validated = validate_value(&json!({
        "id": "t", "name": "T", "version": "1", "blocks": [block]
    }));
    assert!(!validated.has_errors(), "{:?}", validated.diagnostics);
    validated.pipeline.unwrap().template().clone()
}

fn inputs<'a>(
    template: &'a Template,
    params: &'a BTreeMap<String, Value>,
    sampling: &'a BTreeMap<String, Value>,
) -> MemoInputs<'a> {
    MemoInputs {
        open_gaps: None,
        template,
        block: &template.blocks[0],
        model: Some("sonnet"),
        sampling,
        params,
        inputs: vec![InputHash {
            block: "up",
            key: "notes",
            hash: "aa",
            path: "notes.md",
            format: crate::template::ArtifactFormat::Md,
        }],
        corrections: None,
        reply_note: None,
        files: BTreeMap::from([("skills/writer/SKILL.md".to_string(), "s1".to_string())]),
        item: None,
        past_ratings: None,
    }
}

#[test]
fn the_key_changes_with_what_decides_the_output_and_only_with_that() {
    let t = template("llm", None);
    let params = BTreeMap::from([("entity".to_string(), json!("acme"))]);
    let sampling = BTreeMap::new();
    let base = memo_key(&inputs(&t, &params, &sampling));
    assert_eq!(base, memo_key(&inputs(&t, &params, &sampling)), "stable");
    assert_eq!(base.as_str().len(), 64);

    // Each of these changes the key.
    let other_params = BTreeMap::from([("entity".to_string(), json!("globex"))]);
    assert_ne!(base, memo_key(&inputs(&t, &other_params, &sampling)));
    let hot = BTreeMap::from([("temperature".to_string(), json!(0.9))]);
    assert_ne!(base, memo_key(&inputs(&t, &params, &hot)));
    let mut changed = inputs(&t, &params, &sampling);
    changed.model = Some("opus");
    assert_ne!(base, memo_key(&changed));
    let mut changed = inputs(&t, &params, &sampling);
    changed.inputs[0].hash = "bb";
    assert_ne!(base, memo_key(&changed));
    let (item_a, item_b) = (json!({"name": "positioning"}), json!({"name": "risk"}));
    let mut changed = inputs(&t, &params, &sampling);
    changed.item = Some(&item_a);
    let with_item = memo_key(&changed);
    assert_ne!(base, with_item, "an instance's item");
    changed.item = Some(&item_b);
    assert_ne!(with_item, memo_key(&changed), "another item");
    let mut changed = inputs(&t, &params, &sampling);
    changed.inputs[0].path = "renamed.md";
    assert_ne!(base, memo_key(&changed), "a command reads it by its path");
    let mut changed = inputs(&t, &params, &sampling);
    changed
        .files
        .insert("skills/writer/SKILL.md".into(), "s2".into());
    assert_ne!(base, memo_key(&changed), "the skill text");
    let corrections = Corrections {
        version: "v1→v2".into(),
        source: "gate rejection by ana".into(),
        items: vec![CorrectionItem {
            finding: "Rejected".into(),
            correction: "Name the anchor".into(),
            priority: "high".into(),
            improvement_item_id: None,
        }],
        instruction: "Apply these".into(),
    };
    let mut changed = inputs(&t, &params, &sampling);
    changed.corrections = Some(&corrections);
    let corrected = memo_key(&changed);
    assert_ne!(base, corrected);
    // Who gave the same correction, and its label, do not matter.
    let same_words = Corrections {
        version: "v3→v4".into(),
        source: "gate rejection by bo".into(),
        ..corrections.clone()
    };
    changed.corrections = Some(&same_words);
    assert_eq!(corrected, memo_key(&changed));

    // The block's definition counts, but not what only describes or governs it.
    let mut edited = t.clone();
    edited.blocks[0].skill = Some("other".into());
    assert_ne!(base, memo_key(&inputs(&edited, &params, &sampling)));
    let mut governed = t.clone();
    governed.blocks[0].layer = "L9".into();
    governed.blocks[0].execution.max_retries = 7;
    governed.blocks[0].timeout = 5;
    assert_eq!(base, memo_key(&inputs(&governed, &params, &sampling)));
    // The name is in the prompt; without a skill, the description is the
    // instruction.
    let mut renamed = t.clone();
    renamed.blocks[0].name = "A nicer name".into();
    assert_ne!(base, memo_key(&inputs(&renamed, &params, &sampling)));
    let mut described = t.clone();
    described.blocks[0].description = Some("Writes".into());
    assert_ne!(base, memo_key(&inputs(&described, &params, &sampling)));
    // Another template's block with the same definition does not share.
    let mut elsewhere = t.clone();
    elsewhere.id = "t2".into();
    assert_ne!(base, memo_key(&inputs(&elsewhere, &params, &sampling)));
}

#[test]
fn llm_and_command_blocks_are_memoized_http_only_when_asked_builtins_never() {
    assert!(memoizable(&template("llm", None).blocks[0]));
    assert!(memoizable(&template("command", None).blocks[0]));
    assert!(!memoizable(&template("command", Some(false)).blocks[0]));
    assert!(!memoizable(&template("llm", Some(false)).blocks[0]));
    assert!(!memoizable(&template("http", None).blocks[0]));
    assert!(memoizable(&template("http", Some(true)).blocks[0]));
    assert!(!memoizable(&template("builtin", None).blocks[0]));
}

#[test]
fn a_builtin_asked_to_be_memoized_is_refused_with_the_field() {
    let validated = validate_value(&json!({
        "id": "t", "name": "T", "version": "1", "blocks": [{
            "id": "b", "name": "B", "layer": "L1", "type": "build", "runtime": "builtin",
            "inputs": {"config": {"builtin": "noop"}},
            "execution": {"cache": true}
        }]
    }));
    let found: Vec<_> = validated
        .errors()
        .map(|d| (d.code.to_string(), d.path.clone()))
        .collect();
    assert_eq!(
        found,
        [(
            "TPL0030".to_string(),
            "$.blocks[0].execution.cache".to_string()
        )]
    );
}

fn attempt(n: u32, outcome: AttemptOutcome, key: Option<&str>, reused: bool) -> Attempt {
    Attempt {
        n,
        owner: "w".into(),
        started_at: 1,
        ended_at: Some(2),
        outcome: Some(outcome),
        report: Some(AttemptReport {
            memo_key: key.map(|k| MemoKey::from_stored(k.into())),
            reused: reused.then(|| Reused {
                run_id: "r0".into(),
                block: "a".into(),
                attempt: 1,
            }),
            ..AttemptReport::default()
        }),
        corrections_version: None,
        version: 1,
        why: None,
    }
}

fn doc_with(blocks: Vec<(&str, Vec<Attempt>)>) -> RunDoc {
    let mut doc: RunDoc = serde_json::from_value(json!({
        "run_id": "r1", "template_id": "t", "template_version": "1",
        "status": "running", "params": {}, "created_at": 0, "updated_at": 0, "seq": 0
    }))
    .unwrap();
    doc.status = RunStatus::Running;
    for (id, history) in blocks {
        let mut state = BlockState::new(Autonomy::Auto);
        state.history = history;
        doc.blocks.insert(id.into(), state);
    }
    doc
}

fn record(event: Event) -> EventRecord {
    EventRecord {
        seq: 1,
        at: 1,
        actor: "engine".into(),
        event,
    }
}

#[test]
fn only_the_accepted_attempt_of_a_block_made_done_is_remembered() {
    let doc = doc_with(vec![
        (
            "a",
            vec![
                attempt(1, AttemptOutcome::Succeeded, Some("k1"), false),
                attempt(2, AttemptOutcome::Succeeded, Some("k2"), false),
                attempt(3, AttemptOutcome::Failed, Some("k3"), false),
            ],
        ),
        (
            "b",
            vec![attempt(1, AttemptOutcome::Succeeded, Some("kb"), true)],
        ),
        (
            "c",
            vec![attempt(1, AttemptOutcome::Succeeded, None, false)],
        ),
        (
            "d",
            vec![attempt(1, AttemptOutcome::Succeeded, Some("kd"), false)],
        ),
        (
            "e",
            vec![attempt(1, AttemptOutcome::Succeeded, Some("ke"), false)],
        ),
    ]);
    let records = vec![
        record(Event::BlockDone { block: "a".into() }),
        // Reused: already remembered where it came from.
        record(Event::BlockDone { block: "b".into() }),
        // Not memoizable: no key.
        record(Event::BlockDone { block: "c".into() }),
        // Approved after its gate.
        record(Event::GateApproved {
            block: "d".into(),
            phase: GatePhase::After,
            note: None,
        }),
        // Finished but not done (it waits at a gate, or the audit retries it).
        record(Event::ReviewFlagged { block: "e".into() }),
    ];
    let memos = remembered(&doc, &records);
    let found: Vec<(&str, u32, &str)> = memos
        .iter()
        .map(|m| (m.block, m.attempt, m.key.as_str()))
        .collect();
    assert_eq!(found, [("a", 2, "k2"), ("d", 1, "kd")]);
}

#[test]
fn a_reused_report_keeps_the_outputs_and_drops_the_call_and_the_audit() {
    let mut original = AttemptReport {
        exit_code: Some(0),
        llm: Some(Box::new(
            serde_json::from_value(json!({
                "provider": "anthropic", "model": "m", "input_tokens": 900,
                "output_tokens": 90, "latency_ms": 1200, "calls": 1, "cost_usd": 0.02
            }))
            .unwrap(),
        )),
        ..AttemptReport::default()
    };
    original.metrics.insert("words".into(), json!(12));
    let stored = stored_report(&original);
    assert!(stored.llm.is_some(), "the memo keeps what the call cost");
    let key = MemoKey::from_stored("k".into());
    let from = Reused {
        run_id: "r0".into(),
        block: "writer".into(),
        attempt: 2,
    };
    let reused = reused_report(stored, key.clone(), from.clone());
    assert_eq!(reused.metrics["words"], 12);
    assert_eq!(reused.exit_code, Some(0));
    assert!(reused.llm.is_none() && reused.audit.is_none());
    assert_eq!(reused.memo_key, Some(key));
    assert_eq!(reused.reused, Some(from));
}

#[test]
fn the_order_keys_are_written_in_does_not_change_the_key() {
    let t = template("command", None);
    let params = BTreeMap::from([
        ("a".to_string(), json!({"x": 1, "y": 2})),
        ("b".to_string(), json!(2)),
    ]);
    let reordered = BTreeMap::from([
        ("b".to_string(), json!(2)),
        (
            "a".to_string(),
            serde_json::from_str::<Value>(r#"{"y": 2, "x": 1}"#).unwrap(),
        ),
    ]);
    let sampling = BTreeMap::new();
    assert_eq!(
        memo_key(&inputs(&t, &params, &sampling)),
        memo_key(&inputs(&t, &reordered, &sampling))
    );
}

#[test]
fn a_command_block_does_not_depend_on_the_runs_sampling() {
    let t = template("command", None);
    let params = BTreeMap::new();
    let none = BTreeMap::new();
    let hot = BTreeMap::from([("temperature".to_string(), json!(0.9))]);
    assert_eq!(
        memo_key(&inputs(&t, &params, &none)),
        memo_key(&inputs(&t, &params, &hot))
    );
}
