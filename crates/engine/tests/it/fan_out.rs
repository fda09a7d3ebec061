//! Dynamic fan-out end to end: real subprocesses, one per item of a list
//! read at run time, on a real SQLite file and a real PostgreSQL server.

use super::*;

/// The instance keys the `lens` instances ran for.
/// Sorted: instances run in parallel.
fn runs(h: &Harness) -> Vec<String> {
    let mut runs: Vec<String> = std::fs::read_to_string(h.dir.path().join("runs.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    runs.sort();
    runs
}

/// `plan` copies `plan.json` from the test's folder; `lens` fans out over
/// its `/items`, one instance per item named by `name`, and fails for the
/// item `risk` until the file `risk-ok` exists; `brief` joins every lens.
fn lens_pipeline(h: &Harness, need: Value) -> String {
    let dir = h.dir.path().display();
    template(
        vec![
            sh(
                "plan",
                &format!("cp {dir}/plan.json \"$FACTORY_OUTPUT_DIR/out.json\""),
                // It reads a file outside any template folder: no memo.
                json!({
                    "outputs": {"artifacts": [{"key": "out", "path": "out.json", "format": "json"}]},
                    "execution": {"cache": false},
                }),
            ),
            sh(
                "lens",
                &format!(
                    "echo \"$FACTORY_ITEM_KEY\" >> {dir}/runs.log; \
                     if [ \"$FACTORY_ITEM_KEY\" = risk ] && [ ! -f {dir}/risk-ok ]; then echo 'no data on risk' >&2; exit 3; fi; \
                     printf 'view of %s (%s)' \"$FACTORY_ITEM_KEY\" \"$FACTORY_ITEM\" > \"$FACTORY_OUTPUT_DIR/out.txt\""
                ),
                json!({
                    "inputs": {"depends": [dep("plan")]},
                    "fan_out": {"over": {"block": "plan", "artifact": "out", "pointer": "/items"}, "key": "name", "max": 5, "need": need},
                }),
            ),
            sh(
                "brief",
                "for f in \"$(dirname \"$FACTORY_INPUTS\")\"/inputs/*/out.txt; do cat \"$f\"; echo; done > \"$FACTORY_OUTPUT_DIR/out.txt\"",
                json!({"inputs": {"depends": [dep("lens")]}}),
            ),
        ],
        json!({}),
    )
}

fn write_plan(h: &Harness, names: &[&str]) {
    let items: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "weight": 1}))
        .collect();
    std::fs::write(
        h.dir.path().join("plan.json"),
        json!({"items": items}).to_string(),
    )
    .unwrap();
}

async fn a_list_from_an_artifact_fans_out_and_one_failed_instance_is_retried_alone(h: Harness) {
    write_plan(&h, &["Positioning", "Gap analysis", "Risk"]);
    let source = lens_pipeline(&h, json!("all"));
    let doc = start(&h, &source, &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Failed);

    // One instance per item, each an ordinary block of the run.
    assert_eq!(
        doc.blocks["lens"].instances.as_deref(),
        Some(
            &[
                "positioning".to_string(),
                "gap-analysis".into(),
                "risk".into()
            ][..]
        )
    );
    let instance = doc.blocks["lens[gap-analysis]"].instance.as_ref().unwrap();
    assert_eq!(
        (instance.group.as_str(), instance.key.as_str()),
        ("lens", "gap-analysis")
    );
    assert_eq!(instance.item, json!({"name": "Gap analysis", "weight": 1}));
    let all = statuses(&doc);
    assert_eq!(all["lens[positioning]"], BlockStatus::Done);
    assert_eq!(all["lens[gap-analysis]"], BlockStatus::Done);
    assert_eq!(all["lens[risk]"], BlockStatus::Failed);
    assert_eq!(
        all["lens"],
        BlockStatus::Blocked,
        "`all` needs every instance"
    );
    assert_eq!(all["brief"], BlockStatus::Blocked);
    assert_eq!(
        artifact(&h, &doc, "lens[positioning]", "out").await,
        r#"view of positioning ({"name":"Positioning","weight":1})"#
    );
    let expanded: Vec<usize> = events(&h, &doc.run_id)
        .await
        .iter()
        .filter_map(|r| match &r.event {
            Event::BlockExpanded {
                block, instances, ..
            } if block == "lens" => Some(instances.len()),
            _ => None,
        })
        .collect();
    assert_eq!(expanded, [3]);

    // The failed instance is retried alone; the others keep what they made.
    std::fs::write(h.dir.path().join("risk-ok"), "").unwrap();
    h.engine.retry(&doc.run_id, "lens[risk]").await.unwrap();
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done, "{doc:#?}");
    assert_eq!(runs(&h), ["gap-analysis", "positioning", "risk", "risk"]);
    let brief = artifact(&h, &doc, "brief", "out").await;
    for key in ["positioning", "gap-analysis", "risk"] {
        assert!(brief.contains(&format!("view of {key}")), "{brief}");
    }
    assert_eq!(
        doc.blocks["lens"].instances.as_ref().unwrap().len(),
        3,
        "not expanded again"
    );
}

#[tokio::test]
async fn a_list_from_an_artifact_fans_out_on_sqlite() {
    a_list_from_an_artifact_fans_out_and_one_failed_instance_is_retried_alone(sqlite().await).await;
}

#[tokio::test]
async fn a_list_from_an_artifact_fans_out_on_postgres() {
    a_list_from_an_artifact_fans_out_and_one_failed_instance_is_retried_alone(postgres().await)
        .await;
}

#[tokio::test]
async fn at_least_k_lets_the_join_run_on_what_succeeded() {
    let h = sqlite().await;
    write_plan(&h, &["Positioning", "Gap analysis", "Risk"]);
    let source = lens_pipeline(&h, json!({"at_least": 2}));
    let doc = start(&h, &source, &[]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    // The run is not done: one instance failed. But the join ran on the two
    // that were, and says so.
    assert_eq!(outcome, Outcome::Failed);
    assert_eq!(doc.blocks["lens"].status, BlockStatus::Done);
    assert_eq!(doc.blocks["brief"].status, BlockStatus::Done);
    let brief = artifact(&h, &doc, "brief", "out").await;
    assert!(brief.contains("view of positioning") && brief.contains("view of gap-analysis"));
    assert!(!brief.contains("view of risk"), "{brief}");
    let reason = events(&h, &doc.run_id)
        .await
        .into_iter()
        .find_map(|r| match r.event {
            Event::GroupDone { reason, .. } => Some(reason),
            _ => None,
        })
        .unwrap();
    assert_eq!(reason, "2 of 3 instances done (1 not), 2 needed");

    // With three of four needed, the same failure blocks the group.
    let h = sqlite().await;
    write_plan(&h, &["Positioning", "Gap analysis", "Risk", "Pricing"]);
    let source = lens_pipeline(&h, json!({"at_least": 4}));
    let doc = start(&h, &source, &[]).await;
    let (_, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(doc.blocks["lens"].status, BlockStatus::Blocked);
    assert_eq!(doc.blocks["brief"].status, BlockStatus::Blocked);
}

#[tokio::test]
async fn an_unusable_list_fails_the_block_once_with_what_is_wrong() {
    let h = sqlite().await;
    for (plan, expected) in [
        (
            json!({"items": ["a", "b", "c", "d", "e", "f"]}),
            "has 6 items, more than `fan_out.max` (5)",
        ),
        (json!({"items": "a, b"}), "is a string, not a JSON array"),
        (
            json!({"list": []}),
            "`plan.out` at `/items`: there is nothing at that pointer",
        ),
        (
            json!({"items": [{"name": "A b"}, {"name": "a-b"}]}),
            "items 0 and 1",
        ),
    ] {
        std::fs::write(h.dir.path().join("plan.json"), plan.to_string()).unwrap();
        let mut source: Value = serde_json::from_str(&lens_pipeline(&h, json!("all"))).unwrap();
        source["blocks"][1]["execution"]["max_retries"] = json!(2);
        let doc = start(&h, &source.to_string(), &[]).await;
        let (outcome, doc) = drive(&h, &doc.run_id).await;
        assert_eq!(outcome, Outcome::Failed);
        let lens = &doc.blocks["lens"];
        assert_eq!(lens.status, BlockStatus::Failed);
        let error = lens.error.as_deref().unwrap();
        assert!(
            error.starts_with("block `lens`: ") && error.contains(expected),
            "{error}"
        );
        assert_eq!(
            lens.history.len(),
            1,
            "the same list would fail again: no retry"
        );
        assert!(runs(&h).is_empty(), "no instance ran");
    }
}

#[tokio::test]
async fn a_list_that_changes_expands_anew_and_a_repeat_run_reuses_every_instance() {
    let h = sqlite().await;
    std::fs::write(h.dir.path().join("risk-ok"), "").unwrap();
    write_plan(&h, &["Positioning", "Risk"]);
    let source = lens_pipeline(&h, json!("all"));
    let doc = start(&h, &source, &[]).await;
    let (outcome, first) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(runs(&h), ["positioning", "risk"]);

    // The same run again: every instance (and the list read) comes from
    // what the first run accepted.
    let again = start(&h, &source, &[]).await;
    let (_, again) = drive(&h, &again.run_id).await;
    assert_eq!(runs(&h).len(), 2, "an instance ran again: {:?}", runs(&h));
    let reused = again.blocks["lens[risk]"]
        .last_success()
        .unwrap()
        .report
        .as_ref()
        .unwrap()
        .reused
        .clone();
    assert_eq!(reused.unwrap().run_id, first.run_id);

    // The plan changes and is run again: the lens expands anew; the item no
    // longer listed is dropped (its attempts kept), the new one runs, and
    // the join reads exactly the current list.
    write_plan(&h, &["Positioning", "Pricing"]);
    h.engine.retry(&first.run_id, "plan").await.unwrap();
    let (outcome, doc) = drive(&h, &first.run_id).await;
    assert_eq!(outcome, Outcome::Done, "{doc:#?}");
    assert_eq!(
        doc.blocks["lens"].instances.as_deref(),
        Some(&["positioning".to_string(), "pricing".into()][..])
    );
    let risk = &doc.blocks["lens[risk]"];
    assert!(risk.dropped && !risk.history.is_empty());
    assert!(!doc.blocks["lens[positioning]"].dropped);
    let brief = artifact(&h, &doc, "brief", "out").await;
    assert!(
        brief.contains("view of pricing") && !brief.contains("view of risk"),
        "{brief}"
    );
    let counts = factory_core::scheduler::StatusCounts::of(&doc);
    assert_eq!(
        counts.total(),
        5,
        "plan, lens, two instances, brief: the dropped one is out"
    );
}

/// The CLI and the workbench's form pass params as text: a list given so
/// is read as its JSON; text that is no list says so.
#[tokio::test]
async fn a_list_param_given_as_text_is_read_as_json() {
    let h = sqlite().await;
    let source = template(
        vec![sh(
            "each",
            "printf '%s' \"$FACTORY_ITEM\" > \"$FACTORY_OUTPUT_DIR/out.txt\"",
            json!({"fan_out": {"over": {"param": "topics"}}}),
        )],
        json!({"topics": {"required": true}}),
    );
    let doc = start(&h, &source, &[("topics", r#"["Tides", {"x": 1}]"#)]).await;
    let (outcome, doc) = drive(&h, &doc.run_id).await;
    assert_eq!(outcome, Outcome::Done, "{doc:#?}");
    assert_eq!(artifact(&h, &doc, "each[tides]", "out").await, r#""Tides""#);
    assert_eq!(artifact(&h, &doc, "each[1]", "out").await, r#"{"x":1}"#);

    let doc = start(&h, &source, &[("topics", "tides, storms")]).await;
    let (_, doc) = drive(&h, &doc.run_id).await;
    let error = doc.blocks["each"].error.as_deref().unwrap();
    assert!(
        error.contains("param `topics`, is a string, not a JSON array"),
        "{error}"
    );
}
