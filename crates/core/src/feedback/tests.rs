//! Routing, resolution, review items and convergence on the shipped
//! clone-factory DAG, with every block turned into a no-op.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::*;
use crate::consensus::{TesterRole, Vote};
use crate::run::{AttemptReport, EventRecord};
use crate::transitions::{self, Policy, RunRequest};
use crate::{commit, decide, validate_value};

const NOW: i64 = 1_000_000;

fn clone_factory() -> Pipeline {
    let mut value: Value =
        serde_json::from_str(include_str!("../../../../templates/clone-factory.json")).unwrap();
    for block in value["blocks"].as_array_mut().unwrap() {
        if block["inputs"]["config"]["builtin"] == "corrections-router" {
            continue;
        }
        block["runtime"] = json!("builtin");
        block["inputs"]["config"] = json!({ "builtin": "noop" });
        block["inputs"]["env"] = json!([]);
        block.as_object_mut().unwrap().remove("audit");
    }
    let validated = validate_value(&value);
    assert!(!validated.has_errors(), "{:#?}", validated.diagnostics);
    validated.pipeline.unwrap()
}

fn report(metrics: &[(&str, f64)]) -> AttemptReport {
    AttemptReport {
        metrics: metrics
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
        ..AttemptReport::default()
    }
}

/// Runs every block that becomes startable and approves every gate, until
/// `stop_before` is the only thing left to start (or the run ends).
fn drive(pipeline: &Pipeline, doc: &mut RunDoc, stop_before: &str, score: f64) {
    for _ in 0..200 {
        let decision = decide(pipeline, doc, NOW, 0);
        commit(doc, decision.events.clone(), "engine", NOW).unwrap();
        let waiting: Vec<String> = doc
            .blocks
            .iter()
            .filter(|(_, s)| s.status == BlockStatus::Waiting)
            .map(|(id, _)| id.clone())
            .collect();
        let startable: Vec<String> = decision
            .startable
            .into_iter()
            .filter(|b| b != stop_before)
            .collect();
        if startable.is_empty() && waiting.is_empty() {
            return;
        }
        for block in waiting {
            let event = transitions::approve(doc, &block, None).unwrap();
            commit(doc, vec![event], "reviewer", NOW).unwrap();
        }
        for block in startable {
            let start = transitions::start(doc, &block, "w", NOW, &Policy::default()).unwrap();
            commit(doc, vec![start], "worker:w", NOW).unwrap();
            let attempt = doc.blocks[&block].attempts;
            let events = transitions::finish(
                pipeline,
                doc,
                &block,
                attempt,
                report(&[("score", score)]),
                NOW,
                &Policy::default(),
            )
            .unwrap();
            commit(doc, events, "worker:w", NOW).unwrap();
        }
    }
    panic!("the run did not settle");
}

fn new_run(pipeline: &Pipeline) -> RunDoc {
    let request = RunRequest {
        run_id: "r1".into(),
        params: BTreeMap::from([("expert_name".to_string(), json!("Samuel Ngu"))]),
        ..RunRequest::default()
    };
    let created = transitions::create_run(pipeline, &request, &|_| true).unwrap();
    RunDoc::from_created(&EventRecord {
        seq: 1,
        at: NOW,
        actor: "test".into(),
        event: created,
    })
    .unwrap()
}

fn item(id: &str, target: &str, priority: &str, source: &str) -> AcceptedItem {
    AcceptedItem {
        id: id.into(),
        source_key: format!("{target}:$.{id}"),
        skill_target: target.into(),
        priority: priority.into(),
        source_text: format!("finding {id}"),
        expert_correction: format!("fix {id}"),
        source: source.into(),
        feedback_ids: vec![format!("fb-{id}")],
    }
}

/// Items the plan routed, over all targets.
fn items_routed(plan: &Value) -> usize {
    plan["routed"]
        .as_object()
        .unwrap()
        .values()
        .map(|list| list.as_array().unwrap().len())
        .sum()
}

/// The run after the router's attempt finished, ready to route.
fn at_router(pipeline: &Pipeline) -> RunDoc {
    let mut doc = new_run(pipeline);
    drive(pipeline, &mut doc, "corrections-router", 95.0);
    let decision = decide(pipeline, &doc, NOW, 0);
    assert_eq!(decision.startable, vec!["corrections-router".to_string()]);
    doc
}

#[test]
fn routing_resets_exactly_the_targets_and_their_descendants() {
    let pipeline = clone_factory();
    let doc = at_router(&pipeline);
    let items = vec![
        item("a", "voice-extractor", "high", EXTRACTION_REVIEW),
        item("b", "soul-extractor", "critical", EXPERT_AUDIT),
        item("c", "voice-extractor", "critical", EXPERT_AUDIT),
        item("d", "no-such-block", "low", EXPERT_AUDIT),
    ];
    let routing = route(&pipeline, &doc, "corrections-router", &items).unwrap();
    assert_eq!(routing.targets, vec!["soul-extractor", "voice-extractor"]);
    let Event::CorrectionsRouted {
        from,
        to,
        targets,
        reason,
        ..
    } = routing.events.last().expect("events")
    else {
        panic!("{:?}", routing.events.last());
    };
    assert_eq!((*from, *to), (1, 2));
    assert_eq!(
        reason,
        "3 accepted items routed to soul-extractor (1 item), voice-extractor (2 items)"
    );
    let voice = &targets["voice-extractor"];
    assert_eq!(voice.version, "v1→v2");
    assert_eq!(voice.source, "expert-audit + extraction-review");
    assert!(
        voice
            .instruction
            .starts_with("The expert reviewed the previous version"),
        "clone-factory's own corrections_instruction: {}",
        voice.instruction
    );
    assert_eq!(
        voice
            .items
            .iter()
            .map(|i| i.priority.as_str())
            .collect::<Vec<_>>(),
        ["critical", "high"],
        "critical first"
    );
    assert_eq!(voice.items[0].improvement_item_id.as_deref(), Some("c"));

    // Resets come first: they start new passes, which clear old corrections.
    let reset: BTreeSet<String> = routing.events[..routing.events.len() - 1]
        .iter()
        .map(|e| match e {
            Event::BlockReset { block, .. } => block.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for target in ["voice-extractor", "soul-extractor"] {
        let i = pipeline.index_of(target).unwrap();
        expected.insert(target.to_string());
        for d in pipeline.descendants(i) {
            let id = &pipeline.blocks()[d].id;
            if doc.blocks[id].status != BlockStatus::Pending {
                expected.insert(id.clone());
            }
        }
    }
    assert_eq!(reset, expected);
    for untouched in [
        "framework-extractor",
        "resource-extractor",
        "offer-extractor",
        "rubric-builder",
        "deep-research",
    ] {
        assert!(
            !reset.contains(untouched),
            "{untouched} must keep its artifacts"
        );
    }
    assert!(reset.contains("clone-compiler") && reset.contains("expert-audit"));
    // The L3 builders read the extractions through the extraction router.
    assert!(reset.contains("onboarding-builder"));
    assert_eq!(routing.plan["unroutable"][0]["id"], "d");
    assert_eq!(routing.plan["proceed"], false);
    assert_eq!(routing.plan["routed"]["voice-extractor"][0]["id"], "c");
    // The submissions behind the items, and the summary seed 002 gives the
    // expert audit's outputs.
    assert_eq!(
        routing.plan["routed"]["voice-extractor"][0]["feedback_ids"],
        json!(["fb-c"])
    );
    let ids = routing.plan["feedback_ids"].as_array().unwrap();
    assert!(
        ids.contains(&json!("fb-d")) && ids.len() == items_routed(&routing.plan) + 1,
        "{ids:?}"
    );
    assert_eq!(
        routing.plan["improvement_summary"]["routed"]
            .as_u64()
            .unwrap() as usize,
        items_routed(&routing.plan)
    );

    // Applied, the run is at v2 and re-runs the targets with the corrections.
    let mut doc = doc;
    commit(&mut doc, routing.events, "engine", NOW).unwrap();
    assert_eq!(doc.version, 2);
    assert_eq!(
        doc.blocks["voice-extractor"]
            .corrections
            .as_ref()
            .unwrap()
            .items
            .len(),
        2
    );
    assert!(doc.blocks["framework-extractor"].corrections.is_none());
    let decision = decide(&pipeline, &doc, NOW, 0);
    assert_eq!(
        decision.startable,
        vec!["soul-extractor", "voice-extractor"]
    );
}

#[test]
fn no_accepted_items_means_proceed() {
    let pipeline = clone_factory();
    let doc = at_router(&pipeline);
    let routing = route(&pipeline, &doc, "corrections-router", &[]).unwrap();
    assert!(routing.events.is_empty());
    assert_eq!(routing.plan["proceed"], true);
    assert_eq!(routing.plan["version"], "v1");
}

#[test]
fn completing_a_corrected_block_resolves_its_items() {
    let pipeline = clone_factory();
    let mut doc = at_router(&pipeline);
    let items = vec![item("a", "voice-extractor", "high", EXTRACTION_REVIEW)];
    let routing = route(&pipeline, &doc, "corrections-router", &items).unwrap();
    commit(&mut doc, routing.events, "engine", NOW).unwrap();
    drive(&pipeline, &mut doc, "corrections-router", 95.0);
    let refs = vec![
        ItemRef {
            id: "a".into(),
            source_key: "voice-extractor:$.a".into(),
            skill_target: "voice-extractor".into(),
            status: "accepted".into(),
        },
        ItemRef {
            id: "other".into(),
            source_key: "voice-extractor:$.z".into(),
            skill_target: "voice-extractor".into(),
            status: "open".into(),
        },
    ];
    let (events, note) = resolutions(&doc, "voice-extractor", &refs);
    assert_eq!(events.len(), 1, "only the routed, accepted item");
    assert!(
        note.contains("attempt 2") && note.contains("v1→v2"),
        "{note}"
    );
    assert_eq!(doc.blocks["voice-extractor"].history[1].version, 2);
    assert!(resolutions(&doc, "soul-extractor", &refs).0.is_empty());
}

#[test]
fn extraction_items_walk_every_leaf() {
    let items = extraction_items(
        "voice-extractor",
        &json!({"tone": "warm", "modes": [{"name": "high energy", "phrases": ["Let's GO!"]}], "empty": "", "n": 3}),
    );
    let keys: Vec<&str> = items.iter().map(|i| i.source_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "voice-extractor:$.tone",
            "voice-extractor:$.modes[0].name",
            "voice-extractor:$.modes[0].phrases[0]",
            "voice-extractor:$.n"
        ],
        "document order, empty text skipped"
    );
    assert_eq!(items[3].text, "3");
    let many = json!((0..1000).collect::<Vec<_>>());
    assert_eq!(extraction_items("b", &many).len(), MAX_ITEMS_PER_DOCUMENT);
    let found = scenarios(
        &json!({"scenarios": [{"id": "pricing", "prompt": "How much?", "response": "$99"}, {}]}),
    );
    assert_eq!(found[0].id, "pricing");
    assert_eq!(found[1].id, "scenario-2");
    assert!(scenarios(&json!({"score": 9})).is_empty());
}

fn stats(
    version: u32,
    source: &str,
    tester: &str,
    ratings: &[bool],
    verdicts: &[Verdict],
) -> ReviewStats {
    ReviewStats {
        version,
        source: source.into(),
        tester: tester.into(),
        ratings: ratings
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("s{i}"), *r))
            .collect(),
        verdicts: verdicts
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("k{i}"), *v))
            .collect(),
    }
}

#[test]
fn convergence_table_and_ship_criteria() {
    let pipeline = clone_factory();
    let spec = pipeline.template().convergence.clone().unwrap();
    assert_eq!(spec.score_block.as_deref(), Some("clone-tester"));
    let mut doc = new_run(&pipeline);
    drive(&pipeline, &mut doc, "corrections-router", 86.0);
    let routing = route(
        &pipeline,
        &doc,
        "corrections-router",
        &[item("a", "voice-extractor", "critical", EXPERT_AUDIT)],
    )
    .unwrap();
    commit(&mut doc, routing.events, "engine", NOW).unwrap();
    drive(&pipeline, &mut doc, "corrections-router", 93.5);

    use Verdict::*;
    let reviews = vec![
        stats(1, EXPERT_AUDIT, "samuel", &[true, false, false, true], &[]),
        stats(1, EXTRACTION_REVIEW, "samuel", &[], &[Correct, Wrong]),
        stats(2, EXPERT_AUDIT, "samuel", &[false; 5], &[]),
        // A later answer by the same tester on the same scenario replaces
        // the earlier one; an empty closing submission changes nothing.
        stats(
            2,
            EXPERT_AUDIT,
            "samuel",
            &[true, true, true, true, false],
            &[],
        ),
        stats(2, EXPERT_AUDIT, "samuel", &[], &[]),
        stats(2, EXTRACTION_REVIEW, "will", &[], &[Correct; 10]),
    ];
    let items = vec![
        ItemStats {
            priority: "critical".into(),
            status: "resolved".into(),
            opened_in: 1,
            resolved_in: Some(2),
        },
        ItemStats {
            priority: "high".into(),
            status: "open".into(),
            opened_in: 1,
            resolved_in: None,
        },
        ItemStats {
            priority: "high".into(),
            status: "rejected".into(),
            opened_in: 1,
            resolved_in: None,
        },
    ];
    let table = convergence(&doc, &spec, &reviews, &items, &BTreeMap::new());
    assert_eq!(table.rows.len(), 2);
    let v1 = &table.rows[0];
    assert_eq!(
        (
            v1.auto_score,
            v1.approval,
            v1.accuracy,
            v1.critical,
            v1.high,
            v1.status
        ),
        (
            Some(86.0),
            Some(50.0),
            Some(50.0),
            1,
            1,
            VersionStatus::Superseded
        )
    );
    let v2 = &table.rows[1];
    assert_eq!(
        (
            v2.auto_score,
            v2.approval,
            v2.accuracy,
            v2.critical,
            v2.high
        ),
        (Some(93.5), Some(80.0), Some(100.0), 0, 1)
    );
    assert!(table.ready_to_ship, "{:?}", table.unmet);
    assert_eq!(v2.status, VersionStatus::ReadyToShip);

    // A page not published again in v2 keeps its v1 figure; one that was
    // published again and not yet answered does not.
    let v1_extraction: Vec<ReviewStats> = reviews
        .iter()
        .filter(|r| r.version == 1 || r.source != "extraction-review")
        .cloned()
        .collect();
    let published = BTreeMap::from([
        ("extraction-review".to_string(), BTreeSet::from([1])),
        ("expert-audit".to_string(), BTreeSet::from([1, 2])),
    ]);
    let table = convergence(&doc, &spec, &v1_extraction, &items, &published);
    assert_eq!(table.rows[1].accuracy, Some(50.0));
    assert_eq!(table.rows[1].approval, Some(80.0));
    let rerun = BTreeMap::from([("extraction-review".to_string(), BTreeSet::from([1, 2]))]);
    let table = convergence(&doc, &spec, &v1_extraction, &items, &rerun);
    assert_eq!(table.rows[1].accuracy, None);
    assert!(
        table
            .unmet
            .iter()
            .any(|u| u == "no extraction-review verdicts for v2 yet"),
        "{:?}",
        table.unmet
    );

    let strict = ConvergenceSpec {
        min_approval: 90.0,
        max_high: 0,
        ..spec.clone()
    };
    let table = convergence(&doc, &strict, &reviews, &items, &BTreeMap::new());
    assert!(!table.ready_to_ship);
    assert_eq!(
        table.unmet,
        [
            "expert approval 80.0% in v2 is below 90%",
            "1 high item(s) open (at most 0)"
        ]
    );
    let table = convergence(&doc, &spec, &[], &[], &BTreeMap::new());
    assert!(
        table
            .unmet
            .iter()
            .any(|u| u == "no expert-audit ratings for v2 yet")
    );
}

#[test]
fn names_round_trip_and_forms_list_every_priority() {
    for priority in Priority::ALL {
        assert_eq!(priority.as_str().parse(), Ok(priority));
    }
    for status in ItemStatus::ALL {
        assert_eq!(status.as_str().parse(), Ok(status));
    }
    assert_eq!(PRIORITIES, Priority::ALL.map(Priority::as_str));
    assert_eq!(priority_rank("critical"), 0);
    assert_eq!(priority_rank("low"), 3);
    assert_eq!(priority_rank("urgent"), 4);
    assert!(
        "urgent"
            .parse::<Priority>()
            .unwrap_err()
            .contains("critical, high")
    );
}

fn vote(tester: &str, role: TesterRole, verdict: Verdict, review: &str) -> Vote {
    Vote {
        tester: tester.to_string(),
        role,
        verdict,
        feedback_id: review.to_string(),
    }
}

#[test]
fn judging_an_item_keeps_a_persons_decision_and_a_resolution_that_holds() {
    use crate::consensus::TesterRole::{Expert, Team};
    let flag = |tester, role, review| vote(tester, role, Verdict::Wrong, review);
    let clear = |tester, role, review| vote(tester, role, Verdict::Correct, review);

    // Never flagged and cleared now: not a finding.
    assert_eq!(judge_item(None, &[clear("a", Team, "r1")], "r1"), None);
    // A new finding: the heaviest flagging vote wins.
    let votes = [flag("derek", Team, "r1"), flag("samuel", Expert, "r2")];
    let verdict = judge_item(None, &votes, "r2").unwrap();
    assert_eq!((verdict.from, verdict.to), (None, ItemStatus::Accepted));
    assert_eq!(verdict.heaviest, Some(1));
    // A person rejected it (PATCH); a vote that leaves the consensus where
    // it was does not undo that.
    let votes = [flag("samuel", Expert, "r1"), flag("derek", Team, "r2")];
    let verdict = judge_item(Some(ItemStatus::Rejected), &votes, "r2").unwrap();
    assert_eq!(verdict.to, ItemStatus::Rejected);
    // ...but one that moves the consensus does.
    let votes = [flag("derek", Team, "r1"), flag("samuel", Expert, "r2")];
    let verdict = judge_item(Some(ItemStatus::Rejected), &votes, "r2").unwrap();
    assert_eq!(verdict.to, ItemStatus::Accepted);
    // Resolved: cleared again stays resolved; flagged again reopens it.
    let verdict = judge_item(
        Some(ItemStatus::Resolved),
        &[clear("samuel", Expert, "r3")],
        "r3",
    )
    .unwrap();
    assert_eq!(
        (verdict.to, verdict.reopened),
        (ItemStatus::Resolved, false)
    );
    let verdict = judge_item(
        Some(ItemStatus::Resolved),
        &[flag("samuel", Expert, "r3")],
        "r3",
    )
    .unwrap();
    assert_eq!((verdict.to, verdict.reopened), (ItemStatus::Accepted, true));
}

#[test]
fn a_review_closes_its_gate_only_without_open_critical_items() {
    let waiting = crate::run::BlockState {
        status: BlockStatus::Waiting,
        gate: Some(crate::run::GatePhase::After),
        ..crate::run::BlockState::new(crate::template::Autonomy::Gate)
    };
    let items = [
        ("a", Some(Priority::Critical), ItemStatus::Triage),
        ("b", Some(Priority::High), ItemStatus::Accepted),
    ];
    let closed = review_closes("review", &waiting, &items, "reviewer:sam");
    assert!(!closed.approved);
    assert!(closed.reason.contains("a [triage]"), "{}", closed.reason);
    let settled = [
        ("a", Some(Priority::Critical), ItemStatus::Accepted),
        ("b", Some(Priority::High), ItemStatus::Accepted),
    ];
    let closed = review_closes("review", &waiting, &settled, "reviewer:sam");
    assert!(closed.approved);
    assert!(
        closed.reason.contains("2 accepted item(s)"),
        "{}",
        closed.reason
    );
    let done = crate::run::BlockState {
        status: BlockStatus::Done,
        ..waiting.clone()
    };
    assert!(!review_closes("review", &done, &settled, "x").approved);
}

/// A review page counts as published in the versions it succeeded in, and
/// in the current one while it is still to run there (nothing is carried
/// into a version whose page will publish).
#[test]
fn review_pages_are_published_where_they_ran_or_are_still_to_run() {
    let raw = validate_value(
        &serde_json::from_str::<Value>(include_str!("../../../../templates/clone-factory.json"))
            .unwrap(),
    )
    .pipeline
    .unwrap();
    let mut doc = new_run(&raw);
    let published = published_versions(&raw, &doc);
    assert_eq!(
        published,
        BTreeMap::from([
            ("expert-audit".to_string(), BTreeSet::from([1])),
            ("extraction-review".to_string(), BTreeSet::from([1])),
        ])
    );
    // Done in v1, the run now at v2: the page did not publish in v2.
    let review = doc.blocks.get_mut("extraction-reviewer").unwrap();
    review.status = BlockStatus::Done;
    doc.version = 2;
    let published = published_versions(&raw, &doc);
    assert_eq!(published["extraction-review"], BTreeSet::new());
    assert_eq!(published["expert-audit"], BTreeSet::from([2]));
}
