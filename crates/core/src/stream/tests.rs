use serde_json::{Value, json};

use super::settle::{Claimed, KeyError, Move, StageOutput, record_key, retry_delay_ms, settle};
use super::*;
use crate::validate_value;

fn block(id: &str, depends_on: Option<&str>) -> Value {
    let mut b = json!({
        "id": id, "name": id, "layer": "L1", "type": "ingest",
        "runtime": "builtin",
        "inputs": {"config": {"builtin": "noop"}},
        "outputs": {"artifacts": [{"key": "records", "path": "records.json", "format": "json"}]},
        "lifecycle": {"mode": "daemon"}
    });
    match depends_on {
        None => {
            b["trigger"] = json!({"type": "webhook", "secret_env": "HOOK_SECRET"});
            b["record_state"] =
                json!({"track_per": "video_id", "states": ["raw", "annotated", "scored"]});
        }
        Some(up) => {
            b["inputs"]["depends"] = json!([{"block": up, "key": "records"}]);
        }
    }
    b
}

fn template(blocks: Vec<Value>) -> Value {
    json!({"id": "ingest", "name": "Ingest", "version": "1", "blocks": blocks})
}

fn chain() -> Value {
    template(vec![
        block("intake", None),
        block("annotate", Some("intake")),
        block("score", Some("annotate")),
    ])
}

fn errors(value: &Value) -> Vec<(String, String)> {
    validate_value(value)
        .diagnostics
        .into_iter()
        .filter(|d| d.is_error())
        .map(|d| (d.code.to_string(), d.path))
        .collect()
}

#[test]
fn a_chain_of_daemon_blocks_is_a_stream_plan() {
    let validated = validate_value(&chain());
    let pipeline = validated.pipeline.expect("valid");
    let plan = pipeline.stream().expect("a stream template");
    assert_eq!(plan.track_per, "video_id");
    assert_eq!(plan.states, ["raw", "annotated", "scored"]);
    assert_eq!(plan.intakes.len(), 1);
    assert_eq!(plan.intakes[0].webhook(), Some((None, "HOOK_SECRET")));
    let stages: Vec<(&str, usize)> = plan
        .stages
        .iter()
        .map(|s| (s.block.as_str(), s.from))
        .collect();
    assert_eq!(stages, [("annotate", 0), ("score", 1)]);
    assert!(plan.stages.iter().all(|s| s.pass_through && s.batch == 1));
    assert_eq!(plan.state_after(&plan.stages[1]), "scored");
}

#[test]
fn a_dag_batch_template_has_no_stream_plan() {
    let mut value = chain();
    for b in value["blocks"].as_array_mut().unwrap() {
        let o = b.as_object_mut().unwrap();
        o.remove("lifecycle");
        o.remove("trigger");
        o.remove("record_state");
    }
    let pipeline = validate_value(&value).pipeline.expect("valid");
    assert!(pipeline.stream().is_none());
}

#[test]
fn the_states_must_match_the_chain() {
    let mut value = chain();
    value["blocks"][0]["record_state"]["states"] = json!(["raw", "scored"]);
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks".into())),
        "{found:?}"
    );
}

#[test]
fn every_block_of_a_stream_is_a_daemon() {
    let mut value = chain();
    value["blocks"][1]
        .as_object_mut()
        .unwrap()
        .remove("lifecycle");
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[1].lifecycle".into())),
        "{found:?}"
    );
}

#[test]
fn a_webhook_intake_runs_no_step_and_needs_a_secret() {
    let mut value = chain();
    value["blocks"][0]["runtime"] = json!("command");
    value["blocks"][0]["inputs"]["config"] = json!({"command": ["true"]});
    value["blocks"][0]["trigger"]
        .as_object_mut()
        .unwrap()
        .remove("secret_env");
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[0].runtime".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("TPL0026".into(), "$.blocks[0].trigger.secret_env".into())),
        "{found:?}"
    );
}

#[test]
fn two_stages_may_not_share_a_state() {
    let value = template(vec![
        block("intake", None),
        block("annotate", Some("intake")),
        block("other", Some("intake")),
        block("score", Some("annotate")),
    ]);
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[2].inputs.depends".into())),
        "{found:?}"
    );
}

#[test]
fn a_stage_with_a_step_writes_one_json_results_artifact_and_batch_is_bounded() {
    let mut value = chain();
    value["blocks"][1]["runtime"] = json!("command");
    value["blocks"][1]["inputs"]["config"] = json!({"command": ["true"], "batch": 5000});
    value["blocks"][1]["outputs"]["artifacts"] = json!([
        {"key": "a", "path": "a.json", "format": "json"},
        {"key": "b", "path": "b.md", "format": "md"}
    ]);
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[1].outputs.artifacts".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[1].inputs.config.batch".into())),
        "{found:?}"
    );
}

#[test]
fn gates_and_thresholds_on_stream_blocks_are_refused_not_ignored() {
    let mut value = chain();
    value["blocks"][1]["execution"] =
        json!({"human_gate": "after", "threshold": {"metric": "score", "min": 1}});
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0028".into(), "$.blocks[1].execution.human_gate".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("TPL0028".into(), "$.blocks[1].execution.threshold".into())),
        "{found:?}"
    );
}

#[test]
fn batch_outside_a_stream_is_refused() {
    let value = template(vec![json!({
        "id": "a", "name": "a", "layer": "L1", "type": "build", "runtime": "builtin",
        "inputs": {"config": {"builtin": "noop", "batch": 10}}
    })]);
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[0].inputs.config.batch".into())),
        "{found:?}"
    );
}

fn stage(max_attempts: u32) -> Stage {
    Stage {
        block: "annotate".into(),
        from: 0,
        batch: 10,
        max_attempts,
        pass_through: false,
        results_key: Some("results".into()),
        timeout_ms: 1000,
    }
}

fn claimed(key: &str, attempts: u32) -> Claimed {
    Claimed {
        key: key.into(),
        attempts,
        data: json!({"video_id": key, "title": "t"}),
    }
}

#[test]
fn results_move_records_on_merge_their_data_and_fail_the_rest() {
    let batch = [
        claimed("a", 0),
        claimed("b", 0),
        claimed("c", 2),
        claimed("d", 0),
    ];
    let results = json!([
        {"key": "a", "data": {"tags": ["x"]}},
        {"key": "b", "error": "no transcript"},
        {"key": "zzz", "data": {}},
        {"key": "d"}
    ]);
    let bytes = serde_json::to_vec(&results).unwrap();
    let settled = settle(&stage(3), &batch, StageOutput::Results(&bytes), 10_000);
    assert_eq!(
        settled.moves[0],
        Move::Advance {
            key: "a".into(),
            attempt: 1,
            data: json!({"video_id": "a", "title": "t", "tags": ["x"]})
        }
    );
    assert_eq!(
        settled.moves[1],
        Move::Retry {
            key: "b".into(),
            attempt: 1,
            error: "no transcript".into(),
            at: 11_000
        }
    );
    // Third attempt of three: given up, waiting for a person.
    assert!(
        matches!(&settled.moves[2], Move::GiveUp { key, attempt: 3, error } if key == "c" && error.contains("no result"))
    );
    assert!(matches!(&settled.moves[3], Move::Advance { key, .. } if key == "d"));
    assert_eq!(settled.notes.len(), 1, "{:?}", settled.notes);
    assert!(settled.notes[0].contains("zzz"));
}

#[test]
fn a_failed_step_or_unreadable_results_fail_the_whole_batch() {
    let batch = [claimed("a", 0), claimed("b", 1)];
    let settled = settle(&stage(2), &batch, StageOutput::Failed("exit status 3"), 0);
    assert!(matches!(&settled.moves[0], Move::Retry { error, .. } if error == "exit status 3"));
    assert!(matches!(&settled.moves[1], Move::GiveUp { attempt: 2, .. }));
    for junk in [
        &b"not json"[..],
        b"{\"key\": \"a\"}",
        b"[1, 2]",
        b"[{\"data\": {}}]",
        b"[{\"key\": \"a\", \"data\": 3}]",
    ] {
        let settled = settle(&stage(5), &batch, StageOutput::Results(junk), 0);
        assert!(
            settled.moves.iter().all(
                |m| matches!(m, Move::Retry { error, .. } if error.contains("cannot be read"))
            ),
            "{junk:?}: {settled:?}"
        );
    }
}

#[test]
fn pass_through_moves_every_record_unchanged() {
    let batch = [claimed("a", 0)];
    let settled = settle(&stage(1), &batch, StageOutput::PassAll, 0);
    assert_eq!(
        settled.moves,
        [Move::Advance {
            key: "a".into(),
            attempt: 1,
            data: batch[0].data.clone()
        }]
    );
}

#[test]
fn a_record_key_comes_from_the_tracked_field() {
    assert_eq!(record_key("id", &json!({"id": "v-1"})), Ok("v-1".into()));
    assert_eq!(record_key("id", &json!({"id": 42})), Ok("42".into()));
    assert_eq!(record_key("id", &json!([1])), Err(KeyError::NotAnObject));
    assert_eq!(
        record_key("id", &json!({"other": 1})),
        Err(KeyError::Missing("id".into()))
    );
    assert_eq!(
        record_key("id", &json!({"id": " "})),
        Err(KeyError::NotAKey("id".into()))
    );
    assert_eq!(
        record_key("id", &json!({"id": {"a": 1}})),
        Err(KeyError::NotAKey("id".into()))
    );
    for bad in [
        json!({"id": "a\u{0}b"}),
        json!({"id": 1.5}),
        json!({"id": 1e300}),
    ] {
        assert_eq!(
            record_key("id", &bad),
            Err(KeyError::NotAKey("id".into())),
            "{bad}"
        );
    }
    let long = "x".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        record_key("id", &json!({"id": long})),
        Err(KeyError::TooLong { .. })
    ));
}

#[test]
fn retries_back_off_to_a_ceiling() {
    assert_eq!(retry_delay_ms(1), 1000);
    assert_eq!(retry_delay_ms(2), 2000);
    assert_eq!(retry_delay_ms(5), 16_000);
    assert_eq!(retry_delay_ms(40), 300_000);
}

#[test]
fn a_cron_intake_runs_a_step_that_lists_records() {
    let mut value = chain();
    value["blocks"][0]["trigger"] =
        json!({"type": "cron", "cron": "*/5 * * * *", "timezone": "Europe/Paris", "catch_up": 3});
    value["blocks"][0]["runtime"] = json!("command");
    value["blocks"][0]["inputs"]["config"] = json!({"command": ["ls"]});
    let pipeline = validate_value(&value).pipeline.expect("valid");
    let plan = pipeline.stream().unwrap();
    match &plan.intakes[0].kind {
        IntakeKind::Cron(cron) => {
            assert_eq!(
                (
                    cron.expression.as_str(),
                    cron.timezone.as_deref(),
                    cron.catch_up
                ),
                ("*/5 * * * *", Some("Europe/Paris"), 3)
            );
            assert_eq!(cron.records_key, "records");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        plan.webhook_intake("intake").is_none(),
        "no hook for a cron intake"
    );

    // A no-op lists nothing; a bad zone, too many catch-ups, a secret on a cron trigger.
    value["blocks"][0]["runtime"] = json!("builtin");
    value["blocks"][0]["inputs"]["config"] = json!({"builtin": "noop"});
    value["blocks"][0]["trigger"] =
        json!({"type": "cron", "cron": "0 6 * * *", "timezone": "Mars/Olympus", "secret_env": "X"});
    let found = errors(&value);
    for (code, path) in [
        ("TPL0029", "$.blocks[0].runtime"),
        ("TPL0026", "$.blocks[0].trigger.timezone"),
        ("TPL0026", "$.blocks[0].trigger.secret_env"),
    ] {
        assert!(
            found.contains(&(code.into(), path.into())),
            "{code} {path}: {found:?}"
        );
    }
    value["blocks"][0]["trigger"] = json!({"type": "cron", "cron": "0 6 * * *", "catch_up": 101});
    let found = errors(&value);
    assert!(
        found.iter().any(|(_, p)| p.ends_with("trigger.catch_up")),
        "{found:?}"
    );
}

#[test]
fn a_cron_trigger_outside_a_stream_starts_runs_and_is_not_a_stream() {
    let value = template(vec![json!({
        "id": "a", "name": "a", "layer": "L1", "type": "build", "runtime": "builtin",
        "trigger": {"type": "cron", "cron": "0 6 * * *"},
        "inputs": {"config": {"builtin": "noop"}}
    })]);
    let pipeline = validate_value(&value).pipeline.expect("valid");
    assert!(pipeline.stream().is_none());
    assert_eq!(pipeline.starters().len(), 1);
    assert_eq!(pipeline.starters()[0].block, "a");
}

#[test]
fn an_event_intake_takes_matching_feed_events_as_records() {
    let mut value = chain();
    value["blocks"][0]["trigger"] =
        json!({"type": "event", "event": "video.published(channel=main)"});
    let pipeline = validate_value(&value).pipeline.expect("valid");
    let plan = pipeline.stream().expect("a stream");
    match &plan.intakes[0].kind {
        IntakeKind::Event(filter) => {
            assert_eq!(filter.to_string(), "video.published(channel=main)")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        pipeline.starters().is_empty(),
        "a stream's triggers feed records"
    );
    value["blocks"][0]["runtime"] = json!("command");
    value["blocks"][0]["inputs"]["config"] = json!({"command": ["true"]});
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[0].runtime".into())),
        "an event intake runs no step: {found:?}"
    );
    value = chain();
    value["blocks"][1]["outputs"]["emits"] =
        json!([{"event": "video.scored", "artifact": "records"}]);
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0028".into(), "$.blocks[1].outputs.emits".into())),
        "{found:?}"
    );
}

#[test]
fn fields_a_stream_would_not_act_on_are_refused() {
    let mut value = chain();
    value["audit"] = json!({"subject_param": "topic"});
    value["params"] = json!({"topic": {"default": "x"}});
    value["blocks"][0]["execution"] = json!({"max_retries": 5});
    value["blocks"][0]["model"] = json!("opus");
    value["blocks"][1]["outputs"]["metrics"] = json!([{"key": "score", "type": "number"}]);
    value["blocks"][1]["execution"] = json!({"separate_reviewer": true, "parallel_group": "g"});
    let found = errors(&value);
    for (code, path) in [
        ("TPL0029", "$.audit"),
        ("TPL0029", "$.blocks[0].execution"),
        ("TPL0029", "$.blocks[0].model"),
        ("TPL0028", "$.blocks[1].outputs.metrics"),
        ("TPL0028", "$.blocks[1].execution.separate_reviewer"),
        ("TPL0028", "$.blocks[1].execution.parallel_group"),
    ] {
        assert!(
            found.contains(&(code.into(), path.into())),
            "{code} {path}: {found:?}"
        );
    }
}

#[test]
fn a_manual_intake_takes_records_a_person_adds() {
    let mut value = template(vec![
        block("intake", None),
        block("annotate", Some("intake")),
        block("score", Some("annotate")),
    ]);
    let mut by_hand = block("by-hand", None);
    by_hand["trigger"] = json!({"type": "manual"});
    value["blocks"].as_array_mut().unwrap().push(by_hand);
    let pipeline = validate_value(&value).pipeline.expect("valid");
    let plan = pipeline.stream().unwrap();
    assert_eq!(
        plan.manual_intake(None).map(|i| i.block.as_str()),
        Some("by-hand")
    );
    assert_eq!(
        plan.manual_intake(Some("by-hand"))
            .map(|i| i.block.as_str()),
        Some("by-hand")
    );
    assert!(
        plan.manual_intake(Some("intake")).is_none(),
        "a webhook intake is not manual"
    );
    assert!(
        plan.webhook_intake("by-hand").is_none(),
        "no hook for a manual intake"
    );

    // A manual trigger outside a stream is refused, not run as a one-shot.
    let one_shot = template(vec![json!({
        "id": "a", "name": "a", "layer": "L1", "type": "build", "runtime": "builtin",
        "trigger": {"type": "manual"}, "inputs": {"config": {"builtin": "noop"}}
    })]);
    let found = errors(&one_shot);
    assert!(
        found.contains(&("TPL0028".into(), "$.blocks[0].trigger.type".into())),
        "{found:?}"
    );
}

#[test]
fn two_intakes_may_not_share_a_declared_webhook_path() {
    let mut value = chain();
    value["blocks"][0]["trigger"]["webhook"] = json!("feed/new");
    let mut second = block("intake-2", None);
    second["trigger"]["webhook"] = json!("/feed/new/");
    value["blocks"].as_array_mut().unwrap().push(second);
    let found = errors(&value);
    assert!(
        found.contains(&("TPL0029".into(), "$.blocks[3].trigger.webhook".into())),
        "{found:?}"
    );
    value["blocks"][3]["trigger"]["webhook"] = json!("feed/other");
    assert!(errors(&value).is_empty(), "{:?}", errors(&value));
}
