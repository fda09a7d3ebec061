//! `factory meta-audit RUN`: the factory audits two runs of the offline
//! example with its own meta-audit template — composites, specificity,
//! wiring, deltas — and the scorecard waits at its gate until approved.

use serde_json::Value;

use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{factory, repo_root, status_json};

fn ok(db: &std::path::Path, args: &[&str]) -> String {
    ok_with(db, &[], args)
}

/// `factory ARGS` with extra environment variables; must succeed.
fn ok_with(db: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let output = factory(db)
        .current_dir(repo_root())
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "factory {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A finished run of the offline example titled `title`.
fn offline_run(db: &std::path::Path, title: &str) -> String {
    let run = ok(
        db,
        &[
            "run",
            "examples/offline/pipeline.json",
            "--param",
            &format!("title={title}"),
            "--retry-backoff-ms",
            "10",
            "--quiet",
        ],
    )
    .trim()
    .to_string();
    ok(
        db,
        &[
            "approve",
            &run,
            "summarize",
            "--retry-backoff-ms",
            "10",
            "--quiet",
        ],
    );
    assert_eq!(status_json(db, &run)["status"], "done");
    run
}

fn report(db: &std::path::Path, run: &str, block: &str, key: &str) -> Value {
    serde_json::from_str(&ok(db, &["artifacts", run, block, "--key", key])).unwrap()
}

#[test]
fn a_meta_audit_reports_composites_wiring_and_deltas_and_waits_to_publish() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("factory.db");
    let first = offline_run(&db, "A Tale of Two Cities");
    let second = offline_run(&db, "Great Expectations");

    // The first run has no earlier run to compare with.
    let alone = ok(&db, &["meta-audit", &first, "--quiet"])
        .trim()
        .to_string();
    let delta = report(&db, &alone, "delta-report", "delta");
    assert!(delta["baseline_run_id"].is_null(), "{delta}");

    let meta = ok(&db, &["meta-audit", &second, "--quiet"])
        .trim()
        .to_string();
    let status = status_json(&db, &meta);
    assert_eq!(
        status["status"], "waiting",
        "the scorecard waits at its gate"
    );
    assert_eq!(
        status["blocks"]["audit-scorecard-publisher"]["status"],
        "waiting"
    );

    // The aggregate is the target run's own audit, block by block.
    let aggregate = report(&db, &meta, "run-aggregate", "aggregate");
    let target = status_json(&db, &second);
    let audited: Vec<&str> = target["blocks"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, b)| {
            b["history"]
                .as_array()
                .is_some_and(|h| h.iter().any(|a| !a["report"]["audit"].is_null()))
        })
        .map(|(id, _)| id.as_str())
        .collect();
    let blocks: Vec<&str> = aggregate["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["block"].as_str().unwrap())
        .collect();
    assert_eq!(blocks.len(), audited.len(), "{aggregate}");
    assert_eq!(aggregate["run_id"], second.as_str());
    assert!(aggregate["passed"].as_bool().unwrap(), "{aggregate}");
    let composite = aggregate["composite"].as_f64().unwrap();
    let metric =
        &status["blocks"]["run-aggregate"]["history"][0]["report"]["metrics"]["run_composite"];
    assert_eq!(metric.as_f64(), Some(composite));

    // The wiring is the offline template's: 5 artifacts, 4 read by others,
    // the report delivered, nothing broken.
    let wiring = report(&db, &meta, "cross-block-consistency", "wiring");
    assert_eq!(wiring["fields"], 5, "{wiring}");
    assert_eq!(wiring["wired"], 4, "{wiring}");
    assert_eq!(
        wiring["deliverables"],
        serde_json::json!(["publish.report"])
    );
    assert_eq!(wiring["orphans"], serde_json::json!([]));
    assert_eq!(wiring["broken"], serde_json::json!([]));
    // What each block made of what it read: summarize reads both collectors.
    let terms = wiring["terms"].as_array().unwrap();
    let read_by_summarize: Vec<&str> = terms
        .iter()
        .filter(|t| t["consumer"] == "summarize")
        .map(|t| t["upstream"].as_str().unwrap())
        .collect();
    assert!(
        read_by_summarize.contains(&"collect-words.words"),
        "{wiring}"
    );

    // The delta is against the first run: same template, other artifacts.
    let delta = report(&db, &meta, "delta-report", "delta");
    assert_eq!(delta["baseline_run_id"], first.as_str(), "{delta}");
    assert_eq!(delta["changed_blocks"], serde_json::json!([]));
    assert!(delta["blocks"].as_array().unwrap().len() >= 4);

    let specificity = report(&db, &meta, "specificity-deep-check", "specificity");
    assert!(specificity["words"].as_u64().unwrap() > 0, "{specificity}");

    // The meta-audit's own outputs are audited like any block's.
    assert!(!status["blocks"]["delta-report"]["history"][0]["report"]["audit"].is_null());

    // Approved, the scorecard is published as the run's artifact.
    ok(
        &db,
        &["approve", &meta, "audit-scorecard-publisher", "--quiet"],
    );
    assert_eq!(status_json(&db, &meta)["status"], "done");
    let page = ok(
        &db,
        &[
            "artifacts",
            &meta,
            "audit-scorecard-publisher",
            "--key",
            "scorecard",
        ],
    );
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains(&format!("Meta-audit of run <code>{second}</code>")));
    assert!(page.contains(&format!("Against run <code>{first}</code>")));
    assert!(page.contains("<svg") && !page.contains("<script"));
    // No publish URL configured: the publish step notes that nothing was sent.
    let receipt = ok(
        &db,
        &["artifacts", &meta, "scorecard-publish", "--key", "receipt"],
    );
    assert!(
        receipt.contains("not sent") && receipt.contains("FACTORY_SCORECARD_URL"),
        "{receipt}"
    );

    // With one, the approved scorecard goes to it through the http runtime.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(async {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/scorecards"))
            .respond_with(ResponseTemplate::new(201).set_body_string("published as sc-1"))
            .expect(1)
            .mount(&server)
            .await;
        server
    });
    let url = format!("{}/scorecards", server.uri());
    let with_url = |args: &[&str]| {
        ok_with(&db, &[("FACTORY_SCORECARD_URL", &url)], args)
            .trim()
            .to_string()
    };
    let published = with_url(&["meta-audit", &second, "--quiet"]);
    assert!(
        runtime
            .block_on(server.received_requests())
            .unwrap()
            .is_empty(),
        "nothing is sent before the gate"
    );
    with_url(&[
        "approve",
        &published,
        "audit-scorecard-publisher",
        "--quiet",
    ]);
    assert_eq!(status_json(&db, &published)["status"], "done");
    let received = runtime.block_on(server.received_requests()).unwrap();
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["target_run"].as_str(), Some(second.as_str()));
    assert_eq!(body["meta_audit_run"].as_str(), Some(published.as_str()));
    assert!(
        body["scorecard_html"]
            .as_str()
            .unwrap()
            .starts_with("<!doctype html>")
    );
    assert!(body["summary"].is_object(), "{body}");
    assert_eq!(
        received[0]
            .headers
            .get("idempotency-key")
            .unwrap()
            .to_str()
            .unwrap(),
        factory_core::http_call::idempotency_key(&published, 1, "scorecard-publish", None, &body)
    );
    assert_eq!(
        ok(
            &db,
            &[
                "artifacts",
                &published,
                "scorecard-publish",
                "--key",
                "receipt"
            ]
        )
        .trim(),
        "published as sc-1"
    );

    // A baseline that is the audited run itself is refused by the delta.
    let output = factory(&db)
        .current_dir(repo_root())
        .args(["meta-audit", &second, "--baseline", &second, "--quiet"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let same = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let error = status_json(&db, &same)["blocks"]["delta-report"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("names the run being audited"), "{error}");

    // A run that is not there is refused before anything is made.
    let output = factory(&db)
        .args(["meta-audit", "no-such-run"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
