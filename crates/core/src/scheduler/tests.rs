//! Scheduler tests: small hand-built runs stepped with `decide`/`commit` and the
//! transitions, then property tests that drive random DAGs to completion.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::commit;
use crate::run::{AttemptOutcome, AttemptReport, EventRecord, FailureKind, ReplyNote};
use crate::transitions::{
    self, CORRECTIONS_INSTRUCTION, Policy, Principal, RunRequest, TransitionError,
};
use crate::validate::validate_value;

const T0: Millis = 1_000_000;

// ── Templates ──

/// A `noop` block with artifact `out`, depending on the `out` of each of `deps`.
fn block(id: &str, deps: &[&str]) -> Value {
    json!({
        "id": id,
        "name": id,
        "layer": "L0",
        "type": "build",
        "runtime": "builtin",
        "inputs": {
            "config": { "builtin": "noop" },
            "depends": deps.iter().map(|d| json!({ "block": d, "key": "out" })).collect::<Vec<_>>()
        },
        "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] }
    })
}

fn gated(mut b: Value, gate: &str) -> Value {
    b["execution"]["human_gate"] = json!(gate);
    b
}

fn with_threshold(mut b: Value, min: f64, max_retries: u32) -> Value {
    b["outputs"]["metrics"] = json!([{ "key": "score", "type": "number" }]);
    b["execution"]["threshold"] = json!({ "metric": "score", "min": min });
    b["execution"]["max_retries"] = json!(max_retries);
    b
}

fn no_retries(mut b: Value) -> Value {
    b["execution"]["max_retries"] = json!(0);
    b
}

fn template(blocks: Vec<Value>) -> Value {
    json!({ "id": "t", "name": "Test", "version": "1.0.0", "blocks": blocks })
}

fn pipeline(value: &Value) -> Pipeline {
    let validated = validate_value(value);
    assert!(!validated.has_errors(), "{:#?}", validated.diagnostics);
    validated.pipeline.unwrap()
}

// ── Harness ──

/// A run in memory: the pipeline, its document and its whole event log.
struct Harness {
    /// Kept up to date by `commit` and checked against `decide` by `tick`.
    index: RunIndex,
    /// The template's graph; `pipeline` is the run's (with instances).
    base: Pipeline,
    pipeline: Pipeline,
    doc: RunDoc,
    log: Vec<EventRecord>,
    now: Millis,
    max_concurrency: usize,
    policy: Policy,
}

fn success() -> AttemptReport {
    AttemptReport {
        exit_code: Some(0),
        ..AttemptReport::default()
    }
}

fn scored(score: f64) -> AttemptReport {
    AttemptReport {
        metrics: BTreeMap::from([("score".to_string(), json!(score))]),
        ..success()
    }
}

fn failure(error: &str) -> AttemptReport {
    AttemptReport {
        exit_code: Some(1),
        error: Some(error.to_string()),
        ..AttemptReport::default()
    }
}

impl Harness {
    fn new(value: Value) -> Harness {
        Harness::with(value, RunRequest::default())
    }

    fn with(value: Value, mut request: RunRequest) -> Harness {
        let pipeline = pipeline(&value);
        request.run_id = "run-1".to_string();
        let created =
            transitions::create_run(&pipeline, &request, &|_| true).expect("run is created");
        let record = EventRecord {
            seq: 1,
            at: T0,
            actor: "test".to_string(),
            event: created,
        };
        let doc = RunDoc::from_created(&record).unwrap();
        let index = RunIndex::new(&pipeline, &doc);
        Harness {
            index,
            base: pipeline.clone(),
            pipeline,
            doc,
            log: vec![record],
            now: T0,
            max_concurrency: 0,
            policy: Policy::default(),
        }
    }

    fn commit(&mut self, events: Vec<Event>, actor: &str) -> Vec<EventRecord> {
        let before = self.doc.clone();
        let records = commit(&mut self.doc, events, actor, self.now).expect("events apply");
        check_stored_rows(&before, &self.doc, &records);
        let reshaped = records.iter().any(|r| r.event.reshapes_graph());
        if reshaped {
            // As the engine's run handle does: the run's graph follows the
            // document, and the index is built on the new graph.
            self.pipeline = self
                .base
                .for_run(&self.doc)
                .unwrap_or_else(|| self.base.clone());
            self.index = RunIndex::new(&self.pipeline, &self.doc);
        } else {
            self.index.observe(&self.pipeline, &self.doc, &records);
        }
        self.log.extend(records.iter().cloned());
        records
    }

    /// Finishes a fan-out block's running attempt by reading `list`.
    fn expand(&mut self, id: &str, list: &Value) -> Vec<Event> {
        let attempt = self.state(id).current_attempt().expect("running attempt").n;
        let events = crate::fan_out::expand(&self.pipeline, &self.doc, id, attempt, list)
            .expect("the list is read");
        self.commit(events.clone(), "worker:worker-1");
        events
    }

    /// The incremental index decides exactly what `decide` does, for any
    /// number of blocks the caller may start; and it still agrees with an
    /// index built afresh from the document.
    fn check_index(&mut self, decision: &Decision) {
        let fresh = RunIndex::new(&self.pipeline, &self.doc);
        assert_eq!(fresh.counts(), self.index.counts());
        for take in [usize::MAX, 1, 2] {
            let mut probe = self.index.clone();
            let incremental = probe.decide(
                &self.pipeline,
                &self.doc,
                self.now,
                self.max_concurrency,
                take,
            );
            let mut expected = decision.clone();
            expected.startable.truncate(take);
            assert_eq!(incremental, expected, "take {take}");
        }
        let kept = self.index.decide(
            &self.pipeline,
            &self.doc,
            self.now,
            self.max_concurrency,
            usize::MAX,
        );
        assert_eq!(&kept, decision);
    }

    /// One scheduler step: decide, record its events, and check that deciding
    /// again right away is a fixpoint with the same outcome.
    fn tick(&mut self) -> Decision {
        let decision = decide(&self.pipeline, &self.doc, self.now, self.max_concurrency);
        self.check_index(&decision);
        self.commit(decision.events.clone(), "engine");
        let again = decide(&self.pipeline, &self.doc, self.now, self.max_concurrency);
        self.check_index(&again);
        assert!(
            again.events.is_empty(),
            "not a fixpoint: {:?}",
            again.events
        );
        assert_eq!(again.startable, decision.startable);
        assert_eq!(again.wake_at, decision.wake_at);
        assert_eq!(again.status, decision.status);
        assert_eq!(self.doc.status, decision.status);
        decision
    }

    fn state(&self, id: &str) -> &crate::run::BlockState {
        &self.doc.blocks[id]
    }

    fn status(&self, id: &str) -> BlockStatus {
        self.state(id).status
    }

    fn start(&mut self, id: &str) -> u32 {
        let event = transitions::start(&self.doc, id, "worker-1", self.now, &self.policy)
            .expect("block starts");
        let Event::BlockStarted { attempt, .. } = event else {
            panic!("{event:?}")
        };
        self.commit(vec![event], "worker:worker-1");
        attempt
    }

    fn finish(&mut self, id: &str, report: AttemptReport) -> Vec<Event> {
        let attempt = self.state(id).current_attempt().expect("running attempt").n;
        let events = transitions::finish(
            &self.pipeline,
            &self.doc,
            id,
            attempt,
            report,
            self.now,
            &self.policy,
        )
        .expect("attempt finishes");
        self.commit(events.clone(), "worker:worker-1");
        events
    }

    /// Starts and finishes `id` with `report`.
    fn run(&mut self, id: &str, report: AttemptReport) -> Vec<Event> {
        self.start(id);
        self.finish(id, report)
    }

    fn approve(&mut self, id: &str) -> Result<(), TransitionError> {
        let event = transitions::approve(&self.doc, id, Some("looks good".to_string()))?;
        self.commit(vec![event], "cli:alice");
        Ok(())
    }

    fn reject(&mut self, id: &str, feedback: &str) -> Result<Event, TransitionError> {
        let event = transitions::reject(&self.pipeline, &self.doc, id, feedback, "alice")?;
        self.commit(vec![event.clone()], "cli:alice");
        Ok(event)
    }

    fn retry(&mut self, id: &str) -> Result<Vec<Event>, TransitionError> {
        let events = transitions::retry(&self.pipeline, &self.doc, id, "operator asked")?;
        self.commit(events.clone(), "cli:alice");
        Ok(events)
    }

    fn assert_replays(&self) {
        assert_eq!(RunDoc::replay(&self.log).unwrap(), self.doc);
    }
}

/// The store writes the block rows `changed_blocks` names and the attempt
/// rows `changed_attempts` names, nothing else: whatever a commit changed
/// must be among them, or the stored run would drift from the log.
fn check_stored_rows(before: &RunDoc, after: &RunDoc, records: &[EventRecord]) {
    let blocks: std::collections::BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.event.changed_blocks())
        .collect();
    let attempts = crate::run::changed_attempts(after, records);
    for (id, state) in &after.blocks {
        let old = before.blocks.get(id);
        let head = |s: &crate::run::BlockState| serde_json::to_string(&s.head()).unwrap();
        if old.map(head) != Some(head(state)) {
            assert!(blocks.contains(id.as_str()), "{id}'s row changed unnamed");
        }
        for (i, attempt) in state.history.iter().enumerate() {
            if old.and_then(|o| o.history.get(i)) != Some(attempt) {
                assert!(
                    attempts.contains(&(id.as_str(), i)),
                    "{id}'s attempt #{i} changed unnamed by {:?}",
                    records.iter().map(|r| r.event.kind()).collect::<Vec<_>>()
                );
            }
        }
        if let Some(old) = old {
            assert!(
                old.history.len() <= state.history.len(),
                "history is append-only"
            );
        }
    }
}

#[test]
fn a_batch_that_retries_and_restarts_names_both_attempts() {
    let mut h = Harness::new(template(vec![with_threshold(block("a", &[]), 80.0, 2)]));
    h.tick();
    let n = h.start("a");
    assert_eq!(n, 1);
    // Finish below the threshold (retry scheduled), then start the retry at
    // once, all in one batch, as a worker's commit with a claim does.
    let mut events =
        transitions::finish(&h.pipeline, &h.doc, "a", n, scored(10.0), h.now, &h.policy).unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RetryScheduled { .. }))
    );
    let mut probe = h.doc.clone();
    commit(&mut probe, events.clone(), "w", h.now).unwrap();
    h.now = probe.blocks["a"].not_before.unwrap();
    let mut probe = h.doc.clone();
    commit(&mut probe, events.clone(), "w", h.now).unwrap();
    events.push(transitions::start(&probe, "a", "w", h.now, &h.policy).unwrap());
    let records = h.commit(events, "w");
    let changed = crate::run::changed_attempts(&h.doc, &records);
    assert_eq!(
        changed.into_iter().collect::<Vec<_>>(),
        vec![("a", 0), ("a", 1)]
    );
    assert_eq!(h.state("a").history.len(), 2);
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ── Readiness ──

#[test]
fn roots_become_ready() {
    let mut h = Harness::new(template(vec![
        block("a", &[]),
        block("b", &[]),
        block("c", &["a", "b"]),
    ]));
    assert_eq!(h.doc.status, RunStatus::Running);
    let d = h.tick();
    assert_eq!(
        d.events,
        vec![
            Event::BlockReady {
                block: "a".into(),
                reason: "no dependencies".into()
            },
            Event::BlockReady {
                block: "b".into(),
                reason: "no dependencies".into()
            },
        ]
    );
    assert_eq!(d.startable, ids(&["a", "b"]));
    assert_eq!(d.wake_at, None);
    assert_eq!(d.status, RunStatus::Running);
    assert_eq!(h.status("c"), BlockStatus::Pending);

    h.run("a", success());
    let d = h.tick();
    assert!(d.events.is_empty(), "c still waits for b: {:?}", d.events);
    h.run("b", success());
    let d = h.tick();
    assert_eq!(
        d.events,
        vec![Event::BlockReady {
            block: "c".into(),
            reason: "all dependencies done".into()
        }]
    );
    h.run("c", success());
    let d = h.tick();
    assert_eq!(
        d.events,
        vec![Event::RunStatusChanged {
            status: RunStatus::Done
        }]
    );
    assert_eq!(h.doc.status, RunStatus::Done);
    h.assert_replays();
}

#[test]
fn startable_follows_layer_then_template_order() {
    let mut blocks = Vec::new();
    for (id, layer) in [
        ("m", "misc"),
        ("ten", "L10"),
        ("two", "L2"),
        ("half", "L2.5"),
        ("two-b", "L2"),
        ("zero", "L0"),
    ] {
        let mut b = block(id, &[]);
        b["layer"] = json!(layer);
        blocks.push(b);
    }
    let mut h = Harness::new(template(blocks));
    let d = h.tick();
    assert_eq!(
        d.startable,
        ids(&["zero", "two", "two-b", "half", "ten", "m"])
    );
    h.max_concurrency = 2;
    let d = h.tick();
    assert_eq!(d.startable, ids(&["zero", "two"]));
}

// ── Gates ──

#[test]
fn before_gate_waits_until_approved() {
    let mut h = Harness::new(template(vec![
        block("a", &[]),
        gated(block("b", &["a"]), "before"),
        block("c", &["b"]),
    ]));
    h.tick();
    h.run("a", success());
    let d = h.tick();
    assert_eq!(
        d.events,
        vec![
            Event::BlockWaiting {
                block: "b".into(),
                phase: GatePhase::Before
            },
            Event::RunStatusChanged {
                status: RunStatus::Waiting
            },
        ]
    );
    assert!(d.startable.is_empty());
    assert_eq!(h.status("b"), BlockStatus::Waiting);
    assert_eq!(h.state("b").gate, Some(GatePhase::Before));
    assert!(matches!(
        transitions::start(&h.doc, "b", "w", h.now, &h.policy),
        Err(TransitionError::NotReady { .. })
    ));

    h.approve("b").unwrap();
    assert_eq!(h.status("b"), BlockStatus::Ready);
    assert!(h.state("b").before_gate_passed);
    let decision = &h.state("b").decisions[0];
    assert!(
        decision.approved && decision.phase == GatePhase::Before && decision.actor == "cli:alice"
    );
    let d = h.tick();
    assert_eq!(d.startable, ids(&["b"]));
    assert_eq!(d.status, RunStatus::Running);

    let events = h.run("b", success());
    assert!(
        events.contains(&Event::BlockDone { block: "b".into() }),
        "no after gate: {events:?}"
    );
    h.tick();
    h.run("c", success());
    assert_eq!(h.tick().status, RunStatus::Done);
    h.assert_replays();
}

#[test]
fn before_gate_on_a_root_waits_at_once() {
    let mut h = Harness::new(template(vec![gated(block("a", &[]), "before")]));
    let d = h.tick();
    assert_eq!(d.status, RunStatus::Waiting);
    assert_eq!(h.status("a"), BlockStatus::Waiting);
}

#[test]
fn after_gate_holds_dependents_until_approved() {
    let mut h = Harness::new(template(vec![
        gated(block("a", &[]), "after"),
        block("b", &["a"]),
    ]));
    h.tick();
    let events = h.run("a", success());
    assert!(matches!(
        events[0],
        Event::AttemptFinished {
            outcome: AttemptOutcome::Succeeded,
            ..
        }
    ));
    assert_eq!(
        events[1],
        Event::BlockWaiting {
            block: "a".into(),
            phase: GatePhase::After
        }
    );
    assert_eq!(events.len(), 2);
    assert_eq!(h.status("a"), BlockStatus::Waiting);

    let d = h.tick();
    assert_eq!(
        d.events,
        vec![Event::RunStatusChanged {
            status: RunStatus::Waiting
        }]
    );
    assert_eq!(h.status("b"), BlockStatus::Pending);

    h.approve("a").unwrap();
    assert_eq!(h.status("a"), BlockStatus::Done);
    let d = h.tick();
    assert_eq!(d.startable, ids(&["b"]));
    h.run("b", success());
    assert_eq!(h.tick().status, RunStatus::Done);
    h.assert_replays();
}

#[test]
fn auto_override_skips_the_gate() {
    let value = template(vec![
        gated(block("a", &[]), "after"),
        gated(block("b", &["a"]), "before"),
    ]);
    let request = RunRequest {
        overrides: BTreeMap::from([
            ("a".to_string(), Autonomy::Auto),
            ("b".to_string(), Autonomy::Auto),
        ]),
        ..RunRequest::default()
    };
    let mut h = Harness::with(value.clone(), request);
    assert_eq!(h.state("a").autonomy, Autonomy::Auto);
    h.tick();
    let events = h.run("a", success());
    assert_eq!(events.last(), Some(&Event::BlockDone { block: "a".into() }));
    let d = h.tick();
    assert_eq!(d.startable, ids(&["b"]), "b's before gate is skipped too");
    h.run("b", success());
    assert_eq!(h.tick().status, RunStatus::Done);
    assert!(
        h.doc
            .blocks
            .values()
            .all(|s| s.decisions.is_empty() && !s.review_flag)
    );

    // The same through a profile whose default is `auto`.
    let mut value = value;
    value["autonomy_profiles"] = json!({ "hands-off": { "default": "auto" } });
    let request = RunRequest {
        autonomy_profile: Some("hands-off".to_string()),
        ..RunRequest::default()
    };
    let h = Harness::with(value, request);
    assert!(h.doc.blocks.values().all(|s| s.autonomy == Autonomy::Auto));
    assert_eq!(h.doc.autonomy_profile.as_deref(), Some("hands-off"));
}

#[test]
fn gate_autonomy_on_an_ungated_block_reviews_after() {
    let request = RunRequest {
        overrides: BTreeMap::from([("a".to_string(), Autonomy::Gate)]),
        ..RunRequest::default()
    };
    let mut h = Harness::with(template(vec![block("a", &[])]), request);
    h.tick();
    let events = h.run("a", success());
    assert_eq!(
        events.last(),
        Some(&Event::BlockWaiting {
            block: "a".into(),
            phase: GatePhase::After
        })
    );
    assert_eq!(
        gate_phase(HumanGate::None, Autonomy::Gate),
        Some(GatePhase::After)
    );
    assert_eq!(
        gate_phase(HumanGate::Before, Autonomy::Gate),
        Some(GatePhase::Before)
    );
    assert_eq!(gate_phase(HumanGate::Before, Autonomy::Guided), None);
    assert_eq!(gate_phase(HumanGate::After, Autonomy::Auto), None);
}

#[test]
fn guided_runs_on_and_flags_for_review() {
    let request = RunRequest {
        overrides: BTreeMap::from([("a".to_string(), Autonomy::Guided)]),
        ..RunRequest::default()
    };
    let mut h = Harness::with(
        template(vec![gated(block("a", &[]), "after"), block("b", &["a"])]),
        request,
    );
    h.tick();
    let events = h.run("a", success());
    assert_eq!(
        events[1..],
        [
            Event::BlockDone { block: "a".into() },
            Event::ReviewFlagged { block: "a".into() }
        ]
    );
    assert_eq!(h.status("a"), BlockStatus::Done);
    assert!(h.state("a").review_flag);
    assert!(!h.state("b").review_flag);
    assert_eq!(h.tick().startable, ids(&["b"]));
    h.assert_replays();
}

#[test]
fn reject_stores_corrections_and_reruns_the_block() {
    let mut h = Harness::new(template(vec![
        gated(block("a", &[]), "after"),
        block("b", &["a"]),
    ]));
    h.tick();
    h.run("a", success());
    let event = h
        .reject("a", "  the intro misses the expert's name  ")
        .unwrap();
    let Event::GateRejected {
        phase,
        feedback,
        corrections,
        ..
    } = &event
    else {
        panic!("{event:?}")
    };
    assert_eq!(*phase, GatePhase::After);
    assert_eq!(
        feedback, "the intro misses the expert's name",
        "feedback is trimmed"
    );
    assert_eq!(corrections.version, "v1→v2");
    assert_eq!(corrections.instruction, CORRECTIONS_INSTRUCTION);
    assert!(corrections.source.contains("alice"));
    assert_eq!(corrections.items.len(), 1);
    assert_eq!(
        corrections.items[0].correction,
        "the intro misses the expert's name"
    );
    assert_eq!(corrections.items[0].priority, "high");

    let state = h.state("a");
    assert_eq!(state.status, BlockStatus::Ready);
    assert_eq!(state.corrections.as_ref(), Some(corrections));
    assert_eq!(state.gate, None);
    let decision = state.decisions.last().unwrap();
    assert!(!decision.approved);
    assert_eq!(
        decision.note.as_deref(),
        Some("the intro misses the expert's name")
    );

    let d = h.tick();
    assert_eq!(d.startable, ids(&["a"]));
    assert_eq!(h.status("b"), BlockStatus::Pending);
    assert_eq!(h.start("a"), 2);
    assert_eq!(
        h.state("a").history[1].corrections_version.as_deref(),
        Some("v1→v2")
    );
    assert_eq!(h.state("a").history[0].corrections_version, None);
    h.finish("a", success());
    assert_eq!(
        h.status("a"),
        BlockStatus::Waiting,
        "the corrected output is gated again"
    );

    // A second rejection bumps the version.
    let Event::GateRejected { corrections, .. } = h.reject("a", "still wrong").unwrap() else {
        unreachable!()
    };
    assert_eq!(corrections.version, "v2→v3");

    assert_eq!(
        h.reject("x", "nope").unwrap_err(),
        TransitionError::UnknownBlock("x".into())
    );
    h.tick();
    h.run("a", success());
    assert_eq!(
        transitions::reject(&h.pipeline, &h.doc, "a", "   ", "alice").unwrap_err(),
        TransitionError::EmptyFeedback
    );
    h.approve("a").unwrap();
    assert!(
        h.state("a").corrections.is_some(),
        "the accepted output says what it was corrected for"
    );
    h.tick();
    h.run("b", success());
    assert_eq!(h.tick().status, RunStatus::Done);
    h.retry("a").unwrap();
    h.tick();
    let attempt = h.start("a");
    let last = h.state("a").history.last().unwrap();
    assert_eq!(last.n, attempt);
    assert_eq!(
        last.corrections_version, None,
        "a retry after approval runs without the old corrections"
    );
    h.assert_replays();
}

#[test]
fn rejecting_a_before_gate_runs_the_block_with_corrections() {
    let mut h = Harness::new(template(vec![gated(block("a", &[]), "before")]));
    h.tick();
    let Event::GateRejected {
        phase, corrections, ..
    } = h.reject("a", "use the new brief").unwrap()
    else {
        unreachable!()
    };
    assert_eq!(phase, GatePhase::Before);
    assert_eq!(corrections.version, "v0→v1");
    assert!(h.state("a").before_gate_passed);
    assert_eq!(h.tick().startable, ids(&["a"]), "does not wait again");
    h.run("a", success());
    assert_eq!(h.tick().status, RunStatus::Done);
}

#[test]
fn approving_a_block_that_is_not_waiting_is_an_error() {
    let mut h = Harness::new(template(vec![
        gated(block("a", &[]), "after"),
        block("b", &["a"]),
    ]));
    let not_waiting = |r: Result<(), TransitionError>, status: &str| match r {
        Err(TransitionError::NotWaiting {
            status: s,
            action: "approve",
            ..
        }) => assert_eq!(s, status),
        other => panic!("expected NotWaiting, got {other:?}"),
    };
    not_waiting(h.approve("a"), "pending");
    h.tick();
    not_waiting(h.approve("a"), "ready");
    h.start("a");
    not_waiting(h.approve("a"), "running");
    h.finish("a", success());
    h.approve("a").unwrap();
    not_waiting(h.approve("a"), "done");
    assert!(matches!(
        transitions::reject(&h.pipeline, &h.doc, "a", "late", "bob"),
        Err(TransitionError::NotWaiting {
            action: "reject",
            ..
        })
    ));
    assert_eq!(
        h.approve("nope").unwrap_err(),
        TransitionError::UnknownBlock("nope".into())
    );
    // Exactly one decision was recorded.
    assert_eq!(h.state("a").decisions.len(), 1);
    h.assert_replays();
}

// ── Failure ──

#[test]
fn failure_blocks_descendants_transitively_while_others_complete() {
    let mut h = Harness::new(template(vec![
        no_retries(block("a", &[])),
        block("b", &["a"]),
        block("c", &["b"]),
        block("d", &[]),
        block("e", &["d"]),
        block("f", &["c", "e"]),
    ]));
    let d = h.tick();
    assert_eq!(d.startable, ids(&["a", "d"]));
    h.start("a");
    h.start("d");
    let events = h.finish("a", failure("exit status 1"));
    assert!(matches!(
        events[0],
        Event::AttemptFinished {
            outcome: AttemptOutcome::Failed,
            ..
        }
    ));
    assert_eq!(
        events[1],
        Event::BlockFailed {
            block: "a".into(),
            error: "exit status 1 (after 1 attempt)".into()
        }
    );
    let d = h.tick();
    assert_eq!(
        d.events,
        vec![
            Event::BlockBlocked {
                block: "b".into(),
                because: "a".into()
            },
            Event::BlockBlocked {
                block: "c".into(),
                because: "b".into()
            },
            Event::BlockBlocked {
                block: "f".into(),
                because: "c".into()
            },
        ]
    );
    assert_eq!(d.status, RunStatus::Running, "d is still running");
    h.finish("d", success());
    let d = h.tick();
    assert_eq!(d.startable, ids(&["e"]));
    h.run("e", success());
    let d = h.tick();
    assert_eq!(
        d.events,
        vec![Event::RunStatusChanged {
            status: RunStatus::Failed
        }]
    );
    assert_eq!(h.status("a"), BlockStatus::Failed);
    assert_eq!(
        h.state("a").error.as_deref(),
        Some("exit status 1 (after 1 attempt)")
    );
    for id in ["b", "c", "f"] {
        assert_eq!(h.status(id), BlockStatus::Blocked, "{id}");
    }
    assert_eq!(h.status("e"), BlockStatus::Done);
    assert_eq!(h.doc.status, RunStatus::Failed);
    h.assert_replays();

    // Retrying the failed block clears the blockage downstream.
    let events = h.retry("a").unwrap();
    let reset: Vec<&str> = events.iter().filter_map(Event::block).collect();
    assert_eq!(reset, vec!["a", "b", "c", "f"]);
    let d = h.tick();
    assert_eq!(d.startable, ids(&["a"]));
    assert_eq!(d.status, RunStatus::Running);
    for id in ["a", "b", "c", "f"] {
        h.run(id, success());
        h.tick();
    }
    assert_eq!(h.doc.status, RunStatus::Done);
    h.assert_replays();
}

#[test]
fn threshold_miss_retries_with_backoff_then_fails() {
    let mut h = Harness::new(template(vec![
        with_threshold(block("a", &[]), 85.0, 2),
        block("b", &["a"]),
    ]));
    let base = h.policy.retry_base_ms as Millis;
    h.tick();
    let events = h.run("a", scored(40.0));
    assert!(matches!(
        events[0],
        Event::AttemptFinished { outcome: AttemptOutcome::ThresholdMissed, score: Some(s), .. } if s == 40.0
    ));
    let Event::RetryScheduled {
        not_before, reason, ..
    } = &events[1]
    else {
        panic!("{events:?}")
    };
    assert_eq!(*not_before, h.now + base);
    assert!(
        reason.contains("below the threshold 85") && reason.contains("retry 1 of 2"),
        "{reason}"
    );
    let state = h.state("a");
    assert_eq!(
        (state.status, state.retries_used, state.not_before),
        (BlockStatus::Ready, 1, Some(h.now + base))
    );
    assert_eq!(state.score, Some(40.0));

    // Backoff keeps it out of `startable` and tells the engine when to wake.
    let d = h.tick();
    assert!(d.startable.is_empty());
    assert_eq!(d.wake_at, Some(h.now + base));
    assert_eq!(d.status, RunStatus::Running);
    assert!(transitions::start(&h.doc, "a", "w", h.now, &h.policy).is_err());
    h.now += base - 1;
    assert!(h.tick().startable.is_empty());
    h.now += 1;
    let d = h.tick();
    assert_eq!((d.startable.clone(), d.wake_at), (ids(&["a"]), None));

    // Second miss: the backoff doubles.
    let events = h.run("a", scored(84.9));
    assert!(
        matches!(&events[1], Event::RetryScheduled { not_before, .. } if *not_before == h.now + 2 * base)
    );
    h.now += 2 * base;
    h.tick();

    // Third miss: out of retries.
    let events = h.run("a", scored(10.0));
    let Event::BlockFailed { error, .. } = &events[1] else {
        panic!("{events:?}")
    };
    assert!(
        error.contains("below the threshold") && error.ends_with("(after 3 attempts)"),
        "{error}"
    );
    let d = h.tick();
    assert_eq!(h.status("b"), BlockStatus::Blocked);
    assert_eq!(d.status, RunStatus::Failed);
    assert_eq!(h.state("a").attempts, 3);
    assert_eq!(h.state("a").history.len(), 3);
    // Each attempt keeps why it did not succeed and what followed.
    let whys: Vec<&str> = h
        .state("a")
        .history
        .iter()
        .map(|a| a.why.as_deref().unwrap_or(""))
        .collect();
    assert!(
        whys[0].contains("below the threshold 85") && whys[0].contains("retry 1 of 2"),
        "{whys:?}"
    );
    assert!(whys[1].contains("retry 2 of 2"), "{whys:?}");
    assert!(whys[2].ends_with("(after 3 attempts)"), "{whys:?}");
    h.assert_replays();
}

#[test]
fn threshold_met_or_missing_metric() {
    let mut h = Harness::new(template(vec![with_threshold(block("a", &[]), 85.0, 1)]));
    h.tick();
    let events = h.run("a", AttemptReport::default());
    assert!(
        matches!(&events[1], Event::RetryScheduled { reason, .. } if reason.contains("was not reported"))
    );
    h.now += 10_000;
    h.tick();
    let events = h.run("a", scored(85.0));
    assert!(matches!(
        events[0],
        Event::AttemptFinished {
            outcome: AttemptOutcome::Succeeded,
            ..
        }
    ));
    assert_eq!(events[1], Event::BlockDone { block: "a".into() });
    assert_eq!(h.state("a").score, Some(85.0));
    assert_eq!(h.tick().status, RunStatus::Done);
}

#[test]
fn not_retryable_fails_at_once() {
    let mut b = block("a", &[]);
    b["execution"] = json!({ "retryable": false, "max_retries": 3 });
    let mut h = Harness::new(template(vec![b]));
    h.tick();
    let events = h.run("a", failure("boom"));
    assert!(matches!(&events[1], Event::BlockFailed { .. }));
    assert_eq!(h.tick().status, RunStatus::Failed);
}

#[test]
fn wake_at_is_the_earliest_backoff() {
    let mut h = Harness::new(template(vec![
        with_threshold(block("a", &[]), 50.0, 3),
        with_threshold(block("b", &[]), 50.0, 3),
        block("c", &[]),
    ]));
    h.tick();
    h.run("a", scored(1.0)); // not_before = T0 + 1000
    h.now += 300;
    h.run("b", scored(1.0)); // not_before = T0 + 1300
    let d = h.tick();
    assert_eq!(d.startable, ids(&["c"]));
    assert_eq!(d.wake_at, Some(T0 + 1_000));
    h.now = T0 + 1_000;
    let d = h.tick();
    assert_eq!(
        (d.startable.clone(), d.wake_at),
        (ids(&["a", "c"]), Some(T0 + 1_300))
    );
}

#[test]
fn max_concurrency_limits_startable() {
    let blocks: Vec<Value> = (0..5).map(|i| block(&format!("b{i}"), &[])).collect();
    let mut h = Harness::new(template(blocks));
    h.max_concurrency = 2;
    let d = h.tick();
    assert_eq!(d.startable, ids(&["b0", "b1"]));
    h.start("b0");
    assert_eq!(h.tick().startable, ids(&["b1"]));
    h.start("b1");
    assert!(h.tick().startable.is_empty());
    h.finish("b0", success());
    assert_eq!(h.tick().startable, ids(&["b2"]));
    h.max_concurrency = 0;
    assert_eq!(h.tick().startable, ids(&["b2", "b3", "b4"]));
    h.max_concurrency = 1;
    assert!(
        h.tick().startable.is_empty(),
        "one running already fills the budget"
    );
}

// ── `any` dependency mode ──

fn any_of(mut b: Value) -> Value {
    b["inputs"]["mode"] = json!("any");
    b
}

#[test]
fn any_mode_waits_for_every_dependency_to_settle_then_runs_on_one_success() {
    let mut h = Harness::new(template(vec![
        no_retries(block("a", &[])),
        no_retries(block("b", &[])),
        any_of(block("r", &["a", "b"])),
    ]));
    h.tick();
    h.run("a", failure("exit status 1"));
    assert_eq!(h.status("a"), BlockStatus::Failed);
    let d = h.tick();
    assert_eq!(h.status("r"), BlockStatus::Pending, "b has not settled yet");
    assert_eq!(d.startable, ids(&["b"]));
    h.run("b", success());
    let d = h.tick();
    assert_eq!(d.startable, ids(&["r"]));
    let reason = h.log.iter().rev().find_map(|r| match &r.event {
        Event::BlockReady { block, reason } if block == "r" => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        reason.as_deref(),
        Some("any: 1 of 2 dependencies done, the rest settled")
    );
    h.run("r", success());
    assert_eq!(h.tick().status, RunStatus::Failed, "a still failed");
    h.assert_replays();
}

#[test]
fn any_mode_is_blocked_only_when_no_dependency_can_finish() {
    let mut h = Harness::new(template(vec![
        no_retries(block("a", &[])),
        no_retries(block("b", &[])),
        any_of(block("r", &["a", "b"])),
        block("after", &["r"]),
    ]));
    h.tick();
    h.run("a", failure("boom"));
    h.tick();
    assert_eq!(h.status("r"), BlockStatus::Pending);
    h.run("b", failure("boom"));
    let d = h.tick();
    assert_eq!(h.status("r"), BlockStatus::Blocked);
    assert_eq!(h.status("after"), BlockStatus::Blocked);
    assert_eq!(d.status, RunStatus::Failed);
}

#[test]
fn any_mode_needs_two_upstream_blocks() {
    let value = template(vec![block("a", &[]), any_of(block("r", &["a"]))]);
    let validated = validate_value(&value);
    let d = validated
        .diagnostics
        .iter()
        .find(|d| d.code == "TPL0024")
        .expect("TPL0024");
    assert_eq!(d.path, "$.blocks[1].inputs.mode");
    assert!(d.message.contains("at least two blocks"), "{}", d.message);
    let mut typo = template(vec![
        block("a", &[]),
        block("b", &[]),
        block("r", &["a", "b"]),
    ]);
    typo["blocks"][2]["inputs"]["mode"] = json!("some");
    assert!(validate_value(&typo).has_errors());
}

// ── Retry, abandon, stale attempts ──

#[test]
fn retry_of_a_done_block_resets_it_and_its_descendants() {
    let mut h = Harness::new(template(vec![
        block("a", &[]),
        block("b", &["a"]),
        block("c", &["b"]),
        block("x", &[]),
    ]));
    for _ in 0..4 {
        for id in h.tick().startable {
            h.run(&id, success());
        }
    }
    assert_eq!(h.doc.status, RunStatus::Done);

    let events = h.retry("b").unwrap();
    assert_eq!(
        events,
        vec![
            Event::BlockReset {
                block: "b".into(),
                reason: "operator asked".into(),
                fresh: true,
                regroup: false,
            },
            Event::BlockReset {
                block: "c".into(),
                reason: "upstream `b` is re-running".into(),
                fresh: false,
                regroup: false,
            },
        ]
    );
    assert_eq!(h.status("a"), BlockStatus::Done);
    assert_eq!(h.status("x"), BlockStatus::Done);
    assert_eq!(
        (h.status("b"), h.status("c")),
        (BlockStatus::Pending, BlockStatus::Pending)
    );
    let d = h.tick();
    assert_eq!(d.startable, ids(&["b"]));
    assert_eq!(d.status, RunStatus::Running);
    assert_eq!(h.start("b"), 2, "attempt numbers keep counting");

    // Not while a descendant (here: the block itself) is running.
    assert!(matches!(
        h.retry("b"),
        Err(TransitionError::NotRetryable {
            status: "running",
            ..
        })
    ));
    assert!(
        matches!(h.retry("a"), Err(TransitionError::DependentRunning { ref dependent, .. }) if dependent == "b")
    );
    assert!(matches!(
        h.retry("c"),
        Err(TransitionError::NotRetryable {
            status: "pending",
            ..
        })
    ));
    h.finish("b", success());
    h.tick();
    h.run("c", success());
    assert_eq!(h.tick().status, RunStatus::Done);
    h.assert_replays();
}

#[test]
fn retry_resets_gates() {
    let mut h = Harness::new(template(vec![gated(block("a", &[]), "before")]));
    h.tick();
    h.approve("a").unwrap();
    h.tick();
    h.run("a", success());
    h.tick();
    h.retry("a").unwrap();
    assert!(!h.state("a").before_gate_passed);
    assert_eq!(
        h.tick().status,
        RunStatus::Waiting,
        "the before gate asks again"
    );
}

#[test]
fn abandoned_attempt_makes_the_block_ready_again() {
    let mut h = Harness::new(template(vec![block("a", &[])]));
    h.tick();
    assert_eq!(h.start("a"), 1);
    assert!(transitions::abandon(&h.doc, "a", "x").is_ok());
    let event = transitions::abandon(&h.doc, "a", "lease expired").unwrap();
    h.commit(vec![event], "engine");
    assert_eq!(h.status("a"), BlockStatus::Ready);
    assert_eq!(
        h.state("a").history[0].outcome,
        Some(AttemptOutcome::Abandoned)
    );
    assert!(transitions::abandon(&h.doc, "a", "again").is_err());
    assert_eq!(h.tick().startable, ids(&["a"]));
    assert_eq!(h.start("a"), 2);
    // The abandoned attempt is stale now.
    assert_eq!(
        transitions::finish(&h.pipeline, &h.doc, "a", 1, success(), h.now, &h.policy).unwrap_err(),
        TransitionError::StaleAttempt {
            block: "a".into(),
            attempt: 1
        }
    );
    h.finish("a", success());
    assert_eq!(h.tick().status, RunStatus::Done);
    h.assert_replays();
}

#[test]
fn start_needs_a_ready_block() {
    let mut h = Harness::new(template(vec![block("a", &[]), block("b", &["a"])]));
    assert!(matches!(
        transitions::start(&h.doc, "a", "w", h.now, &h.policy),
        Err(TransitionError::NotReady {
            status: "pending",
            ..
        })
    ));
    h.tick();
    assert!(matches!(
        transitions::start(&h.doc, "b", "w", h.now, &h.policy),
        Err(TransitionError::NotReady {
            status: "pending",
            ..
        })
    ));
    assert_eq!(
        transitions::start(&h.doc, "zz", "w", h.now, &h.policy).unwrap_err(),
        TransitionError::UnknownBlock("zz".into())
    );
    let Event::BlockStarted {
        lease_expires_at,
        attempt,
        ..
    } = transitions::start(&h.doc, "a", "w", h.now, &h.policy).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        (attempt, lease_expires_at),
        (1, h.now + h.policy.lease_ms as Millis)
    );
}

#[test]
fn create_run_reports_every_problem() {
    let mut value = template(vec![block("a", &[])]);
    value["blocks"][0]["inputs"]["env"] = json!(["API_KEY"]);
    value["params"] = json!({ "title": { "required": true }, "n": { "default": "8" } });
    let pipeline = pipeline(&value);
    let request = RunRequest {
        run_id: "r".into(),
        params: BTreeMap::from([("titel".to_string(), json!("x"))]),
        autonomy_profile: Some("nope".into()),
        overrides: BTreeMap::from([("zz".to_string(), Autonomy::Auto)]),
        models: BTreeMap::from([("ghost".to_string(), "opus".to_string())]),
        default_model: None,
        sampling: BTreeMap::from([
            ("max_tokens".to_string(), json!(10)),
            ("temperature".to_string(), json!("hot")),
        ]),
        max_concurrency: None,
        no_cache: false,
        ratings: Vec::new(),
    };
    let error = transitions::create_run(&pipeline, &request, &|_| false).unwrap_err();
    assert_eq!(error.problems.len(), 8, "{:#?}", error.problems);
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.contains("model override names unknown block `ghost`"))
    );
    // A near miss gets a did-you-mean; a far one does not.
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.starts_with("unknown run param `titel`; did you mean `title`?")),
        "{:#?}",
        error.problems
    );
    assert!(
        error
            .problems
            .iter()
            .any(|p| p == "autonomy override names unknown block `zz`"),
        "{:#?}",
        error.problems
    );
    let near = RunRequest {
        run_id: "r".into(),
        params: BTreeMap::from([("title".to_string(), json!("x"))]),
        overrides: BTreeMap::from([("aa".to_string(), Autonomy::Auto)]),
        ..RunRequest::default()
    };
    let near_error = transitions::create_run(&pipeline, &near, &|_| true).unwrap_err();
    assert_eq!(
        near_error.problems,
        ["autonomy override names unknown block `aa`; did you mean `a`?"]
    );
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.starts_with("`max_tokens` cannot be set per run"))
    );
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.starts_with("run setting `temperature` must be a number from 0 to 2"))
    );

    let request = RunRequest {
        run_id: "r".into(),
        params: BTreeMap::from([("title".to_string(), json!("Report"))]),
        ..RunRequest::default()
    };
    let Event::RunCreated { params, blocks, .. } =
        transitions::create_run(&pipeline, &request, &|_| true).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        params,
        BTreeMap::from([
            ("title".to_string(), json!("Report")),
            ("n".to_string(), json!("8"))
        ])
    );
    assert_eq!(blocks, vec![("a".to_string(), Autonomy::Auto)]);
}

// ── Property tests: random DAGs driven to completion ──

/// A small deterministic PRNG (SplitMix64) for the driver's choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

#[derive(Debug, Clone)]
struct Spec {
    /// Raw picks; block `i` depends on `pick % i` for each (none for the first).
    deps: Vec<usize>,
    gate: HumanGate,
    threshold: Option<u8>,
    max_retries: u32,
    retryable: bool,
    group: Option<u8>,
    layer: u8,
    autonomy: Option<Autonomy>,
    /// `mode: any` (applied when the block has two or more dependencies).
    any_mode: bool,
    /// A fan-out block over a param: (list length, need: 0 all, 1 any,
    /// 2 at least 2). `max` is 3, so 4 items fail the block.
    fan_out: Option<(u8, u8)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::collection::vec(any::<usize>(), 0..4),
        prop_oneof![
            Just(HumanGate::None),
            Just(HumanGate::None),
            Just(HumanGate::Before),
            Just(HumanGate::After)
        ],
        proptest::option::of(0u8..100),
        0u32..4,
        proptest::bool::weighted(0.8),
        proptest::option::of(0u8..3),
        0u8..4,
        proptest::option::weighted(
            0.3,
            prop_oneof![
                Just(Autonomy::Gate),
                Just(Autonomy::Guided),
                Just(Autonomy::Auto)
            ],
        ),
        proptest::bool::weighted(0.3),
        proptest::option::weighted(0.25, (0u8..5, 0u8..3)),
    )
        .prop_map(
            |(
                deps,
                gate,
                threshold,
                max_retries,
                retryable,
                group,
                layer,
                autonomy,
                any_mode,
                fan_out,
            )| {
                Spec {
                    fan_out,
                    deps,
                    gate,
                    threshold,
                    max_retries,
                    retryable,
                    group,
                    layer,
                    autonomy,
                    any_mode,
                }
            },
        )
}

/// The param a fan-out block `b{i}` reads its list from.
fn list_param(i: usize) -> String {
    format!("list_b{i}")
}

/// A fan-out spec's list: `n` items, cut to what `need` can be met by and
/// `max` allows when every attempt is to succeed.
fn fan_out_list((n, need): (u8, u8), all_good: bool) -> Value {
    let n = if all_good {
        n.clamp(if need == 2 { 2 } else { u8::from(need == 1) }, 3)
    } else {
        n
    };
    Value::from((0..n).map(|k| format!("Item {k}")).collect::<Vec<_>>())
}

fn dag_template(specs: &[Spec]) -> Value {
    let blocks = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let deps: BTreeSet<usize> = if i == 0 { BTreeSet::new() } else { s.deps.iter().map(|d| d % i).collect() };
            let names: Vec<String> = deps.iter().map(|d| format!("b{d}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut b = block(&format!("b{i}"), &names);
            if s.any_mode && names.len() >= 2 {
                b["inputs"]["mode"] = json!("any");
            }
            b["layer"] = json!(if s.layer == 3 { "misc".to_string() } else { format!("L{}", s.layer) });
            b["execution"] = json!({
                "human_gate": match s.gate { HumanGate::Before => "before", HumanGate::After => "after", HumanGate::None => "none" },
                "max_retries": s.max_retries,
                "retryable": s.retryable,
            });
            if let Some(group) = s.group {
                b["execution"]["parallel_group"] = json!(format!("g{group}"));
            }
            if let Some(min) = s.threshold {
                b["outputs"]["metrics"] = json!([{ "key": "score", "type": "number" }]);
                b["execution"]["threshold"] = json!({ "metric": "score", "min": min });
            }
            if let Some((_, need)) = s.fan_out {
                b["runtime"] = json!("command");
                b["inputs"]["config"] = json!({ "command": ["true"] });
                b["fan_out"] = json!({
                    "over": { "param": list_param(i) },
                    "max": 3,
                    "need": match need { 0 => json!("all"), 1 => json!("any"), _ => json!({ "at_least": 2 }) },
                });
            }
            b
        })
        .collect();
    let mut value = template(blocks);
    for (i, s) in specs.iter().enumerate() {
        if s.fan_out.is_some() {
            value["params"][list_param(i)] = json!({ "description": "the list" });
        }
    }
    value
}

/// Drives a run to its end. `all_good`: every attempt succeeds and every gate
/// is approved. Checks the invariants on the way; returns the harness.
fn simulate(specs: &[Spec], max_concurrency: usize, seed: u64, all_good: bool) -> Harness {
    let value = dag_template(specs);
    let overrides = specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.autonomy.map(|a| (format!("b{i}"), a)))
        .collect();
    let params = specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((list_param(i), fan_out_list(s.fan_out?, all_good))))
        .collect();
    let mut h = Harness::with(
        value,
        RunRequest {
            overrides,
            params,
            ..RunRequest::default()
        },
    );
    h.max_concurrency = max_concurrency;
    let mut rng = Rng(seed);
    let mut rejections_left = 4u32;
    let mut abandons_left = 3u32;
    let mut retries_left = 3u32;

    for _step in 0..20_000 {
        let d = h.tick();
        // The run's graph grows as fan-out blocks expand.
        let blocks = h.pipeline.blocks().to_vec();
        let running = h
            .doc
            .blocks
            .values()
            .filter(|s| s.status == BlockStatus::Running)
            .count();
        if max_concurrency > 0 {
            assert!(
                running <= max_concurrency,
                "{running} running > {max_concurrency}"
            );
            assert!(d.startable.len() + running <= max_concurrency);
        }
        for state in h.doc.blocks.values() {
            assert_eq!(
                state.status == BlockStatus::Waiting,
                state.gate.is_some(),
                "{state:?}"
            );
        }
        if d.status.is_terminal() {
            return h;
        }

        let waiting: Vec<String> = h
            .doc
            .blocks
            .iter()
            .filter(|(_, s)| s.status == BlockStatus::Waiting)
            .map(|(id, _)| id.clone())
            .collect();
        let running: Vec<String> = h
            .doc
            .blocks
            .iter()
            .filter(|(_, s)| s.status == BlockStatus::Running)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(
            d.status == RunStatus::Waiting,
            running.is_empty()
                && d.startable.is_empty()
                && d.wake_at.is_none()
                && !waiting.is_empty()
        );

        let settled: Vec<String> = h
            .pipeline
            .blocks()
            .iter()
            .filter(|b| matches!(h.status(&b.id), BlockStatus::Failed | BlockStatus::Done))
            .map(|b| b.id.clone())
            .collect();
        let mut choices = Vec::new();
        if !d.startable.is_empty() {
            choices.push(0);
        }
        if !all_good && retries_left > 0 && !settled.is_empty() && rng.chance(10) {
            choices.push(3);
        }
        if !running.is_empty() {
            choices.push(1);
        }
        if !waiting.is_empty() {
            choices.push(2);
        }
        if choices.is_empty() {
            let wake = d
                .wake_at
                .unwrap_or_else(|| panic!("stuck: {:#?}", h.doc.blocks));
            assert!(wake > h.now);
            h.now = wake;
            continue;
        }
        match *rng.pick(&choices) {
            0 => {
                let chosen: Vec<String> = if rng.chance(50) {
                    d.startable.clone()
                } else {
                    vec![rng.pick(&d.startable).clone()]
                };
                for id in chosen {
                    // (a) Never started unless every upstream block is done (in
                    // `any` mode: all settled, at least one done), and past its
                    // before gate when it has one.
                    let i = h.pipeline.index_of(&id).unwrap();
                    let upstream: Vec<BlockStatus> = h
                        .pipeline
                        .upstream(i)
                        .iter()
                        .map(|&u| h.status(&blocks[u].id))
                        .collect();
                    if blocks[i].inputs.mode == DependencyMode::Any {
                        assert!(upstream.contains(&BlockStatus::Done), "{id}: {upstream:?}");
                        assert!(
                            upstream.iter().all(|s| matches!(
                                s,
                                BlockStatus::Done | BlockStatus::Failed | BlockStatus::Blocked
                            )),
                            "{id} started before its upstream settled: {upstream:?}"
                        );
                    } else {
                        assert!(
                            upstream.iter().all(|s| *s == BlockStatus::Done),
                            "{id} started before its upstream was done: {upstream:?}"
                        );
                    }
                    let state = h.state(&id);
                    // (A fan-out block's gates are its instances'.)
                    if blocks[i].fan_out.is_none()
                        && gate_phase(blocks[i].execution.human_gate, state.autonomy)
                            == Some(GatePhase::Before)
                    {
                        assert!(
                            state.before_gate_passed,
                            "{id} started before its gate was decided"
                        );
                        assert!(state.decisions.iter().any(|g| g.phase == GatePhase::Before));
                    }
                    h.start(&id);
                    let running = h
                        .doc
                        .blocks
                        .values()
                        .filter(|s| s.status == BlockStatus::Running)
                        .count();
                    if max_concurrency > 0 {
                        assert!(running <= max_concurrency);
                    }
                }
            }
            1 => {
                let id = rng.pick(&running).clone();
                if !all_good && abandons_left > 0 && rng.chance(5) {
                    abandons_left -= 1;
                    let event = transitions::abandon(&h.doc, &id, "lease expired").unwrap();
                    h.commit(vec![event], "engine");
                } else if blocks[h.pipeline.index_of(&id).unwrap()].fan_out.is_some()
                    && h.state(&id).instances.is_none()
                {
                    let mut list = h.doc.params[&list_param(id[1..].parse().unwrap())].clone();
                    // As if the list came from an artifact that changed
                    // since the last expansion: one item fewer or more.
                    if !all_good && rng.chance(30) {
                        let items = list.as_array_mut().unwrap();
                        if items.is_empty() || rng.chance(50) {
                            items.push(json!("Another item"));
                        } else {
                            items.remove(0);
                        }
                    }
                    h.expand(&id, &list);
                } else {
                    let i = h.pipeline.index_of(&id).unwrap();
                    let min = blocks[i].execution.threshold.as_ref().map(|t| t.min);
                    // Mostly successes; errors, threshold misses and missing metrics otherwise.
                    let report = match (all_good, rng.below(20), min) {
                        (true, _, Some(min)) | (false, 0..=14, Some(min)) => {
                            scored(min + rng.below(20) as f64)
                        }
                        (true, _, None) | (false, 0..=14, None) => success(),
                        (false, 15..=16, _) => failure("exit status 1"),
                        (false, 17..=18, Some(min)) => scored(min - 1.0 - rng.below(50) as f64),
                        (false, _, _) => AttemptReport::default(),
                    };
                    h.finish(&id, report);
                }
            }
            3 => {
                // A person retries a settled block: a failed instance alone,
                // a group (it expands anew), or what a group reads from.
                retries_left -= 1;
                let id = rng.pick(&settled).clone();
                if let Err(error) = h.retry(&id) {
                    assert!(
                        matches!(error, TransitionError::DependentRunning { .. }),
                        "{error}"
                    );
                }
            }
            _ => {
                let id = rng.pick(&waiting).clone();
                if !all_good && rejections_left > 0 && rng.chance(30) {
                    rejections_left -= 1;
                    h.reject(&id, "please fix").unwrap();
                } else {
                    h.approve(&id).unwrap();
                }
            }
        }
        h.now += rng.below(300) as Millis;
    }
    panic!("the run did not terminate: {:#?}", h.doc);
}

/// The random runs do reach what fan-out adds: expansions, groups done and
/// blocked, a group expanding anew after a retry, instances dropped from a
/// changed list, an instance retried alone.
#[test]
fn random_runs_with_fan_out_reach_every_fan_out_transition() {
    let plain = |deps: Vec<usize>| Spec {
        deps,
        gate: HumanGate::None,
        threshold: None,
        max_retries: 1,
        retryable: true,
        group: None,
        layer: 0,
        autonomy: None,
        any_mode: false,
        fan_out: None,
    };
    let specs = vec![
        plain(vec![]),
        Spec {
            fan_out: Some((3, 0)),
            ..plain(vec![0])
        },
        Spec {
            fan_out: Some((2, 1)),
            gate: HumanGate::After,
            ..plain(vec![0])
        },
        Spec {
            fan_out: Some((4, 2)),
            ..plain(vec![1])
        },
        plain(vec![1, 2, 3]),
    ];
    let mut seen = BTreeSet::new();
    for seed in 0..300 {
        let h = simulate(&specs, seed as usize % 3, seed, false);
        check_final(&h, false);
        for record in &h.log {
            let what = match &record.event {
                Event::BlockExpanded { .. } => "expanded",
                Event::GroupDone { .. } => "group done",
                Event::BlockBlocked { block, .. }
                    if h.base.block(block).is_some_and(|b| b.fan_out.is_some()) =>
                {
                    "group blocked"
                }
                Event::BlockReset { regroup: true, .. } => "regroup",
                Event::BlockReset {
                    block, fresh: true, ..
                } if block.contains('[') => "instance retried",
                Event::BlockFailed { error, .. } if error.contains("the list") => "list refused",
                _ => continue,
            };
            seen.insert(what);
        }
        if h.doc
            .blocks
            .values()
            .any(|s| s.dropped && !s.history.is_empty())
        {
            seen.insert("dropped");
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "dropped",
            "expanded",
            "group blocked",
            "group done",
            "instance retried",
            "list refused",
            "regroup",
        ])
    );
}

fn check_final(h: &Harness, all_good: bool) {
    let doc = &h.doc;
    // (b) A terminal status, with every block settled (but instances a
    // group let go of, which are out of the run).
    assert!(doc.status.is_terminal());
    let live = || doc.blocks.values().filter(|s| !s.dropped);
    for state in live() {
        assert!(
            matches!(
                state.status,
                BlockStatus::Done | BlockStatus::Failed | BlockStatus::Blocked
            ),
            "{state:?}"
        );
    }
    let all_done = live().all(|s| s.status == BlockStatus::Done);
    // Every live instance is in the run's graph, and every block of the
    // graph has a state: the graph is the document's.
    for (id, state) in &doc.blocks {
        assert_eq!(
            h.pipeline.index_of(id).is_some(),
            !state.dropped,
            "{id}: {state:?}"
        );
    }
    assert_eq!(doc.status == RunStatus::Done, all_done);
    // (e) Everything succeeded and every gate was approved: the run is done.
    if all_good {
        assert_eq!(doc.status, RunStatus::Done, "{:#?}", doc.blocks);
    }
    // Blocked blocks sit behind a failure; failed ones ran out of retries.
    for (i, b) in h.pipeline.blocks().iter().enumerate() {
        let state = &doc.blocks[&b.id];
        match state.status {
            BlockStatus::Blocked => {
                let dead = |&u: &usize| {
                    matches!(
                        doc.blocks[&h.pipeline.blocks()[u].id].status,
                        BlockStatus::Failed | BlockStatus::Blocked
                    )
                };
                let upstream = h.pipeline.upstream(i);
                if b.inputs.mode == DependencyMode::Any && h.pipeline.members(i).is_none() {
                    assert!(
                        upstream.iter().all(dead),
                        "{} blocked with a live dependency",
                        b.id
                    );
                } else {
                    assert!(upstream.iter().any(dead));
                }
            }
            // A list that cannot be used fails its block at once.
            BlockStatus::Failed if b.fan_out.is_some() => {
                assert!(
                    state
                        .error
                        .as_deref()
                        .is_some_and(|e| e.contains("the list")),
                    "{state:?}"
                );
            }
            BlockStatus::Failed => {
                assert!(!b.execution.retryable || state.retries_used == b.execution.max_retries);
                assert!(state.error.is_some());
            }
            // A group is done when its instances are, as its `need` says.
            BlockStatus::Done if b.fan_out.is_some() => {
                let keys = state.instances.as_ref().expect("a done group expanded");
                let done = keys
                    .iter()
                    .filter(|k| {
                        doc.blocks[&crate::run::instance_id(&b.id, k)].status == BlockStatus::Done
                    })
                    .count();
                let need = b.fan_out.as_ref().unwrap().need;
                assert!(
                    done >= need.required(keys.len()),
                    "{}: {done} of {keys:?}",
                    b.id
                );
                assert_eq!(h.pipeline.members(i).map(<[usize]>::len), Some(keys.len()));
            }
            BlockStatus::Done => {
                let last = state.history.last().unwrap();
                assert_eq!(last.outcome, Some(AttemptOutcome::Succeeded));
                if gate_phase(b.execution.human_gate, state.autonomy) == Some(GatePhase::After) {
                    let decision = state.decisions.last().unwrap();
                    assert!(decision.approved && decision.phase == GatePhase::After);
                }
                if state.autonomy == Autonomy::Guided {
                    assert!(state.review_flag);
                }
            }
            _ => unreachable!(),
        }
    }
    // (d) The log replays to exactly the final document.
    assert_eq!(RunDoc::replay(&h.log).unwrap(), *doc);
    for (n, record) in h.log.iter().enumerate() {
        assert_eq!(record.seq, n as u64 + 1);
    }
}

/// A random directed graph on `n` nodes (may contain cycles, no self-loops).
fn graph_template(n: usize, edges: &[(usize, usize)]) -> Value {
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for &(from, to) in edges {
        deps[to].insert(from);
    }
    let blocks = (0..n)
        .map(|i| {
            let names: Vec<String> = deps[i].iter().map(|d| format!("b{d}")).collect();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            block(&format!("b{i}"), &names)
        })
        .collect();
    template(blocks)
}

fn petgraph_of(value: &Value) -> petgraph::graph::DiGraph<String, ()> {
    let mut graph = petgraph::graph::DiGraph::new();
    let mut nodes = BTreeMap::new();
    for b in value["blocks"].as_array().unwrap() {
        let id = b["id"].as_str().unwrap().to_string();
        nodes.insert(id.clone(), graph.add_node(id));
    }
    for b in value["blocks"].as_array().unwrap() {
        let to = nodes[b["id"].as_str().unwrap()];
        for d in b["inputs"]["depends"].as_array().unwrap() {
            graph.add_edge(nodes[d["block"].as_str().unwrap()], to, ());
        }
    }
    graph
}

fn random_edges() -> impl Strategy<Value = (usize, Vec<(usize, usize)>)> {
    (1usize..12).prop_flat_map(|n| (Just(n), proptest::collection::vec((0..n, 0..n), 0..(2 * n))))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_runs_respect_the_invariants(
        specs in proptest::collection::vec(spec(), 1..40),
        max_concurrency in 0usize..5,
        seed in any::<u64>(),
    ) {
        let h = simulate(&specs, max_concurrency, seed, false);
        check_final(&h, false);
    }

    #[test]
    fn runs_where_everything_succeeds_end_done(
        specs in proptest::collection::vec(spec(), 1..40),
        max_concurrency in 0usize..5,
        seed in any::<u64>(),
    ) {
        let h = simulate(&specs, max_concurrency, seed, true);
        check_final(&h, true);
        prop_assert_eq!(h.doc.status, RunStatus::Done);
    }

    #[test]
    fn topo_order_is_a_topological_order(specs in proptest::collection::vec(spec(), 1..40)) {
        let value = dag_template(&specs);
        let pipeline = pipeline(&value);
        let graph = petgraph_of(&value);
        prop_assert!(!petgraph::algo::is_cyclic_directed(&graph));
        let order = pipeline.topo_order();
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..pipeline.len()).collect::<Vec<_>>());
        let mut position = vec![0; pipeline.len()];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        for edge in graph.raw_edges() {
            let from = pipeline.index_of(&graph[edge.source()]).unwrap();
            let to = pipeline.index_of(&graph[edge.target()]).unwrap();
            prop_assert!(position[from] < position[to], "edge {from} -> {to} goes backwards in {order:?}");
        }
        // descendants() agrees with petgraph reachability.
        for i in 0..pipeline.len() {
            let node = petgraph::graph::NodeIndex::new(i);
            let mut reach = BTreeSet::new();
            let mut dfs = petgraph::visit::Dfs::new(&graph, node);
            while let Some(n) = dfs.next(&graph) {
                if n != node {
                    reach.insert(n.index());
                }
            }
            prop_assert_eq!(pipeline.descendants(i).into_iter().collect::<BTreeSet<_>>(), reach);
        }
    }

    #[test]
    fn cycles_are_reported_exactly_when_petgraph_finds_one((n, edges) in random_edges()) {
        let edges: Vec<(usize, usize)> = edges.into_iter().filter(|(a, b)| a != b).collect();
        let value = graph_template(n, &edges);
        let cyclic = petgraph::algo::is_cyclic_directed(&petgraph_of(&value));
        let validated = validate_value(&value);
        let cycles: Vec<_> = validated.errors().filter(|d| d.code == "TPL0010").collect();
        prop_assert_eq!(cycles.len(), usize::from(cyclic), "{:#?}", validated.diagnostics);
        prop_assert_eq!(validated.errors().count(), usize::from(cyclic));
        prop_assert_eq!(validated.pipeline.is_some(), !cyclic);
        if let Some(d) = cycles.first() {
            // The reported cycle is a closed path of real edges.
            let path: Vec<&str> = d.message.strip_prefix("dependency cycle: ").unwrap().split(" -> ").collect();
            prop_assert!(path.len() >= 3);
            prop_assert_eq!(path.first(), path.last());
            prop_assert_eq!(d.block.as_deref(), Some(path[0]));
            let index = |id: &str| id.trim_start_matches('b').parse::<usize>().unwrap();
            for pair in path.windows(2) {
                prop_assert!(edges.contains(&(index(pair[0]), index(pair[1]))), "{} is not an edge", pair.join(" -> "));
            }
        }
    }

    #[test]
    fn self_loops_are_tpl0009_not_tpl0010((n, edges) in random_edges(), looped in any::<usize>()) {
        let looped = looped % n;
        let mut edges = edges;
        edges.push((looped, looped));
        let value = graph_template(n, &edges);
        let validated = validate_value(&value);
        prop_assert!(validated.pipeline.is_none());
        let codes: BTreeSet<&str> = validated.errors().map(|d| d.code).collect();
        prop_assert_eq!(codes, BTreeSet::from(["TPL0009"]));
        let loops: BTreeSet<usize> = edges.iter().filter(|(a, b)| a == b).map(|(a, _)| *a).collect();
        prop_assert_eq!(validated.errors().count(), loops.len());
    }
}

#[test]
fn separate_reviewer_refuses_the_person_who_started_the_pass() {
    let mut gated_a = gated(block("a", &[]), "after");
    gated_a["execution"]["separate_reviewer"] = json!(true);
    let mut h = Harness::new(template(vec![gated_a, block("b", &["a"])]));
    // `test` created the run, so `test` started a's first pass.
    h.tick();
    h.run("a", success());
    let refused = transitions::approve_as(
        &h.pipeline,
        &h.doc,
        &h.log,
        "a",
        Principal::new("test"),
        None,
    )
    .unwrap_err();
    assert_eq!(
        refused,
        TransitionError::SelfApproval {
            block: "a".into(),
            actor: "test".into(),
            for_whom: None,
        }
    );
    assert!(refused.to_string().contains("someone else must approve"));
    // Another person may; workers and the scheduler never count as runners.
    let event = transitions::approve_as(
        &h.pipeline,
        &h.doc,
        &h.log,
        "a",
        Principal::new("user:rev"),
        None,
    )
    .unwrap();
    h.commit(vec![event], "user:rev");
    assert_eq!(h.status("a"), BlockStatus::Done);
    // After `user:rev` retries it, `user:rev` started the new pass.
    h.retry("a").unwrap();
    let last = h.log.len();
    h.log[last - 1].actor = "user:rev".into();
    h.tick();
    h.run("a", success());
    let ran = crate::run::ran_by(&h.log, "a");
    assert!(ran.contains("user:rev") && ran.contains("test"), "{ran:?}");
    assert!(matches!(
        transitions::approve_as(
            &h.pipeline,
            &h.doc,
            &h.log,
            "a",
            Principal::new("user:rev"),
            None
        ),
        Err(TransitionError::SelfApproval { .. })
    ));
}

#[test]
fn a_review_link_acts_for_the_person_who_minted_it() {
    let mut gated_a = gated(block("a", &[]), "after");
    gated_a["execution"]["separate_reviewer"] = json!(true);
    let mut h = Harness::new(template(vec![gated_a]));
    h.tick();
    h.run("a", success());
    // `test` created the run and minted a link for a made-up tester.
    let puppet = Principal {
        actor: "reviewer:puppet",
        for_whom: Some("test"),
    };
    let refused =
        transitions::approve_as(&h.pipeline, &h.doc, &h.log, "a", puppet, None).unwrap_err();
    assert_eq!(
        refused,
        TransitionError::SelfApproval {
            block: "a".into(),
            actor: "reviewer:puppet".into(),
            for_whom: Some("test".into()),
        }
    );
    assert!(
        refused
            .to_string()
            .starts_with("`reviewer:puppet` acts for `test`, who minted its review link;"),
        "{refused}"
    );
    // A link minted by someone who did not start the pass may close it.
    let tess = Principal {
        actor: "reviewer:tess",
        for_whom: Some("user:lead"),
    };
    assert!(transitions::approve_as(&h.pipeline, &h.doc, &h.log, "a", tess, None).is_ok());
}

fn guarded_template() -> Value {
    let mut review = gated(block("review", &[]), "after");
    review["execution"]["separate_reviewer"] = json!(true);
    let mut value = template(vec![review, gated(block("draft", &[]), "after")]);
    value["autonomy_profiles"] = json!({
        "hands-off": { "default": "auto" },
        "trusted": { "default": "auto", "blocks": { "review": "guided" } }
    });
    value
}

#[test]
fn the_creator_cannot_lower_a_separate_reviewers_gate() {
    let value = guarded_template();
    let pipeline = pipeline(&value);
    for autonomy in [Autonomy::Auto, Autonomy::Guided] {
        let request = RunRequest {
            overrides: BTreeMap::from([
                ("review".to_string(), autonomy),
                ("draft".to_string(), Autonomy::Auto),
            ]),
            ..RunRequest::default()
        };
        let refused = transitions::create_run(&pipeline, &request, &|_| true).unwrap_err();
        assert_eq!(refused.guarded, vec!["review".to_string()]);
        assert_eq!(refused.problems.len(), 1, "{refused}");
        assert!(
            refused.problems[0].contains("gate asks for a separate reviewer"),
            "{refused}"
        );
    }
    // Raising it, or lowering an unguarded gate, is fine.
    let request = RunRequest {
        overrides: BTreeMap::from([("draft".to_string(), Autonomy::Auto)]),
        ..RunRequest::default()
    };
    assert!(transitions::create_run(&pipeline, &request, &|_| true).is_ok());

    // A profile's default leaves the guarded gate alone; a profile that
    // names the block is the template author's decision.
    let profile = |name: &str| RunRequest {
        autonomy_profile: Some(name.to_string()),
        ..RunRequest::default()
    };
    let h = Harness::with(value.clone(), profile("hands-off"));
    assert_eq!(h.state("review").autonomy, Autonomy::Gate);
    assert_eq!(h.state("draft").autonomy, Autonomy::Auto);
    let h = Harness::with(value.clone(), profile("trusted"));
    assert_eq!(h.state("review").autonomy, Autonomy::Guided);

    // After creation: the creator may not lower it, someone else may.
    let mut h = Harness::new(value);
    let refused = transitions::set_autonomy(
        &h.pipeline,
        &h.doc,
        &h.log,
        "review",
        Autonomy::Auto,
        Principal::new("test"),
    )
    .unwrap_err();
    assert!(matches!(refused, TransitionError::GuardedGate { .. }));
    assert!(
        refused.to_string().contains("may not lower it to `auto`"),
        "{refused}"
    );
    let link = Principal {
        actor: "reviewer:puppet",
        for_whom: Some("test"),
    };
    assert!(
        transitions::set_autonomy(&h.pipeline, &h.doc, &h.log, "review", Autonomy::Auto, link)
            .is_err()
    );
    let event = transitions::set_autonomy(
        &h.pipeline,
        &h.doc,
        &h.log,
        "review",
        Autonomy::Auto,
        Principal::new("user:lead"),
    )
    .unwrap();
    h.commit(vec![event], "user:lead");
    assert_eq!(h.state("review").autonomy, Autonomy::Auto);
    // Raising it back is never refused.
    assert!(
        transitions::set_autonomy(
            &h.pipeline,
            &h.doc,
            &h.log,
            "review",
            Autonomy::Gate,
            Principal::new("test"),
        )
        .is_ok()
    );
}

#[test]
fn without_separate_reviewer_anyone_may_approve() {
    let mut h = Harness::new(template(vec![gated(block("a", &[]), "after")]));
    h.tick();
    h.run("a", success());
    assert!(
        transitions::approve_as(
            &h.pipeline,
            &h.doc,
            &h.log,
            "a",
            Principal::new("test"),
            None
        )
        .is_ok()
    );
}

#[test]
fn autonomy_changes_for_one_run_and_applies_at_the_next_gate() {
    let mut h = Harness::new(template(vec![
        gated(block("a", &[]), "before"),
        gated(block("b", &["a"]), "before"),
    ]));
    assert_eq!(h.state("b").autonomy, Autonomy::Gate);
    let event = transitions::set_autonomy(
        &h.pipeline,
        &h.doc,
        &h.log,
        "b",
        Autonomy::Auto,
        Principal::new("user:op"),
    )
    .unwrap();
    h.commit(vec![event], "user:op");
    assert_eq!(
        transitions::set_autonomy(
            &h.pipeline,
            &h.doc,
            &h.log,
            "b",
            Autonomy::Auto,
            Principal::new("user:op")
        )
        .unwrap_err(),
        TransitionError::SameAutonomy {
            block: "b".into(),
            autonomy: "auto"
        }
    );
    assert!(matches!(
        transitions::set_autonomy(
            &h.pipeline,
            &h.doc,
            &h.log,
            "zzz",
            Autonomy::Auto,
            Principal::new("user:op")
        ),
        Err(TransitionError::UnknownBlock(_))
    ));
    h.tick();
    assert_eq!(h.status("a"), BlockStatus::Waiting, "a still gated");
    h.approve("a").unwrap();
    h.tick();
    h.run("a", success());
    let d = h.tick();
    assert_eq!(d.startable, ids(&["b"]), "b's gate was switched off");
    h.assert_replays();
}

fn failing(error: &str, kind: FailureKind, excerpt: Option<&str>) -> AttemptReport {
    AttemptReport {
        failure: Some(kind),
        reply_excerpt: excerpt.map(str::to_string),
        ..failure(error)
    }
}

#[test]
fn a_permanent_failure_is_not_retried() {
    let mut b = block("a", &[]);
    b["execution"]["max_retries"] = json!(3);
    let mut h = Harness::new(template(vec![b]));
    h.tick();
    let events = h.run(
        "a",
        failing(
            "block `a`: the prompt does not fit",
            FailureKind::Permanent,
            None,
        ),
    );
    let Event::BlockFailed { error, .. } = &events[1] else {
        panic!("{events:?}")
    };
    assert!(
        error.contains("not retried: no retry can fix it") && error.contains("after 1 attempt"),
        "{error}"
    );
    assert_eq!(h.state("a").attempts, 1);
    h.assert_replays();
}

#[test]
fn reply_notes_replace_each_other_and_leave_with_a_used_reply_or_a_person() {
    let mut b = block("a", &[]);
    b["execution"]["max_retries"] = json!(5);
    let mut h = Harness::new(template(vec![b]));
    h.tick();
    h.run(
        "a",
        failing(
            "block `a`: artifact `out` is not valid JSON: trailing comma",
            FailureKind::Reply,
            Some("[1,]"),
        ),
    );
    let note = h
        .state("a")
        .reply_note
        .clone()
        .expect("a note for the retry");
    assert_eq!(
        note,
        ReplyNote {
            attempt: 1,
            problem: "artifact `out` is not valid JSON: trailing comma".to_string(),
            excerpt: Some("[1,]".to_string()),
        }
    );
    assert_eq!(h.state("a").corrections, None, "not a correction");
    // A provider failure keeps the note about the last reply…
    h.now += 100_000;
    h.tick();
    h.run(
        "a",
        failing("block `a`: cannot reach local", FailureKind::Provider, None),
    );
    assert_eq!(h.state("a").reply_note.as_ref().map(|n| n.attempt), Some(1));
    // …a second unusable reply replaces it.
    h.now += 100_000;
    h.tick();
    h.run(
        "a",
        failing("block `a`: the reply is empty", FailureKind::Reply, None),
    );
    let note = h.state("a").reply_note.clone().unwrap();
    assert_eq!((note.attempt, note.excerpt), (3, None));
    // A used reply clears it.
    h.now += 100_000;
    h.tick();
    h.run("a", success());
    assert_eq!(h.state("a").reply_note, None);
    // So does a person's retry.
    h.retry("a").unwrap();
    h.tick();
    h.run(
        "a",
        failing("block `a`: the reply is empty", FailureKind::Reply, None),
    );
    assert!(h.state("a").reply_note.is_some());
    // Five more unusable replies use up the retries.
    for _ in 0..5 {
        h.now += 100_000;
        h.tick();
        h.run("a", failing("block `a`: bad", FailureKind::Reply, None));
    }
    assert_eq!(h.status("a"), BlockStatus::Failed);
    h.retry("a").unwrap();
    assert_eq!(
        h.state("a").reply_note,
        None,
        "a person's retry starts clean"
    );
    h.assert_replays();
}

#[test]
fn an_llm_reply_without_its_metric_is_a_reply_problem() {
    let mut b = with_threshold(block("a", &[]), 80.0, 2);
    b["runtime"] = json!("llm");
    b["skill"] = json!("tester");
    b["inputs"]["config"] = json!({});
    let mut h = Harness::new(template(vec![b]));
    h.tick();
    let events = h.run("a", success());
    let Event::RetryScheduled { reason, .. } = &events[1] else {
        panic!("{events:?}")
    };
    assert!(
        reason.contains("the reply's JSON artifact has no top-level number `score`"),
        "{reason}"
    );
    let note = h.state("a").reply_note.clone().expect("the model is told");
    assert!(note.problem.contains("no top-level number `score`"));
    h.assert_replays();
}

/// A block that must wait (a corrections router whose targets' dependents
/// are still running) tries again after a short wait, however many times,
/// and keeps its retries for real failures.
#[test]
fn waiting_is_not_a_retry() {
    let mut h = Harness::new(template(vec![with_threshold(block("a", &[]), 85.0, 1)]));
    h.tick();
    for _ in 0..3 {
        let report = AttemptReport {
            failure: Some(FailureKind::Wait),
            ..failure("cannot route corrections yet: `b` is running")
        };
        let events = h.run("a", report);
        let Event::RetryScheduled {
            not_before,
            reason,
            counted,
            ..
        } = &events[1]
        else {
            panic!("{events:?}")
        };
        assert!(!counted);
        assert_eq!(*not_before, h.now + transitions::WAIT_MS);
        assert!(reason.contains("waiting uses up no retry"), "{reason}");
        assert_eq!(h.state("a").retries_used, 0);
        h.now += transitions::WAIT_MS;
        h.tick();
    }
    // A real failure still has its one retry.
    let events = h.run("a", failure("boom"));
    assert!(
        matches!(&events[1], Event::RetryScheduled { counted: true, reason, .. } if reason.contains("retry 1 of 1")),
        "{events:?}"
    );
}
