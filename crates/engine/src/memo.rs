//! Memoized attempts on the engine's side (`factory_core::memo` holds the
//! rules): the key of an attempt about to start, and the attempt answered
//! from a memo — the remembered outputs, audited afresh in this run.

use std::collections::BTreeMap;
use std::path::Path;

use factory_core::memo::{self, InputHash, MemoInputs, MemoKey, Reused};
use factory_core::run::{AttemptReport, BlockState, RunDoc};
use factory_core::template::{Block, Runtime};
use factory_core::{Pipeline, transitions};
use factory_runtime::llm::LlmSettings;
use factory_runtime::Execution;
use factory_store::{MemoHit, Store};

use crate::inputs::InputRef;

/// What an attempt about to start reads, for its memo key.
pub(crate) struct KeyParts<'a> {
    pub pipeline: &'a Pipeline,
    pub doc: &'a RunDoc,
    pub block: &'a Block,
    pub state: &'a BlockState,
    pub inputs: &'a [InputRef],
    pub golden: &'a BTreeMap<String, Vec<u8>>,
    pub template_dir: Option<&'a Path>,
    pub llm: Option<&'a LlmSettings>,
}

/// The attempt's memo key; `None` when the block is not memoized.
pub(crate) fn key(parts: &KeyParts<'_>) -> Option<MemoKey> {
    let KeyParts {
        pipeline,
        doc,
        block,
        state,
        inputs,
        golden,
        template_dir,
        llm,
    } = parts;
    if !memo::memoizable(block) {
        return None;
    }
    let asked = transitions::effective_model(
        pipeline.template(),
        block,
        &doc.models,
        doc.default_model.as_deref(),
    );
    // An llm block's model as the provider is asked for it: an alias that
    // now points elsewhere is another model.
    let model = match (block.runtime, llm) {
        (Runtime::Llm, Some(settings)) => {
            let (asked, provider, id) = settings.target(asked);
            Some(match provider {
                Some(provider) => format!("{provider}:{id}"),
                None => asked,
            })
        }
        _ => asked.map(str::to_string),
    };
    Some(memo::memo_key(&MemoInputs {
        template: pipeline.template(),
        block,
        model: model.as_deref(),
        sampling: &doc.sampling,
        params: &doc.params,
        inputs: inputs
            .iter()
            .map(|input| InputHash {
                block: &input.block,
                key: &input.key,
                hash: &input.hash,
            })
            .collect(),
        corrections: state.corrections.as_ref(),
        reply_note: state.reply_note.as_ref(),
        files: files_read(block, golden, *template_dir),
    }))
}

/// The template-folder files a block reads, by content hash: its SKILL.md,
/// its golden examples, and each file its argv names through
/// `${FACTORY_TEMPLATE_DIR}`. (A script's own imports are not followed: a
/// block whose scripts read other files should say `execution.cache: false`
/// or name them in its argv.)
fn files_read(
    block: &Block,
    golden: &BTreeMap<String, Vec<u8>>,
    template_dir: Option<&Path>,
) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for (key, bytes) in golden {
        files.insert(format!("golden:{key}"), memo::content_hash(bytes));
    }
    let Some(dir) = template_dir else {
        return files;
    };
    if let Some(skill) = block.skill.as_deref() {
        let text = factory_runtime::llm::read_skill(dir, skill).unwrap_or_default();
        files.insert(
            format!("skill:{skill}"),
            memo::content_hash(text.as_bytes()),
        );
    }
    let argv = block
        .inputs
        .config
        .get("command")
        .and_then(serde_json::Value::as_array);
    for arg in argv.into_iter().flatten().filter_map(serde_json::Value::as_str) {
        if !arg.contains("${FACTORY_TEMPLATE_DIR}") {
            continue;
        }
        let path = arg.replace("${FACTORY_TEMPLATE_DIR}", &dir.to_string_lossy());
        if let Ok(bytes) = std::fs::read(&path) {
            files.insert(format!("argv:{arg}"), memo::content_hash(&bytes));
        }
    }
    files
}

/// The remembered attempt under `key`, unless the run or the block's pass
/// asked for fresh work. A store that cannot answer is no hit: the block
/// runs.
pub(crate) async fn look_up(
    store: &dyn Store,
    doc: &RunDoc,
    state: &BlockState,
    key: &MemoKey,
) -> Option<MemoHit> {
    if doc.no_cache || state.fresh {
        return None;
    }
    match store.memo(key).await {
        Ok(hit) => hit,
        Err(error) => {
            tracing::warn!(%error, %key, "cannot look up a memo; running the block");
            None
        }
    }
}

/// The remembered outputs as an execution, read back from the store, so
/// this run's audit judges them like any attempt's.
pub(crate) async fn remembered_execution(
    store: &dyn Store,
    report: &AttemptReport,
) -> Result<Execution, String> {
    let mut artifacts = BTreeMap::new();
    for (key, artifact) in &report.artifacts {
        let bytes = store
            .get_blob(&artifact.hash)
            .await
            .map_err(|error| format!("cannot read remembered artifact `{key}`: {error}"))?;
        artifacts.insert(key.clone(), bytes);
    }
    Ok(Execution {
        artifacts,
        metrics: report.metrics.clone(),
        exit_code: report.exit_code,
        ..Execution::default()
    })
}

/// The report of an attempt answered from `hit`, with this run's audit.
pub(crate) fn reused(
    hit: MemoHit,
    key: MemoKey,
    audit: Option<Box<factory_audit::AuditReport>>,
) -> AttemptReport {
    let from = Reused {
        run_id: hit.run_id,
        block: hit.block_id,
        attempt: hit.attempt,
    };
    let mut report = memo::reused_report(hit.report, key, from);
    report.audit = audit;
    report
}
