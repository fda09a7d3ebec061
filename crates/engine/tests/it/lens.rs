//! The analytical lens end to end: perspectives fanned out as real
//! subprocesses, people's ratings stored beside the runs (a real SQLite
//! file, a real PostgreSQL server), and the next run for the same entity
//! shaped by them — its perspectives reordered, one left out, one sent to
//! a person, the ratings quoted to the steps.

use super::*;

/// `angles` fans out over param `perspectives`; each instance writes its
/// perspective and the past ratings it was handed. `brief` rolls them up.
/// Ratings key on param `entity`.
fn lens_template() -> String {
    template(
        vec![
            sh(
                "angles",
                "printf 'perspective=%s key=%s feedback=%s' \"$FACTORY_PERSPECTIVE\" \"$FACTORY_AGGREGATE_KEY\" \"${FACTORY_FEEDBACK:-none}\" > \"$FACTORY_OUTPUT_DIR/out.txt\"",
                json!({
                    "lifecycle": {"mode": "on-demand"},
                    "fan_out": {"over": {"param": "perspectives"}, "need": {"at_least": 2}},
                    "lens": {"aggregates": ["entity"], "feedback_loop": true,
                             "drop_below": 2, "min_ratings": 3, "review_below": 2.5},
                }),
            ),
            sh(
                "brief",
                "for f in \"$(dirname \"$FACTORY_INPUTS\")\"/inputs/*/out.txt; do head -c 30 \"$f\"; echo; done > \"$FACTORY_OUTPUT_DIR/out.txt\"; printf ' feedback=%s' \"${FACTORY_FEEDBACK:-none}\" >> \"$FACTORY_OUTPUT_DIR/out.txt\"",
                json!({
                    "inputs": {"depends": [dep("angles")]},
                    "lens": {"aggregates": ["entity"], "feedback_loop": true},
                }),
            ),
        ],
        json!({
            "entity": {"required": true},
            "perspectives": {"default": ["positioning", "gaps", "landscape", "risk"]},
        }),
    )
}

fn rate_error(result: Result<factory_core::lens::RatingEntry, EngineError>) -> String {
    match result {
        Err(error @ (EngineError::BadRating(_) | EngineError::NotFound(_))) => error.to_string(),
        other => panic!("expected a refused rating, got {other:?}"),
    }
}

async fn ratings_shape_the_next_run_for_the_same_entity(h: Harness) {
    let source = lens_template();
    let first = start(&h, &source, &[("entity", "acme")]).await;
    assert!(first.past_ratings.is_empty(), "nothing rated yet");
    // Nothing is done yet: a rating waits for the output.
    let early = rate_error(
        h.engine
            .rate("user:ann", &first.run_id, "brief", 4, "")
            .await,
    );
    assert!(early.contains("once it is done"), "{early}");
    let (outcome, first) = drive(&h, &first.run_id).await;
    assert_eq!(outcome, Outcome::Done, "{first:#?}");
    assert_eq!(
        first.blocks["angles"].instances.as_deref().unwrap(),
        ["positioning", "gaps", "landscape", "risk"],
        "unrated: the list's order"
    );
    let out = artifact(&h, &first, "angles[gaps]", "out").await;
    assert_eq!(out, r#"perspective=gaps key=entity="acme" feedback=none"#);

    // People rate: risk is poor for three of them, landscape for one, gaps
    // is the best; the brief is good. Ann changes her mind on gaps.
    let rate = |who: &'static str, block: &'static str, score: i64, comment: &'static str| {
        let engine = &h.engine;
        let run = first.run_id.clone();
        async move { engine.rate(who, &run, block, score, comment).await.unwrap() }
    };
    for who in ["user:ann", "user:bob", "user:cy"] {
        rate(who, "angles[risk]", 1, "generic boilerplate").await;
    }
    rate("user:ann", "angles[landscape]", 2, "name the competitors").await;
    rate("user:ann", "angles[gaps]", 3, "").await;
    let entry = rate("user:ann", "angles[gaps]", 5, "exactly what we needed").await;
    assert_eq!(entry.rating.perspective.as_deref(), Some("gaps"));
    assert_eq!(entry.rating.aggregate_key, r#"entity="acme""#);
    rate("user:bob", "brief", 4, "good, but too long").await;
    // Refused: the group itself, a block without a lens, a bad score, a
    // block the run does not have.
    let group = rate_error(
        h.engine
            .rate("user:ann", &first.run_id, "angles", 3, "")
            .await,
    );
    assert!(group.contains("rate each of them"), "{group}");
    let score = rate_error(
        h.engine
            .rate("user:ann", &first.run_id, "brief", 9, "")
            .await,
    );
    assert!(score.contains("1 to 5"), "{score}");
    let missing = rate_error(
        h.engine
            .rate("user:ann", &first.run_id, "angles[nope]", 3, "")
            .await,
    );
    assert!(
        missing.contains("`angles[nope]` in run") && missing.ends_with("not found"),
        "{missing}"
    );

    let stored = h.engine.run_ratings(&first.run_id).await.unwrap();
    assert_eq!(
        stored.len(),
        6,
        "ann's second rating of gaps replaced her first"
    );

    // The next brief on acme starts from them.
    let second = start(&h, &source, &[("entity", "acme")]).await;
    let past = |perspective: Option<&str>| {
        factory_core::lens::past_of(
            &second.past_ratings,
            if perspective.is_some() {
                "angles"
            } else {
                "brief"
            },
            perspective,
        )
        .cloned()
        .unwrap()
    };
    assert_eq!(
        (past(Some("risk")).count, past(Some("risk")).mean),
        (3, 1.0)
    );
    assert_eq!(
        (past(Some("gaps")).count, past(Some("gaps")).mean),
        (1, 5.0)
    );
    assert_eq!(past(None).comments[0].comment, "good, but too long");
    let (outcome, second) = drive(&h, &second.run_id).await;
    assert_eq!(
        outcome,
        Outcome::Waiting,
        "landscape, rated below review_below, waits for a person"
    );
    let group = &second.blocks["angles"];
    assert_eq!(
        group.instances.as_deref().unwrap(),
        ["gaps", "positioning", "landscape"],
        "best-rated first (unrated counts as 3); risk left out"
    );
    assert_eq!(group.left_out.len(), 1);
    assert_eq!(
        (group.left_out[0].key.as_str(), group.left_out[0].count),
        ("risk", 3)
    );
    assert!(!second.blocks.contains_key("angles[risk]"));
    assert_eq!(
        second.blocks["angles[landscape]"].status,
        BlockStatus::Waiting
    );
    assert_eq!(second.blocks["angles[landscape]"].autonomy, Autonomy::Gate);
    let landscape = artifact(&h, &second, "angles[landscape]", "out").await;
    assert!(
        landscape.contains(r#""count":1"#) && landscape.contains("name the competitors"),
        "the step is handed the perspective's past ratings: {landscape}"
    );
    // The expansion is an event: replay gives the same document.
    let replayed = RunDoc::replay(&events(&h, &second.run_id).await).unwrap();
    assert_eq!(replayed.blocks["angles"], second.blocks["angles"]);
    assert_eq!(replayed.past_ratings, second.past_ratings);

    h.engine
        .approve(&second.run_id, "angles[landscape]", None)
        .await
        .unwrap();
    let (outcome, second) = drive(&h, &second.run_id).await;
    assert_eq!(outcome, Outcome::Done, "{second:#?}");
    // The aggregate reads the perspectives best-rated first, and is handed
    // its own past ratings.
    let read: Vec<String> = second
        .dependency_artifacts("angles", "out")
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        read,
        ["angles[gaps]", "angles[positioning]", "angles[landscape]"]
    );
    let brief = artifact(&h, &second, "brief", "out").await;
    assert!(brief.contains("good, but too long"), "{brief}");
    // What the ratings changed runs anew; an unrated perspective's inputs
    // are as before, so its earlier attempt stands in (memoized).
    let reused = |id: &str| {
        second.blocks[id]
            .last_success()
            .and_then(|a| a.report.as_ref())
            .and_then(|r| r.reused.clone())
            .is_some()
    };
    assert!(reused("angles[positioning]"));
    assert!(!reused("angles[gaps]") && !reused("angles[landscape]") && !reused("brief"));

    // Another entity starts from its own (no) ratings.
    let other = start(&h, &source, &[("entity", "globex")]).await;
    assert!(other.past_ratings.is_empty());
    let (outcome, other) = drive(&h, &other.run_id).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(other.blocks["angles"].instances.as_ref().unwrap().len(), 4);
}

#[tokio::test]
async fn ratings_shape_the_next_run_on_sqlite() {
    ratings_shape_the_next_run_for_the_same_entity(sqlite().await).await;
}

#[tokio::test]
async fn ratings_shape_the_next_run_on_postgres() {
    ratings_shape_the_next_run_for_the_same_entity(postgres().await).await;
}
