//! Engine behaviour end to end: real subprocesses, real SQLite files and a
//! real PostgreSQL server.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use factory_core::run::{AttemptOutcome, BlockStatus, Event, EventRecord, RunDoc, RunStatus};
use factory_core::template::Autonomy;
use factory_core::transitions::{Policy, RunRequest};
use factory_engine::{Engine, EngineConfig, EngineError, Outcome};
use serde_json::{Value, json};

struct Harness {
    engine: Engine,
    dir: tempfile::TempDir,
}

fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        policy: Policy {
            retry_base_ms: 10,
            retry_max_ms: 100,
            lease_ms: 2_000,
        },
        max_concurrency: 8,
        worker_slots: 0,
        work_root: dir.join("work"),
        keep_work_dirs: false,
        actor: "test:alice".to_string(),
        observer: None,
        llm: None,
        notifications: None,
    }
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = factory_store::open(dir.path().join("factory.db").to_str().unwrap())
        .await
        .unwrap();
    let engine = Engine::new(Arc::from(store), config(dir.path()));
    Harness { engine, dir }
}

async fn postgres() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = factory_store::testing::fresh_postgres_database().await;
    let store = factory_store::open(&url).await.unwrap();
    let engine = Engine::new(Arc::from(store), config(dir.path()));
    Harness { engine, dir }
}

/// A command block running `script` with `sh -c`.
fn sh(id: &str, script: &str, extra: Value) -> Value {
    let mut block = json!({
        "id": id, "name": id, "layer": "L0", "type": "build", "runtime": "command", "timeout": 10000,
        "inputs": {"config": {"command": ["sh", "-c", script]}},
        "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}]},
        "execution": {"max_retries": 0}
    });
    merge(&mut block, extra);
    block
}

fn noop(id: &str, extra: Value) -> Value {
    let mut block = json!({
        "id": id, "name": id, "layer": "L0", "type": "build", "runtime": "builtin",
        "inputs": {"config": {"builtin": "noop"}},
        "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]},
        "execution": {"max_retries": 0}
    });
    merge(&mut block, extra);
    block
}

fn merge(target: &mut Value, extra: Value) {
    match (target, extra) {
        (Value::Object(target), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, extra) => *target = extra,
    }
}

fn template(blocks: Vec<Value>, params: Value) -> String {
    json!({"id": "test", "name": "Test", "version": "1", "params": params, "blocks": blocks})
        .to_string()
}

fn dep(block: &str) -> Value {
    json!({"block": block, "key": "out"})
}

async fn start(h: &Harness, source: &str, params: &[(&str, &str)]) -> RunDoc {
    let request = RunRequest {
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
        ..RunRequest::default()
    };
    h.engine.create_run(source, None, request).await.unwrap()
}

async fn artifact(h: &Harness, doc: &RunDoc, block: &str, key: &str) -> String {
    let attempt = doc.blocks[block]
        .last_success()
        .expect("a successful attempt");
    let hash = &attempt.report.as_ref().unwrap().artifacts[key].hash;
    String::from_utf8(h.engine.store().get_blob(hash).await.unwrap()).unwrap()
}

/// The text of a stored blob (a prompt, request or response).
async fn blob_text(h: &Harness, blob: Option<&factory_core::run::LogRef>) -> String {
    let hash = &blob.expect("the blob is recorded").hash;
    String::from_utf8(h.engine.store().get_blob(hash).await.unwrap()).unwrap()
}

/// The llm usage record of a block's attempt (0-based index into its history).
fn llm_usage(doc: &RunDoc, block: &str, index: usize) -> factory_core::run::LlmUsage {
    let report = doc.blocks[block].history[index].report.as_ref().unwrap();
    report.llm.as_deref().cloned().expect("usage recorded")
}

/// Drives a run, then checks that what the store holds — a header row and
/// one row per block, each written only when an event named it — is the
/// document the engine held and the one its log replays to.
async fn drive(h: &Harness, run_id: &str) -> (Outcome, RunDoc) {
    let (outcome, doc) = h.engine.drive(run_id).await.unwrap();
    let stored = h.engine.store().load_run(run_id).await.unwrap().doc;
    assert_eq!(
        stored, doc,
        "the stored document is the one the engine held"
    );
    let replayed = RunDoc::replay(&events(h, run_id).await).unwrap();
    assert_eq!(replayed, doc, "the log replays to the stored document");
    let text = h
        .engine
        .store()
        .load_run_json(run_id, factory_store::History::All)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<RunDoc>(&text).unwrap(), doc);
    (outcome, doc)
}

async fn events(h: &Harness, run_id: &str) -> Vec<EventRecord> {
    h.engine.store().events(run_id, 0).await.unwrap()
}

fn statuses(doc: &RunDoc) -> BTreeMap<&str, BlockStatus> {
    doc.blocks
        .iter()
        .map(|(id, s)| (id.as_str(), s.status))
        .collect()
}

/// Gates, parallel work, artifact wiring and approval on one backend.
async fn gated_pipeline(h: Harness) {
    let source = template(
        vec![
            sh(
                "left",
                "printf left > $FACTORY_OUTPUT_DIR/out.txt",
                json!({"execution": {"parallel_group": "g"}}),
            ),
            sh(
                "right",
                "printf right > $FACTORY_OUTPUT_DIR/out.txt",
                json!({"execution": {"parallel_group": "g"}}),
            ),
            sh(
                "join",
                r#"for f in $(sed 's/[{}",]/ /g' "$FACTORY_INPUTS" | tr ' ' '\n' | grep '^/'); do cat "$f"; done > $FACTORY_OUTPUT_DIR/out.txt"#,
                json!({"layer": "L1", "inputs": {"depends": [dep("left"), dep("right")]}, "execution": {"human_gate": "after"}}),
            ),
            sh(
                "last",
                "cat $(sed -n 's/.*\"join.out\": \"\\([^\"]*\\)\".*/\\1/p' $FACTORY_INPUTS) > $FACTORY_OUTPUT_DIR/out.txt; echo !! >> $FACTORY_OUTPUT_DIR/out.txt",
                json!({"layer": "L2", "inputs": {"depends": [dep("join")]}}),
            ),
        ],
        json!({}),
    );
    let doc = start(&h, &source, &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Waiting);
    assert_eq!(doc.status, RunStatus::Waiting);
    assert_eq!(statuses(&doc)["join"], BlockStatus::Waiting);
    assert_eq!(
        statuses(&doc)["last"],
        BlockStatus::Pending,
        "nothing runs past an open gate"
    );
    assert_eq!(artifact(&h, &doc, "join", "out").await, "leftright");

    // The two group members ran concurrently: both started before either finished.
    let log = events(&h, &doc.run_id).await;
    let position = |kind: &str, block: &str| {
        log.iter()
            .position(|r| r.event.kind() == kind && r.event.block() == Some(block))
            .unwrap()
    };
    assert!(position("block_started", "right") < position("attempt_finished", "left"));
    assert!(position("block_started", "left") < position("attempt_finished", "right"));

    let approved = h
        .engine
        .approve(&doc.run_id, "join", Some("fine".into()))
        .await
        .unwrap();
    let decision = approved.blocks["join"].decisions.last().unwrap().clone();
    assert!(decision.approved);
    assert_eq!(decision.actor, "test:alice");
    assert_eq!(decision.note.as_deref(), Some("fine"));
    // Approving twice is refused and changes nothing.
    let error = h
        .engine
        .approve(&doc.run_id, "join", None)
        .await
        .unwrap_err();
    assert!(matches!(error, EngineError::Transition(_)), "{error}");
    assert!(error.to_string().contains("not waiting"), "{error}");

    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(artifact(&h, &doc, "last", "out").await, "leftright!!\n");
    let log = events(&h, &doc.run_id).await;
    assert_eq!(
        RunDoc::replay(&log).unwrap(),
        doc,
        "the log reproduces the document"
    );
    drop(h.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_pipeline_on_sqlite() {
    gated_pipeline(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_pipeline_on_postgres() {
    gated_pipeline(postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_contract_and_rejection_corrections() {
    let h = sqlite().await;
    let script = r#"
        set -eu
        test -z "$(ls -A .)"                      # fresh, empty cwd
        case "$(pwd)" in */attempt-$FACTORY_ATTEMPT/work) ;; *) echo "bad cwd $(pwd)" >&2; exit 9;; esac
        echo "$FACTORY_PARAMS" > $FACTORY_OUTPUT_DIR/params.json
        echo "attempt=$FACTORY_ATTEMPT topic=$FACTORY_PARAM_TOPIC run=$FACTORY_RUN_ID block=$FACTORY_BLOCK_ID" > $FACTORY_OUTPUT_DIR/out.txt
        if [ -n "${FACTORY_CORRECTIONS:-}" ]; then cat "$FACTORY_CORRECTIONS" >> $FACTORY_OUTPUT_DIR/out.txt; fi
        echo to-stdout; echo to-stderr >&2
    "#;
    let source = template(
        vec![sh(
            "writer",
            script,
            json!({
                "outputs": {"artifacts": [{"key": "out", "path": "out.txt", "format": "text"}, {"key": "params", "path": "params.json", "format": "json"}]},
                "execution": {"human_gate": "after"}
            }),
        )],
        json!({"topic": {"required": true}, "level": {"default": 3}}),
    );
    let doc = start(&h, &source, &[("topic", "rivers")]).await;
    let (_, doc) = drive(&h, &doc.run_id).await;
    let out = artifact(&h, &doc, "writer", "out").await;
    assert_eq!(
        out,
        format!("attempt=1 topic=rivers run={} block=writer\n", doc.run_id)
    );
    let params: Value =
        serde_json::from_str(&artifact(&h, &doc, "writer", "params").await).unwrap();
    assert_eq!(params, json!({"level": 3, "topic": "rivers"}));
    let report = doc.blocks["writer"].history[0].report.clone().unwrap();
    assert_eq!(
        h.engine
            .store()
            .get_blob(&report.stdout.unwrap().hash)
            .await
            .unwrap(),
        b"to-stdout\n"
    );
    assert_eq!(
        h.engine
            .store()
            .get_blob(&report.stderr.unwrap().hash)
            .await
            .unwrap(),
        b"to-stderr\n"
    );
    assert_eq!(report.exit_code, Some(0));

    // Rejection: feedback becomes corrections and the block runs again with them.
    let error = h
        .engine
        .reject(&doc.run_id, "writer", "   ")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("feedback is empty"), "{error}");
    let rejected = h
        .engine
        .reject(&doc.run_id, "writer", "Mention the delta")
        .await
        .unwrap();
    let corrections = rejected.blocks["writer"].corrections.clone().unwrap();
    assert_eq!(corrections.version, "v1→v2");
    assert_eq!(corrections.items[0].correction, "Mention the delta");
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Waiting);
    let out = artifact(&h, &doc, "writer", "out").await;
    assert!(out.starts_with("attempt=2 "), "{out}");
    assert!(out.contains("Mention the delta"), "{out}");
    assert!(
        out.contains("\"instruction\""),
        "corrections file carries the instruction: {out}"
    );
    assert_eq!(
        doc.blocks["writer"].history[1]
            .corrections_version
            .as_deref(),
        Some("v1→v2")
    );
    let decisions = &doc.blocks["writer"].decisions;
    assert_eq!(
        (decisions[0].approved, decisions[0].actor.as_str()),
        (false, "test:alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_then_block_dependents_only() {
    let h = sqlite().await;
    let source = template(
        vec![
            sh(
                "flaky",
                "echo broken >&2; exit 3",
                json!({"execution": {"max_retries": 2}}),
            ),
            sh(
                "after-flaky",
                "printf x > $FACTORY_OUTPUT_DIR/out.txt",
                json!({"layer": "L1", "inputs": {"depends": [dep("flaky")]}}),
            ),
            sh(
                "after-after",
                "printf x > $FACTORY_OUTPUT_DIR/out.txt",
                json!({"layer": "L2", "inputs": {"depends": [dep("after-flaky")]}}),
            ),
            sh(
                "independent",
                "printf ok > $FACTORY_OUTPUT_DIR/out.txt",
                json!({}),
            ),
            sh("forgetful", "true", json!({})),
            sh(
                "bad-json",
                "printf '{oops' > $FACTORY_OUTPUT_DIR/out.json",
                json!({"outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]}}),
            ),
        ],
        json!({}),
    );
    let doc = start(&h, &source, &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Failed);
    let s = statuses(&doc);
    assert_eq!(s["flaky"], BlockStatus::Failed);
    assert_eq!(s["after-flaky"], BlockStatus::Blocked);
    assert_eq!(s["after-after"], BlockStatus::Blocked);
    assert_eq!(s["independent"], BlockStatus::Done);
    assert_eq!(doc.blocks["flaky"].attempts, 3, "one try and two retries");
    let error = doc.blocks["flaky"].error.clone().unwrap();
    assert!(
        error.contains("exited with status 3")
            && error.contains("broken")
            && error.contains("after 3 attempts"),
        "{error}"
    );
    let error = doc.blocks["forgetful"].error.clone().unwrap();
    assert!(
        error.contains("declared artifact `out` was not written") && error.contains("out.txt"),
        "{error}"
    );
    let error = doc.blocks["bad-json"].error.clone().unwrap();
    assert!(error.contains("not valid JSON"), "{error}");

    // Backoff: each retry waited after the previous failure.
    let log = events(&h, &doc.run_id).await;
    let retries: Vec<&EventRecord> = log
        .iter()
        .filter(|r| matches!(&r.event, Event::RetryScheduled { block, .. } if block == "flaky"))
        .collect();
    assert_eq!(retries.len(), 2);

    // A manual retry resets the block and its blocked descendants.
    let reset = h.engine.retry(&doc.run_id, "flaky").await.unwrap();
    let s = statuses(&reset);
    assert_eq!(
        (s["flaky"], s["after-flaky"], s["after-after"]),
        (
            BlockStatus::Ready,
            BlockStatus::Pending,
            BlockStatus::Pending
        )
    );
    assert_eq!(reset.status, RunStatus::Running);
    let error = h
        .engine
        .retry(&doc.run_id, "after-flaky")
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("retry needs a failed or done block"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_retry_until_the_metric_passes() {
    let h = sqlite().await;
    let script = r#"printf x > $FACTORY_OUTPUT_DIR/out.txt; echo "{\"score\": $((FACTORY_ATTEMPT * 40))}" > $FACTORY_OUTPUT_DIR/metrics.json"#;
    let source = template(
        vec![
            sh(
                "scored",
                script,
                json!({"outputs": {"metrics": [{"key": "score", "type": "number"}]}, "execution": {"threshold": {"metric": "score", "min": 85}, "max_retries": 2}}),
            ),
            sh(
                "never",
                script,
                json!({"outputs": {"metrics": [{"key": "score", "type": "number"}]}, "execution": {"threshold": {"metric": "score", "min": 500}, "max_retries": 1}}),
            ),
            sh(
                "silent",
                "printf x > $FACTORY_OUTPUT_DIR/out.txt",
                json!({"outputs": {"metrics": [{"key": "score", "type": "number"}]}, "execution": {"threshold": {"metric": "score", "min": 1}}}),
            ),
        ],
        json!({}),
    );
    let doc = start(&h, &source, &[]).await;
    let (_, doc) = drive(&h, &doc.run_id).await;
    let scored = &doc.blocks["scored"];
    assert_eq!(
        (scored.status, scored.attempts, scored.score),
        (BlockStatus::Done, 3, Some(120.0))
    );
    let outcomes: Vec<_> = scored.history.iter().map(|a| a.outcome.unwrap()).collect();
    assert_eq!(
        outcomes,
        [
            AttemptOutcome::ThresholdMissed,
            AttemptOutcome::ThresholdMissed,
            AttemptOutcome::Succeeded
        ]
    );
    let never = &doc.blocks["never"];
    assert_eq!((never.status, never.attempts), (BlockStatus::Failed, 2));
    assert!(
        never
            .error
            .as_deref()
            .unwrap()
            .contains("metric `score` = 80 is below the threshold 500"),
        "{:?}",
        never.error
    );
    assert!(
        doc.blocks["silent"]
            .error
            .as_deref()
            .unwrap()
            .contains("was not reported"),
        "{:?}",
        doc.blocks["silent"].error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_kill_the_whole_process_group() {
    let h = sqlite().await;
    let pid_file = h.dir.path().join("bg.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
    let source = template(
        vec![sh("slow", &script, json!({"timeout": 500}))],
        json!({}),
    );
    let doc = start(&h, &source, &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(
        doc.blocks["slow"].history[0].outcome,
        Some(AttemptOutcome::TimedOut)
    );
    assert!(
        doc.blocks["slow"]
            .error
            .as_deref()
            .unwrap()
            .contains("timed out after 500 ms")
    );
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    // Reaped or gone: the background child did not survive the timeout. A
    // SIGKILLed process may take a moment to be torn down on a busy machine.
    let mut state = String::new();
    for _ in 0..100 {
        state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        state.is_empty() || state.contains(") Z "),
        "background sleep {pid} still alive: {state}"
    );
}

/// The most blocks of a run that were running at once, from its log.
async fn peak_running(h: &Harness, run_id: &str) -> i32 {
    let mut running = 0i32;
    let mut peak = 0;
    for record in events(h, run_id).await {
        match record.event {
            Event::BlockStarted { .. } => running += 1,
            Event::AttemptFinished { .. } => running -= 1,
            _ => {}
        }
        peak = peak.max(running);
    }
    peak
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_holds() {
    let mut h = sqlite().await;
    let mut cfg = config(h.dir.path());
    cfg.max_concurrency = 2;
    h.engine = Engine::new(h.engine.store().clone(), cfg);
    let blocks = (0..6)
        .map(|i| noop(&format!("b{i}"), json!({"inputs": {"config": {"builtin": "sleep", "ms": 60}}, "execution": {"parallel_group": "all"}})))
        .collect();
    let source = template(blocks, json!({}));
    let doc = start(&h, &source, &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        peak_running(&h, &doc.run_id).await,
        2,
        "the worker's default"
    );

    // A run created with its own limit keeps it, whatever the worker's.
    for own in [3, 1] {
        let request = RunRequest {
            max_concurrency: Some(own),
            ..RunRequest::default()
        };
        let doc = h.engine.create_run(&source, None, request).await.unwrap();
        assert_eq!(doc.max_concurrency, Some(own));
        let (outcome, _) = drive(&h, &doc.run_id).await;
        assert_eq!(outcome, Outcome::Done);
        assert_eq!(
            peak_running(&h, &doc.run_id).await,
            own as i32,
            "the run's own"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_creation_names_every_missing_input() {
    let h = sqlite().await;
    let source = template(
        vec![sh(
            "needs",
            "true",
            json!({"inputs": {"env": ["FACTORY_TEST_SURELY_UNSET_VAR"]}}),
        )],
        json!({"expert_name": {"required": true, "description": "the expert"}, "slug": {"required": true}}),
    );
    let request = RunRequest {
        params: [("bogus".to_string(), json!("x"))].into(),
        autonomy_profile: Some("nope".into()),
        overrides: [("ghost".to_string(), Autonomy::Auto)].into(),
        ..RunRequest::default()
    };
    let error = h
        .engine
        .create_run(&source, None, request)
        .await
        .unwrap_err()
        .to_string();
    for needle in [
        "`expert_name` (the expert)",
        "`slug`",
        "`bogus`",
        "FACTORY_TEST_SURELY_UNSET_VAR",
        "needs",
        "`nope`",
        "`ghost`",
    ] {
        assert!(error.contains(needle), "missing {needle} in: {error}");
    }
    assert!(
        h.engine.store().list_runs(10).await.unwrap().is_empty(),
        "nothing stored"
    );

    let llm = template(
        vec![
            json!({"id": "ask", "name": "Ask", "layer": "L0", "type": "research", "runtime": "llm", "skill": "ask"}),
        ],
        json!({}),
    );
    let error = h
        .engine
        .create_run(&llm, None, RunRequest::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no LLM provider is configured") && error.contains("ask"),
        "{error}"
    );

    let error = h
        .engine
        .create_run("{\"id\": 1}", None, RunRequest::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("TPL0002"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autonomy_profiles_and_overrides() {
    let h = sqlite().await;
    let mut value: Value = serde_json::from_str(&template(
        vec![
            noop("a", json!({"execution": {"human_gate": "after"}})),
            noop("b", json!({"layer": "L1", "inputs": {"depends": [dep("a")]}, "execution": {"human_gate": "before"}})),
            noop("c", json!({"layer": "L2", "inputs": {"depends": [dep("b")]}})),
        ],
        json!({}),
    ))
    .unwrap();
    value["autonomy_profiles"] = json!({
        "trusting": {"default": "auto", "blocks": {"a": "guided"}},
        "strict": {"default": "gate"}
    });
    let source = value.to_string();

    let request = RunRequest {
        autonomy_profile: Some("trusting".into()),
        ..RunRequest::default()
    };
    let doc = h.engine.create_run(&source, None, request).await.unwrap();
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert!(doc.blocks["a"].review_flag, "guided flags for review");
    assert!(!doc.blocks["b"].review_flag);

    // strict: every block gates; c (no gate in the template) waits after it runs.
    let request = RunRequest {
        autonomy_profile: Some("strict".into()),
        overrides: [("a".to_string(), Autonomy::Auto)].into(),
        ..RunRequest::default()
    };
    let doc = h.engine.create_run(&source, None, request).await.unwrap();
    let (_, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(
        statuses(&doc)["a"],
        BlockStatus::Done,
        "override beats the profile"
    );
    assert_eq!(statuses(&doc)["b"], BlockStatus::Waiting);
    assert!(
        doc.blocks["b"].history.is_empty(),
        "a before-gate stops the block before it runs"
    );
    h.engine.approve(&doc.run_id, "b", None).await.unwrap();
    let (_, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(
        statuses(&doc)["b"],
        BlockStatus::Done,
        "the before gate was the only gate on b"
    );
    assert_eq!(statuses(&doc)["c"], BlockStatus::Waiting);
}

/// The 31-block clone-factory shape on PostgreSQL with no-op blocks: gates
/// stop it exactly where the template says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_factory_shape_on_postgres() {
    let h = postgres().await;
    let source = factory_engine::fixtures::clone_factory_noop();
    let request = RunRequest {
        params: [("expert_name".to_string(), json!("Ada"))].into(),
        ..RunRequest::default()
    };
    let doc = h.engine.create_run(&source, None, request).await.unwrap();
    let mut gates = Vec::new();
    let mut doc = doc;
    loop {
        let (outcome, next) = drive(&h, &doc.run_id).await;
        doc = next;
        if outcome != Outcome::Waiting {
            assert_eq!(outcome, Outcome::Done);
            break;
        }
        let waiting: Vec<String> = doc
            .blocks
            .iter()
            .filter(|(_, s)| s.status == BlockStatus::Waiting)
            .map(|(id, _)| id.clone())
            .collect();
        for block in waiting {
            h.engine.approve(&doc.run_id, &block, None).await.unwrap();
            gates.push(block);
        }
    }
    assert_eq!(
        gates,
        [
            "expert-framework-creator",
            "extraction-reviewer",
            "gap-analyzer",
            "clone-tester",
            "expert-audit"
        ]
    );
    assert_eq!(doc.blocks.len(), 31);
    assert!(
        doc.blocks
            .values()
            .all(|s| s.status == BlockStatus::Done && s.attempts == 1)
    );
}

/// Junk under a blocking audit threshold of 6 stops the run at the block
/// that wrote it: the block fails with the audit's reason, its consumer never
/// starts. Without `blocking` the same junk is only flagged and flows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_under_a_blocking_audit_threshold_never_reaches_downstream() {
    let refusal = "I'm sorry, but I can't help with that request. As an AI language model, I do not have access to information about this person.";
    let blocks = |blocking: bool| {
        vec![
            sh(
                "research",
                &format!("printf '%s\\n' \"{refusal}\" > $FACTORY_OUTPUT_DIR/out.md"),
                json!({
                    "outputs": {"artifacts": [{"key": "out", "path": "out.md", "format": "md"}]},
                    "execution": {"max_retries": 2},
                    "audit": {"threshold": 6.0, "blocking": blocking}
                }),
            ),
            sh(
                "summary",
                r#"for f in $(sed 's/[{}",]/ /g' "$FACTORY_INPUTS" | tr ' ' '\n' | grep '^/'); do cat "$f"; done > $FACTORY_OUTPUT_DIR/out.txt"#,
                json!({"layer": "L1", "inputs": {"depends": [dep("research")]}}),
            ),
        ]
    };

    let h = sqlite().await;
    let doc = start(&h, &template(blocks(true), json!({})), &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Failed);
    let research = &doc.blocks["research"];
    // Failed on its first attempt: `blocking` alone does not retry (that is `retry`).
    assert_eq!(
        (research.status, research.attempts),
        (BlockStatus::Failed, 1)
    );
    let audit = research.latest_audit().expect("the attempt was audited");
    assert!(audit.composite <= 3.0, "{}", audit.summary_line());
    let error = research.error.clone().unwrap_or_default();
    assert!(
        error.contains("below the blocking audit threshold 6.0") && error.contains("refusal"),
        "{error}"
    );
    assert_eq!(
        doc.blocks["summary"].attempts, 0,
        "the consumer never started"
    );

    // The same junk without `blocking` is flagged, and the consumer reads it.
    let doc = start(&h, &template(blocks(false), json!({})), &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert!(doc.blocks["research"].audit_flagged);
    assert!(
        artifact(&h, &doc, "summary", "out")
            .await
            .contains("As an AI language model")
    );
}

/// Every attempt is audited; a block below its audit threshold is retried with
/// the fix suggestions as corrections, then flagged when retries run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_run_after_every_attempt_and_gate_on_their_threshold() {
    let h = sqlite().await;
    let dir = h.dir.path().join("tpl");
    std::fs::create_dir_all(dir.join("golden")).unwrap();
    std::fs::write(
        dir.join("golden/list.json"),
        r#"{"items": [{"name": "Anchor at 42%", "steps": ["a", "b", "c", "d"]}, {"name": "Silence for 7 seconds", "steps": ["a", "b", "c"]}, {"name": "Mirror the last 3 words", "steps": ["a", "b"]}]}"#,
    )
    .unwrap();
    // Attempt 1 writes a thin, generic list; attempt 2 (with corrections) a full one.
    let script = r#"
        if [ -n "${FACTORY_CORRECTIONS:-}" ]; then
          cp "$FACTORY_CORRECTIONS" $FACTORY_OUTPUT_DIR/../seen-corrections.json
          printf '{"items": [{"name": "Anchor at 42%% of the ask, as Marisol Vega teaches", "steps": ["Open at 42%%", "Wait 7 seconds", "Concede 3%%", "Close on day 2"]}, {"name": "Silence for 7 seconds after the offer", "steps": ["Ask", "Count to 7", "Listen"]}, {"name": "Mirror the last 3 words", "steps": ["Repeat", "Pause"]}]}' > $FACTORY_OUTPUT_DIR/list.json
        else
          printf '{"items": [{"name": "Unlock your potential with cutting-edge, world-class synergies", "steps": ["TODO"]}]}' > $FACTORY_OUTPUT_DIR/list.json
        fi
        echo '{"self_score": 9.5}' > $FACTORY_OUTPUT_DIR/metrics.json
    "#;
    let source = template(
        vec![
            sh(
                "lister",
                script,
                json!({
                    "outputs": {"artifacts": [{"key": "list", "path": "list.json", "format": "json"}]},
                    "execution": {"max_retries": 1},
                    "audit": {"golden": {"list": "golden/list.json"}, "threshold": 9.9, "retry": true}
                }),
            ),
            sh(
                "sloppy",
                "echo 'In todays fast-paced world, unlock your potential. TODO: write this. [INSERT STORY]' > $FACTORY_OUTPUT_DIR/out.md",
                json!({
                    "outputs": {"artifacts": [{"key": "out", "path": "out.md", "format": "md"}]},
                    "audit": {"threshold": 9.0}
                }),
            ),
        ],
        json!({"expert_name": {"required": true}}),
    );
    let path = dir.join("t.json");
    std::fs::write(&path, &source).unwrap();

    // Golden files are checked when the run is created.
    let broken = source.replace("golden/list.json", "golden/missing.json");
    let error = h
        .engine
        .create_run(
            &broken,
            Some(&path),
            RunRequest {
                params: [("expert_name".to_string(), json!("Marisol Vega"))].into(),
                ..RunRequest::default()
            },
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("golden/missing.json"), "{error}");

    let request = RunRequest {
        params: [("expert_name".to_string(), json!("Marisol Vega"))].into(),
        ..RunRequest::default()
    };
    let doc = h
        .engine
        .create_run(&source, Some(&path), request)
        .await
        .unwrap();
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done, "flagged, not failed");
    let state = &doc.blocks["lister"];
    assert_eq!(state.attempts, 2);
    let first = state.history[0]
        .report
        .as_ref()
        .unwrap()
        .audit
        .as_deref()
        .cloned()
        .expect("attempt 1 audited");
    let second = state.history[1]
        .report
        .as_ref()
        .unwrap()
        .audit
        .as_deref()
        .cloned()
        .expect("attempt 2 audited");
    assert_eq!(
        state.history[0].outcome,
        Some(AttemptOutcome::ThresholdMissed)
    );
    assert!(
        second.composite > first.composite,
        "{} vs {}",
        first.badge,
        second.badge
    );
    assert!(
        second.d1.score > first.d1.score
            && second.d2.score > first.d2.score
            && second.d4.score > first.d4.score
    );
    let deltas = second.deltas.clone().expect("deltas against attempt 1");
    assert!(deltas.composite > 0.0);
    assert!(
        first.calibration_warning.is_some(),
        "self-score 9.5 vs {}",
        first.composite
    );
    // The retry carried the audit's suggestions as corrections.
    let corrections = state.history[1].corrections_version.clone();
    assert_eq!(corrections.as_deref(), Some("v1→v2"));
    let seen = std::fs::read_to_string(
        h.dir
            .path()
            .join("work")
            .join(&doc.run_id)
            .join("lister/attempt-2/seen-corrections.json"),
    );
    let _ = seen; // the attempt directory is removed after success; the state keeps the corrections:
    let items = &state.corrections.as_ref().unwrap().items;
    assert!(!items.is_empty());
    assert!(
        items.iter().any(|i| i.finding.contains("list.json")),
        "{items:?}"
    );
    // The corrected attempt clears the bar: not flagged.
    assert!(!state.audit_flagged, "{}", second.summary_line());
    assert_eq!(state.history[1].outcome, Some(AttemptOutcome::Succeeded));
    assert_eq!(state.latest_audit(), Some(&second));
    // A block without audit retry is flagged, with its suggestions, and the run goes on.
    let sloppy = &doc.blocks["sloppy"];
    assert_eq!((sloppy.status, sloppy.attempts), (BlockStatus::Done, 1));
    assert!(sloppy.audit_flagged, "{:?}", sloppy.latest_audit());
    assert!(!sloppy.latest_audit().unwrap().suggestions.is_empty());
    let log = events(&h, &doc.run_id).await;
    assert!(
        log.iter()
            .any(|r| matches!(&r.event, Event::AuditFlagged { block, .. } if block == "sloppy"))
    );
    assert!(
        !log.iter()
            .any(|r| matches!(&r.event, Event::AuditFlagged { block, .. } if block == "lister"))
    );
}

mod fan_out;
mod lease;
mod lens;
mod memo;
mod real_llm;
mod shared_run;

mod llm_runtime {
    //! `llm` blocks end to end against a local server speaking the Anthropic
    //! Messages wire format (streaming), with the real client code.

    use super::*;
    use factory_runtime::llm::LlmSettings;
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    /// Answers per block, recognised by the skill text in the system prompt.
    struct PerBlock;

    impl Respond for PerBlock {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            let system = body["system"].to_string();
            let user = body["messages"].to_string();
            let reply = if system.contains("SKILL-OUTLINE") && !user.contains("could not be used") {
                // The first outline reply is broken JSON: the retry must be told why.
                "{\"sections\": [\"Seven Second Silence\"".to_string()
            } else if system.contains("SKILL-OUTLINE") {
                "```json\n{\"sections\": [\"Seven Second Silence\", \"42 Percent Anchor\"]}\n```"
                    .to_string()
            } else {
                let note = if user.contains("EXPERT CORRECTIONS (MUST APPLY)") {
                    "corrected"
                } else {
                    "first"
                };
                format!(
                    "```artifact:text\n# Draft ({note})\n\nMarisol Vega counts to 7.\n```\n```artifact:meta\n{{\"version\": \"{note}\"}}\n```"
                )
            };
            let events = [
                json!({"type": "message_start", "message": {"model": "claude-test", "usage": {"input_tokens": 100, "cache_read_input_tokens": 60, "output_tokens": 1}}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": reply}}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}}),
                json!({"type": "message_stop"}),
            ];
            let sse: String = events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect();
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(sse)
        }
    }

    fn settings(server: &MockServer) -> Arc<LlmSettings> {
        let uri = server.uri();
        let config = factory_runtime::llm::LlmConfig::parse(
            "[prices.\"claude-sonnet-4-5\"]\ninput = 3.0\noutput = 15.0\ncache_read = 0.3\n",
            "factory.toml",
        )
        .unwrap();
        Arc::new(LlmSettings::from_config(config, move |name| match name {
            "ANTHROPIC_BASE_URL" => Some(uri.clone()),
            "ANTHROPIC_API_KEY" => Some("sk-test-key".to_string()),
            _ => None,
        }))
    }

    fn llm_block(id: &str, extra: Value) -> Value {
        let mut block = json!({
            "id": id, "name": id, "layer": "L0", "type": "build", "runtime": "llm", "skill": id, "model": "sonnet",
            "outputs": {"artifacts": [{"key": id, "path": format!("{id}.json"), "format": "json"}]},
            "execution": {"max_retries": 0}
        });
        merge(&mut block, extra);
        block
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn llm_blocks_run_with_assembled_prompts_corrections_and_usage() {
        let server = MockServer::start().await;
        Mock::given(wiremock::matchers::method("POST"))
            .respond_with(PerBlock)
            .mount(&server)
            .await;
        let mut h = sqlite().await;
        let mut cfg = config(h.dir.path());
        cfg.llm = Some(settings(&server));
        h.engine = Engine::new(h.engine.store().clone(), cfg);

        let dir = h.dir.path().join("tpl");
        for (skill, marker) in [("outline", "SKILL-OUTLINE"), ("draft", "SKILL-DRAFT")] {
            std::fs::create_dir_all(dir.join("skills").join(skill)).unwrap();
            std::fs::write(
                dir.join("skills").join(skill).join("SKILL.md"),
                format!("# {marker}\nDo the work."),
            )
            .unwrap();
        }
        let source = template(
            vec![
                llm_block("outline", json!({"execution": {"max_retries": 1}})),
                llm_block(
                    "draft",
                    json!({
                        "layer": "L1",
                        "inputs": {"depends": [{"block": "outline", "key": "outline"}]},
                        "outputs": {"artifacts": [{"key": "text", "path": "draft.md", "format": "md"}, {"key": "meta", "path": "meta.json", "format": "json"}]},
                        "execution": {"human_gate": "after"}
                    }),
                ),
            ],
            json!({"expert_name": {"required": true}}),
        );
        let path = dir.join("t.json");
        std::fs::write(&path, &source).unwrap();
        let request = || RunRequest {
            params: [("expert_name".to_string(), json!("Marisol Vega"))].into(),
            // A per-run model for one block; the other keeps its own.
            models: [("outline".to_string(), "anthropic:claude-custom".to_string())].into(),
            ..RunRequest::default()
        };

        // A per-run model whose provider is not configured is refused up front.
        let error = h
            .engine
            .create_run(
                &source,
                Some(&path),
                RunRequest {
                    models: [("draft".to_string(), "openrouter:x/y".to_string())].into(),
                    ..request()
                },
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("draft") && error.contains("OPENROUTER_API_KEY"),
            "{error}"
        );

        // A missing skill and an unconfigured provider are refused up front.
        let error = h
            .engine
            .create_run(
                &source.replace("\"skill\":\"draft\"", "\"skill\":\"nope\""),
                Some(&path),
                request(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("skills/nope/SKILL.md"), "{error}");
        let error = h
            .engine
            .create_run(
                &source.replace("\"model\":\"sonnet\"", "\"model\":\"openrouter:x/y\""),
                Some(&path),
                request(),
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("OPENROUTER_API_KEY"), "{error}");

        let doc = h
            .engine
            .create_run(&source, Some(&path), request())
            .await
            .unwrap();
        let (outcome, doc) = drive(&h, &doc.run_id).await;
        assert_eq!(outcome, Outcome::Waiting);
        assert_eq!(
            artifact(&h, &doc, "outline", "outline").await,
            "{\"sections\": [\"Seven Second Silence\", \"42 Percent Anchor\"]}\n"
        );
        assert!(
            artifact(&h, &doc, "draft", "text")
                .await
                .starts_with("# Draft (first)")
        );
        let outline = &doc.blocks["outline"];
        assert_eq!(outline.attempts, 2, "the unparsable reply was retried");
        let sent = blob_text(&h, llm_usage(&doc, "outline", 0).request.as_ref()).await;
        assert!(
            sent.contains("\"model\":\"claude-custom\""),
            "the run's model override was used: {sent}"
        );
        assert!(
            outline.history[0]
                .report
                .as_ref()
                .unwrap()
                .error
                .as_deref()
                .unwrap()
                .contains("not valid JSON")
        );
        let retry_prompt = blob_text(&h, llm_usage(&doc, "outline", 1).prompt.as_ref()).await;
        assert!(
            retry_prompt.contains("## YOUR PREVIOUS REPLY COULD NOT BE USED\nThe reply to attempt 1 could not be used because artifact `outline` is not valid JSON")
                && !retry_prompt.contains("EXPERT CORRECTIONS")
                && !retry_prompt.contains("block `outline`:"),
            "the model is told about its reply, not as an expert's correction: {retry_prompt}"
        );
        assert_eq!(outline.reply_note, None, "a used reply clears the note");

        let usage = llm_usage(&doc, "draft", 0);
        let cost = usage.cost_usd.expect("priced");
        assert!((cost - 0.000918).abs() < 1e-9, "{cost}");
        assert_eq!(
            (
                usage.provider.as_str(),
                usage.input_tokens,
                usage.output_tokens,
                usage.cache_read_tokens
            ),
            ("anthropic", 100, 40, 60)
        );
        let prompt = blob_text(&h, usage.prompt.as_ref()).await;
        assert!(
            prompt.contains("## outline.outline (json)") && prompt.contains("Seven Second Silence"),
            "{prompt}"
        );
        assert!(prompt.contains("- expert_name: Marisol Vega"), "{prompt}");
        let sent = blob_text(&h, usage.request.as_ref()).await;
        assert!(
            sent.contains("cache_control") && !sent.contains("sk-test-key"),
            "{sent}"
        );

        // Rejection: the next prompt carries the corrections section.
        h.engine
            .reject(&doc.run_id, "draft", "Say how long the silence lasts")
            .await
            .unwrap();
        let (_, doc) = drive(&h, &doc.run_id).await;
        assert!(
            artifact(&h, &doc, "draft", "text")
                .await
                .starts_with("# Draft (corrected)")
        );
        let usage = llm_usage(&doc, "draft", 1);
        let prompt = blob_text(&h, usage.prompt.as_ref()).await;
        assert!(
            prompt.contains("EXPERT CORRECTIONS (MUST APPLY)")
                && prompt.contains("Say how long the silence lasts"),
            "{prompt}"
        );
        h.engine.approve(&doc.run_id, "draft", None).await.unwrap();
        let (outcome, _) = drive(&h, &doc.run_id).await;
        assert_eq!(outcome, Outcome::Done);
    }
}

mod http_runtime {
    //! `http` blocks against a local service.

    use super::*;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn http_block(id: &str, url: &str, extra: Value) -> Value {
        let mut block = json!({
            "id": id, "name": id, "layer": "L1", "type": "orchestrate", "runtime": "http", "timeout": 5000,
            "inputs": {"depends": [{"block": "source", "key": "out"}], "config": {"url": url, "expert": "{{params.expert_name}}"}},
            "outputs": {"artifacts": [{"key": "receipt", "path": "receipt.json", "format": "json"}]},
            "execution": {"max_retries": 0}
        });
        merge(&mut block, extra);
        block
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_blocks_post_their_inputs_and_keep_the_response() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/sync"))
            .and(header("x-team", "factory"))
            .and(body_partial_json(json!({"block": "sync", "inputs": {"source.out": {"builtin": "noop"}}, "params": {"expert_name": "Ada"}})))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"synced": 3})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/broken"))
            .respond_with(ResponseTemplate::new(503).set_body_string("maintenance until 14:00"))
            .expect(3)
            .mount(&server)
            .await;
        let h = sqlite().await;
        let source = template(
            vec![
                noop("source", json!({})),
                http_block(
                    "sync",
                    &format!("{}/sync", server.uri()),
                    json!({"inputs": {"config": {"headers": {"x-team": "factory"}}}}),
                ),
                http_block("broken", &format!("{}/broken", server.uri()), json!({})),
            ],
            json!({"expert_name": {"required": true}}),
        );
        let doc = start(&h, &source, &[("expert_name", "Ada")]).await;
        let (outcome, doc) = drive(&h, &doc.run_id).await;
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(
            artifact(&h, &doc, "sync", "receipt").await,
            "{\"synced\":3}"
        );
        let error = doc.blocks["broken"].error.clone().unwrap();
        assert!(
            error.contains("HTTP 503") && error.contains("maintenance until 14:00"),
            "{error}"
        );

        // A URL taken from an unset environment variable is refused up front.
        let unset = template(
            vec![noop("source", json!({})), http_block("sync", "http://unused", json!({"inputs": {"config": {"url": null, "url_env": "FACTORY_TEST_UNSET_SYNC_URL"}}}))],
            json!({"expert_name": {"required": true}}),
        )
        .replace(",\"url\":null", "")
        .replace("\"url\":null,", "");
        let request = RunRequest {
            params: [("expert_name".to_string(), json!("Ada"))].into(),
            ..RunRequest::default()
        };
        let error = h
            .engine
            .create_run(&unset, None, request)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("FACTORY_TEST_UNSET_SYNC_URL"), "{error}");
    }

    /// A declared mapping: one request per entry, each body exactly what it
    /// maps, the same idempotency key on every try of a run version, the
    /// artifacts picked from the responses; an optional call whose URL is
    /// unset is left out with a note instead of refusing the run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mapped_requests_are_idempotent_and_optional_calls_are_left_out() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/os/theme"))
            .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/os/theme"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"theme": "t-1"})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/os/profile"))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": "p-9", "url": "https://os.test/p-9"})),
            )
            .mount(&server)
            .await;
        let h = sqlite().await;
        let sync = json!({
            "inputs": {"config": {"url": format!("{}/os/", server.uri()), "expert": null,
                "requests": {
                    "profile": {"path": "/profile", "body": {
                        "expert": {"param": "expert_name"}, "run": {"run": "id"},
                        "source": {"artifact": "source.out"}}},
                    "theme": {"path": "/theme", "body": {"tokens": {"artifact": "source.out"}, "kind": {"value": "theme"}}}
                },
                "response": {"receipt": "", "profile-url": "/profile/url"}}},
            "outputs": {"artifacts": [
                {"key": "receipt", "path": "receipt.json", "format": "json"},
                {"key": "profile-url", "path": "profile-url.txt", "format": "url"}]}
        });
        let optional = json!({"inputs": {"config": {"url": null, "expert": null,
            "url_env": "FACTORY_TEST_UNSET_PUBLISH_URL", "optional": true,
            "body": {"page": {"artifact": "source.out"}}}}});
        let source = template(
            vec![
                noop("source", json!({})),
                http_block("sync", "http://unused", sync),
                http_block("publish", "http://unused", optional),
            ],
            json!({"expert_name": {"required": true}}),
        )
        .replace(",\"expert\":null", "")
        .replace("\"expert\":null,", "")
        .replace(",\"url\":null", "")
        .replace("\"url\":null,", "");
        let doc = start(&h, &source, &[("expert_name", "Ada")]).await;
        let (outcome, doc) = drive(&h, &doc.run_id).await;
        assert_eq!(outcome, Outcome::Done, "{:?}", doc.blocks["sync"].error);
        assert_eq!(
            artifact(&h, &doc, "sync", "profile-url").await,
            "https://os.test/p-9"
        );
        let receipt: Value =
            serde_json::from_str(&artifact(&h, &doc, "sync", "receipt").await).unwrap();
        assert_eq!(
            receipt,
            json!({"profile": {"id": "p-9", "url": "https://os.test/p-9"}, "theme": {"theme": "t-1"}})
        );

        let received = server.received_requests().await.unwrap();
        let sent: Vec<(String, String, Value)> = received
            .iter()
            .map(|r| {
                (
                    r.url.path().to_string(),
                    r.headers
                        .get("idempotency-key")
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string(),
                    serde_json::from_slice(&r.body).unwrap(),
                )
            })
            .collect();
        let run = &doc.run_id;
        let profile: Vec<_> = sent.iter().filter(|(p, ..)| p == "/os/profile").collect();
        assert_eq!(profile.len(), 1, "{sent:?}");
        assert_eq!(
            profile[0].1,
            factory_core::http_call::idempotency_key(
                run,
                1,
                "sync",
                Some("profile"),
                &profile[0].2
            )
        );
        assert!(
            profile[0]
                .1
                .starts_with(&format!("factory-{run}-v1-sync-profile-"))
        );
        assert_eq!(
            profile[0].2,
            json!({"expert": "Ada", "run": run, "source": {"builtin": "noop", "block": "source", "attempt": 1}})
        );
        let theme: Vec<_> = sent.iter().filter(|(p, ..)| p == "/os/theme").collect();
        assert_eq!(theme.len(), 2, "a 503 is retried: {sent:?}");
        let theme_body = json!({"tokens": {"builtin": "noop", "block": "source", "attempt": 1}, "kind": "theme"});
        // The key digests the body as sent (its fields in the mapping's order).
        let theme_key =
            factory_core::http_call::idempotency_key(run, 1, "sync", Some("theme"), &theme[0].2);
        assert!(
            theme
                .iter()
                .all(|(_, key, body)| key == &theme_key && body == &theme_body)
        );

        let note: Value =
            serde_json::from_str(&artifact(&h, &doc, "publish", "receipt").await).unwrap();
        assert_eq!(note["sent"], json!(false));
        assert!(
            note["reason"]
                .as_str()
                .unwrap()
                .contains("FACTORY_TEST_UNSET_PUBLISH_URL"),
            "{note}"
        );
    }
}

/// A review submission is one transaction: when its commit fails at the last
/// write (a trigger stands in for a crash or a full disk), neither the
/// feedback row, nor the items, nor any event is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_fails_to_commit_leaves_nothing_behind() {
    use factory_core::consensus::{TesterRole, Verdict};
    use factory_core::transitions::Principal;
    use factory_engine::feedback::{Submission, SubmittedItem, Tester};
    use sqlx::Connection as _;

    let h = sqlite().await;
    let template = json!({
        "id": "one-review", "name": "One review", "version": "1.0.0",
        "blocks": [
            { "id": "extract", "name": "Extract", "layer": "L0", "type": "extract", "runtime": "builtin",
              "inputs": { "config": { "builtin": "noop" } },
              "outputs": { "artifacts": [{ "key": "facts", "path": "facts.json", "format": "json" }] } },
            { "id": "review", "name": "Review", "layer": "L1", "type": "validate", "runtime": "builtin",
              "inputs": { "depends": [{ "block": "extract", "key": "facts" }], "config": { "builtin": "review-page", "page": "extraction-review" } },
              "outputs": { "artifacts": [{ "key": "review-url", "path": "url.txt", "format": "url" }] },
              "execution": { "human_gate": "after" } }
        ]
    });
    let doc = h
        .engine
        .create_run(&template.to_string(), None, RunRequest::default())
        .await
        .unwrap();
    let run = doc.run_id.clone();
    let (_, doc) = h.engine.drive(&run).await.unwrap();
    assert_eq!(doc.blocks["review"].status, BlockStatus::Waiting);

    let db = h.dir.path().join("factory.db");
    let mut sqlite = sqlx::SqliteConnection::connect(db.to_str().unwrap())
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER crash BEFORE INSERT ON events WHEN NEW.kind = 'gate_approved' \
         BEGIN SELECT RAISE(ABORT, 'simulated crash'); END",
    )
    .execute(&mut sqlite)
    .await
    .unwrap();
    let review = || Submission {
        items: vec![SubmittedItem {
            source_key: "extract:$.builtin".into(),
            skill_target: "extract".into(),
            verdict: Verdict::Wrong,
            correction: "name the source".into(),
            source_text: String::new(),
            priority: Some("high".into()),
            finding_type: None,
        }],
        close: true,
        ..Submission::default()
    };
    let samuel = Tester {
        name: "samuel".into(),
        role: TesterRole::Expert,
    };
    let submit = |submission| {
        h.engine.submit_feedback(
            Principal::new("user:samuel"),
            &run,
            "review",
            &samuel,
            submission,
        )
    };
    let error = submit(review()).await.unwrap_err();
    assert!(error.to_string().contains("simulated crash"), "{error}");
    let store = h.engine.store();
    assert!(
        store.feedback(&run).await.unwrap().is_empty(),
        "feedback row left behind"
    );
    assert!(
        store.items(&run, None, None).await.unwrap().is_empty(),
        "items left behind"
    );
    let events = store.events(&run, 0).await.unwrap();
    assert!(
        !events.iter().any(|r| matches!(
            r.event,
            Event::FeedbackSubmitted { .. } | Event::ItemChanged { .. }
        )),
        "events left behind"
    );
    assert_eq!(
        h.engine.open(&run).await.unwrap().doc().blocks["review"].status,
        BlockStatus::Waiting
    );

    // After the "crash", the same review goes through whole.
    sqlx::query("DROP TRIGGER crash")
        .execute(&mut sqlite)
        .await
        .unwrap();
    let outcome = submit(review()).await.unwrap();
    assert!(
        outcome.gate.as_ref().is_some_and(|g| g.approved),
        "{outcome:?}"
    );
    assert_eq!(store.feedback(&run).await.unwrap().len(), 1);
    let items = store.items(&run, None, None).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].status, "accepted");
    let kinds: Vec<&str> = store
        .events(&run, doc.seq)
        .await
        .unwrap()
        .iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(
        &kinds[..3],
        ["feedback_submitted", "item_changed", "gate_approved"],
        "one commit, in order: {kinds:?}"
    );
}

/// A command block cannot hand over a file from outside its output directory
/// by writing a symlink to it, as a file or inside a directory artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_out_of_the_output_directory_are_refused() {
    let h = sqlite().await;
    let secret = h.dir.path().join("secret.txt");
    std::fs::write(&secret, "not for the block").unwrap();
    let secret = secret.display().to_string();
    let source = template(
        vec![
            sh(
                "file-link",
                &format!("ln -s {secret} $FACTORY_OUTPUT_DIR/out.txt"),
                json!({}),
            ),
            sh(
                "dir-link",
                "mkdir -p $FACTORY_OUTPUT_DIR/bundle && echo ok > $FACTORY_OUTPUT_DIR/bundle/a.txt && ln -s / $FACTORY_OUTPUT_DIR/bundle/root",
                json!({"outputs": {"artifacts": [{"key": "out", "path": "bundle", "format": "directory"}]}}),
            ),
            sh(
                "inside-link",
                "echo kept > $FACTORY_OUTPUT_DIR/real.txt && ln -s real.txt $FACTORY_OUTPUT_DIR/out.txt",
                json!({}),
            ),
        ],
        json!({}),
    );
    let doc = start(&h, &source, &[]).await;
    let (_, doc) = drive(&h, &doc.run_id).await;
    let error = |block: &str| doc.blocks[block].error.clone().unwrap_or_default();
    assert_eq!(statuses(&doc)["file-link"], BlockStatus::Failed);
    assert!(
        error("file-link").contains("through a symlink"),
        "{}",
        error("file-link")
    );
    assert_eq!(statuses(&doc)["dir-link"], BlockStatus::Failed);
    assert!(
        error("dir-link").contains("symlink"),
        "{}",
        error("dir-link")
    );
    assert_eq!(
        statuses(&doc)["inside-link"],
        BlockStatus::Done,
        "a link inside is fine"
    );
    assert_eq!(artifact(&h, &doc, "inside-link", "out").await, "kept\n");
}

/// Golden examples and skills are read only from inside the template's folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_golden_example_linked_from_outside_the_template_folder_is_refused() {
    let h = sqlite().await;
    let folder = h.dir.path().join("templates");
    std::fs::create_dir_all(folder.join("golden")).unwrap();
    std::fs::write(h.dir.path().join("private.md"), "# private").unwrap();
    std::os::unix::fs::symlink(
        h.dir.path().join("private.md"),
        folder.join("golden/out.md"),
    )
    .unwrap();
    let source = template(
        vec![sh(
            "a",
            "echo hi > $FACTORY_OUTPUT_DIR/out.txt",
            json!({"audit": {"golden": {"out": "golden/out.md"}}}),
        )],
        json!({}),
    );
    let path = folder.join("t.json");
    std::fs::write(&path, &source).unwrap();
    let error = h
        .engine
        .create_run(&source, Some(&path), RunRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(error, EngineError::MissingGolden(_))
            && error.to_string().contains("through a symlink"),
        "{error}"
    );
}

/// When the store cannot record a finished attempt (a full disk), its outputs
/// are kept: the commit is retried, and if the store is still failing the
/// attempt is kept on disk and recorded by the next drive — the block does
/// not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_attempt_survives_a_store_that_cannot_record_it() {
    use sqlx::Connection as _;
    let h = sqlite().await;
    // Retries wait 200, 400, 800, 1600 ms: room for the disk to free up.
    let engine = Engine::new(
        h.engine.store().clone(),
        EngineConfig {
            policy: Policy {
                retry_base_ms: 200,
                retry_max_ms: 1_600,
                lease_ms: 2_000,
            },
            ..config(h.dir.path())
        },
    );
    let runs = h.dir.path().join("runs.log");
    let source = template(
        vec![sh(
            "paid",
            &format!(
                "echo ran >> {}; echo expensive answer > $FACTORY_OUTPUT_DIR/out.txt",
                runs.display()
            ),
            // Two runs of it count its runs: the second must not be a memo.
            json!({"execution": {"cache": false}}),
        )],
        json!({}),
    );
    let db = h.dir.path().join("factory.db");
    let connect = || async {
        sqlx::SqliteConnection::connect(db.to_str().unwrap())
            .await
            .unwrap()
    };
    let full_disk = "CREATE TRIGGER full_disk BEFORE INSERT ON events \
         WHEN NEW.kind = 'attempt_finished' \
         BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END";
    let times_run = || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
    };

    // The disk frees up while the commit is being retried.
    let mut sqlite = connect().await;
    sqlx::query(full_disk).execute(&mut sqlite).await.unwrap();
    let doc = start(&h, &source, &[]).await;
    let ran = runs.clone();
    let freeing = tokio::spawn(async move {
        // Once the block has run (its first commit fails right after).
        while !ran.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        sqlx::query("DROP TRIGGER full_disk")
            .execute(&mut sqlite)
            .await
            .unwrap();
    });
    let (outcome, doc) = engine.drive(&doc.run_id).await.unwrap();
    freeing.await.unwrap();
    assert_eq!(outcome, Outcome::Done);
    assert_eq!((doc.blocks["paid"].attempts, times_run()), (1, 1));
    assert_eq!(
        artifact(&h, &doc, "paid", "out").await,
        "expensive answer\n"
    );

    // Still full after every retry: the drive fails, the attempt is kept, and
    // the next drive records it without running the block again.
    let mut sqlite = connect().await;
    sqlx::query(full_disk).execute(&mut sqlite).await.unwrap();
    let doc = start(&h, &source, &[]).await;
    let error = engine.drive(&doc.run_id).await.unwrap_err();
    assert!(error.to_string().contains("disk is full"), "{error}");
    assert_eq!(times_run(), 2);
    sqlx::query("DROP TRIGGER full_disk")
        .execute(&mut sqlite)
        .await
        .unwrap();
    let (outcome, doc) = engine.drive(&doc.run_id).await.unwrap();
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(times_run(), 2, "the block did not run again");
    assert_eq!(doc.blocks["paid"].attempts, 1);
    assert_eq!(
        artifact(&h, &doc, "paid", "out").await,
        "expensive answer\n"
    );
    assert!(
        !h.dir
            .path()
            .join("work/.unrecorded")
            .join(&doc.run_id)
            .exists(),
        "the kept attempt is removed once recorded"
    );
}

/// A run stored with a template that later checks refuse (a `scope`, which
/// TPL0028 now turns away from new runs) still opens, runs and answers;
/// a new run of that template is refused.
#[tokio::test]
async fn a_stored_run_opens_under_checks_added_after_it() {
    let h = sqlite().await;
    let clean = template(
        vec![
            noop("a", json!({})),
            noop("b", json!({"inputs": {"depends": [dep("a")]}})),
        ],
        json!({}),
    );
    let run = start(&h, &clean, &[]).await;
    let mut scoped: Value = serde_json::from_str(&clean).unwrap();
    scoped["blocks"][0]["scope"] = json!({"gate": 2});
    let scoped = scoped.to_string();
    // As an older release stored it: the template text as it was accepted.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        h.dir.path().join("factory.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE run_templates SET template_json = ? WHERE run_id = ?")
        .bind(&scoped)
        .bind(&run.run_id)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let (outcome, doc) = drive(&h, &run.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(doc.blocks["b"].status, BlockStatus::Done);
    let refused = h
        .engine
        .create_run(&scoped, None, RunRequest::default())
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("TPL0028") || format!("{refused:?}").contains("TPL0028"),
        "{refused:?}"
    );
}
