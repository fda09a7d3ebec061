//! Memoized attempts: when everything that determines a block's output is
//! the same as for an earlier attempt that was accepted (its block reached
//! `done` in some run of the same store), that attempt's artifacts stand in
//! for a new one. No LLM call, no subprocess, no cost; the new attempt says
//! where its outputs came from ([`Reused`]).
//!
//! The key ([`memo_key`]) is a SHA-256 over: the template's id and its
//! corrections instruction; the block's definition without what only
//! places or governs it (`layer`, `timeout`, `trigger`, `execution`,
//! `audit`); for an `llm` block the model it uses in this run and the run's
//! sampling; the run's params; the upstream artifacts and uploaded files it
//! reads (content hash, path, format); the corrections and reply note it is
//! given; and the contents of the template-folder files it reads (an `llm`
//! block's SKILL.md and golden examples; for a `command` block, which is
//! handed the folder, every file in it). The run id and the attempt number are not part
//! of it: a block whose output depends on them, or on anything else outside
//! the key (the clock, the network, files elsewhere), must say
//! `execution.cache: false`.
//!
//! Only an attempt whose block reached `done` is remembered ([`remembered`]):
//! one a person rejected, or a threshold sent back, never stands in for
//! another. And only the first attempt of a block's pass may be answered
//! from a memo, unless the run says `no_cache` or a person asked for the
//! pass (a retry, a rejection): see `BlockState::fresh`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::run::{AttemptReport, Corrections, EventRecord, ReplyNote, RunDoc};
use crate::template::{Block, Runtime, Template};

/// Bumped when what goes into a key changes, so old memos stop matching.
const KEY_VERSION: &str = "memo-1";

/// Block fields that do not change what the block produces (`name` and
/// `description` do: an llm prompt names the block, and without a skill the
/// description is its instruction).
const NOT_IN_KEY: &[&str] = &["layer", "timeout", "trigger", "execution", "audit"];

/// A memo's address: lowercase hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoKey(String);

impl MemoKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A key read back from the store (not checked: it is only compared).
    pub fn from_stored(text: String) -> MemoKey {
        MemoKey(text)
    }
}

impl fmt::Display for MemoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a reused attempt's outputs came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reused {
    pub run_id: String,
    pub block: String,
    pub attempt: u32,
}

/// Whether a block's attempts may be answered from a memo: its own
/// `execution.cache`, else yes for `llm`, `image`, `speech` and `command`,
/// no for `http`;
/// never for `builtin` (validation refuses `cache: true` there).
pub fn memoizable(block: &Block) -> bool {
    match (block.runtime, block.execution.cache) {
        (Runtime::Builtin, _) => false,
        (_, Some(explicit)) => explicit,
        (runtime, None) => matches!(
            runtime,
            Runtime::Llm | Runtime::Image | Runtime::Speech | Runtime::Command
        ),
    }
}

/// One input artifact an attempt reads: its upstream block (or `uploads`),
/// key, content hash, and the path and format it is handed over with (a
/// command reads it under its path; a prompt labels it by format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputHash<'a> {
    pub block: &'a str,
    pub key: &'a str,
    pub hash: &'a str,
    pub path: &'a str,
    pub format: crate::template::ArtifactFormat,
}

/// Everything that determines a block's output, as the engine gathers it
/// before an attempt.
#[derive(Debug, Clone)]
pub struct MemoInputs<'a> {
    pub template: &'a Template,
    pub block: &'a Block,
    /// The model an `llm` block uses (None for other runtimes).
    pub model: Option<&'a str>,
    /// The run's sampling (only `llm` blocks read it).
    pub sampling: &'a BTreeMap<String, Value>,
    pub params: &'a BTreeMap<String, Value>,
    pub inputs: Vec<InputHash<'a>>,
    pub corrections: Option<&'a Corrections>,
    pub reply_note: Option<&'a ReplyNote>,
    /// Template-folder files the block reads: relative path → content hash.
    pub files: BTreeMap<String, String>,
    /// An instance of a fan-out block: its item.
    pub item: Option<&'a Value>,
    /// A lens block with a feedback loop: the past ratings its prompt (or
    /// `FACTORY_FEEDBACK`) carries.
    pub past_ratings: Option<&'a crate::lens::PastRatings>,
    /// The "OPEN GAPS" section an `llm` block's prompt carries.
    pub open_gaps: Option<&'a str>,
}

/// The memo key of an attempt with these inputs.
pub fn memo_key(inputs: &MemoInputs<'_>) -> MemoKey {
    let mut block = serde_json::to_value(inputs.block).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut block {
        for field in NOT_IN_KEY {
            fields.remove(*field);
        }
    }
    // What of the corrections reaches the prompt or the process: not who
    // gave them, nor their version label.
    let corrections = inputs.corrections.map(|c| {
        json!({
            "instruction": c.instruction,
            "items": c.items.iter().map(|item| json!([item.finding, item.correction, item.priority])).collect::<Vec<_>>(),
        })
    });
    let mut material = json!({
        "v": KEY_VERSION,
        "template": inputs.template.id,
        "corrections_instruction": inputs.template.corrections_instruction(),
        "block": block,
        "model": inputs.model,
        "sampling": (inputs.block.runtime == Runtime::Llm).then_some(inputs.sampling),
        "params": inputs.params,
        "inputs": inputs.inputs,
        "corrections": corrections,
        "reply_note": inputs.reply_note,
        "files": inputs.files,
    });
    // Only where there is one, so keys made before fan-out existed hold.
    if let (Some(item), Value::Object(fields)) = (inputs.item, &mut material) {
        fields.insert("item".to_string(), item.clone());
    }
    if let (Some(past), Value::Object(fields)) = (inputs.past_ratings, &mut material) {
        fields.insert(
            "past_ratings".to_string(),
            serde_json::to_value(past).unwrap_or(Value::Null),
        );
    }
    if let (Some(gaps), Value::Object(fields)) = (inputs.open_gaps, &mut material) {
        fields.insert("open_gaps".to_string(), Value::from(gaps));
    }
    let mut hasher = Sha256::new();
    hasher.update(canonical(material).to_string().as_bytes());
    MemoKey(hex::encode(hasher.finalize()))
}

/// `value` with every object's keys in sorted order, so the same content
/// always serialises to the same text (objects otherwise keep the order
/// they were written or edited in).
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(fields) => {
            let sorted: BTreeMap<String, Value> = fields
                .into_iter()
                .map(|(key, value)| (key, canonical(value)))
                .collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// SHA-256 of `bytes`, lowercase hex (a file's entry in [`MemoInputs::files`]).
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An accepted attempt to remember, found in a commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Memo<'a> {
    pub key: &'a MemoKey,
    pub block: &'a str,
    pub attempt: u32,
    pub report: &'a AttemptReport,
}

/// The attempts `records` (applied to reach `doc`) accept: for each block
/// they make `done`, its last successful attempt, when that attempt ran
/// with a memo key and was not itself reused.
pub fn remembered<'a>(doc: &'a RunDoc, records: &[EventRecord]) -> Vec<Memo<'a>> {
    let mut out = Vec::new();
    for record in records {
        let Some(block) = record.event.done_block() else {
            continue;
        };
        let Some((id, state)) = doc.blocks.get_key_value(block) else {
            continue;
        };
        let Some(attempt) = state.last_success() else {
            continue;
        };
        let Some(report) = attempt.report.as_ref() else {
            continue;
        };
        if let (Some(key), None) = (&report.memo_key, &report.reused) {
            out.push(Memo {
                key,
                block: id,
                attempt: attempt.n,
                report,
            });
        }
    }
    out
}

/// The report a memo is stored with: without its audit (a reused attempt
/// is audited afresh, in its own run) and without the provider call (it is
/// not made again).
pub fn stored_report(report: &AttemptReport) -> AttemptReport {
    AttemptReport {
        audit: None,
        ..report.clone()
    }
}

/// The report of an attempt answered from a memo: the remembered outputs,
/// no provider call, and where they came from.
pub fn reused_report(remembered: AttemptReport, key: MemoKey, from: Reused) -> AttemptReport {
    AttemptReport {
        llm: None,
        audit: None,
        memo_key: Some(key),
        reused: Some(from),
        ..remembered
    }
}

#[cfg(test)]
mod tests;
