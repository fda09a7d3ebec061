//! Runs the D1–D5 audit on an attempt's outputs. The audit itself is pure
//! (`factory-audit`); this module gathers its inputs: artifacts, upstream
//! inputs, golden examples from beside the template, the subject's name and
//! the previous attempt's report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use factory_audit::{Artifact, AuditInput, AuditReport, Upstream};
use factory_core::Pipeline;
use factory_core::run::RunDoc;
use factory_core::template::Block;
use factory_runtime::{Execution, InputArtifact};
use serde_json::Value;

/// The run param naming the audit's subject, if the run has one.
pub(crate) fn subject<'a>(pipeline: &Pipeline, doc: &'a RunDoc) -> Option<&'a str> {
    let configured = pipeline
        .template()
        .audit
        .as_ref()
        .and_then(|a| a.subject_param.as_deref());
    let names: Vec<&str> = match configured {
        Some(name) => vec![name],
        None => vec!["expert_name", "subject"],
    };
    names
        .into_iter()
        .find_map(|name| doc.params.get(name).and_then(Value::as_str))
        .filter(|s| !s.trim().is_empty())
}

/// Golden examples declared by the block, read from beside the template.
/// Unreadable files are skipped (run creation already checked they exist).
pub(crate) fn read_golden(block: &Block, template_dir: Option<&Path>) -> BTreeMap<String, Vec<u8>> {
    let mut golden = BTreeMap::new();
    let (Some(audit), Some(dir)) = (&block.audit, template_dir) else {
        return golden;
    };
    for (key, path) in &audit.golden {
        match factory_runtime::confine::read(dir, path) {
            Ok(bytes) => {
                golden.insert(key.clone(), bytes);
            }
            Err(error) => {
                tracing::warn!(block = %block.id, %path, %error, "golden example unreadable")
            }
        }
    }
    golden
}

/// Golden files a pipeline declares that do not exist, as `block: path`.
pub(crate) fn missing_golden(pipeline: &Pipeline, template_dir: Option<&Path>) -> Vec<String> {
    let mut missing = Vec::new();
    for block in pipeline.blocks() {
        let Some(audit) = &block.audit else { continue };
        for path in audit.golden.values() {
            match template_dir.map(|dir| factory_runtime::confine::within(dir, path)) {
                Some(Ok(file)) if file.is_file() => {}
                Some(Err(error)) => missing.push(format!("{}: {error}", block.id)),
                _ => missing.push(format!("{}: {path}", block.id)),
            }
        }
    }
    missing
}

pub(crate) struct AuditContext<'a> {
    pub pipeline: &'a Pipeline,
    pub doc: &'a RunDoc,
    pub block: &'a Block,
    pub inputs: &'a [InputArtifact],
    pub golden: &'a BTreeMap<String, Vec<u8>>,
}

/// Audits an execution that produced its artifacts; `None` when the block
/// declares none (nothing to judge, so no score).
pub(crate) fn audit_execution(
    context: &AuditContext<'_>,
    execution: &Execution,
) -> Option<AuditReport> {
    let AuditContext {
        pipeline,
        doc,
        block,
        inputs,
        golden,
    } = context;
    // Media is checked when produced (its format, size, length) and kept
    // on its artifact record; the D1–D5 text audit reads text only, and a
    // folder's binary files as a line each.
    let outputs: Vec<(&_, Option<std::borrow::Cow<'_, [u8]>>)> = block
        .outputs
        .artifacts
        .iter()
        .filter(|spec| !spec.format.is_media())
        .map(|spec| {
            let content = execution.artifacts.get(&spec.key);
            (
                spec,
                content.map(|bytes| factory_runtime::text_bytes(spec.format, bytes)),
            )
        })
        .collect();
    let artifacts = outputs
        .iter()
        .map(|(spec, content)| Artifact {
            key: &spec.key,
            path: &spec.path,
            format: spec.format.audit_format(),
            content: content.as_deref(),
        })
        .collect();
    let read: Vec<(&InputArtifact, std::borrow::Cow<'_, [u8]>)> = inputs
        .iter()
        .filter(|input| !input.format.is_media())
        .map(|input| {
            (
                input,
                factory_runtime::text_bytes(input.format, &input.content),
            )
        })
        .collect();
    let upstream = read
        .iter()
        .map(|(input, content)| Upstream {
            block: &input.block,
            key: &input.key,
            format: input.format.audit_format(),
            content,
        })
        .collect();
    let mut consumed_downstream = BTreeSet::new();
    if let Some(index) = pipeline.index_of(&block.id) {
        for &downstream in pipeline.downstream(index) {
            for dep in &pipeline.blocks()[downstream].inputs.depends {
                if dep.block == block.id {
                    consumed_downstream.insert(dep.key.as_str());
                }
            }
        }
    }
    let self_score = execution.metrics.get("self_score").and_then(Value::as_f64);
    let previous = doc
        .blocks
        .get(&block.id)
        .and_then(|state| state.latest_audit());
    factory_audit::audit(&AuditInput {
        block: &block.id,
        artifacts,
        upstream,
        golden: golden
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect(),
        consumed_downstream,
        subject: subject(pipeline, doc),
        self_score,
        previous,
    })
}
