//! The gaps' IO ([`factory_core::gaps`] decides): the texts of a finished
//! attempt's artifacts, read before its commit for a block that finds gaps
//! or that open gaps concern, and a reviewer's decision on a gap.

use std::collections::BTreeMap;

use factory_core::Pipeline;
use factory_core::gaps::{self as core_gaps, GapStatus};
use factory_core::run::{AttemptOutcome, Event, RunDoc};
use factory_store::Store;

use crate::driver::Completion;
use crate::{Engine, Result};

/// Artifact texts by key of one finished attempt.
pub(crate) type Texts = BTreeMap<String, String>;

/// The "OPEN GAPS" section of `block`'s prompt: for an `llm` block (other
/// runtimes are not told of gaps) the open gaps that concern it.
pub(crate) fn prompt_section(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block: &factory_core::template::Block,
    block_id: &str,
) -> Option<String> {
    if block.runtime != factory_core::template::Runtime::Llm {
        return None;
    }
    core_gaps::prompt_section(&core_gaps::open_for(pipeline, doc, block_id))
}

/// For each completion whose gaps matter — its block declares
/// `outputs.gaps`, or open gaps concern it — the texts of its artifacts,
/// from the completion's own blobs or (a memoized attempt) the store.
pub(crate) async fn texts_for(
    store: &dyn Store,
    pipeline: &Pipeline,
    doc: &RunDoc,
    completions: &[Completion],
) -> BTreeMap<(String, u32), Texts> {
    let mut out = BTreeMap::new();
    for completion in completions {
        let Ok(report) = &completion.report else {
            continue;
        };
        if report.error.is_some() || completion.list.is_some() {
            continue;
        }
        let finds = pipeline
            .block(&completion.block)
            .is_some_and(|b| b.outputs.gaps.is_some());
        if !finds && core_gaps::open_for(pipeline, doc, &completion.block).is_empty() {
            continue;
        }
        let mut texts = Texts::new();
        // Gaps are reconciled against text: media says nothing a term can match.
        for (key, artifact) in report
            .artifacts
            .iter()
            .filter(|(_, a)| !a.format.is_media())
        {
            let bytes = match completion.blobs.iter().find(|b| b.hash == artifact.hash) {
                Some(blob) => Some(blob.content.clone()),
                None => store.get_blob(&artifact.hash).await.ok(),
            };
            if let Some(bytes) = bytes {
                texts.insert(
                    key.clone(),
                    factory_runtime::text_for_reader(artifact.format, &bytes),
                );
            }
        }
        out.insert((completion.block.clone(), completion.attempt), texts);
    }
    out
}

/// How long the gap check may take before the terms decide.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// `gap_check: "llm"`: a finished `llm` attempt's output, judged by `model`
/// against the open gaps that concern the block. None when the block does
/// not ask for it, no gap concerns it or no provider serves the model; a
/// failed call or a junk answer is kept as the problem (the terms decide).
pub(crate) async fn llm_checks(
    settings: Option<&factory_runtime::llm::LlmSettings>,
    model: Option<&str>,
    pipeline: &Pipeline,
    doc: &RunDoc,
    block: &factory_core::template::Block,
    block_id: &str,
    artifacts: &BTreeMap<String, Vec<u8>>,
) -> Option<core_gaps::GapChecks> {
    if block.runtime != factory_core::template::Runtime::Llm
        || factory_core::llm_options::parse(&block.inputs.config)
            .map(|o| o.gap_check)
            .unwrap_or_default()
            != factory_core::llm_options::GapCheckMode::Llm
    {
        return None;
    }
    // An instance addresses nothing for its group, and a source's gaps are
    // replaced by its own finding: neither is worth a call.
    if block_id.contains('[') || block.outputs.gaps.is_some() {
        return None;
    }
    let open = core_gaps::open_for(pipeline, doc, block_id);
    if open.is_empty() {
        return None;
    }
    let resolved = settings?.resolve(model).ok()?;
    let texts: Texts = artifacts
        .iter()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let (system, user, schema, cut) = core_gaps::check_ask(&open, &texts);
    let request = factory_llm::ChatRequest {
        model: resolved.model.clone(),
        system: vec![factory_llm::Part::cacheable(system)],
        user: vec![factory_llm::Part::new(user)],
        // About 80 tokens a verdict: many gaps must not cut the JSON short.
        max_tokens: (256 + 96 * open.len() as u32).min(8192),
        temperature: Some(0.0),
        response_format: factory_llm::ResponseFormat::JsonSchema {
            name: "gap_checks".to_string(),
            schema,
        },
        ..Default::default()
    };
    let mut checks = core_gaps::GapChecks {
        model: resolved.model.clone(),
        verdicts: BTreeMap::new(),
        problem: None,
        cut,
    };
    match resolved.client.complete(&request, CHECK_TIMEOUT).await {
        Ok(reply) => {
            checks.model = reply.model.clone();
            match core_gaps::parse_checks(&reply.text, &open) {
                Ok((verdicts, skipped)) => {
                    checks.verdicts = verdicts;
                    let unjudged = open.len() - checks.verdicts.len();
                    if skipped > 0 || unjudged > 0 {
                        checks.problem = Some(format!(
                            "{skipped} entr{} of the answer unusable, {unjudged} gap(s) not judged: the terms decide those",
                            if skipped == 1 { "y" } else { "ies" }
                        ));
                    }
                }
                Err(problem) => checks.problem = Some(format!("{problem}: the terms decide")),
            }
        }
        Err(error) => {
            checks.problem = Some(format!("the gap check failed ({error}): the terms decide"));
        }
    }
    Some(checks)
}

/// The gap events of an attempt whose finish is `finished`: none unless it
/// succeeded; then a source's gaps, or the open gaps its artifacts now cover.
pub(crate) fn after_finish(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block: &str,
    attempt: u32,
    finished: &[Event],
    texts: Option<&Texts>,
) -> Vec<Event> {
    let checks = finished.iter().find_map(|e| match e {
        Event::AttemptFinished {
            block: b,
            attempt: a,
            outcome: AttemptOutcome::Succeeded,
            report,
            ..
        } if b == block && *a == attempt => Some(report.gap_checks.as_deref()),
        _ => None,
    });
    let succeeded = checks.is_some();
    let checks = checks.flatten();
    let Some(texts) = texts.filter(|_| succeeded) else {
        return Vec::new();
    };
    let source_key = pipeline.block(block).and_then(|b| b.outputs.gaps.clone());
    match source_key {
        Some(key) => match texts.get(&key).map(|t| core_gaps::parse(t)) {
            Some(Ok((gaps, _))) => vec![core_gaps::found_event(doc, block, attempt, gaps)],
            // The attempt checked the artifact before it succeeded; only a
            // stored artifact that cannot be read back lands here.
            _ => {
                tracing::warn!(
                    block,
                    attempt,
                    "the gaps artifact could not be read back; the run keeps its earlier gaps"
                );
                Vec::new()
            }
        },
        // Only an `llm` block is told of gaps, so only its output answers one.
        None if pipeline
            .block(block)
            .is_some_and(|b| b.runtime == factory_core::template::Runtime::Llm) =>
        {
            core_gaps::reconcile(pipeline, doc, block, texts, checks)
        }
        None => Vec::new(),
    }
}

/// A block that declares `outputs.gaps` must write gaps the run can read:
/// otherwise its attempt fails with why.
pub(crate) fn check_source(
    block: &factory_core::template::Block,
    artifacts: &BTreeMap<String, Vec<u8>>,
) -> std::result::Result<(), String> {
    let Some(key) = &block.outputs.gaps else {
        return Ok(());
    };
    let Some(bytes) = artifacts.get(key) else {
        return Ok(());
    };
    core_gaps::parse(&String::from_utf8_lossy(bytes))
        .map(|_| ())
        .map_err(|e| {
            format!(
                "block `{}`: `outputs.gaps` names `{key}`, but {e}",
                block.id
            )
        })
}

impl Engine {
    /// A reviewer accepts a gap (`GapStatus::Accepted`) or reopens it
    /// (`GapStatus::Open`), with a note; recorded as a `gap_changed` event.
    pub async fn decide_gap(
        &self,
        actor: &str,
        run_id: &str,
        gap: &str,
        status: GapStatus,
        note: &str,
    ) -> Result<RunDoc> {
        let mut handle = self.open(run_id).await?;
        let records = handle
            .apply(actor, |_, doc, _| {
                Ok(vec![core_gaps::decide(doc, gap, status, actor, note)?])
            })
            .await?;
        self.notify(&records, &handle);
        Ok(handle.doc().clone())
    }
}
