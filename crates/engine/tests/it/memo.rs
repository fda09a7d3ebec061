//! Memoized attempts end to end: real subprocesses that count their own
//! runs, a real SQLite file and a real PostgreSQL server.

use super::*;

/// How often the blocks ran: each appends its id to `runs.log`.
fn runs(h: &Harness) -> Vec<String> {
    std::fs::read_to_string(h.dir.path().join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn count(h: &Harness, block: &str) -> usize {
    runs(h).iter().filter(|b| *b == block).count()
}

/// `a` writes the param `topic`; `b` upper-cases `a`'s output; both log
/// each run. `extra_b` is merged into `b`.
fn chain(h: &Harness, extra_b: Value) -> String {
    let log = h.dir.path().join("runs.log");
    let log = log.display();
    template(
        vec![
            sh(
                "a",
                &format!(
                    "echo a >> {log}; printf '%s' \"$FACTORY_PARAM_TOPIC\" > \"$FACTORY_OUTPUT_DIR/out.txt\""
                ),
                json!({}),
            ),
            sh(
                "b",
                &format!(
                    "echo b >> {log}; tr a-z A-Z < \"$(dirname \"$FACTORY_INPUTS\")/inputs/a/out.txt\" > \"$FACTORY_OUTPUT_DIR/out.txt\""
                ),
                merge_into(json!({"inputs": {"depends": [dep("a")]}}), extra_b),
            ),
        ],
        json!({"topic": {"required": true}}),
    )
}

fn merge_into(mut base: Value, extra: Value) -> Value {
    merge(&mut base, extra);
    base
}

fn reused(doc: &RunDoc, block: &str) -> Option<factory_core::memo::Reused> {
    doc.blocks[block]
        .last_success()
        .and_then(|a| a.report.as_ref())
        .and_then(|r| r.reused.clone())
}

async fn run(h: &Harness, source: &str, topic: &str, no_cache: bool) -> RunDoc {
    let request = RunRequest {
        params: BTreeMap::from([("topic".to_string(), json!(topic))]),
        no_cache,
        ..RunRequest::default()
    };
    let doc = h.engine.create_run(source, None, request).await.unwrap();
    let (outcome, doc) = drive(h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done, "{doc:#?}");
    assert_eq!(doc.status, RunStatus::Done);
    doc
}

async fn a_second_identical_run_reuses_what_the_first_made(h: Harness) {
    let source = chain(&h, json!({}));
    let first = run(&h, &source, "tides", false).await;
    assert_eq!(runs(&h), ["a", "b"]);
    assert_eq!(artifact(&h, &first, "b", "out").await, "TIDES");
    assert!(reused(&first, "a").is_none());

    // Same template, same params: nothing runs; each attempt says where
    // its outputs came from, and they are the same.
    let second = run(&h, &source, "tides", false).await;
    assert_eq!(runs(&h), ["a", "b"], "a memoized block ran again");
    for block in ["a", "b"] {
        let from = reused(&second, block).expect("reused");
        assert_eq!(
            (from.run_id.as_str(), from.block.as_str(), from.attempt),
            (first.run_id.as_str(), block, 1)
        );
        let attempt = second.blocks[block].last_success().unwrap();
        assert_eq!(attempt.n, 1);
        let report = attempt.report.as_ref().unwrap();
        assert_eq!(
            report.artifacts,
            first.blocks[block]
                .last_success()
                .unwrap()
                .report
                .as_ref()
                .unwrap()
                .artifacts
        );
        assert!(
            report.audit.is_some(),
            "a reused attempt is audited in its own run"
        );
    }
    assert_eq!(artifact(&h, &second, "b", "out").await, "TIDES");

    // Another param value is another input: both run.
    let other = run(&h, &source, "storms", false).await;
    assert_eq!(runs(&h), ["a", "b", "a", "b"]);
    assert_eq!(artifact(&h, &other, "b", "out").await, "STORMS");

    // --no-cache runs everything; what it accepted is the memo from then on.
    let fresh = run(&h, &source, "tides", true).await;
    assert_eq!(count(&h, "a"), 3);
    assert!(reused(&fresh, "a").is_none());
    let after = run(&h, &source, "tides", false).await;
    assert_eq!(count(&h, "a"), 3);
    assert_eq!(reused(&after, "b").unwrap().run_id, fresh.run_id);
}

#[tokio::test]
async fn a_second_identical_run_reuses_what_the_first_made_sqlite() {
    a_second_identical_run_reuses_what_the_first_made(sqlite().await).await;
}

#[tokio::test]
async fn a_second_identical_run_reuses_what_the_first_made_postgres() {
    a_second_identical_run_reuses_what_the_first_made(postgres().await).await;
}

#[tokio::test]
async fn a_retried_block_runs_anew_and_what_follows_it_is_reused_when_its_output_is_the_same() {
    let h = sqlite().await;
    let source = chain(&h, json!({}));
    let first = run(&h, &source, "tides", false).await;
    assert_eq!(runs(&h), ["a", "b"]);

    // A person's retry asks for `a` anew; it writes the same text, so `b`,
    // reset behind it, finds its inputs unchanged and is reused.
    h.engine.retry(&first.run_id, "a").await.unwrap();
    let (outcome, doc) = drive(&h, &first.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(runs(&h), ["a", "b", "a"]);
    assert!(reused(&doc, "a").is_none());
    assert_eq!(reused(&doc, "b").unwrap().run_id, first.run_id);
    assert_eq!(doc.blocks["b"].history.len(), 2);
}

#[tokio::test]
async fn a_block_that_opts_out_always_runs() {
    let h = sqlite().await;
    let source = chain(&h, json!({"execution": {"cache": false}}));
    run(&h, &source, "tides", false).await;
    let second = run(&h, &source, "tides", false).await;
    assert_eq!(runs(&h), ["a", "b", "b"]);
    assert!(reused(&second, "a").is_some());
    assert!(reused(&second, "b").is_none());
    let report = second.blocks["b"]
        .last_success()
        .unwrap()
        .report
        .as_ref()
        .unwrap();
    assert!(report.memo_key.is_none());
}

#[tokio::test]
async fn an_attempt_a_person_rejected_is_never_reused() {
    let h = sqlite().await;
    let source = chain(&h, json!({"execution": {"human_gate": "after"}}));
    let request = || RunRequest {
        params: BTreeMap::from([("topic".to_string(), json!("tides"))]),
        ..RunRequest::default()
    };
    let first = h.engine.create_run(&source, None, request()).await.unwrap();
    let (outcome, _) = drive(&h, &first.run_id).await;
    assert_eq!(outcome, Outcome::Waiting);
    h.engine
        .reject(&first.run_id, "b", "Louder, please")
        .await
        .unwrap();
    let (_, doc) = drive(&h, &first.run_id).await;
    assert_eq!(doc.blocks["b"].status, BlockStatus::Waiting);
    h.engine.approve(&first.run_id, "b", None).await.unwrap();
    let (outcome, _) = drive(&h, &first.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(runs(&h), ["a", "b", "b"]);

    // The first attempt of `b` (no corrections) was rejected, so a new run
    // has nothing to reuse for it; the corrected one is remembered under
    // the corrections it was made with.
    let second = h.engine.create_run(&source, None, request()).await.unwrap();
    let (outcome, doc) = drive(&h, &second.run_id).await;
    assert_eq!(outcome, Outcome::Waiting);
    assert_eq!(runs(&h), ["a", "b", "b", "b"]);
    assert!(reused(&doc, "a").is_some());
    assert!(
        doc.blocks["b"].history[0]
            .report
            .as_ref()
            .unwrap()
            .reused
            .is_none()
    );

    // Rejected again with the very words that led to the first run's
    // accepted attempt: a person asked for new work, so it runs.
    h.engine
        .reject(&second.run_id, "b", "Louder, please")
        .await
        .unwrap();
    let (_, doc) = drive(&h, &second.run_id).await;
    assert_eq!(doc.blocks["b"].status, BlockStatus::Waiting);
    assert_eq!(runs(&h), ["a", "b", "b", "b", "b"]);
    assert!(
        doc.blocks["b"].history[1]
            .report
            .as_ref()
            .unwrap()
            .reused
            .is_none()
    );
}

#[tokio::test]
async fn a_reused_attempt_that_misses_a_raised_threshold_is_retried_by_running() {
    let h = sqlite().await;
    let log = h.dir.path().join("runs.log");
    let block = |threshold: Option<u32>| {
        let mut extra = json!({
            "outputs": {"metrics": [{"key": "quality", "type": "percent"}]},
            "execution": {"max_retries": 1}
        });
        if let Some(min) = threshold {
            extra["execution"]["threshold"] = json!({"metric": "quality", "min": min});
        }
        sh(
            "a",
            &format!(
                r#"echo a >> {}; echo text > "$FACTORY_OUTPUT_DIR/out.txt"; echo '{{"quality": 50}}' > "$FACTORY_OUTPUT_DIR/metrics.json""#,
                log.display()
            ),
            extra,
        )
    };
    let lenient = template(vec![block(None)], json!({}));
    let doc = start(&h, &lenient, &[]).await;
    let (outcome, _) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done);

    // The bar is raised (execution is not in the key): the first attempt is
    // the memo, which misses it; the retry runs the block.
    let strict = template(vec![block(Some(80))], json!({}));
    let doc = start(&h, &strict, &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Failed);
    let history = &doc.blocks["a"].history;
    assert_eq!(history.len(), 2, "{history:#?}");
    assert!(history[0].report.as_ref().unwrap().reused.is_some());
    assert!(history[1].report.as_ref().unwrap().reused.is_none());
    assert_eq!(runs(&h), ["a", "a"]);
}

#[tokio::test]
async fn a_changed_file_in_the_template_folder_is_another_input() {
    let h = sqlite().await;
    let folder = h.dir.path().join("tpl");
    std::fs::create_dir_all(&folder).unwrap();
    let log = h.dir.path().join("runs.log");
    std::fs::write(
        folder.join("step.sh"),
        format!(
            "echo a >> {}; echo one > \"$FACTORY_OUTPUT_DIR/out.txt\"\n",
            log.display()
        ),
    )
    .unwrap();
    let source = template(
        vec![sh(
            "a",
            "",
            json!({"inputs": {"config": {"command": ["sh", "${FACTORY_TEMPLATE_DIR}/step.sh"]}}}),
        )],
        json!({}),
    );
    let path = folder.join("pipeline.json");
    std::fs::write(&path, &source).unwrap();
    for _ in 0..2 {
        let doc = h
            .engine
            .create_run(&source, Some(&path), RunRequest::default())
            .await
            .unwrap();
        drive(&h, &doc.run_id).await;
    }
    assert_eq!(runs(&h), ["a"]);
    std::fs::write(
        folder.join("step.sh"),
        format!(
            "echo a >> {}; echo two > \"$FACTORY_OUTPUT_DIR/out.txt\"\n",
            log.display()
        ),
    )
    .unwrap();
    let doc = h
        .engine
        .create_run(&source, Some(&path), RunRequest::default())
        .await
        .unwrap();
    let (_, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(runs(&h), ["a", "a"]);
    assert_eq!(artifact(&h, &doc, "a", "out").await, "two\n");

    // A data file the script might read is an input too; the template's
    // own file (its blocks are in the key already), hidden files and a
    // SQLite store kept beside it are not.
    std::fs::write(folder.join(".notes"), "scratch").unwrap();
    std::fs::write(folder.join("factory.db-wal"), "a store's journal").unwrap();
    std::fs::write(&path, format!("{source}\n")).unwrap();
    run_at(&h, &source, &path).await;
    assert_eq!(runs(&h), ["a", "a"]);
    std::fs::create_dir_all(folder.join("data")).unwrap();
    std::fs::write(folder.join("data/corpus.txt"), "words").unwrap();
    run_at(&h, &source, &path).await;
    assert_eq!(runs(&h), ["a", "a", "a"]);
}

async fn run_at(h: &Harness, source: &str, path: &std::path::Path) {
    let doc = h
        .engine
        .create_run(source, Some(path), RunRequest::default())
        .await
        .unwrap();
    drive(h, &doc.run_id).await;
}
