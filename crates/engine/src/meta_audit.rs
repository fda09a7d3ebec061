//! The meta-audit's built-in steps (`templates/meta-audit-factory.json`):
//! four read the run named by the `target_run` param from the store and
//! write a report ([`factory_core::meta_audit`]); the scorecard renders the
//! four reports it depends on. Each writes its report as JSON into the
//! block's `json` artifacts, a short summary into its `md` or `text` ones,
//! and the scorecard page into its `html` ones.

use factory_core::meta_audit::{self, TargetArtifact};
use factory_core::run::RunDoc;
use factory_core::template::{ArtifactFormat, Block, Runtime};
use factory_runtime::{Execution, InputArtifact};
use factory_store::{RunFilter, Store};
use serde_json::{Value, json};

/// A meta-audit step, by its `inputs.config.builtin` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    RunAggregate,
    Specificity,
    Consistency,
    Delta,
    Scorecard,
}

impl Step {
    const ALL: [(&'static str, Step); 5] = [
        ("run-aggregate", Step::RunAggregate),
        ("specificity-deep-check", Step::Specificity),
        ("cross-block-consistency", Step::Consistency),
        ("delta-report", Step::Delta),
        ("audit-scorecard", Step::Scorecard),
    ];

    fn name(self) -> &'static str {
        Step::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("", |(n, _)| n)
    }
}

/// The step `block` runs, if it is a meta-audit built-in.
pub(crate) fn step(block: &Block) -> Option<Step> {
    if block.runtime != Runtime::Builtin {
        return None;
    }
    let name = block.inputs.config.get("builtin")?.as_str()?;
    Step::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// Runs `step` for `block` of the meta-audit run `doc`.
pub(crate) async fn execution(
    store: &dyn Store,
    doc: &RunDoc,
    block: &Block,
    step: Step,
    inputs: &[InputArtifact],
) -> Execution {
    match report(store, doc, block, step, inputs).await {
        Ok((value, summary, html, metrics)) => {
            let mut execution = Execution::default();
            for artifact in &block.outputs.artifacts {
                let content = match artifact.format {
                    ArtifactFormat::Json => {
                        serde_json::to_string_pretty(&value).unwrap_or_default()
                    }
                    ArtifactFormat::Html => html.clone().unwrap_or_else(|| {
                        let text = meta_audit::scorecard::escape(&summary);
                        format!(
                            "<!doctype html><title>{}</title><pre>{text}</pre>",
                            step.name()
                        )
                    }),
                    _ => summary.clone(),
                };
                execution
                    .artifacts
                    .insert(artifact.key.clone(), content.into_bytes());
            }
            execution.metrics = metrics;
            execution
        }
        Err(error) => Execution::failed(format!("block `{}`: {error}", block.id)),
    }
}

type Report = (
    Value,
    String,
    Option<String>,
    std::collections::BTreeMap<String, Value>,
);

async fn report(
    store: &dyn Store,
    doc: &RunDoc,
    block: &Block,
    step: Step,
    inputs: &[InputArtifact],
) -> Result<Report, String> {
    if step == Step::Scorecard {
        return scorecard(inputs);
    }
    let target = load(store, doc, "target_run").await?.ok_or(
        "the run param `target_run` is not set: name the run to audit (factory meta-audit RUN)",
    )?;
    let (pipeline, target_doc, template) = &target;
    let tagged = |kind: &str, value: Value| {
        let mut value = value;
        if let Value::Object(map) = &mut value {
            map.insert("kind".to_string(), json!(kind));
        }
        value
    };
    let mut metrics = std::collections::BTreeMap::new();
    let (value, summary) = match step {
        Step::RunAggregate => {
            // One threshold: the block's own on `run_composite` decides
            // whether it fails, so the report says the same.
            let threshold = block
                .execution
                .threshold
                .as_ref()
                .filter(|t| t.metric == "run_composite")
                .map(|t| t.min)
                .unwrap_or(meta_audit::RUN_THRESHOLD);
            let aggregate = meta_audit::run_aggregate(pipeline, target_doc, threshold);
            metrics.insert(
                "run_composite".to_string(),
                json!(aggregate.composite.unwrap_or(0.0)),
            );
            metrics.insert("audited_blocks".to_string(), json!(aggregate.blocks.len()));
            let summary = format!(
                "# Run aggregate of {}\n\nRun composite {} against {:.1}: {}.\n{}",
                target_doc.run_id,
                aggregate
                    .composite
                    .map_or("n/a".to_string(), |c| format!("{c:.1}")),
                threshold,
                if aggregate.passed {
                    "passed"
                } else {
                    "not passed"
                },
                aggregate
                    .reasons
                    .iter()
                    .map(|r| format!("- {r}\n"))
                    .collect::<String>()
            );
            (serde_json::to_value(&aggregate), summary)
        }
        Step::Specificity => {
            let artifacts = artifacts(store, target_doc).await?;
            let subject = crate::audit::subject(pipeline, target_doc);
            let report = meta_audit::specificity(&artifacts, subject);
            if let Some(share) = report.specific_share {
                metrics.insert("specific_share".to_string(), json!(share));
            }
            let summary = format!(
                "# Specificity of {}\n\n{} of {} judged artifacts; specific share {}, generic ratio {}.\n",
                target_doc.run_id,
                report.artifacts.len(),
                report.artifacts.len() + report.not_judged.len(),
                report
                    .specific_share
                    .map_or("n/a".to_string(), |s| format!("{:.0} %", s * 100.0)),
                report
                    .generic_ratio
                    .map_or("n/a".to_string(), |s| format!("{:.0} %", s * 100.0)),
            );
            (serde_json::to_value(&report), summary)
        }
        Step::Consistency => {
            let mut wiring = meta_audit::wiring(template, target_doc);
            let artifacts = artifacts(store, target_doc).await?;
            wiring.terms = meta_audit::upstream_terms(pipeline, target_doc, &artifacts);
            metrics.insert("orphans".to_string(), json!(wiring.orphans.len()));
            metrics.insert(
                "broken".to_string(),
                json!(wiring.broken.len() + wiring.unresolved.len()),
            );
            let summary = format!(
                "# Wiring of {}\n\nfields {}, wired {}, orphans {}, broken {}.\n",
                target_doc.run_id,
                wiring.fields,
                wiring.wired,
                wiring.orphans.len(),
                wiring.broken.len() + wiring.unresolved.len()
            );
            (serde_json::to_value(&wiring), summary)
        }
        Step::Delta => {
            let named = load(store, doc, "baseline_run").await?;
            if named
                .as_ref()
                .is_some_and(|(_, base, _)| base.run_id == target_doc.run_id)
            {
                return Err("`baseline_run` names the run being audited; name another run, or leave it empty for the template's previous run".into());
            }
            let baseline = match named {
                Some(baseline) => Some(baseline),
                None => previous(store, target_doc).await?,
            };
            match baseline {
                None => (
                    Ok(json!({"run_id": target_doc.run_id, "baseline_run_id": null,
                              "note": "no earlier run of the template to compare with"})),
                    format!(
                        "# Deltas of {}\n\nNo earlier run of the template to compare with.\n",
                        target_doc.run_id
                    ),
                ),
                Some((base_pipeline, base_doc, _)) => {
                    let delta =
                        meta_audit::delta((pipeline, target_doc), (&base_pipeline, &base_doc));
                    metrics.insert("regressions".to_string(), json!(delta.regressions.len()));
                    let summary = format!(
                        "# Deltas of {} against {}\n\nComposite {} ({} regressions).\n",
                        target_doc.run_id,
                        base_doc.run_id,
                        delta
                            .delta
                            .map_or("n/a".to_string(), |d| format!("{d:+.1}")),
                        delta.regressions.len()
                    );
                    (serde_json::to_value(&delta), summary)
                }
            }
        }
        Step::Scorecard => unreachable!("handled above"),
    };
    let value = value.map_err(|e| format!("the report cannot be written: {e}"))?;
    Ok((tagged(step.name(), value), summary, None, metrics))
}

/// A run read back: its graph (instances included), document and template.
type LoadedRun = (
    factory_core::Pipeline,
    RunDoc,
    factory_core::template::Template,
);

/// The run a param names, with its graph and template; `None` when the
/// param is not set (or empty).
async fn load(store: &dyn Store, doc: &RunDoc, param: &str) -> Result<Option<LoadedRun>, String> {
    let Some(id) = doc
        .params
        .get(param)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let run_id = store
        .resolve_run_id(id)
        .await
        .map_err(|e| format!("param `{param}`: {e}"))?;
    if run_id == doc.run_id {
        return Err(format!(
            "param `{param}` names this meta-audit run itself; name the run to audit"
        ));
    }
    open(store, &run_id).await.map(Some)
}

async fn open(store: &dyn Store, run_id: &str) -> Result<LoadedRun, String> {
    let stored = store
        .load_run(run_id)
        .await
        .map_err(|e| format!("run {run_id}: {e}"))?;
    let base = crate::handle::cached_stored_pipeline(&stored.template_json)
        .map_err(|e| format!("run {run_id}: its stored template: {e}"))?;
    let template = base.template().clone();
    let pipeline = base.for_run(&stored.doc).unwrap_or_else(|| (*base).clone());
    Ok((pipeline, stored.doc, template))
}

/// The run of the same template created just before `target`.
async fn previous(store: &dyn Store, target: &RunDoc) -> Result<Option<LoadedRun>, String> {
    // The newest earlier run that finished done; else the newest at all.
    for status in [Some("done".to_string()), None] {
        let earlier = store
            .find_runs(&RunFilter {
                template: Some(target.template_id.clone()),
                status,
                text: None,
                before: Some((target.created_at, target.run_id.clone())),
                limit: 1,
            })
            .await
            .map_err(|e| format!("cannot list earlier runs: {e}"))?;
        if let Some(listing) = earlier.first() {
            return open(store, &listing.run.run_id).await.map(Some);
        }
    }
    Ok(None)
}

/// The text artifacts of every block's last successful attempt in `doc`
/// (media is not read as text; a folder's binary files are a line each).
async fn artifacts(store: &dyn Store, doc: &RunDoc) -> Result<Vec<TargetArtifact>, String> {
    let mut out = Vec::new();
    for (id, state) in doc.blocks.iter().filter(|(_, s)| !s.dropped) {
        let Some(report) = state.last_success().and_then(|a| a.report.as_ref()) else {
            continue;
        };
        for (key, artifact) in report
            .artifacts
            .iter()
            .filter(|(_, a)| !a.format.is_media())
        {
            let bytes = store
                .get_blob(&artifact.hash)
                .await
                .map_err(|e| format!("artifact {id}.{key}: {e}"))?;
            let bytes = if artifact.format == ArtifactFormat::Directory {
                factory_runtime::text_bytes(artifact.format, &bytes).into_owned()
            } else {
                bytes
            };
            out.push(TargetArtifact {
                block: id.clone(),
                key: key.clone(),
                path: artifact.path.clone(),
                format: artifact.format,
                bytes,
            });
        }
    }
    Ok(out)
}

/// The scorecard from the four reports among `inputs` (told apart by
/// their `kind`).
fn scorecard(inputs: &[InputArtifact]) -> Result<Report, String> {
    let mut reports = std::collections::BTreeMap::new();
    for input in inputs.iter().filter(|i| i.format == ArtifactFormat::Json) {
        if let Ok(value) = serde_json::from_slice::<Value>(&input.content)
            && let Some(kind) = value.get("kind").and_then(Value::as_str)
        {
            reports.insert(kind.to_string(), value);
        }
    }
    fn take<T: serde::de::DeserializeOwned>(
        reports: &std::collections::BTreeMap<String, Value>,
        kind: &str,
    ) -> Result<T, String> {
        let value = reports.get(kind).ok_or_else(|| {
            format!("the scorecard needs the `{kind}` report: depend on that block's json artifact")
        })?;
        serde_json::from_value(value.clone()).map_err(|e| format!("the `{kind}` report: {e}"))
    }
    let aggregate: meta_audit::RunAggregate = take(&reports, "run-aggregate")?;
    let specificity: meta_audit::SpecificityReport = take(&reports, "specificity-deep-check")?;
    let wiring: meta_audit::Wiring = take(&reports, "cross-block-consistency")?;
    let delta: Option<meta_audit::DeltaReport> = reports
        .get("delta-report")
        .filter(|v| !v["baseline_run_id"].is_null())
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
        .map_err(|e| format!("the `delta-report` report: {e}"))?;
    let html = meta_audit::scorecard::html(&meta_audit::scorecard::Parts {
        aggregate: &aggregate,
        specificity: &specificity,
        wiring: &wiring,
        delta: delta.as_ref(),
    });
    let summary = format!(
        "# Scorecard of {}\n\nRun composite {}; {} orphans; {}.\n",
        aggregate.run_id,
        aggregate
            .composite
            .map_or("n/a".to_string(), |c| format!("{c:.1}")),
        wiring.orphans.len(),
        delta
            .as_ref()
            .and_then(|d| d.delta)
            .map_or("no delta".to_string(), |d| format!("Δ {d:+.1}"))
    );
    let value = json!({
        "kind": "audit-scorecard",
        "run_id": aggregate.run_id,
        "composite": aggregate.composite,
        "passed": aggregate.passed,
        "orphans": wiring.orphans.len(),
        "delta": delta.as_ref().and_then(|d| d.delta),
    });
    Ok((value, summary, Some(html), Default::default()))
}

/// The id of `templates/meta-audit-factory.json`, whose runs' `target_run`
/// links a run to its meta-audit.
pub const META_AUDIT_TEMPLATE_ID: &str = "meta-audit-factory";

impl crate::Engine {
    /// The quality of `template_id`'s newest `limit` runs, oldest first;
    /// with `meta_audits`, each linked to its newest meta-audit that made a
    /// scorecard (else its newest at all).
    pub async fn quality_history(
        &self,
        template_id: &str,
        limit: u32,
        meta_audits: bool,
    ) -> crate::Result<meta_audit::history::QualityHistory> {
        let store = self.store.as_ref();
        let listed = store
            .find_runs(&RunFilter {
                template: Some(template_id.to_string()),
                status: None,
                text: None,
                before: None,
                limit,
            })
            .await?;
        let mut loaded = Vec::with_capacity(listed.len());
        for listing in &listed {
            let stored = store.load_run(&listing.run.run_id).await?;
            let base = crate::handle::cached_stored_pipeline(&stored.template_json)?;
            let pipeline = crate::handle::for_run(&base, &stored.doc);
            loaded.push((pipeline, stored.doc));
        }
        let pairs: Vec<(&factory_core::Pipeline, &RunDoc)> =
            loaded.iter().map(|(p, d)| (p.as_ref(), d)).collect();
        let mut history = meta_audit::history::quality_history(template_id, &pairs);
        if meta_audits && template_id != META_AUDIT_TEMPLATE_ID {
            for point in &mut history.runs {
                point.meta_audit = newest_meta_audit(store, &point.run_id).await?;
            }
        }
        Ok(history)
    }
}

/// Meta-audits looked at per run for the dashboard's link.
const META_AUDITS_PER_RUN: u32 = 5;

/// The newest meta-audit of `run_id` whose scorecard was made, else the
/// newest at all (runs whose params name the run's full id).
async fn newest_meta_audit(store: &dyn Store, run_id: &str) -> crate::Result<Option<String>> {
    let found = store
        .find_runs(&RunFilter {
            template: Some(META_AUDIT_TEMPLATE_ID.to_string()),
            status: None,
            text: Some(run_id.to_string()),
            before: None,
            limit: META_AUDITS_PER_RUN,
        })
        .await?;
    let mut newest = None;
    for listing in &found {
        let doc = store.load_run(&listing.run.run_id).await?.doc;
        if doc.params.get("target_run").and_then(Value::as_str) != Some(run_id) {
            continue;
        }
        let scorecard = doc
            .blocks
            .get("audit-scorecard-publisher")
            .is_some_and(|s| s.last_success().is_some());
        if scorecard {
            return Ok(Some(doc.run_id));
        }
        newest.get_or_insert(doc.run_id);
    }
    Ok(newest)
}
