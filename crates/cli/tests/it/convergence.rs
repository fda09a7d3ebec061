//! `factory convergence`: a small review loop run by the CLI's worker, with
//! the review submitted through the engine library (as `factory serve` does).

use std::sync::Arc;

use factory_core::consensus::TesterRole;
use factory_engine::feedback::{Submission, Tester};
use serde_json::{Value, json};

use super::{factory, status_json};

const TEMPLATE: &str = r#"{
  "id": "mini-loop", "name": "Mini loop", "version": "1.0.0",
  "blocks": [
    { "id": "extract", "name": "Extract", "layer": "L0", "type": "extract", "runtime": "builtin",
      "inputs": { "config": { "builtin": "noop" } },
      "outputs": { "artifacts": [{ "key": "facts", "path": "facts.json", "format": "json" }] } },
    { "id": "review", "name": "Review", "layer": "L1", "type": "validate", "runtime": "builtin",
      "inputs": { "depends": [{ "block": "extract", "key": "facts" }], "config": { "builtin": "review-page", "page": "extraction-review" } },
      "outputs": { "artifacts": [{ "key": "review-url", "path": "url.txt", "format": "url" }, { "key": "extraction-version", "path": "v.txt", "format": "text" }] },
      "execution": { "human_gate": "after" } },
    { "id": "router", "name": "Router", "layer": "L2", "type": "orchestrate", "runtime": "builtin",
      "inputs": { "mode": "any", "depends": [{ "block": "review", "key": "review-url" }, { "block": "extract", "key": "facts" }], "config": { "builtin": "corrections-router" } },
      "outputs": { "artifacts": [{ "key": "plan", "path": "plan.json", "format": "json" }] } },
    { "id": "ship", "name": "Ship", "layer": "L3", "type": "build", "runtime": "builtin",
      "inputs": { "depends": [{ "block": "router", "key": "plan" }], "config": { "builtin": "noop" } },
      "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] } }
  ]
}"#;

#[test]
fn convergence_shows_each_version_and_why_it_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let template = dir.path().join("mini.json");
    std::fs::write(&template, TEMPLATE).unwrap();
    let output = factory(&db)
        .args(["run", template.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert_eq!(
        status_json(&db, &run)["blocks"]["review"]["status"],
        "waiting"
    );

    // The expert flags one item and closes the review.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = factory_store::open(db.to_str().unwrap()).await.unwrap();
        let engine = factory_engine::Engine::new(Arc::from(store), Default::default());
        let outcome = engine
            .submit_feedback(
                factory_core::transitions::Principal::new("reviewer:samuel"),
                &run,
                "review",
                &Tester { name: "samuel".into(), role: TesterRole::Expert },
                serde_json::from_value::<Submission>(json!({
                    "items": [
                        {"source_key": "extract:$.builtin", "skill_target": "extract", "verdict": "wrong", "priority": "high", "correction": "name the source"},
                        {"source_key": "extract:$.block", "skill_target": "extract", "verdict": "correct"}
                    ],
                    "close": true
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        assert!(outcome.gate.unwrap().approved);
        // A review of a block that is no review page is refused by name.
        let error = engine
            .submit_feedback(factory_core::transitions::Principal::new("x"), &run, "extract", &Tester { name: "x".into(), role: TesterRole::Team }, Submission::default())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("block `extract` has no review page"), "{error}");
        // An operator wants to see the router's plan before it acts.
        engine
            .set_autonomy_by(factory_core::transitions::Principal::new("cli:op"), &run, "router", factory_core::template::Autonomy::Gate)
            .await
            .unwrap();
    });

    // The CLI's worker runs the router, which waits at its gate with its plan;
    // approving it routes: the extract block re-runs (v2), the review waits again.
    factory(&db)
        .args(["resume", &run, "--quiet"])
        .assert()
        .success();
    let doc = status_json(&db, &run);
    assert_eq!(doc["blocks"]["router"]["status"], "waiting");
    assert_eq!(doc["version"], 1, "nothing routed before the approval");
    factory(&db)
        .args(["approve", &run, "router", "--quiet"])
        .assert()
        .success();
    let doc = status_json(&db, &run);
    assert_eq!(doc["version"], 2);
    assert_eq!(
        doc["blocks"]["extract"]["history"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        doc["blocks"]["extract"]["corrections"]["items"][0]["correction"],
        "name the source"
    );
    assert_eq!(doc["blocks"]["review"]["status"], "waiting");
    assert_eq!(
        doc["blocks"]["ship"]["status"], "pending",
        "the router held the run back"
    );

    let output = factory(&db).args(["convergence", &run]).output().unwrap();
    assert_eq!(output.status.code(), Some(4), "not ready to ship");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("v1") && text.contains("superseded") && text.contains("current"),
        "{text}"
    );
    assert!(
        text.contains("50.0%"),
        "v1 extraction accuracy: one of two correct\n{text}"
    );
    assert!(
        text.contains("no extraction-review verdicts for v2 yet"),
        "{text}"
    );
    let output = factory(&db)
        .args(["convergence", &run, "--json"])
        .output()
        .unwrap();
    let table: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(table["rows"].as_array().unwrap().len(), 2);
    assert_eq!(
        table["rows"][0]["high"], 1,
        "the flagged item was open at the end of v1"
    );
    assert_eq!(table["rows"][1]["high"], 0, "resolved when extract re-ran");
    assert_eq!(table["ready_to_ship"], false);
    factory(&db).args(["convergence", "nope"]).assert().code(2);

    // Inviting a tester from the terminal: one link per review page.
    let output = factory(&db)
        .args([
            "token",
            "review",
            &run,
            "--tester",
            "derek",
            "--tester-role",
            "team",
            "--base-url",
            "http://factory.test:7700/",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let prefix =
        format!("extraction-review  http://factory.test:7700/runs/{run}/review/review?token=pf_");
    assert!(text.starts_with(&prefix), "{text}");
    let listed = factory(&db).args(["token", "list"]).output().unwrap();
    assert!(
        String::from_utf8(listed.stdout)
            .unwrap()
            .contains("review derek (team)")
    );
    let output = factory(&db)
        .args([
            "token",
            "review",
            &run,
            "--tester",
            "derek",
            "--tester-role",
            "boss",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`boss` is not a tester role"));
}
