//! The meta-audit (SPEC C10, seed `003` §6–§7): the factory audits one of
//! its own runs. Pure: the engine loads the target run (its document, its
//! template, the artifacts of its blocks' last successful attempts) and
//! these functions make what the meta-audit template's blocks write:
//!
//! - [`run_aggregate`]: per-block and run composites and dimensions, the
//!   weakest dimensions, calibration and inflation flags, pass or fail
//!   against the run threshold;
//! - [`specificity`]: D2's counts per artifact and per block, and the run's
//!   share of subject-specific content;
//! - [`wiring`]: every declared dependency resolved to an artifact that
//!   exists and is not empty, artifacts nothing consumes, the paper's table
//!   of fields, wired and orphans; [`upstream_terms`]: what each block made
//!   of the terms of what it read;
//! - [`delta`]: block by block and dimension by dimension against another
//!   run, regressions, and what changed in the template and the prompts;
//! - [`scorecard`]: all of it as one self-contained HTML page;
//! - [`history`]: a template's quality across its runs (the dashboard).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::pipeline::Pipeline;
use crate::run::{BlockStatus, RunDoc};
use crate::template::{ArtifactFormat, Template};

pub mod history;
pub mod scorecard;

/// The run composite a meta-audit asks for (seed `003`: "threshold 5.0").
pub const RUN_THRESHOLD: f64 = 5.0;
/// A block whose composite fell at least this much is a regression.
pub const REGRESSION: f64 = factory_audit::COMPOSITE_REGRESSION;

/// The dimension names, in order.
pub const DIMENSIONS: [&str; 5] = ["d1", "d2", "d3", "d4", "d5"];

/// An artifact of the target run: the last successful attempt's, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetArtifact {
    pub block: String,
    pub key: String,
    pub path: String,
    pub format: ArtifactFormat,
    pub bytes: Vec<u8>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

// ── run-aggregate ──

/// One block's latest audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockQuality {
    pub block: String,
    pub status: String,
    pub attempts: u32,
    pub composite: f64,
    /// D1–D5, `None` where a dimension was not applicable.
    pub dimensions: [Option<f64>; 5],
    pub weakest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_warning: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub score_inflation: bool,
}

/// The run-aggregate report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAggregate {
    pub run_id: String,
    pub template_id: String,
    pub template_version: String,
    pub status: String,
    /// Mean composite of the audited blocks; `None` when none was audited.
    pub composite: Option<f64>,
    /// Each dimension's mean over the blocks that judged it.
    pub dimensions: [Option<f64>; 5],
    /// The dimensions below the run's composite, weakest first.
    pub weakest: Vec<String>,
    pub threshold: f64,
    pub passed: bool,
    /// Why it did not pass, or what to look at even so.
    pub reasons: Vec<String>,
    pub blocks: Vec<BlockQuality>,
    /// Blocks without an audit (not run, failed before writing, or builtins
    /// that wrote nothing to judge).
    pub unaudited: Vec<String>,
}

/// Per-block and run-level D1–D5 of `doc`, against `threshold`. Each
/// instance of a fan-out counts as a block (a group of 100 weighs 100).
pub fn run_aggregate(pipeline: &Pipeline, doc: &RunDoc, threshold: f64) -> RunAggregate {
    let mut blocks = Vec::new();
    let mut unaudited = Vec::new();
    for block in pipeline.blocks() {
        let Some(state) = doc.blocks.get(&block.id).filter(|s| !s.dropped) else {
            continue;
        };
        if block.fan_out.is_some() && state.instances.is_some() {
            continue; // its instances are audited, not the group
        }
        // The accepted output's audit (what the artifacts read here are);
        // for a block that never succeeded, its latest.
        let audit = state
            .last_success()
            .and_then(|a| a.report.as_ref()?.audit.as_deref())
            .or_else(|| state.latest_audit());
        match audit {
            Some(audit) => blocks.push(BlockQuality {
                block: block.id.clone(),
                status: state.status.as_str().to_string(),
                attempts: state.attempts,
                composite: audit.composite,
                dimensions: audit.dimensions().map(|(_, d)| d.score),
                weakest: audit.weakest.clone(),
                calibration_warning: audit.calibration_warning.clone(),
                score_inflation: audit.score_inflation,
            }),
            None => unaudited.push(block.id.clone()),
        }
    }
    let composite = (!blocks.is_empty())
        .then(|| round1(blocks.iter().map(|b| b.composite).sum::<f64>() / blocks.len() as f64));
    let mut dimensions = [None; 5];
    for (i, slot) in dimensions.iter_mut().enumerate() {
        let judged: Vec<f64> = blocks.iter().filter_map(|b| b.dimensions[i]).collect();
        if !judged.is_empty() {
            *slot = Some(round1(judged.iter().sum::<f64>() / judged.len() as f64));
        }
    }
    let mut weakest: Vec<(usize, f64)> = dimensions
        .iter()
        .enumerate()
        .filter_map(|(i, d)| Some((i, (*d)?)))
        .filter(|(_, d)| composite.is_some_and(|c| *d < c))
        .collect();
    weakest.sort_by(|a, b| a.1.total_cmp(&b.1));
    let weakest = weakest
        .into_iter()
        .map(|(i, _)| DIMENSIONS[i].to_string())
        .collect();
    let mut reasons = Vec::new();
    match composite {
        None => reasons.push("no block of the run was audited".to_string()),
        Some(c) if c < threshold => reasons.push(format!(
            "the run composite {c:.1} is below the threshold {threshold:.1}"
        )),
        Some(_) => {}
    }
    let low: Vec<String> = blocks
        .iter()
        .filter(|b| b.composite < threshold)
        .map(|b| format!("{} ({:.1}, weakest {})", b.block, b.composite, b.weakest))
        .collect();
    if !low.is_empty() {
        reasons.push(format!("blocks below {threshold:.1}: {}", low.join(", ")));
    }
    for b in &blocks {
        if let Some(warning) = &b.calibration_warning {
            reasons.push(format!("{}: {warning}", b.block));
        }
        if b.score_inflation {
            reasons.push(format!(
                "{}: its score rose while its output barely changed (inflation)",
                b.block
            ));
        }
    }
    RunAggregate {
        run_id: doc.run_id.clone(),
        template_id: doc.template_id.clone(),
        template_version: doc.template_version.clone(),
        status: doc.status.as_str().to_string(),
        passed: composite.is_some_and(|c| c >= threshold),
        composite,
        dimensions,
        weakest,
        threshold,
        reasons,
        blocks,
        unaudited,
    }
}

// ── specificity-deep-check ──

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactSpecificity {
    pub block: String,
    pub key: String,
    #[serde(flatten)]
    pub counts: factory_audit::Specificity,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecificityReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Over every judged sentence of the run: the share with a number, a
    /// proper noun, a quotation or the subject's name.
    pub specific_share: Option<f64>,
    pub generic_ratio: Option<f64>,
    pub subject_mentions: usize,
    pub words: usize,
    pub artifacts: Vec<ArtifactSpecificity>,
    /// Artifacts with no prose to judge (values, not sentences).
    pub not_judged: Vec<String>,
}

/// D2's counts for every artifact of the target, and the run's totals.
pub fn specificity(artifacts: &[TargetArtifact], subject: Option<&str>) -> SpecificityReport {
    let mut judged = Vec::new();
    let mut not_judged = Vec::new();
    for artifact in artifacts {
        let counts = factory_audit::specificity(
            &factory_audit::Artifact {
                key: &artifact.key,
                path: &artifact.path,
                format: artifact.format.audit_format(),
                content: Some(&artifact.bytes),
            },
            subject,
        );
        match counts {
            Some(counts) => judged.push(ArtifactSpecificity {
                block: artifact.block.clone(),
                key: artifact.key.clone(),
                counts,
            }),
            None => not_judged.push(format!("{}.{}", artifact.block, artifact.key)),
        }
    }
    let sentences: usize = judged.iter().map(|a| a.counts.sentences).sum();
    let share =
        |n: usize| (sentences > 0).then(|| (n as f64 / sentences as f64 * 1000.0).round() / 1000.0);
    SpecificityReport {
        subject: subject.map(str::to_string),
        specific_share: share(judged.iter().map(|a| a.counts.specific).sum()),
        generic_ratio: share(judged.iter().map(|a| a.counts.generic).sum()),
        subject_mentions: judged.iter().map(|a| a.counts.subject_mentions).sum(),
        words: judged.iter().map(|a| a.counts.words).sum(),
        artifacts: judged,
        not_judged,
    }
}

// ── cross-block-consistency ──

/// A dependency that does not resolve to a usable artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenWire {
    pub consumer: String,
    pub producer: String,
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wiring {
    /// Declared artifacts (`block.key`).
    pub fields: usize,
    /// Declared artifacts a dependency reads.
    pub wired: usize,
    /// Declared artifacts of blocks others read, that no dependency reads.
    pub orphans: Vec<String>,
    /// Artifacts of blocks nothing depends on: the run's deliverables.
    pub deliverables: Vec<String>,
    /// Dependencies of blocks that ran whose artifact is missing or empty.
    pub broken: Vec<BrokenWire>,
    /// Dependencies naming a block or artifact the template does not have.
    pub unresolved: Vec<BrokenWire>,
    /// For each wire a block that ran read: the upstream artifact's
    /// distinctive terms its outputs use and leave unused (filled from the
    /// artifacts, [`upstream_terms`]), least used first.
    #[serde(default)]
    pub terms: Vec<WireTerms>,
}

/// What a consumer made of one upstream artifact's distinctive terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireTerms {
    pub consumer: String,
    /// `block.key` of the upstream artifact (an instance's own id).
    pub upstream: String,
    pub terms: usize,
    pub used: usize,
    /// At most [`UNUSED_SHOWN`].
    pub unused: Vec<String>,
}

/// Unused terms listed per wire.
pub const UNUSED_SHOWN: usize = 10;

/// For every block of `pipeline` (the run's graph) whose last attempt
/// succeeded, which distinctive terms of each upstream artifact it read
/// reappear in its outputs (D5's measure, as lists), least used first.
pub fn upstream_terms(
    pipeline: &Pipeline,
    doc: &RunDoc,
    artifacts: &[TargetArtifact],
) -> Vec<WireTerms> {
    let of = |block: &str| -> Vec<&TargetArtifact> {
        artifacts.iter().filter(|a| a.block == block).collect()
    };
    let mut out = Vec::new();
    for block in pipeline.blocks() {
        let outputs = of(&block.id);
        if outputs.is_empty() || block.inputs.depends.is_empty() {
            continue;
        }
        let mut upstream = Vec::new();
        for dep in &block.inputs.depends {
            let Ok(found) = doc.dependency_artifacts(&dep.block, &dep.key) else {
                continue;
            };
            for (from, _) in found {
                if let Some(a) = artifacts
                    .iter()
                    .find(|a| a.block == from && a.key == dep.key)
                {
                    upstream.push(a);
                }
            }
        }
        if upstream.is_empty() {
            continue;
        }
        let uses = factory_audit::upstream_terms(
            &outputs
                .iter()
                .map(|a| factory_audit::Artifact {
                    key: &a.key,
                    path: &a.path,
                    format: a.format.audit_format(),
                    content: Some(&a.bytes),
                })
                .collect::<Vec<_>>(),
            &upstream
                .iter()
                .map(|a| factory_audit::Upstream {
                    block: &a.block,
                    key: &a.key,
                    format: a.format.audit_format(),
                    content: &a.bytes,
                })
                .collect::<Vec<_>>(),
        );
        for u in uses {
            let terms = u.used.len() + u.unused.len();
            if terms == 0 {
                continue;
            }
            out.push(WireTerms {
                consumer: block.id.clone(),
                upstream: u.upstream,
                terms,
                used: u.used.len(),
                unused: u.unused.into_iter().take(UNUSED_SHOWN).collect(),
            });
        }
    }
    out.sort_by(|a, b| {
        (a.used * b.terms)
            .cmp(&(b.used * a.terms))
            .then(a.consumer.cmp(&b.consumer))
            .then(a.upstream.cmp(&b.upstream))
    });
    out
}

/// The wiring of `template` as run in `doc`: each block that ran must have
/// found every artifact it depends on, produced (by its producer's last
/// successful attempt, or a done instance's) and not empty.
pub fn wiring(template: &Template, doc: &RunDoc) -> Wiring {
    let declared: BTreeSet<(&str, &str)> = template
        .blocks
        .iter()
        .flat_map(|b| {
            b.outputs
                .artifacts
                .iter()
                .map(move |a| (b.id.as_str(), a.key.as_str()))
        })
        .collect();
    let read: BTreeSet<(&str, &str)> = template
        .blocks
        .iter()
        .flat_map(|b| b.inputs.depends.iter())
        .map(|d| (d.block.as_str(), d.key.as_str()))
        .collect();
    let consumed_blocks: BTreeSet<&str> = read.iter().map(|(b, _)| *b).collect();
    let name = |(b, k): &(&str, &str)| format!("{b}.{k}");
    let wired = declared.iter().filter(|f| read.contains(*f)).count();
    let orphans = declared
        .iter()
        .filter(|f| !read.contains(*f) && consumed_blocks.contains(f.0))
        .map(name)
        .collect();
    let deliverables = declared
        .iter()
        .filter(|f| !consumed_blocks.contains(f.0))
        .map(name)
        .collect();
    // What was produced, by template block (an instance's under its group).
    let mut produced: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for (id, state) in doc.blocks.iter().filter(|(_, s)| !s.dropped) {
        let Some(report) = state.last_success().and_then(|a| a.report.as_ref()) else {
            continue;
        };
        for (key, artifact) in &report.artifacts {
            produced
                .entry((crate::run::group_id(id), key.as_str()))
                .or_default()
                .push(artifact.size);
        }
    }
    let mut broken = Vec::new();
    let mut unresolved = Vec::new();
    for block in &template.blocks {
        let ran = doc.blocks.iter().any(|(id, state)| {
            crate::run::group_id(id) == block.id
                && !state.dropped
                && state.last_success().is_some()
                && matches!(state.status, BlockStatus::Done | BlockStatus::Waiting)
        });
        for dep in &block.inputs.depends {
            let wire = |problem: String| BrokenWire {
                consumer: block.id.clone(),
                producer: dep.block.clone(),
                key: dep.key.clone(),
                problem,
            };
            if !declared.contains(&(dep.block.as_str(), dep.key.as_str())) {
                unresolved.push(wire(format!(
                    "`{}` declares no artifact `{}`",
                    dep.block, dep.key
                )));
                continue;
            }
            if !ran {
                continue;
            }
            match produced.get(&(dep.block.as_str(), dep.key.as_str())) {
                None => broken.push(wire(
                    "not produced: no successful attempt of the producer wrote it".into(),
                )),
                Some(sizes) if sizes.iter().all(|s| *s == 0) => {
                    broken.push(wire("empty: 0 bytes".into()));
                }
                Some(_) => {}
            }
        }
    }
    Wiring {
        fields: declared.len(),
        wired,
        orphans,
        deliverables,
        broken,
        unresolved,
        terms: Vec::new(),
    }
}

// ── delta-report ──

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockDelta {
    pub block: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// `after - before`, to one decimal, when both were audited.
    pub delta: Option<f64>,
    pub dimensions: [Option<f64>; 5],
    pub regression: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaReport {
    pub run_id: String,
    pub baseline_run_id: String,
    pub before: Option<f64>,
    pub after: Option<f64>,
    pub delta: Option<f64>,
    pub dimensions: [Option<f64>; 5],
    pub blocks: Vec<BlockDelta>,
    pub regressions: Vec<String>,
    pub template_version: (String, String),
    /// Blocks only in the target's template, only in the baseline's, and in
    /// both with another definition.
    pub added_blocks: Vec<String>,
    pub removed_blocks: Vec<String>,
    pub changed_blocks: Vec<String>,
    /// `llm` blocks whose last prompt differs between the runs.
    pub changed_prompts: Vec<String>,
}

/// The target against `baseline`: run and per-block composites and
/// dimensions, regressions (a block's composite down by
/// [`REGRESSION`] or more), and what changed in templates and prompts.
pub fn delta(target: (&Pipeline, &RunDoc), baseline: (&Pipeline, &RunDoc)) -> DeltaReport {
    let after = run_aggregate(target.0, target.1, RUN_THRESHOLD);
    let before = run_aggregate(baseline.0, baseline.1, RUN_THRESHOLD);
    let minus = |a: Option<f64>, b: Option<f64>| Some(round1(a? - b?));
    let by_block: BTreeMap<&str, &BlockQuality> = before
        .blocks
        .iter()
        .map(|b| (b.block.as_str(), b))
        .collect();
    let mut ids: Vec<&str> = after.blocks.iter().map(|b| b.block.as_str()).collect();
    for b in &before.blocks {
        if !ids.contains(&b.block.as_str()) {
            ids.push(&b.block);
        }
    }
    let now: BTreeMap<&str, &BlockQuality> =
        after.blocks.iter().map(|b| (b.block.as_str(), b)).collect();
    let mut blocks = Vec::new();
    let mut regressions = Vec::new();
    for id in ids {
        let (a, b) = (now.get(id), by_block.get(id));
        let mut dimensions = [None; 5];
        for (i, slot) in dimensions.iter_mut().enumerate() {
            *slot = minus(
                a.and_then(|q| q.dimensions[i]),
                b.and_then(|q| q.dimensions[i]),
            );
        }
        let delta = minus(a.map(|q| q.composite), b.map(|q| q.composite));
        let regression = delta.is_some_and(|d| d <= -REGRESSION);
        if regression {
            regressions.push(format!(
                "{id}: {:.1} → {:.1} ({:+.1})",
                b.map_or(0.0, |q| q.composite),
                a.map_or(0.0, |q| q.composite),
                delta.unwrap_or_default()
            ));
        }
        blocks.push(BlockDelta {
            block: id.to_string(),
            before: b.map(|q| q.composite),
            after: a.map(|q| q.composite),
            delta,
            dimensions,
            regression,
        });
    }
    let mut dimensions = [None; 5];
    for (i, slot) in dimensions.iter_mut().enumerate() {
        *slot = minus(after.dimensions[i], before.dimensions[i]);
    }
    let defs = |p: &Pipeline| -> BTreeMap<String, serde_json::Value> {
        // Template blocks, not a fan-out's instances (ids with brackets).
        p.template()
            .blocks
            .iter()
            .filter(|b| !b.id.contains('['))
            .map(|b| (b.id.clone(), serde_json::to_value(b).unwrap_or_default()))
            .collect()
    };
    let (now_defs, then_defs) = (defs(target.0), defs(baseline.0));
    let added_blocks = now_defs
        .keys()
        .filter(|k| !then_defs.contains_key(*k))
        .cloned()
        .collect();
    let removed_blocks = then_defs
        .keys()
        .filter(|k| !now_defs.contains_key(*k))
        .cloned()
        .collect();
    let changed_blocks = now_defs
        .iter()
        .filter(|(k, v)| then_defs.get(*k).is_some_and(|old| old != *v))
        .map(|(k, _)| k.clone())
        .collect();
    let prompt = |doc: &RunDoc, id: &str| {
        doc.blocks
            .get(id)?
            .last_success()?
            .report
            .as_ref()?
            .llm
            .as_ref()?
            .prompt
            .as_ref()
            .map(|p| p.hash.clone())
    };
    let changed_prompts = target
        .1
        .blocks
        .keys()
        .filter(|id| match (prompt(target.1, id), prompt(baseline.1, id)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        })
        .cloned()
        .collect();
    DeltaReport {
        run_id: target.1.run_id.clone(),
        baseline_run_id: baseline.1.run_id.clone(),
        before: before.composite,
        after: after.composite,
        delta: minus(after.composite, before.composite),
        dimensions,
        blocks,
        regressions,
        template_version: (
            baseline.1.template_version.clone(),
            target.1.template_version.clone(),
        ),
        added_blocks,
        removed_blocks,
        changed_blocks,
        changed_prompts,
    }
}

#[cfg(test)]
mod tests;
