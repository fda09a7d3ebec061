//! Memoized attempts on the engine's side (`factory_core::memo` holds the
//! rules): the key of an attempt about to start, and the attempt answered
//! from a memo — the remembered outputs, audited afresh in this run.

use std::collections::BTreeMap;
use std::path::Path;

use factory_core::memo::{self, InputHash, MemoInputs, MemoKey, Reused};
use factory_core::run::{AttemptReport, BlockState, RunDoc};
use factory_core::template::{Block, Runtime};
use factory_core::{Pipeline, transitions};
use factory_runtime::Execution;
use factory_runtime::llm::LlmSettings;
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
    /// The template's file; its folder holds what blocks read.
    pub template_path: Option<&'a Path>,
    pub llm: Option<&'a LlmSettings>,
    /// What the attempt is told besides its inputs, as the driver hands it
    /// over (computed once, so the key covers exactly what is sent).
    pub lens: Option<&'a factory_core::lens::Brief>,
    pub open_gaps: Option<&'a str>,
}

/// The attempt's memo key; `None` when the block is not memoized. The
/// template folder is read on a blocking thread.
pub(crate) async fn key(parts: &KeyParts<'_>) -> Option<MemoKey> {
    let KeyParts {
        pipeline,
        doc,
        block,
        state,
        inputs,
        golden,
        template_path,
        llm,
        lens,
        open_gaps,
    } = parts;
    if !memo::memoizable(block) {
        return None;
    }
    let files = {
        let (block, golden) = ((*block).clone(), (*golden).clone());
        let path = template_path.map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || files_read(&block, &golden, path.as_deref()))
            .await
            .ok()??
    };
    // An llm block's model as the provider is asked for it: an alias that
    // now points elsewhere is another model. Other runtimes use none.
    let model = block.runtime.calls_model().then(|| {
        let asked = transitions::effective_model(
            pipeline.template(),
            block,
            &doc.models,
            doc.default_model.as_deref(),
        );
        match llm {
            Some(settings) => {
                let (asked, provider, id) = if block.runtime == Runtime::Llm {
                    settings.target(asked)
                } else {
                    settings.media_target(asked, block.runtime)
                };
                match provider {
                    Some(provider) => format!("{provider}:{id}"),
                    None => asked,
                }
            }
            None => asked.unwrap_or_default().to_string(),
        }
    });
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
                path: &input.path,
                format: input.format,
            })
            .collect(),
        corrections: state.corrections.as_ref(),
        reply_note: state.reply_note.as_ref(),
        files,
        item: state.instance.as_ref().map(|i| &i.item),
        past_ratings: lens.and_then(|l| l.past.as_ref()),
        open_gaps: *open_gaps,
    }))
}

/// A command's folder bigger than this is not hashed for every attempt:
/// its blocks are not memoized.
const MAX_FOLDER_FILES: usize = 2_000;
const MAX_FOLDER_BYTES: u64 = 64 << 20;

/// Names of SQLite database files, left out of a folder's hash.
const SQLITE_FILES: &[&str] = &[
    ".db",
    ".db-wal",
    ".db-shm",
    ".db-journal",
    ".sqlite",
    ".sqlite3",
];

/// The template-folder files a block reads, by content hash: an `llm`
/// block's SKILL.md and golden examples (all the llm runtime reads); for a
/// `command` block, which is handed the folder (`FACTORY_TEMPLATE_DIR`) and
/// may read anything in it, every file there (symbolic links followed) but
/// the template itself (its block is in the key already), hidden ones and
/// SQLite databases (a store kept beside the template changes with every
/// commit). `None` when the folder is too big to hash: the block is then
/// not memoized.
fn files_read(
    block: &Block,
    golden: &BTreeMap<String, Vec<u8>>,
    template_path: Option<&Path>,
) -> Option<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for (key, bytes) in golden {
        files.insert(format!("golden:{key}"), memo::content_hash(bytes));
    }
    let Some(dir) = template_path.and_then(Path::parent) else {
        return Some(files);
    };
    if let Some(skill) = block.skill.as_deref() {
        let text = factory_runtime::llm::read_skill(dir, skill).unwrap_or_default();
        files.insert(
            format!("skill:{skill}"),
            memo::content_hash(text.as_bytes()),
        );
    }
    if block.runtime == Runtime::Command {
        files.extend(folder_files(dir, template_path)?);
    }
    Some(files)
}

/// Every regular file under `dir` (hidden entries and `skip` left out), by
/// path relative to `dir`; `None` past [`MAX_FOLDER_FILES`] or
/// [`MAX_FOLDER_BYTES`].
fn folder_files(dir: &Path, skip: Option<&Path>) -> Option<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let mut bytes_read = 0u64;
    let walk = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0 || !entry.file_name().to_string_lossy().starts_with('.')
        });
    let too_big = || {
        tracing::warn!(
            folder = %dir.display(),
            "the template folder is too big to hash for every attempt; its command blocks are not memoized"
        );
        None
    };
    for entry in walk.filter_map(std::result::Result::ok) {
        let name = entry.file_name().to_string_lossy();
        if !entry.file_type().is_file()
            || skip.is_some_and(|s| s == entry.path())
            || SQLITE_FILES.iter().any(|ext| name.ends_with(ext))
        {
            continue;
        }
        let size = entry.metadata().map(|m| m.len()).unwrap_or_default();
        if files.len() >= MAX_FOLDER_FILES || bytes_read + size > MAX_FOLDER_BYTES {
            return too_big();
        }
        let Ok(content) = std::fs::read(entry.path()) else {
            continue;
        };
        bytes_read += content.len() as u64;
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        files.insert(
            format!("file:{}", relative.display()),
            memo::content_hash(&content),
        );
    }
    Some(files)
}

/// The remembered attempt under `key`, unless the run or the block's pass
/// asked for fresh work, or this is an automatic retry. A store that cannot
/// answer is no hit: the block runs.
pub(crate) async fn look_up(
    store: &dyn Store,
    doc: &RunDoc,
    state: &BlockState,
    key: &MemoKey,
) -> Option<MemoHit> {
    // Only a pass's first attempt: an automatic retry follows an attempt
    // this pass did not accept (a threshold missed, an unusable reply),
    // which may have been this very memo.
    if doc.no_cache || state.fresh || state.retries_used > 0 {
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
