use serde_json::json;

use super::*;
use crate::run::BlockStatus;
use crate::template::{ListSource, Need};

fn spec(key: Option<&str>, max: u32, need: Need, pointer: Option<&str>) -> FanOut {
    FanOut {
        over: ListSource {
            param: Some("items".into()),
            block: None,
            artifact: None,
            pointer: pointer.map(str::to_string),
        },
        key: key.map(str::to_string),
        max,
        need,
    }
}

#[test]
fn keys_come_from_the_named_field_the_item_or_its_position() {
    let items = json!([
        {"name": "Competitive Landscape!", "x": 1},
        "Gap analysis",
        {"other": "no name"},
        7,
        {"name": ""}
    ]);
    let made = instances("lens", &spec(Some("name"), 10, Need::All, None), &items).unwrap();
    let keys: Vec<&str> = made.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        keys,
        ["competitive-landscape", "gap-analysis", "2", "7", "4"]
    );
    assert_eq!(made[0].id, "lens[competitive-landscape]");
    assert_eq!(made[0].item, items[0]);
    let long = key_of(&json!("a".repeat(500)), None, 0);
    assert_eq!(long.len(), MAX_KEY_LEN);
}

#[test]
fn an_unusable_list_says_what_is_wrong_and_where() {
    let over = |value: serde_json::Value, s: FanOut| instances("lens", &s, &value).unwrap_err();
    let error = over(json!({"a": 1}), spec(None, 10, Need::All, None));
    assert!(
        error.contains("param `items`") && error.contains("an object, not a JSON array"),
        "{error}"
    );
    let error = over(
        json!({"plan": []}),
        spec(None, 10, Need::All, Some("/missing")),
    );
    assert!(
        error.contains("at `/missing`: there is nothing at that pointer"),
        "{error}"
    );
    let error = over(json!([1, 2, 3]), spec(None, 2, Need::All, None));
    assert!(
        error.contains("has 3 items, more than `fan_out.max` (2)"),
        "{error}"
    );
    let error = over(json!([1]), spec(None, 5, Need::AtLeast(2), None));
    assert!(error.contains("fewer than the 2"), "{error}");
    let error = over(json!([]), spec(None, 5, Need::Any, None));
    assert!(error.contains("fewer than the 1"), "{error}");
    let error = over(json!(["A b", "a-b"]), spec(None, 5, Need::All, None));
    assert!(
        error.contains("items 0 and 1") && error.contains("`a-b`"),
        "{error}"
    );
    // Under `all`, an empty list is an empty group (done at once).
    assert!(
        instances("lens", &spec(None, 5, Need::All, None), &json!([]))
            .unwrap()
            .is_empty()
    );
    // A pointer reaches into an artifact.
    let made = instances(
        "lens",
        &spec(None, 5, Need::All, Some("/plan/items")),
        &json!({"plan": {"items": ["x"]}}),
    )
    .unwrap();
    assert_eq!(made[0].id, "lens[x]");
}

/// A run of `g` (a fan-out over param `p`) with two instances made.
fn expanded_run() -> (Pipeline, RunDoc, Vec<crate::run::EventRecord>) {
    let value = json!({
        "id": "t", "name": "T", "version": "1", "params": {"p": {"default": ["a", "b"]}},
        "blocks": [{
            "id": "g", "name": "g", "layer": "L0", "type": "build", "runtime": "command",
            "inputs": {"config": {"command": ["true"]}},
            "fan_out": {"over": {"param": "p"}},
            "execution": {"human_gate": "after", "separate_reviewer": true},
            "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]}
        }]
    });
    let pipeline = crate::validate::validate_value(&value).pipeline.unwrap();
    let created = crate::transitions::create_run(
        &pipeline,
        &crate::transitions::RunRequest {
            run_id: "r".into(),
            ..Default::default()
        },
        &|_| true,
    )
    .unwrap();
    let first = crate::run::EventRecord {
        seq: 1,
        at: 1,
        actor: "user:ann".into(),
        event: created,
    };
    let mut doc = RunDoc::from_created(&first).unwrap();
    let mut log = vec![first];
    let mut commit = |doc: &mut RunDoc, events: Vec<Event>, actor: &str| {
        let records = crate::commit_in_place(doc, events, actor, 2).unwrap();
        log.extend(records);
    };
    commit(
        &mut doc,
        vec![Event::BlockReady {
            block: "g".into(),
            reason: "go".into(),
        }],
        "scheduler",
    );
    let start = crate::transitions::start(&doc, "g", "w", 2, &Default::default()).unwrap();
    commit(&mut doc, vec![start], "worker:w");
    let events = expand(&pipeline, &doc, "g", 1, &json!(["a", "b"])).unwrap();
    commit(&mut doc, events, "worker:w");
    (pipeline, doc, log)
}

#[test]
fn whoever_set_a_group_going_set_its_instances_going() {
    let (_, doc, mut log) = expanded_run();
    assert_eq!(doc.blocks["g"].instances.as_ref().unwrap().len(), 2);
    assert_eq!(doc.blocks["g"].status, BlockStatus::Pending);
    // Bob resets the group (it expands anew): its instances' passes are
    // his too, so a separate-reviewer gate refuses his approval of them.
    log.push(crate::run::EventRecord {
        seq: 99,
        at: 3,
        actor: "user:bob".into(),
        event: Event::BlockReset {
            block: "g".into(),
            reason: "again".into(),
            fresh: true,
            regroup: true,
        },
    });
    let actors = crate::run::ran_by(&log, "g[a]");
    assert!(
        actors.contains("user:bob") && actors.contains("user:ann"),
        "{actors:?}"
    );
    assert!(!crate::run::ran_by(&log, "other").contains("user:bob"));
}

#[test]
fn a_refused_regroup_leaves_the_document_as_it_was() {
    let (_, mut doc, _) = expanded_run();
    doc.blocks.get_mut("g[a]").unwrap().status = BlockStatus::Running;
    let before = doc.clone();
    let refused = doc.apply(&crate::run::EventRecord {
        seq: doc.seq + 1,
        at: 9,
        actor: "user:bob".into(),
        event: Event::BlockReset {
            block: "g[a]".into(),
            reason: "x".into(),
            fresh: false,
            regroup: true,
        },
    });
    assert!(refused.is_err());
    assert_eq!(doc, before);
}

#[test]
fn a_group_is_never_decided_on_a_graph_without_its_instances() {
    let (pipeline, doc, _) = expanded_run();
    // The template's own graph (not the run's): the group waits.
    let decision = crate::scheduler::decide(&pipeline, &doc, 10, 0);
    assert!(
        !decision
            .events
            .iter()
            .any(|e| matches!(e, Event::GroupDone { .. })),
        "{:?}",
        decision.events
    );
    // On the run's graph its two instances become ready.
    let run = pipeline.for_run(&doc).unwrap();
    let decision = crate::scheduler::decide(&run, &doc, 10, 0);
    assert_eq!(decision.startable, ["g[a]", "g[b]"]);
}
