//! Gaps as first-class items of a run (SPEC C5's "open gaps"; seed 003's
//! Gaps panel). A block that declares `outputs.gaps` (clone-factory's
//! gap-analyzer) opens one gap per entry of that JSON artifact's `gaps`
//! array when its attempt succeeds. Each later block the gap concerns —
//! one downstream of the gap's source that reads the gapped artifact, or
//! the source's gaps artifact itself — sees the open ones in its prompt
//! ("OPEN GAPS"); when such a block completes, the gap is checked against
//! its new artifacts and marked addressed when they now cover the gap's
//! terms, with the reason. A reviewer may accept a gap (it stays a known
//! hole, consciously) or reopen it.
//!
//! Everything here is pure: the engine calls [`found`] and [`reconcile`]
//! with the attempt's artifact texts and commits the events they return in
//! the attempt's own transaction; [`decide`] turns a person's decision into
//! an event.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Pipeline;
use crate::run::{Event, Millis, RunDoc};

/// Where a gap stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GapStatus {
    #[default]
    Open,
    /// A later block's artifacts now cover it.
    Addressed,
    /// A person decided to live with it.
    Accepted,
}

impl GapStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GapStatus::Open => "open",
            GapStatus::Addressed => "addressed",
            GapStatus::Accepted => "accepted",
        }
    }
}

/// One gap as the source block reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The source's id for it (`g01`), unique within the run.
    pub id: String,
    pub severity: String,
    /// What is wrong, with the values involved.
    pub description: String,
    /// The block whose output has the hole (`skill_target`), if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_block: Option<String>,
    /// The artifact key with the hole (`offers-json`), if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_artifact: Option<String>,
    /// A JSON path inside it, if named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What to do about it (the resolution's action, or the source's
    /// guidance for the compiler).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resolution: String,
}

/// A gap in the run: what was found and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapState {
    pub gap: Gap,
    /// The block that found it and the attempt.
    pub source: String,
    pub attempt: u32,
    pub status: GapStatus,
    /// Addressed: the block whose artifacts cover it; accepted or reopened:
    /// who decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why: the covered terms, or the person's note.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default)]
    pub at: Millis,
}

/// The gaps of a source artifact's JSON: the `gaps` array (or a bare
/// array), each entry with a string `id`; entries without one, and ids seen
/// before, are skipped and counted in the second value.
pub fn parse(text: &str) -> Result<(Vec<Gap>, usize), String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the gaps artifact is not JSON: {e}"))?;
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(map) => match map.get("gaps") {
            Some(Value::Array(list)) => list,
            _ => return Err("the gaps artifact has no `gaps` array".to_string()),
        },
        _ => return Err("the gaps artifact is neither an object nor an array".to_string()),
    };
    let guidance: BTreeMap<&str, &str> = value
        .get("compiler_guidance")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|g| Some((g.get("gap_id")?.as_str()?, g.get("instruction")?.as_str()?)))
        .collect();
    let text_of = |entry: &Value, keys: &[&str]| -> String {
        keys.iter()
            .filter_map(|k| entry.get(*k).and_then(Value::as_str))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut seen = BTreeSet::new();
    let mut gaps = Vec::new();
    let mut skipped = 0;
    for entry in list {
        if gaps.len() == MAX_GAPS {
            skipped += 1;
            continue;
        }
        let Some(id) = entry
            .get("id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.len() <= 64)
        else {
            skipped += 1;
            continue;
        };
        if !seen.insert(id.to_string()) {
            skipped += 1;
            continue;
        }
        let mut resolution = entry
            .get("resolution")
            .map(|r| match r {
                Value::String(s) => s.clone(),
                other => text_of(other, &["action", "question_for_expert"]),
            })
            .unwrap_or_default();
        if let Some(instruction) = guidance.get(id) {
            if !resolution.is_empty() {
                resolution.push(' ');
            }
            resolution.push_str(instruction);
        }
        let optional = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| capped(s, 200))
        };
        gaps.push(Gap {
            id: id.to_string(),
            severity: optional("severity").unwrap_or_else(|| "medium".to_string()),
            description: capped(
                &text_of(entry, &["finding", "description", "impact_on_clone"]),
                MAX_TEXT,
            ),
            target_block: optional("skill_target").or_else(|| optional("target_block")),
            target_artifact: optional("artifact").or_else(|| optional("target_artifact")),
            path: optional("path"),
            resolution: capped(&resolution, MAX_TEXT),
        });
    }
    Ok((gaps, skipped))
}

/// Gaps one source may open: the rest are counted as skipped. They live in
/// the run's header and in prompts, so there are not unboundedly many.
pub const MAX_GAPS: usize = 200;
/// Characters kept of a gap's description and resolution.
const MAX_TEXT: usize = 2_000;

fn capped(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The `GapsFound` event of a source's successful attempt, with the ids the
/// run will know them by: a gap keeps its own id unless another source has
/// it, then `<source>/<id>` (and a number after that if even that is taken),
/// so the event carries every id and replay needs nothing else.
pub fn found_event(doc: &RunDoc, source: &str, attempt: u32, gaps: Vec<Gap>) -> Event {
    let taken = |id: &str, chosen: &BTreeSet<String>| {
        chosen.contains(id) || doc.gaps.get(id).is_some_and(|g| g.source != source)
    };
    let mut chosen = BTreeSet::new();
    let gaps = gaps
        .into_iter()
        .map(|gap| {
            let mut id = gap.id.clone();
            if taken(&id, &chosen) {
                id = format!("{source}/{}", gap.id);
                let mut n = 2;
                while taken(&id, &chosen) {
                    id = format!("{source}/{}-{n}", gap.id);
                    n += 1;
                }
            }
            chosen.insert(id.clone());
            Gap { id, ..gap }
        })
        .collect();
    Event::GapsFound {
        block: source.to_string(),
        attempt,
        gaps,
    }
}

/// Whether `gap` (found by `source`) concerns `block`: a block downstream
/// of the source that reads the gaps artifact or the artifact the gap is
/// about. Only downstream blocks: one running beside the source would see
/// the gaps or not by timing. The source itself and the block the hole is
/// in are not concerned (the source re-running replaces its gaps; the
/// extractor is upstream).
pub fn concerns(pipeline: &Pipeline, source: &str, gap: &Gap, block: &str) -> bool {
    let group = crate::run::group_id(block);
    if group == source {
        return false;
    }
    let (Some(spec), Some(source_at)) = (pipeline.block(group), pipeline.index_of(source)) else {
        return false;
    };
    let Some(at) = pipeline.index_of(group) else {
        return false;
    };
    if !pipeline.descendants(source_at).contains(&at) {
        return false;
    }
    let gaps_key = pipeline
        .block(source)
        .and_then(|s| s.outputs.gaps.as_deref());
    spec.inputs.depends.iter().any(|d| {
        (d.block == source && Some(d.key.as_str()) == gaps_key)
            || (Some(d.block.as_str()) == gap.target_block.as_deref()
                && Some(d.key.as_str()) == gap.target_artifact.as_deref())
    })
}

/// The run's gaps that `block` should see: open ones that concern it, most
/// severe first.
pub fn open_for<'a>(pipeline: &Pipeline, doc: &'a RunDoc, block: &str) -> Vec<&'a GapState> {
    let mut open: Vec<&GapState> = doc
        .gaps
        .values()
        .filter(|g| g.status == GapStatus::Open)
        .filter(|g| concerns(pipeline, &g.source, &g.gap, block))
        .collect();
    open.sort_by_key(|g| (severity_rank(&g.gap.severity), g.gap.id.clone()));
    open
}

/// A severity's order: critical first, unknown ones last.
pub fn severity_rank(severity: &str) -> u8 {
    match severity {
        "critical" => 0,
        "high" => 1,
        "medium" => 2,
        "low" => 3,
        _ => 4,
    }
}

/// The prompt section listing open gaps, or None when there are none.
pub fn prompt_section(open: &[&GapState]) -> Option<String> {
    if open.is_empty() {
        return None;
    }
    let mut text = String::from(
        "## OPEN GAPS\nThese gaps were found upstream and are still open. Where your output can close one, close it (say what the clone must do or must not claim); never paper over one with invented facts.\n",
    );
    for g in open {
        let gap = &g.gap;
        let _ = write!(text, "\n- {} ({})", gap.id, gap.severity);
        if let Some(artifact) = &gap.target_artifact {
            let _ = write!(text, " in {}", artifact);
            if let Some(path) = &gap.path {
                let _ = write!(text, " at {path}");
            }
        }
        let _ = write!(text, ": {}", gap.description);
        if !gap.resolution.is_empty() {
            let _ = write!(text, "\n  What to do: {}", gap.resolution);
        }
    }
    text.push('\n');
    Some(text)
}

/// Words too common in gap findings to show coverage.
const STOP: &[&str] = &[
    "about",
    "above",
    "after",
    "again",
    "their",
    "there",
    "these",
    "those",
    "which",
    "while",
    "would",
    "should",
    "could",
    "where",
    "other",
    "every",
    "being",
    "before",
    "between",
    "without",
    "within",
    "under",
    "never",
    "always",
    "because",
    "clone",
    "expert",
    "block",
    "missing",
    "found",
    "gaps",
    "value",
    "values",
    "field",
    "array",
    "string",
    "object",
    "listed",
    "states",
    "state",
    "artifact",
    "extraction",
    "thin",
    "entry",
    "entries",
];

/// The distinctive terms of a gap: words of five letters or more and
/// numbers of two digits or more from its description and resolution,
/// lower-cased, without common words.
pub fn terms(gap: &Gap) -> BTreeSet<String> {
    words(&format!("{} {}", gap.description, gap.resolution))
        .into_iter()
        .filter(|w| {
            let digits = w.chars().filter(char::is_ascii_digit).count();
            (digits >= 2 && digits == w.len())
                || (w.chars().count() >= 5 && digits == 0 && !STOP.contains(&w.as_str()))
        })
        .collect()
}

/// The lower-cased words of a text (letters and digits; `$450` is `450`),
/// so a term matches a whole word, not part of one.
pub(crate) fn words(text: &str) -> BTreeSet<String> {
    word_sequence(text).into_iter().collect()
}

/// After `block` is reset or rejected: the gaps its output (or an
/// instance's) addressed are open again, since that output no longer
/// stands.
pub(crate) fn reopen_addressed_by(gaps: &mut BTreeMap<String, GapState>, block: &str, at: Millis) {
    for gap in gaps.values_mut() {
        let by_it = gap
            .by
            .as_deref()
            .is_some_and(|by| by == block || crate::run::group_id(by) == block);
        if gap.status == GapStatus::Addressed && by_it {
            gap.status = GapStatus::Open;
            gap.reason =
                format!("{block} was reset or rejected; addressed again only by its next output");
            gap.by = None;
            gap.at = at;
        }
    }
}

/// How much of its terms an artifact must carry for a gap to count as
/// addressed by it.
pub const COVERAGE: f64 = 0.6;

/// A model's judgement of whether one output addresses one gap (an `llm`
/// block with `inputs.config.gap_check: "llm"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapCheck {
    pub addressed: bool,
    pub reason: String,
}

/// The model's judgements of an attempt's output, kept in its report; they
/// decide the gaps they name, the terms heuristic the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GapChecks {
    pub model: String,
    #[serde(default)]
    pub verdicts: BTreeMap<String, GapCheck>,
    /// Why the model's answer was not used, wholly or for some gaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// An artifact was longer than the check shows
    /// ([`CHECK_ARTIFACT_LIMIT`]): a "not addressed" is left to the terms.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut: bool,
}

/// The reason the gap check's instructions show as the answer's shape; a
/// model that returns it verbatim (SmolLM2-135M did) has judged nothing.
pub const REASON_PLACEHOLDER: &str = "one sentence naming where the output acts on it";

/// Characters of each artifact shown to the gap check, at most.
pub const CHECK_ARTIFACT_LIMIT: usize = 12 * 1024;

/// The gap check's request: the open gaps and the output's artifacts
/// (`texts`; one longer than [`CHECK_ARTIFACT_LIMIT`] shows its beginning
/// and its end, where a prompt's "Known Gaps" section tends to be), with the
/// answer's JSON schema. `(system, user, schema, cut)`.
pub fn check_ask(
    open: &[&GapState],
    texts: &BTreeMap<String, String>,
) -> (String, String, Value, bool) {
    let system = "You check whether a pipeline block's output addresses known gaps. A gap is \
addressed only when the output acts on it — states the missing fact, follows the resolution, or \
tells the reader what not to claim. Repeating or paraphrasing the gap's description is not \
addressing it. Answer with JSON only: {\"gaps\": [{\"id\": \"g01\", \"addressed\": true, \
\"reason\": \"{REASON_PLACEHOLDER}\"}]}, one entry per gap."
        .replace("{REASON_PLACEHOLDER}", REASON_PLACEHOLDER);
    let mut user = prompt_section(open).unwrap_or_default();
    user.push_str("\n## OUTPUT\n");
    let mut cut = false;
    for (key, text) in texts {
        if text.len() <= CHECK_ARTIFACT_LIMIT {
            let _ = write!(user, "\n=== {key} ===\n{text}\n");
            continue;
        }
        cut = true;
        let mut head = CHECK_ARTIFACT_LIMIT / 2;
        while !text.is_char_boundary(head) {
            head -= 1;
        }
        let mut tail = text.len() - CHECK_ARTIFACT_LIMIT / 2;
        while !text.is_char_boundary(tail) {
            tail += 1;
        }
        let _ = write!(
            user,
            "\n=== {key} (its beginning and its end; {} bytes left out) ===\n{}\n[… cut …]\n{}\n",
            tail - head,
            &text[..head],
            &text[tail..]
        );
    }
    let ids: Vec<&str> = open.iter().map(|g| g.gap.id.as_str()).collect();
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"gaps": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "enum": ids},
                "addressed": {"type": "boolean"},
                "reason": {"type": "string"},
            },
            "required": ["id", "addressed", "reason"],
        }}},
        "required": ["gaps"],
    });
    (system, user, schema, cut)
}

/// The verdicts of a gap check's `answer` for the `open` gaps it was asked
/// about; an entry naming another gap, repeating one, without a reason or
/// with the instructions' placeholder as its reason is left out (the
/// heuristic decides that gap).
pub fn parse_checks(
    answer: &str,
    open: &[&GapState],
) -> Result<(BTreeMap<String, GapCheck>, usize), String> {
    let list = crate::answer::array_in(answer, "gaps")?;
    let mut verdicts = BTreeMap::new();
    let mut skipped = 0;
    for entry in &list {
        let id = entry.get("id").and_then(Value::as_str);
        let addressed = entry.get("addressed").and_then(Value::as_bool);
        let reason = entry
            .get("reason")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|r| {
                let bare = r
                    .trim_end_matches(|c: char| c.is_ascii_punctuation())
                    .trim();
                !bare.is_empty() && !bare.eq_ignore_ascii_case(REASON_PLACEHOLDER)
            });
        match (id, addressed, reason) {
            (Some(id), Some(addressed), Some(reason))
                if open.iter().any(|g| g.gap.id == id) && !verdicts.contains_key(id) =>
            {
                let reason: String = reason.chars().take(500).collect();
                verdicts.insert(id.to_string(), GapCheck { addressed, reason });
            }
            _ => skipped += 1,
        }
    }
    Ok((verdicts, skipped))
}

/// Consecutive words of a gap's finding that, found in an artifact, make
/// it an echo of the gap rather than an answer to it.
pub const ECHO_WORDS: usize = 8;

/// The lower-cased words of a text in order ([`words`] without the set).
fn word_sequence(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The words of `text` that are not part of an echo of `finding`: a run of
/// [`ECHO_WORDS`] consecutive words of the finding (all of it when shorter,
/// from five words) repeated in the text. A model that copies the OPEN GAPS
/// section into its output has not addressed anything by the copy —
/// measured on SmolLM2-135M (`scripts/real-llm.sh`): a sales pitch that
/// restated the gap's finding covered 7 of its 7 terms — but an output that
/// quotes the finding and then acts on it keeps what it says beyond the
/// quote. Quoting the resolution (what to do) is never an echo.
pub fn unechoed_words(finding: &str, text: &str) -> BTreeSet<String> {
    unechoed(finding, &word_sequence(text))
}

/// [`unechoed_words`] of a text already split into its word sequence.
fn unechoed(finding: &str, sequence: &[String]) -> BTreeSet<String> {
    let finding = word_sequence(finding);
    let n = ECHO_WORDS.min(finding.len());
    let mut echoed = vec![false; sequence.len()];
    if finding.len() >= 5 {
        let windows: BTreeSet<&[String]> = finding.windows(n).collect();
        for (at, window) in sequence.windows(n).enumerate() {
            if windows.contains(window) {
                echoed[at..at + n].iter_mut().for_each(|e| *e = true);
            }
        }
    }
    sequence
        .iter()
        .zip(echoed)
        .filter(|(_, echoed)| !echoed)
        .map(|(word, _)| word.clone())
        .collect()
}

/// True when `text` holds an echo of `finding` ([`unechoed_words`]).
pub fn echoes(finding: &str, text: &str) -> bool {
    unechoed_words(finding, text) != words(text)
}

/// Open gaps that concern `block` and that its new artifacts (`texts`:
/// artifact key → text) now cover: one `GapChanged` each, naming where and
/// which terms, counted on what each artifact says beyond echoes of the
/// gap's finding ([`unechoed_words`]). A gap the model checked (`checks`)
/// is decided by its verdict instead — "addressed" only when some artifact
/// is more than an echo (still carries one of the gap's terms), "not
/// addressed" only when the model saw the artifacts whole (a cut one leaves
/// the gap to the terms).
pub fn reconcile(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block: &str,
    texts: &BTreeMap<String, String>,
    checks: Option<&GapChecks>,
) -> Vec<Event> {
    // A fan-out instance does not address a gap for its whole group (its
    // siblings' prompts would then depend on which finished first).
    if block.contains('[') {
        return Vec::new();
    }
    // Each artifact split once: its words in order, and as a set.
    let artifacts: Vec<(&String, Vec<String>, BTreeSet<String>)> = texts
        .iter()
        .map(|(key, text)| {
            let sequence = word_sequence(text);
            let whole = sequence.iter().cloned().collect();
            (key, sequence, whole)
        })
        .collect();
    let mut events = Vec::new();
    for state in open_for(pipeline, doc, block) {
        let terms = terms(&state.gap);
        let words: Vec<(&String, BTreeSet<String>, &BTreeSet<String>)> = artifacts
            .iter()
            .map(|(key, sequence, whole)| (*key, unechoed(&state.gap.description, sequence), whole))
            .collect();
        if let Some((checks, verdict)) =
            checks.and_then(|c| Some((c, c.verdicts.get(&state.gap.id)?)))
        {
            let more_than_an_echo = words
                .iter()
                .any(|(_, kept, _)| terms.iter().any(|t| kept.contains(t)));
            match verdict.addressed {
                true if more_than_an_echo => {
                    events.push(Event::GapChanged {
                        id: state.gap.id.clone(),
                        status: GapStatus::Addressed,
                        by: block.to_string(),
                        reason: format!(
                            "{block}: {} judged it addressed: {}",
                            checks.model, verdict.reason
                        ),
                    });
                    continue;
                }
                true => continue,
                false if !checks.cut => continue,
                // Not addressed in what the model saw of a cut artifact: the
                // terms read all of it.
                false => {}
            }
        }
        if terms.len() < 2 {
            continue;
        }
        // Per artifact: the terms it carries beyond echoes, out of the terms
        // it does not merely quote (a quoted finding neither counts for nor
        // against it; what it does about the gap decides).
        let best = words
            .iter()
            .map(|(key, kept, whole)| {
                let hit: Vec<&String> = terms.iter().filter(|t| kept.contains(*t)).collect();
                let of = terms
                    .iter()
                    .filter(|t| kept.contains(*t) || !whole.contains(*t))
                    .count();
                (key, hit, of)
            })
            .filter(|(_, _, of)| *of >= 2)
            .max_by(|a, b| {
                (a.1.len() * b.2)
                    .cmp(&(b.1.len() * a.2))
                    .then(a.1.len().cmp(&b.1.len()))
            });
        let Some((key, hit, of)) = best else { continue };
        let share = hit.len() as f64 / of as f64;
        if share < COVERAGE {
            continue;
        }
        let shown: Vec<&str> = hit.iter().take(6).map(|t| t.as_str()).collect();
        events.push(Event::GapChanged {
            id: state.gap.id.clone(),
            status: GapStatus::Addressed,
            by: block.to_string(),
            reason: format!(
                "{block}.{key} covers {} of its {} terms ({}{})",
                hit.len(),
                of,
                shown.join(", "),
                if hit.len() > shown.len() { ", …" } else { "" }
            ),
        });
    }
    events
}

/// Why a person's decision on a gap is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("the run has no gap `{0}`")]
    Unknown(String),
    #[error("gap `{id}` is already {status}")]
    Unchanged { id: String, status: &'static str },
    #[error(
        "a gap can be accepted or reopened, not set to addressed (a block's output addresses it)"
    )]
    NotAPersonsStatus,
    #[error("the note is longer than 2,000 characters")]
    NoteTooLong,
}

/// A reviewer accepts a gap or reopens it.
pub fn decide(
    doc: &RunDoc,
    id: &str,
    status: GapStatus,
    actor: &str,
    note: &str,
) -> Result<Event, DecisionError> {
    let state = doc
        .gaps
        .get(id)
        .ok_or_else(|| DecisionError::Unknown(id.to_string()))?;
    if status == GapStatus::Addressed {
        return Err(DecisionError::NotAPersonsStatus);
    }
    if note.chars().count() > 2_000 {
        return Err(DecisionError::NoteTooLong);
    }
    if state.status == status {
        return Err(DecisionError::Unchanged {
            id: id.to_string(),
            status: status.as_str(),
        });
    }
    Ok(Event::GapChanged {
        id: id.to_string(),
        status,
        by: actor.to_string(),
        reason: note.trim().to_string(),
    })
}

/// Folds a `GapsFound` into the run's gaps: the source's earlier gaps go,
/// the new ones come in open — or accepted, when the same id was accepted.
pub(crate) fn apply_found(
    gaps: &mut BTreeMap<String, GapState>,
    source: &str,
    attempt: u32,
    found: &[Gap],
    at: Millis,
) {
    let accepted: BTreeMap<String, GapState> = gaps
        .iter()
        .filter(|(_, g)| g.source == source && g.status == GapStatus::Accepted)
        .map(|(id, g)| (id.clone(), g.clone()))
        .collect();
    gaps.retain(|_, g| g.source != source);
    for gap in found {
        // The model numbers its gaps afresh each time: an acceptance holds
        // only for the same gap (same place, same finding), not the same id.
        let kept = accepted.get(&gap.id).filter(|g| {
            g.gap.target_artifact == gap.target_artifact
                && g.gap.path == gap.path
                && g.gap.description == gap.description
        });
        gaps.insert(
            gap.id.clone(),
            GapState {
                gap: gap.clone(),
                source: source.to_string(),
                attempt,
                status: kept.map_or(GapStatus::Open, |g| g.status),
                by: kept.and_then(|g| g.by.clone()),
                reason: kept.map(|g| g.reason.clone()).unwrap_or_default(),
                at,
            },
        );
    }
}

#[cfg(test)]
mod tests;
