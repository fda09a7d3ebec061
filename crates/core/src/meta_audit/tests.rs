use serde_json::json;

use super::*;
use crate::run::{ArtifactRef, AttemptReport};

/// `research` writes `notes` (read by `brief`) and `extra` (read by none);
/// `brief` writes `text`, the deliverable.
fn template() -> serde_json::Value {
    let command = json!({"command": ["true"]});
    json!({
        "id": "t", "name": "T", "version": "1",
        "blocks": [
            {"id": "research", "name": "Research", "layer": "L0", "type": "research", "runtime": "command",
             "inputs": {"config": command},
             "outputs": {"artifacts": [
                 {"key": "notes", "path": "notes.md", "format": "md"},
                 {"key": "extra", "path": "extra.md", "format": "md"}]}},
            {"id": "brief", "name": "Brief", "layer": "L1", "type": "build", "runtime": "command",
             "inputs": {"config": command, "depends": [{"block": "research", "key": "notes"}]},
             "outputs": {"artifacts": [{"key": "text", "path": "text.md", "format": "md"}]}}
        ]
    })
}

fn pipeline(value: &serde_json::Value) -> Pipeline {
    crate::validate::validate_value(value).pipeline.unwrap()
}

/// Run ids in the order runs are made (they sort as made).
static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

const GOOD: &str = "Acme Robotics leases 40 picking arms to Pickwell at 4,800 dollars a month.\nIts installs take 11 days against the six weeks Pickwell's own team needs.\nAcme Robotics lost the Globex bid in March over integration support.\n";
const GENERIC: &str = "This is a game-changer for everyone.\nIt will unlock your potential every day.\nWe empower teams to achieve more.\n";

/// A run of `value` where each block ran once and wrote `texts[block]`,
/// audited by the audit crate (subject `Acme Robotics`).
fn run(
    value: &serde_json::Value,
    texts: &[(&str, &str)],
) -> (Pipeline, RunDoc, Vec<TargetArtifact>) {
    let pipeline = pipeline(value);
    let created = crate::transitions::create_run(
        &pipeline,
        &crate::transitions::RunRequest {
            run_id: format!(
                "run-{:04}",
                RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
            ..Default::default()
        },
        &|_| true,
    )
    .unwrap();
    let mut doc = RunDoc::from_created(&crate::run::EventRecord {
        seq: 1,
        at: 1,
        actor: "t".into(),
        event: created,
    })
    .unwrap();
    let mut artifacts = Vec::new();
    for block in pipeline.template().blocks.clone() {
        let mut report = AttemptReport::default();
        let mut outputs = Vec::new();
        for declared in &block.outputs.artifacts {
            let text = texts
                .iter()
                .find(|(b, _)| *b == block.id)
                .map_or("", |(_, t)| *t);
            report.artifacts.insert(
                declared.key.clone(),
                ArtifactRef {
                    hash: format!("h-{}-{}", block.id, declared.key),
                    size: text.len() as u64,
                    path: declared.path.clone(),
                    format: declared.format,
                    media: None,
                },
            );
            outputs.push((declared.key.clone(), declared.path.clone(), text));
            artifacts.push(TargetArtifact {
                block: block.id.clone(),
                key: declared.key.clone(),
                path: declared.path.clone(),
                format: declared.format,
                bytes: text.as_bytes().to_vec(),
            });
        }
        let audit = factory_audit::audit(&factory_audit::AuditInput {
            block: &block.id,
            artifacts: outputs
                .iter()
                .map(|(key, path, text)| factory_audit::Artifact {
                    key,
                    path,
                    format: factory_audit::Format::Markdown,
                    content: Some(text.as_bytes()),
                })
                .collect(),
            upstream: Vec::new(),
            golden: Default::default(),
            consumed_downstream: Default::default(),
            subject: Some("Acme Robotics"),
            self_score: None,
            previous: None,
        });
        report.audit = audit.map(Box::new);
        let ready = crate::run::Event::BlockReady {
            block: block.id.clone(),
            reason: "test".into(),
        };
        crate::commit_in_place(&mut doc, vec![ready], "scheduler", 2).unwrap();
        let start =
            crate::transitions::start(&doc, &block.id, "w", 2, &Default::default()).unwrap();
        crate::commit_in_place(&mut doc, vec![start], "w", 2).unwrap();
        let events = crate::transitions::finish(
            &pipeline,
            &doc,
            &block.id,
            1,
            report,
            3,
            &Default::default(),
        )
        .unwrap();
        crate::commit_in_place(&mut doc, events, "w", 3).unwrap();
    }
    (pipeline, doc, artifacts)
}

#[test]
fn the_aggregate_passes_a_specific_run_and_fails_a_generic_one_with_reasons() {
    let value = template();
    let (p, doc, _) = run(&value, &[("research", GOOD), ("brief", GOOD)]);
    let good = run_aggregate(&p, &doc, RUN_THRESHOLD);
    assert_eq!(good.blocks.len(), 2, "{good:#?}");
    assert!(good.passed, "{good:#?}");
    assert!(good.composite.unwrap() >= RUN_THRESHOLD);

    let (p, doc, _) = run(&value, &[("research", GENERIC), ("brief", GENERIC)]);
    let poor = run_aggregate(&p, &doc, 9.9);
    assert!(!poor.passed);
    assert!(
        poor.reasons[0].contains("below the threshold 9.9"),
        "{:?}",
        poor.reasons
    );
    assert!(
        poor.reasons
            .iter()
            .any(|r| r.contains("blocks below 9.9: research"))
    );
    assert!(
        poor.dimensions[1] < good.dimensions[1],
        "D2 sees the stock phrases"
    );
}

#[test]
fn specificity_counts_the_runs_subject_specific_share() {
    let value = template();
    let (_, _, artifacts) = run(&value, &[("research", GOOD), ("brief", GENERIC)]);
    let report = specificity(&artifacts, Some("Acme Robotics"));
    let of = |block: &str, key: &str| {
        report
            .artifacts
            .iter()
            .find(|a| a.block == block && a.key == key)
            .unwrap()
            .counts
            .clone()
    };
    assert_eq!(of("research", "notes").specific_share, 1.0);
    assert_eq!(of("brief", "text").specific_share, 0.0);
    // Two artifacts of research's text and one generic: 6 of 9 sentences.
    assert_eq!(report.specific_share, Some(0.667));
    assert!(report.subject_mentions >= 4);
}

#[test]
fn wiring_counts_fields_and_finds_orphans_and_broken_wires() {
    let value = template();
    let (_, doc, _) = run(&value, &[("research", GOOD), ("brief", GOOD)]);
    let t: Template = serde_json::from_value(value.clone()).unwrap();
    let w = wiring(&t, &doc);
    assert_eq!((w.fields, w.wired), (3, 1));
    assert_eq!(w.orphans, ["research.extra"]);
    assert_eq!(w.deliverables, ["brief.text"]);
    assert!(w.broken.is_empty() && w.unresolved.is_empty(), "{w:#?}");

    // A consumer of `extra` wires it: no orphan.
    let mut consumed = value.clone();
    consumed["blocks"][1]["inputs"]["depends"]
        .as_array_mut()
        .unwrap()
        .push(json!({"block": "research", "key": "extra"}));
    let t2: Template = serde_json::from_value(consumed).unwrap();
    let w = wiring(&t2, &doc);
    assert_eq!((w.fields, w.wired), (3, 2));
    assert!(w.orphans.is_empty());

    // What brief read came out empty, or was never written.
    fn notes(doc: &mut RunDoc) -> &mut crate::run::AttemptReport {
        doc.blocks
            .get_mut("research")
            .unwrap()
            .history
            .last_mut()
            .unwrap()
            .report
            .as_mut()
            .unwrap()
    }
    let mut empty = doc.clone();
    notes(&mut empty).artifacts.get_mut("notes").unwrap().size = 0;
    let w = wiring(&t, &empty);
    assert_eq!(w.broken.len(), 1);
    assert_eq!(
        (w.broken[0].consumer.as_str(), w.broken[0].problem.as_str()),
        ("brief", "empty: 0 bytes")
    );
    let mut missing = doc.clone();
    notes(&mut missing).artifacts.remove("notes");
    let w = wiring(&t, &missing);
    assert!(w.broken[0].problem.starts_with("not produced"), "{w:#?}");

    // A wire to an artifact the template does not declare.
    let mut wrong = value.clone();
    wrong["blocks"][1]["inputs"]["depends"][0]["key"] = json!("notse");
    let t3: Template = serde_json::from_value(wrong).unwrap();
    let w = wiring(&t3, &doc);
    assert_eq!(w.unresolved.len(), 1, "{w:#?}");
    assert!(w.unresolved[0].problem.contains("no artifact `notse`"));
}

#[test]
fn the_delta_names_regressions_and_what_changed_in_the_template() {
    let value = template();
    let (p1, before, _) = run(&value, &[("research", GOOD), ("brief", GOOD)]);
    let mut changed = value.clone();
    changed["version"] = json!("2");
    changed["blocks"][1]["description"] = json!("now with a description");
    let (p2, after, a2) = run(&changed, &[("research", GOOD), ("brief", GENERIC)]);
    let d = delta((&p2, &after), (&p1, &before));
    let brief = d.blocks.iter().find(|b| b.block == "brief").unwrap();
    assert!(
        brief.regression && brief.delta.unwrap() <= -REGRESSION,
        "{brief:?}"
    );
    assert_eq!(d.regressions.len(), 1);
    assert!(d.regressions[0].starts_with("brief: "));
    let research = d.blocks.iter().find(|b| b.block == "research").unwrap();
    assert_eq!(research.delta, Some(0.0));
    assert_eq!(d.changed_blocks, ["brief"]);
    assert_eq!(d.template_version, ("1".to_string(), "2".to_string()));
    assert!(d.delta.unwrap() < 0.0);

    // The scorecard shows all of it, escaped, on one page with no asset.
    let aggregate = run_aggregate(&p2, &after, RUN_THRESHOLD);
    let spec = specificity(&a2, Some("Acme <Robotics>"));
    let t: Template = serde_json::from_value(changed).unwrap();
    let wires = wiring(&t, &after);
    let page = scorecard::html(&scorecard::Parts {
        aggregate: &aggregate,
        specificity: &spec,
        wiring: &wires,
        delta: Some(&d),
    });
    assert!(page.starts_with("<!doctype html>") && page.contains("<svg"));
    assert!(page.contains("Regressions: brief: "));
    assert!(page.contains("“Acme &lt;Robotics&gt;”"));
    assert!(!page.contains("<script") && !page.contains("src=") && !page.contains("href="));
}

#[test]
fn the_history_lists_runs_oldest_first_with_the_weakest_blocks_and_regressions() {
    let value = template();
    let (p1, r1, _) = run(&value, &[("research", GOOD), ("brief", GOOD)]);
    let (p2, r2, _) = run(&value, &[("research", GOOD), ("brief", GENERIC)]);
    let h = history::quality_history("t", &[(&p2, &r2), (&p1, &r1)]);
    let ids: Vec<&str> = h.runs.iter().map(|p| p.run_id.as_str()).collect();
    assert_eq!(ids, [r1.run_id.as_str(), r2.run_id.as_str()]);
    assert!(h.runs[0].composite > h.runs[1].composite);
    assert_eq!(h.weakest_blocks[0].block, "brief");
    assert_eq!(h.weakest_blocks[0].runs, 2);
    assert_eq!(h.weakest_blocks[0].lowest_run, r2.run_id);
    assert_eq!(h.regressions.len(), 1, "{:?}", h.regressions);
    let r = &h.regressions[0];
    assert_eq!(
        (r.block.as_str(), r.from_run.as_str(), r.to_run.as_str()),
        ("brief", r1.run_id.as_str(), r2.run_id.as_str())
    );
    assert!(r.delta <= -REGRESSION);
    assert!(history::quality_history("t", &[]).runs.is_empty());
}

#[test]
fn upstream_terms_say_what_a_block_made_of_what_it_read() {
    let value = template();
    let (p, doc, artifacts) = run(&value, &[("research", GOOD), ("brief", GOOD)]);
    let terms = upstream_terms(&p, &doc, &artifacts);
    assert_eq!(terms.len(), 1, "brief reads one artifact: {terms:?}");
    let t = &terms[0];
    assert_eq!(
        (t.consumer.as_str(), t.upstream.as_str()),
        ("brief", "research.notes")
    );
    assert!(t.terms > 0 && t.used == t.terms, "{t:?}");

    let (p, doc, artifacts) = run(&value, &[("research", GOOD), ("brief", GENERIC)]);
    let t = &upstream_terms(&p, &doc, &artifacts)[0];
    assert_eq!(t.used, 0, "{t:?}");
    assert!(t.unused.contains(&"pickwell".to_string()), "{t:?}");
    assert!(t.unused.len() <= UNUSED_SHOWN);
}
