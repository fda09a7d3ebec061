use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::run::{Event, EventRecord};
use crate::template::Autonomy;

/// A lens template: `angles` fans out over param `perspectives`, `brief`
/// rolls them up; ratings key on `entity_id`.
fn template(lens_extra: Value) -> Value {
    let mut lens = json!({"aggregates": ["entity_id"], "feedback_loop": true});
    if let (Value::Object(lens), Value::Object(extra)) = (&mut lens, lens_extra) {
        lens.extend(extra);
    }
    json!({
        "id": "brief-t", "name": "T", "version": "1",
        "params": {
            "entity_id": {"required": true},
            "perspectives": {"default": ["positioning", "gaps", "landscape", "risk"]}
        },
        "blocks": [{
            "id": "angles", "name": "Angles", "layer": "L0", "type": "research", "runtime": "command",
            "inputs": {"config": {"command": ["true"]}},
            "fan_out": {"over": {"param": "perspectives"}, "need": {"at_least": 2}},
            "lens": lens,
            "outputs": {"artifacts": [{"key": "out", "path": "out.md", "format": "md"}]}
        }, {
            "id": "brief", "name": "Brief", "layer": "L1", "type": "build", "runtime": "command",
            "inputs": {"config": {"command": ["true"]}, "depends": [{"block": "angles", "key": "out"}]},
            "lens": {"aggregates": ["entity_id"], "feedback_loop": true},
            "outputs": {"artifacts": [{"key": "brief", "path": "brief.md", "format": "md"}]}
        }]
    })
}

fn pipeline(value: &Value) -> Pipeline {
    let validated = crate::validate::validate_value(value);
    let errors: Vec<_> = validated
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    validated.pipeline.unwrap()
}

fn entry(
    run: &str,
    by: &str,
    at: Millis,
    perspective: Option<&str>,
    score: u8,
    comment: &str,
) -> RatingEntry {
    RatingEntry {
        run_id: run.into(),
        by: by.into(),
        at,
        rating: Rating {
            block: if perspective.is_some() {
                "angles"
            } else {
                "brief"
            }
            .into(),
            perspective: perspective.map(str::to_string),
            aggregate_key: r#"entity_id="acme""#.into(),
            score,
            comment: comment.into(),
        },
    }
}

fn params(entity: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([("entity_id".to_string(), json!(entity))])
}

#[test]
fn the_aggregate_key_names_each_param_and_its_value() {
    let lens: Lens = serde_json::from_value(json!({"aggregates": ["entity_id", "year"]})).unwrap();
    let mut p = params(" acme ");
    p.insert("year".into(), json!(2026));
    assert_eq!(aggregate_key(&lens, &p), r#"entity_id="acme", year=2026"#);
    p.remove("year");
    assert_eq!(aggregate_key(&lens, &p), r#"entity_id="acme", year=null"#);
    // Values cannot run into each other, and text is not a number.
    let mut tricky = params("x, year=1");
    tricky.insert("year".into(), json!(""));
    let mut plain = params("x");
    plain.insert("year".into(), json!("1, year="));
    assert_ne!(aggregate_key(&lens, &tricky), aggregate_key(&lens, &plain));
    let mut text = params("acme");
    text.insert("year".into(), json!("2026"));
    p.insert("year".into(), json!(2026));
    assert_ne!(aggregate_key(&lens, &text), aggregate_key(&lens, &p));
    let none: Lens = serde_json::from_value(json!({})).unwrap();
    assert_eq!(aggregate_key(&none, &p), "");
}

#[test]
fn past_ratings_count_each_person_once_per_run_and_keep_the_newest_comments() {
    let t: Template = serde_json::from_value(template(json!({}))).unwrap();
    let entries = vec![
        // ann rated positioning in r1 twice: the newer (5) counts.
        entry("r1", "ann", 10, Some("positioning"), 1, "useless"),
        entry("r1", "ann", 20, Some("positioning"), 5, "sharp"),
        entry("r1", "bob", 15, Some("positioning"), 4, ""),
        entry(
            "r2",
            "ann",
            30,
            Some("positioning"),
            3,
            "thin   on\nnumbers",
        ),
        entry("r2", "ann", 31, Some("risk"), 1, "generic"),
        entry("r2", "ann", 32, None, 4, "good brief"),
        // Another entity, another block, a score out of range: not counted.
        RatingEntry {
            rating: Rating {
                aggregate_key: r#"entity_id="other""#.into(),
                ..entry("r3", "ann", 40, Some("positioning"), 1, "x").rating
            },
            ..entry("r3", "ann", 40, Some("positioning"), 1, "x")
        },
        RatingEntry {
            rating: Rating {
                block: "elsewhere".into(),
                ..entry("r3", "ann", 41, Some("positioning"), 1, "x").rating
            },
            ..entry("r3", "ann", 41, Some("positioning"), 1, "x")
        },
        entry("r3", "eve", 42, Some("positioning"), 9, "hostile"),
    ];
    let past = past_for_run(&t, &params("acme"), &entries);
    let positioning = past_of(&past, "angles", Some("positioning")).unwrap();
    assert_eq!(positioning.count, 3);
    assert_eq!(positioning.mean, 4.0);
    let comments: Vec<&str> = positioning
        .comments
        .iter()
        .map(|c| c.comment.as_str())
        .collect();
    assert_eq!(comments, ["thin   on\nnumbers", "sharp"]);
    let risk = past_of(&past, "angles", Some("risk")).unwrap();
    assert_eq!((risk.count, risk.mean), (1, 1.0));
    let brief = past_of(&past, "brief", None).unwrap();
    assert_eq!((brief.count, brief.mean), (1, 4.0));
    assert!(past_of(&past, "angles", Some("gaps")).is_none());
    // Another entity's run starts from nothing.
    assert!(past_for_run(&t, &params("globex"), &entries).is_empty());
    // Without the feedback loop, nothing is read.
    let mut quiet = t.clone();
    for block in &mut quiet.blocks {
        block.lens.as_mut().unwrap().feedback_loop = false;
    }
    assert!(past_for_run(&quiet, &params("acme"), &entries).is_empty());
}

fn instances(keys: &[&str]) -> Vec<Instance> {
    keys.iter()
        .map(|k| Instance {
            id: format!("angles[{k}]"),
            key: k.to_string(),
            item: json!(k),
            review: false,
        })
        .collect()
}

fn summary(perspective: &str, count: u32, mean: f64) -> PastRatings {
    PastRatings {
        block: "angles".into(),
        perspective: Some(perspective.into()),
        aggregate_key: r#"entity_id="acme""#.into(),
        count,
        mean,
        comments: Vec::new(),
    }
}

fn keys(instances: &[Instance]) -> Vec<&str> {
    instances.iter().map(|i| i.key.as_str()).collect()
}

#[test]
fn shaping_orders_by_past_mean_flags_for_review_and_drops_the_worst_within_need() {
    let t = pipeline(&template(
        json!({"drop_below": 2.0, "review_below": 3.0, "min_ratings": 2}),
    ));
    let block = t.block("angles").unwrap();
    let all = instances(&["positioning", "gaps", "landscape", "risk"]);
    let past = vec![
        summary("risk", 3, 1.5),        // dropped: enough ratings, below 2
        summary("landscape", 1, 1.0),   // too few ratings to drop; reviewed
        summary("positioning", 4, 4.5), // first
    ];
    let (shaped, left_out) = shape(block, &past, all.clone());
    // Unrated `gaps` counts as neutral (3): after positioning, before landscape.
    assert_eq!(keys(&shaped), ["positioning", "gaps", "landscape"]);
    assert_eq!(
        left_out,
        [LeftOut {
            key: "risk".into(),
            mean: 1.5,
            count: 3
        }]
    );
    let reviewed: Vec<&str> = shaped
        .iter()
        .filter(|i| i.review)
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(reviewed, ["landscape"]);

    // `need: at_least 2` keeps two, even when more are rated below the bar.
    let grim = vec![
        summary("positioning", 5, 1.0),
        summary("gaps", 5, 1.2),
        summary("landscape", 5, 1.4),
        summary("risk", 5, 1.1),
    ];
    let (kept, left_out) = shape(block, &grim, all.clone());
    assert_eq!(keys(&kept), ["landscape", "gaps"]);
    assert_eq!(left_out.len(), 2);

    // Without the feedback loop, the list is left as it came.
    let off = pipeline(&template(json!({"feedback_loop": false})));
    let (same, none) = shape(off.block("angles").unwrap(), &past, all.clone());
    assert_eq!(same, all);
    assert!(none.is_empty());
}

/// A run of the lens template for acme with `past`, its fan-out expanded.
fn expanded(past: Vec<PastRatings>, lens_extra: Value) -> (Pipeline, RunDoc) {
    let base = pipeline(&template(lens_extra));
    let mut created = crate::transitions::create_run(
        &base,
        &crate::transitions::RunRequest {
            run_id: "r9".into(),
            params: params("acme"),
            ..Default::default()
        },
        &|_| true,
    )
    .unwrap();
    if let Event::RunCreated { past_ratings, .. } = &mut created {
        *past_ratings = past;
    }
    let first = EventRecord {
        seq: 1,
        at: 1,
        actor: "user:ann".into(),
        event: created,
    };
    let mut doc = RunDoc::from_created(&first).unwrap();
    let commit = |doc: &mut RunDoc, events: Vec<Event>| {
        crate::commit_in_place(doc, events, "worker:w", 2).unwrap();
    };
    commit(
        &mut doc,
        vec![Event::BlockReady {
            block: "angles".into(),
            reason: "go".into(),
        }],
    );
    let start = crate::transitions::start(&doc, "angles", "w", 2, &Default::default()).unwrap();
    commit(&mut doc, vec![start]);
    let list = json!(["positioning", "gaps", "landscape", "risk"]);
    let events = crate::fan_out::expand(&base, &doc, "angles", 1, &list).unwrap();
    commit(&mut doc, events);
    let run = base.for_run(&doc).unwrap();
    (run, doc)
}

#[test]
fn a_run_expands_its_lens_as_its_past_ratings_say_and_replays_to_the_same() {
    let past = vec![
        PastRatings {
            comments: vec![PastComment {
                score: 2,
                comment: "name the\ncompetitors".into(),
                run_id: "r1".into(),
                at: 5,
            }],
            ..summary("landscape", 1, 2.0)
        },
        summary("risk", 3, 1.0),
        summary("gaps", 2, 5.0),
    ];
    let (run, doc) = expanded(past, json!({"drop_below": 2.0, "review_below": 3.0}));
    assert_eq!(
        doc.blocks["angles"].instances.as_deref().unwrap(),
        ["gaps", "positioning", "landscape"]
    );
    assert_eq!(doc.blocks["angles"].left_out[0].key, "risk");
    // The perspective rated below `review_below` waits for a person.
    assert_eq!(doc.blocks["angles[landscape]"].autonomy, Autonomy::Gate);
    assert_eq!(doc.blocks["angles[gaps]"].autonomy, Autonomy::Auto);
    assert!(!doc.blocks.contains_key("angles[risk]"));

    let brief = brief(&run, &doc, "angles[landscape]").unwrap();
    assert_eq!(brief.perspective.as_deref(), Some("landscape"));
    assert!(brief.review);
    let section = brief.prompt_section();
    assert!(
        section.contains("## Your perspective: `landscape`"),
        "{section}"
    );
    assert!(section.contains(r#"for entity_id="acme""#), "{section}");
    assert!(section.contains("1 rating(s), mean 2.0 of 5"), "{section}");
    assert!(section.contains("- 2/5: name the competitors"), "{section}");
    // An unrated perspective is told its angle and nothing else.
    let plain = super::brief(&run, &doc, "angles[positioning]").unwrap();
    assert!(plain.past.is_none());
    assert!(!plain.prompt_section().contains("What readers said"));
    // The group itself is not a lens output of its own.
    assert!(super::brief(&run, &doc, "angles").is_none());
    let aggregate = super::brief(&run, &doc, "brief").unwrap();
    assert_eq!(aggregate.perspective, None);
}

#[test]
fn a_rating_is_taken_only_for_a_done_lens_output_with_a_score_from_1_to_5() {
    let (run, mut doc) = expanded(Vec::new(), json!({}));
    let err = |doc: &RunDoc, block: &str, score: i64| {
        rating_for(&run, doc, block, score, "").unwrap_err()
    };
    assert!(matches!(
        err(&doc, "angles[gaps]", 4),
        RateError::NotDone { .. }
    ));
    assert!(matches!(
        err(&doc, "angles", 4),
        RateError::RateInstances(_)
    ));
    assert!(matches!(err(&doc, "nope", 4), RateError::UnknownBlock(..)));
    doc.blocks.get_mut("angles[gaps]").unwrap().status = BlockStatus::Done;
    assert!(matches!(err(&doc, "angles[gaps]", 0), RateError::Score(0)));
    assert!(matches!(err(&doc, "angles[gaps]", 6), RateError::Score(6)));
    let long = "x".repeat(MAX_COMMENT_CHARS + 1);
    assert!(matches!(
        rating_for(&run, &doc, "angles[gaps]", 3, &long),
        Err(RateError::CommentTooLong(_))
    ));
    let rating = rating_for(&run, &doc, "angles[gaps]", 4, "  useful  ").unwrap();
    assert_eq!(
        rating,
        Rating {
            block: "angles".into(),
            perspective: Some("gaps".into()),
            aggregate_key: r#"entity_id="acme""#.into(),
            score: 4,
            comment: "useful".into(),
        }
    );
    // One record per person and output: rating again replaces.
    assert_eq!(rating.record_key("ann"), rating.record_key("ann"));
    assert_ne!(rating.record_key("ann"), rating.record_key("bob"));
}

#[test]
fn a_block_without_a_lens_is_not_rated() {
    let mut value = template(json!({}));
    value["blocks"][1]["lens"] = Value::Null;
    let (run, mut doc) = {
        let base = pipeline(&value);
        let created = crate::transitions::create_run(
            &base,
            &crate::transitions::RunRequest {
                run_id: "r".into(),
                params: params("acme"),
                ..Default::default()
            },
            &|_| true,
        )
        .unwrap();
        let doc = RunDoc::from_created(&EventRecord {
            seq: 1,
            at: 1,
            actor: "a".into(),
            event: created,
        })
        .unwrap();
        (base, doc)
    };
    doc.blocks.get_mut("brief").unwrap().status = BlockStatus::Done;
    assert!(matches!(
        rating_for(&run, &doc, "brief", 3, ""),
        Err(RateError::NotALens(_))
    ));
}
