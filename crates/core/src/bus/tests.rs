use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::run::{GatePhase, RunStatus};

/// Run `r1` of template `t`, with param `entity`.
fn run_created() -> Event {
    Event::RunCreated {
        run_id: "r1".into(),
        template_id: "t".into(),
        template_version: "1".into(),
        autonomy_profile: None,
        params: BTreeMap::from([("entity".to_string(), json!("acme"))]),
        blocks: Vec::new(),
        models: BTreeMap::new(),
        default_model: None,
        sampling: BTreeMap::new(),
        max_concurrency: None,
        no_cache: false,
        past_ratings: Vec::new(),
    }
}

fn doc() -> RunDoc {
    RunDoc::from_created(&record(1, run_created())).unwrap()
}

fn record(seq: u64, event: Event) -> EventRecord {
    EventRecord {
        seq,
        at: seq as i64,
        actor: "test".into(),
        event,
    }
}

#[test]
fn a_runs_commit_tells_of_its_start_its_blocks_its_gates_and_its_end() {
    let doc = doc();
    let records = vec![
        record(
            2,
            Event::BlockReady {
                block: "a".into(),
                reason: "deps".into(),
            },
        ),
        record(3, Event::BlockDone { block: "a".into() }),
        record(
            4,
            Event::BlockWaiting {
                block: "b".into(),
                phase: GatePhase::After,
            },
        ),
        record(
            5,
            Event::BlockFailed {
                block: "c".into(),
                error: "boom".into(),
            },
        ),
        record(
            6,
            Event::RunStatusChanged {
                status: RunStatus::Waiting,
            },
        ),
        record(
            7,
            Event::RunStatusChanged {
                status: RunStatus::Failed,
            },
        ),
    ];
    let events = run_events(&doc, &records);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [BLOCK_DONE, GATE_WAITING, BLOCK_FAILED, RUN_FINISHED],
        "ready and a non-final status change are not feed events"
    );
    assert_eq!(events[0].payload["block"], "a");
    assert_eq!(events[0].payload["run_id"], "r1");
    assert_eq!(events[0].payload["template"], "t");
    assert_eq!(events[1].payload["phase"], "after");
    assert_eq!(events[2].payload["error"], "boom");
    assert_eq!(events[3].payload["status"], "failed");
    assert_eq!(events[3].block, None);

    let approved = run_events(
        &doc,
        &[record(
            8,
            Event::GateApproved {
                block: "b".into(),
                phase: GatePhase::After,
                note: None,
            },
        )],
    );
    assert_eq!(
        approved.len(),
        1,
        "a block done through its after-gate is done"
    );
    assert_eq!(approved[0].name, BLOCK_DONE);
    let before = run_events(
        &doc,
        &[record(
            9,
            Event::GateApproved {
                block: "b".into(),
                phase: GatePhase::Before,
                note: None,
            },
        )],
    );
    assert!(before.is_empty(), "a passed before-gate only lets it start");

    let created = run_events(&doc, &[record(1, run_created())]);
    assert_eq!(created[0].name, RUN_CREATED);
    assert_eq!(created[0].payload["params"], json!({"entity": "acme"}));
}

#[test]
fn record_changes_become_record_events_and_a_webhook_receipt() {
    let received = RecordEvent::Received {
        block: "intake".into(),
        webhook_id: Some("msg_1".into()),
        tick: None,
        by: None,
        event: None,
    };
    let events = record_events(
        "s",
        "v1",
        &received,
        RecordAfter {
            state: "raw",
            status: "ready",
        },
    );
    assert_eq!(
        events.len(),
        1,
        "a delivery that makes a record is told of once"
    );
    assert_eq!(events[0].name, RECORD_RECEIVED);
    assert_eq!(events[0].payload["via"], "webhook");
    assert_eq!(events[0].payload["webhook_id"], "msg_1");
    assert!(
        events[0].payload.get("data").is_none(),
        "the record holds its data"
    );
    assert_eq!(events[0].record_key.as_deref(), Some("v1"));
    let known = webhook_received("s", "intake", "msg_2", "v1");
    assert_eq!(known.name, WEBHOOK_RECEIVED);
    assert_eq!(known.payload["webhook_id"], "msg_2");

    let moved = RecordEvent::Moved {
        block: "score".into(),
        from: "embedded".into(),
        to: "scored".into(),
        attempt: 1,
    };
    let events = record_events(
        "s",
        "v1",
        &moved,
        RecordAfter {
            state: "scored",
            status: "done",
        },
    );
    assert_eq!(events[0].name, RECORD_MOVED);
    assert!(
        EventFilter::parse("record.moved(state=scored, status=done)")
            .unwrap()
            .matches(&events[0])
    );
    assert!(
        !EventFilter::parse("record.moved(state=raw)")
            .unwrap()
            .matches(&events[0])
    );

    let failed_attempt = RecordEvent::AttemptFailed {
        block: "score".into(),
        attempt: 1,
        error: "x".into(),
        retry_at: 5,
    };
    let after = RecordAfter {
        state: "embedded",
        status: "ready",
    };
    assert!(
        record_events("s", "v1", &failed_attempt, after).is_empty(),
        "a retried attempt is not news"
    );
}

#[test]
fn filters_parse_into_conditions_and_match_the_payload() {
    let filter =
        EventFilter::parse("entity.created( gate = 2, kind=person, name=\"Ada, L.\", vip=true )")
            .unwrap();
    assert_eq!(filter.name, "entity.created");
    assert_eq!(filter.conditions.len(), 4);
    assert_eq!(
        filter.to_string(),
        "entity.created(gate=2, kind=person, name=\"Ada, L.\", vip=true)"
    );
    let event = |payload: serde_json::Value| BusEvent {
        name: "entity.created".into(),
        template_id: "t".into(),
        run_id: None,
        block: None,
        record_key: None,
        payload: payload.as_object().unwrap().clone(),
    };
    let good = json!({"gate": 2.0, "kind": "person", "name": "Ada, L.", "vip": true});
    assert!(filter.matches(&event(good.clone())));
    let mut text_gate = good.clone();
    text_gate["gate"] = json!("2");
    assert!(
        filter.matches(&event(text_gate)),
        "a number may arrive as its text"
    );
    for (field, value) in [
        ("gate", json!(3)),
        ("kind", json!("company")),
        ("vip", json!("true")),
        ("name", json!(null)),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        assert!(!filter.matches(&event(bad)), "{field}");
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("gate");
    assert!(!filter.matches(&event(missing)), "a missing field fails");
    let mut other = event(good);
    other.name = "entity.updated".into();
    assert!(!filter.matches(&other));
    assert!(
        EventFilter::parse("entity.created(gate=2, gate=3)")
            .unwrap_err()
            .contains("twice")
    );
    assert!(EventFilter::parse("entity.created(gate=1e)").is_err());
}

#[test]
fn a_block_emits_objects_or_arrays_of_objects_under_a_name_of_its_own() {
    let doc = doc();
    let events = emitted(
        &doc,
        "find",
        "entity.created",
        "entities",
        &json!([{"id": "e1", "gate": 2}, {"id": "e2", "gate": 1, "block": "mine"}]),
    )
    .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].payload["id"], "e1");
    assert_eq!(events[0].payload["run_id"], "r1");
    assert_eq!(
        events[1].payload["block"], "find",
        "the envelope wins over the item"
    );
    assert_eq!(events[1].block.as_deref(), Some("find"));
    let one = emitted(&doc, "find", "entity.created", "e", &json!({"id": 1})).unwrap();
    assert_eq!(one.len(), 1);
    assert!(
        emitted(&doc, "find", "entity.created", "e", &json!("x"))
            .unwrap_err()
            .contains("JSON object or an array")
    );
    assert!(
        emitted(&doc, "find", "entity.created", "e", &json!([1]))
            .unwrap_err()
            .contains("item 0")
    );
    let many = serde_json::Value::Array(vec![json!({}); MAX_EMITTED + 1]);
    assert!(
        emitted(&doc, "find", "entity.created", "e", &many)
            .unwrap_err()
            .contains("at most")
    );

    assert_eq!(check_emitted_name("entity.created"), Ok(()));
    assert!(
        check_emitted_name("run.finished")
            .unwrap_err()
            .contains("factory's own")
    );
    assert!(
        check_emitted_name("Entity")
            .unwrap_err()
            .contains("not an event name")
    );
}

#[test]
fn a_fan_out_block_done_as_a_group_is_a_block_done_event() {
    let events = run_events(
        &doc(),
        &[record(
            2,
            Event::GroupDone {
                block: "lens".into(),
                reason: "all 4 instances done".into(),
            },
        )],
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, BLOCK_DONE);
    assert_eq!(events[0].block.as_deref(), Some("lens"));
}
