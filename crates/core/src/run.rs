//! The run document and the event log that produces it.
//!
//! A run is one JSON document ([`RunDoc`]) plus an append-only list of
//! [`EventRecord`]s. The document is a cache of the log: [`RunDoc::apply`] folds
//! one event into it, and folding every event from `RunCreated` reproduces the
//! stored document exactly (a property test checks this). Events carry their
//! own time and actor, so `apply` is deterministic and needs no clock.
//!
//! Architecture Invariant: `apply` never decides anything. Decisions (is this
//! block ready? did the threshold pass?) are made by [`crate::scheduler`] and
//! [`crate::transitions`], which emit events; `apply` only records them and
//! rejects events that would make an illegal transition.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use factory_audit::AuditReport;

use crate::template::{ArtifactFormat, Autonomy};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// UTC time as `YYYY-MM-DD HH:MM:SS`, without a date-time dependency.
pub fn format_utc(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockStatus {
    Pending,
    Ready,
    Running,
    Done,
    Failed,
    Blocked,
    Waiting,
}

impl BlockStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockStatus::Pending => "pending",
            BlockStatus::Ready => "ready",
            BlockStatus::Running => "running",
            BlockStatus::Done => "done",
            BlockStatus::Failed => "failed",
            BlockStatus::Blocked => "blocked",
            BlockStatus::Waiting => "waiting",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Blocks are ready or running.
    #[default]
    Running,
    /// Nothing can move until a person resolves a gate.
    Waiting,
    Done,
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Done | RunStatus::Failed)
    }
}

/// Which side of the block a human gate sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatePhase {
    Before,
    After,
}

fn counted() -> bool {
    true
}

fn is_counted(counted: &bool) -> bool {
    *counted
}

/// A stored artifact: content lives in the store under `hash` (SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub hash: String,
    pub size: u64,
    pub path: String,
    pub format: ArtifactFormat,
    /// A media artifact's checked facts (type, dimensions, duration, pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<factory_audit::media::MediaFacts>,
}

/// A stored log (stdout or stderr of an attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRef {
    pub hash: String,
    pub size: u64,
    /// True when only the tail of a long log was kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded,
    ThresholdMissed,
    Failed,
    TimedOut,
    /// The worker running it died or lost its lease.
    Abandoned,
}

/// What an attempt produced; the runtime's report, recorded verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AttemptReport {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub artifacts: BTreeMap<String, ArtifactRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<LogRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<LogRef>,
    /// Why the attempt failed, when it did (a runtime error, not a threshold miss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// The provider call of an `llm` block: tokens, latency, and the stored
    /// prompt, request and response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<Box<LlmUsage>>,
    /// The D1–D5 audit of this attempt's artifacts (boxed: it is large and
    /// most events carry no report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Box<AuditReport>>,
    /// Whose fault a failure was, which decides how it is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// The part of an unusable reply that made it unusable (bounded), for
    /// the note the retry reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_excerpt: Option<String>,
    /// The attempt's memo key, when its block may be memoized: once the
    /// block is done, a later attempt with the same key reuses these outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo_key: Option<crate::memo::MemoKey>,
    /// Set when the outputs are an earlier attempt's, reused (no call made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<crate::memo::Reused>,
    /// The model's check of which open gaps this output addresses (an `llm`
    /// block with `gap_check: "llm"`); decided when the attempt finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_checks: Option<Box<crate::gaps::GapChecks>>,
}

/// Why an attempt failed, as far as retrying it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The model's reply could not be used (bad JSON, a missing section, cut
    /// off): retry, telling the model what was wrong with its reply.
    Reply,
    /// The provider or the connection failed, or a time limit ran out: retry
    /// the same prompt; nothing of it enters the prompt.
    Provider,
    /// No retry can help: the prompt does not fit the model's context window,
    /// or the provider refuses the request as such. Fails at once.
    Permanent,
    /// Not yet: the block's work is fine but something it acts on is busy (a
    /// corrections router whose targets' dependents are still running). It
    /// tries again shortly; waiting uses up none of its retries.
    Wait,
}

/// What the next attempt of an `llm` block is told about the previous reply
/// it could not use. Kept apart from corrections: it is the engine speaking,
/// not a person, and only the latest one counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyNote {
    /// The attempt whose reply could not be used.
    pub attempt: u32,
    pub problem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excerpt: Option<String>,
}

/// What an `llm` attempt consumed. Request and response are stored as blobs
/// (keys never appear in them) so any call can be inspected or replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmUsage {
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    pub latency_ms: u64,
    /// HTTP calls made, retries included.
    pub calls: u32,
    /// The server reported no usage: the token counts are the factory's
    /// estimate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
    /// Waiting for a provider concurrency slot (not counted in the timeout).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queued_ms: u64,
    /// The response format asked of the provider (`json_object`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    /// Adjustments made for this call (max_tokens lowered to fit the window,
    /// fallbacks), in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Why the call failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// From the configured price table; absent when the model has no price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Images an `image` block's call made (priced per image).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub images: u32,
    /// Characters a `speech` block's calls spoke (priced per character).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub characters: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<LogRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<LogRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<LogRef>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One execution of a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub n: u32,
    pub owner: String,
    pub started_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<AttemptReport>,
    /// The corrections version this attempt ran with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrections_version: Option<String>,
    /// The run version (pass through the feedback loop) it belongs to.
    #[serde(default = "first_version")]
    pub version: u32,
    /// Why it did not succeed and what followed, in words ("metric `quality`
    /// … below …; retry 1 of 2 in 200 ms"): the retry's or the failure's
    /// reason, kept with the attempt it explains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

fn first_version() -> u32 {
    1
}

/// A correction handed to a block's next attempt (seed `002`'s shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorrectionItem {
    pub finding: String,
    pub correction: String,
    pub priority: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub improvement_item_id: Option<String>,
}

/// `block.state.corrections`: what the next attempt must fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Corrections {
    /// E.g. `v1→v2`.
    pub version: String,
    pub source: String,
    pub items: Vec<CorrectionItem>,
    pub instruction: String,
}

/// Who decided a gate, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDecision {
    pub phase: GatePhase,
    pub approved: bool,
    pub actor: String,
    pub at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The engine-managed `state` of one block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockState {
    pub status: BlockStatus,
    pub autonomy: Autonomy,
    /// Attempts started so far (all kinds).
    pub attempts: u32,
    /// Automatic retries used since the block was last reset.
    pub retries_used: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A ready block is not started before this time (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Millis>,
    /// Set while the block is `waiting`: which gate it waits at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GatePhase>,
    /// The before-gate was approved for the current pass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub before_gate_passed: bool,
    /// A `guided` block completed and awaits optional review.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review_flag: bool,
    /// The latest audit scored below the block's audit threshold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit_flagged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrections: Option<Corrections>,
    /// Why the previous reply could not be used (cleared when a reply is
    /// used, and when a person retries or corrects the block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_note: Option<ReplyNote>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<GateDecision>,
    /// A person asked for this pass to run anew (a retry, a gate
    /// rejection): no memo stands in for its attempts. Set by a rejection,
    /// set or cleared by each reset.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
    /// A fan-out block expanded in the current pass: its instances' keys,
    /// in list order. None until it expands, and again after a reset that
    /// changes its list's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<String>>,
    /// Set on an instance of a fan-out block: which group, which item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceOf>,
    /// An instance out of the run: its group let go of its expansion (it
    /// expands anew) and has not listed its item again. Kept with its
    /// attempts, out of the run's graph and counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// For an expanded fan-out lens: the perspectives past ratings left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<crate::lens::LeftOut>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
}

/// What makes an instance of a fan-out block itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceOf {
    /// The fan-out block, as the template names it.
    pub group: String,
    pub key: String,
    /// The list item, verbatim.
    pub item: Value,
    /// Past ratings of this perspective asked a person to review its
    /// output ([`crate::lens::shape`]): it waits at a gate after it runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
}

/// One item of a fan-out block's list, with the key naming its instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// [`instance_id`] of the group and key (kept, so the event names every
    /// block it changes).
    pub id: String,
    pub key: String,
    pub item: Value,
    /// See [`InstanceOf::review`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
}

/// An instance's block id: `<group>[<key>]`. Template block ids cannot
/// contain brackets, so an instance never shares an id with a block.
pub fn instance_id(group: &str, key: &str) -> String {
    format!("{group}[{key}]")
}

/// The template block a block id stands for: the id itself, or for an
/// instance (`<group>[<key>]`) its group's.
pub fn group_id(id: &str) -> &str {
    id.split_once('[').map_or(id, |(group, _)| group)
}

impl BlockState {
    pub fn new(autonomy: Autonomy) -> BlockState {
        BlockState {
            status: BlockStatus::Pending,
            autonomy,
            attempts: 0,
            retries_used: 0,
            started_at: None,
            ended_at: None,
            score: None,
            error: None,
            not_before: None,
            gate: None,
            before_gate_passed: false,
            review_flag: false,
            audit_flagged: false,
            corrections: None,
            reply_note: None,
            decisions: Vec::new(),
            fresh: false,
            instances: None,
            instance: None,
            dropped: false,
            left_out: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Starts a new pass (a reset, an instance made again): pending, no
    /// retries used, gates and flags cleared, with `corrections` to apply.
    /// Its history stays.
    fn new_pass(&mut self, corrections: Option<Corrections>, fresh: bool) {
        self.status = BlockStatus::Pending;
        self.retries_used = 0;
        self.reply_note = None;
        self.corrections = corrections;
        self.gate = None;
        self.before_gate_passed = false;
        self.review_flag = false;
        self.not_before = None;
        self.error = None;
        self.fresh = fresh;
    }

    /// The attempt currently running, if any.
    pub fn current_attempt(&self) -> Option<&Attempt> {
        self.history.last().filter(|a| a.ended_at.is_none())
    }

    /// The audit of the latest audited attempt. Kept once, in the attempt
    /// history, because the whole document is rewritten on every commit.
    pub fn latest_audit(&self) -> Option<&AuditReport> {
        self.history
            .iter()
            .rev()
            .find_map(|attempt| attempt.report.as_ref()?.audit.as_deref())
    }

    /// True when the block has not run since it was last reset (a new pass
    /// of the feedback loop, or a person's reset): its history belongs to an
    /// earlier pass, so its old badge and score say nothing of this one. A
    /// reset leaves the block pending (then ready, blocked or waiting at its
    /// before-gate) with its retries at zero; a retry keeps them counted.
    pub fn awaits_new_pass(&self) -> bool {
        !self.history.is_empty()
            && match self.status {
                BlockStatus::Pending | BlockStatus::Blocked => true,
                BlockStatus::Ready => self.retries_used == 0,
                BlockStatus::Waiting => self.gate == Some(GatePhase::Before),
                BlockStatus::Running | BlockStatus::Done | BlockStatus::Failed => false,
            }
    }

    /// Everything but the attempt history (see [`BlockHead`]).
    pub fn head(&self) -> BlockHead<'_> {
        // Destructured in full: a new field of `BlockState` must be added here.
        let BlockState {
            status,
            autonomy,
            attempts,
            retries_used,
            started_at,
            ended_at,
            score,
            error,
            not_before,
            gate,
            before_gate_passed,
            review_flag,
            audit_flagged,
            corrections,
            reply_note,
            decisions,
            fresh,
            instances,
            instance,
            dropped,
            left_out,
            history: _,
        } = self;
        BlockHead {
            status: *status,
            autonomy: *autonomy,
            attempts: *attempts,
            retries_used: *retries_used,
            started_at,
            ended_at,
            score,
            error,
            not_before,
            gate,
            before_gate_passed: *before_gate_passed,
            review_flag: *review_flag,
            audit_flagged: *audit_flagged,
            corrections,
            reply_note,
            decisions,
            fresh: *fresh,
            instances,
            instance,
            dropped: *dropped,
            left_out,
        }
    }

    /// The most recent attempt that succeeded (its artifacts feed downstream).
    pub fn last_success(&self) -> Option<&Attempt> {
        self.history
            .iter()
            .rev()
            .find(|a| a.outcome == Some(AttemptOutcome::Succeeded))
    }
}

/// A block's state without its attempts, for serialising: the store keeps
/// this in the block's row and each attempt in a row of its own, so a
/// transition rewrites the attempt it changed, not every attempt the block
/// ever made. Field for field the same JSON as [`BlockState`] up to
/// `history` (which comes last there), so the head's text plus the
/// attempts' make the block's text ([`splice_history_json`]).
#[derive(Debug, Serialize)]
pub struct BlockHead<'a> {
    status: BlockStatus,
    autonomy: Autonomy,
    attempts: u32,
    retries_used: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: &'a Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: &'a Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: &'a Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_before: &'a Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gate: &'a Option<GatePhase>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    before_gate_passed: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    review_flag: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    audit_flagged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    corrections: &'a Option<Corrections>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_note: &'a Option<ReplyNote>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    decisions: &'a Vec<GateDecision>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    fresh: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: &'a Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: &'a Option<InstanceOf>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dropped: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    left_out: &'a Vec<crate::lens::LeftOut>,
}

/// The text of a block's state from its head's JSON object and its attempts'
/// JSON, in order: `{…head…,"history":[{…},…]}` (no `history` when there are
/// none, as serde writes it).
pub fn splice_history_json<'a>(head: &str, attempts: impl IntoIterator<Item = &'a str>) -> String {
    let mut attempts = attempts.into_iter().peekable();
    if attempts.peek().is_none() {
        return head.to_string();
    }
    let trimmed = head.trim_end();
    let body = trimmed.strip_suffix('}').unwrap_or(trimmed);
    let mut out = String::with_capacity(body.len() + 256);
    out.push_str(body);
    if !body.trim_end().ends_with('{') {
        out.push(',');
    }
    out.push_str("\"history\":[");
    for (n, attempt) in attempts.enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(attempt);
    }
    out.push_str("]}");
    out
}

/// The attempts `records` changed, as `(block, index into its history)`,
/// given the document after them: the attempt rows a commit writes.
///
/// An attempt is changed by the event that starts it and by those that end
/// it or say why (`attempt_finished`, `attempt_abandoned`,
/// `retry_scheduled`, `block_failed`), which all write the block's last
/// attempt at the time. Walking the records in order, a block's current
/// attempt is the one before those started in this batch, then each one
/// started; so a batch that finishes attempt 1, schedules its retry and
/// starts attempt 2 names both. Indices, not attempt numbers: history is
/// append-only, so its positions are what `apply` wrote.
pub fn changed_attempts<'a>(
    doc: &'a RunDoc,
    records: &'a [EventRecord],
) -> BTreeSet<(&'a str, usize)> {
    let mut started: BTreeMap<&str, usize> = BTreeMap::new();
    for record in records {
        if let Event::BlockStarted { block, .. } = &record.event {
            *started.entry(block.as_str()).or_default() += 1;
        }
    }
    // Per block: the index of its current attempt (None: none yet).
    let mut current: BTreeMap<&str, Option<usize>> = BTreeMap::new();
    let mut changed = BTreeSet::new();
    for record in records {
        let (block, starts) = match &record.event {
            Event::BlockStarted { block, .. } => (block, true),
            Event::AttemptFinished { block, .. }
            | Event::AttemptAbandoned { block, .. }
            | Event::RetryScheduled { block, .. }
            | Event::BlockFailed { block, .. } => (block, false),
            _ => continue,
        };
        let Some((id, state)) = doc.blocks.get_key_value(block.as_str()) else {
            continue;
        };
        let index = current.entry(id.as_str()).or_insert_with(|| {
            let before = state
                .history
                .len()
                .checked_sub(started.get(id.as_str()).copied().unwrap_or(0));
            before.and_then(|len| len.checked_sub(1))
        });
        if starts {
            *index = Some(index.map_or(0, |i| i + 1));
        }
        if let Some(i) = *index
            && i < state.history.len()
        {
            changed.insert((id.as_str(), i));
        }
    }
    changed
}

/// One JSON document per run: everything the scheduler needs, nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDoc {
    pub run_id: String,
    pub template_id: String,
    pub template_version: String,
    pub status: RunStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autonomy_profile: Option<String>,
    pub params: BTreeMap<String, Value>,
    /// Per-block model overrides chosen at run creation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    /// The run's model for `llm` blocks without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_model: Option<String>,
    /// The run's sampling for `llm` blocks that set none themselves.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sampling: BTreeMap<String, Value>,
    /// Blocks of this run running at once across all workers (0: no limit);
    /// None: each worker's `--max-concurrency`. Kept in the run, so every
    /// worker holds the run to the same limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// No memo stands in for this run's attempts (`--no-cache`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// See [`Event::RunCreated`]'s `past_ratings`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_ratings: Vec<crate::lens::PastRatings>,
    /// The run's gaps by id ([`crate::gaps`]): found by a block with
    /// `outputs.gaps`, addressed by later blocks or accepted by a person.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gaps: BTreeMap<String, crate::gaps::GapState>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Sequence number of the last event folded in.
    pub seq: u64,
    /// The run version: 1, then one more for each pass of the corrections
    /// router that sent corrections upstream (seed `002`'s v1, v2, …).
    #[serde(default = "first_version")]
    pub version: u32,
    /// Stored one row per block (the rest of the document is the run's
    /// header row), so a commit writes only the blocks its events changed.
    /// Last, so the header's JSON plus the rows splice into this same text.
    #[serde(default)]
    pub blocks: BTreeMap<String, BlockState>,
}

/// A run document without its blocks, for serialising: the store keeps this
/// in the run's row and each block in a row of its own. Field for field the
/// same JSON as [`RunDoc`] up to `blocks` (which comes last there), so the
/// header's text plus the blocks' make the document's text.
#[derive(Debug, Serialize)]
pub struct RunHeader<'a> {
    run_id: &'a str,
    template_id: &'a str,
    template_version: &'a str,
    status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    autonomy_profile: &'a Option<String>,
    params: &'a BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    models: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_model: &'a Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sampling: &'a BTreeMap<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_concurrency: &'a Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_cache: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    past_ratings: &'a Vec<crate::lens::PastRatings>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    gaps: &'a BTreeMap<String, crate::gaps::GapState>,
    created_at: Millis,
    updated_at: Millis,
    seq: u64,
    version: u32,
}

impl RunDoc {
    /// What a dependency on `block`'s artifact `key` reads, by the block
    /// that made it: the block's last successful attempt's artifact, or for
    /// an expanded fan-out block, each done instance's, in list order.
    pub fn dependency_artifacts(
        &self,
        block: &str,
        key: &str,
    ) -> Result<Vec<(String, &ArtifactRef)>, String> {
        let state = self
            .blocks
            .get(block)
            .ok_or_else(|| format!("upstream block `{block}` is not in the run"))?;
        match &state.instances {
            None => Ok(vec![(block.to_string(), last_artifact(block, state, key)?)]),
            Some(keys) => {
                let mut out = Vec::new();
                for instance in keys {
                    let id = instance_id(block, instance);
                    if let Some(state) = self
                        .blocks
                        .get(&id)
                        .filter(|s| s.status == BlockStatus::Done)
                    {
                        let artifact = last_artifact(&id, state, key)?;
                        out.push((id, artifact));
                    }
                }
                Ok(out)
            }
        }
    }

    /// The run's limit on blocks running at once (0: none): its own when it
    /// was created with one, else `default` (the worker's).
    pub fn concurrency_limit(&self, default: usize) -> usize {
        self.max_concurrency.map_or(default, |n| n as usize)
    }

    /// Everything but the blocks (see [`RunHeader`]).
    pub fn header(&self) -> RunHeader<'_> {
        // Destructured in full: a new field of `RunDoc` must be added here.
        let RunDoc {
            run_id,
            template_id,
            template_version,
            status,
            autonomy_profile,
            params,
            models,
            default_model,
            sampling,
            max_concurrency,
            no_cache,
            past_ratings,
            gaps,
            created_at,
            updated_at,
            seq,
            version,
            blocks: _,
        } = self;
        RunHeader {
            run_id,
            template_id,
            template_version,
            status: *status,
            autonomy_profile,
            params,
            models,
            default_model,
            sampling,
            max_concurrency,
            no_cache: *no_cache,
            past_ratings,
            gaps,
            created_at: *created_at,
            updated_at: *updated_at,
            seq: *seq,
            version: *version,
        }
    }
}

/// The text of a run document from its header's JSON object and its blocks'
/// JSON, in block id order: `{…header…,"blocks":{"id":{…},…}}`.
pub fn splice_doc_json<'a>(
    header: &str,
    blocks: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let head = header.trim_end();
    let head = head.strip_suffix('}').unwrap_or(head);
    let mut out = String::with_capacity(head.len() + 64);
    out.push_str(head);
    // An empty header object has no member to follow.
    if !head.trim_end().ends_with('{') {
        out.push(',');
    }
    out.push_str("\"blocks\":{");
    for (n, (id, state)) in blocks.into_iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(id).unwrap_or_default());
        out.push(':');
        out.push_str(state);
    }
    out.push_str("}}");
    out
}

/// An entry of the append-only event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub at: Millis,
    /// Who caused it: `engine`, `worker:<owner>`, `cli:<user>`, …
    pub actor: String,
    #[serde(flatten)]
    pub event: Event,
}

/// Every transition a run can make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    RunCreated {
        run_id: String,
        template_id: String,
        template_version: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        autonomy_profile: Option<String>,
        params: BTreeMap<String, Value>,
        /// Every block with its resolved autonomy, in template order.
        blocks: Vec<(String, Autonomy)>,
        /// Per-block model overrides for this run.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        models: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        default_model: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        sampling: BTreeMap<String, Value>,
        /// Blocks of the run running at once across all workers (0: no
        /// limit); absent: each worker's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_concurrency: Option<u32>,
        /// No memo stands in for this run's attempts (`--no-cache`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        no_cache: bool,
        /// What people said about earlier runs' lens outputs, read when
        /// this run was created ([`crate::lens::past_for_run`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        past_ratings: Vec<crate::lens::PastRatings>,
    },
    BlockReady {
        block: String,
        reason: String,
    },
    BlockWaiting {
        block: String,
        phase: GatePhase,
    },
    BlockBlocked {
        block: String,
        because: String,
    },
    BlockStarted {
        block: String,
        attempt: u32,
        owner: String,
        lease_expires_at: Millis,
    },
    AttemptFinished {
        block: String,
        attempt: u32,
        outcome: AttemptOutcome,
        report: AttemptReport,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        score: Option<f64>,
    },
    AttemptAbandoned {
        block: String,
        attempt: u32,
        reason: String,
    },
    RetryScheduled {
        block: String,
        not_before: Millis,
        reason: String,
        /// Corrections for the retry (the audit's fix suggestions).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        corrections: Option<Corrections>,
        /// Why the reply could not be used; replaces the previous note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_note: Option<ReplyNote>,
        /// False for a wait ([`FailureKind::Wait`]): the block's retries are
        /// not used up by it.
        #[serde(default = "counted", skip_serializing_if = "is_counted")]
        counted: bool,
    },
    BlockDone {
        block: String,
    },
    BlockFailed {
        block: String,
        error: String,
    },
    ReviewFlagged {
        block: String,
    },
    /// The audit composite fell below the block's audit threshold.
    AuditFlagged {
        block: String,
        composite: f64,
        threshold: f64,
    },
    GateApproved {
        block: String,
        phase: GatePhase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    GateRejected {
        block: String,
        phase: GatePhase,
        feedback: String,
        corrections: Corrections,
    },
    BlockReset {
        block: String,
        reason: String,
        /// A person asked for the block to run anew: no memo stands in.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fresh: bool,
        /// A fan-out block whose list may have changed (it, or what it reads
        /// the list from, runs anew): it expands again, and its instances
        /// (reset with this flag too) leave the run's graph until then. Not
        /// set when only one of its instances is retried.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        regroup: bool,
    },
    /// A fan-out block read its list: one pending instance per item (an
    /// instance of an earlier expansion whose key is listed again comes
    /// back for a new pass; one no longer listed stays `dropped`, as the
    /// reset that let go of the expansion left it). The group itself goes
    /// back to pending until its instances settle. Follows the
    /// `attempt_finished` of the attempt that read the list.
    BlockExpanded {
        block: String,
        instances: Vec<Instance>,
        /// Perspectives past ratings left out ([`crate::lens::shape`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left_out: Vec<crate::lens::LeftOut>,
    },
    /// A fan-out block's instances settled as its `need` asks: the group is
    /// done, and the blocks after it read its done instances' artifacts.
    GroupDone {
        block: String,
        reason: String,
    },
    /// The block's autonomy changed for this run only; it takes effect at the
    /// block's next gate decision.
    AutonomyChanged {
        block: String,
        autonomy: Autonomy,
    },
    RunStatusChanged {
        status: RunStatus,
    },
    /// The corrections router sent accepted findings back to the blocks that
    /// caused them; the run moves to version `to`. `BlockReset` events for the
    /// targets and their descendants follow in the same commit.
    CorrectionsRouted {
        router: String,
        from: u32,
        to: u32,
        targets: BTreeMap<String, Corrections>,
        reason: String,
    },
    /// A tester's review arrived (the submission itself is in the store).
    FeedbackSubmitted {
        feedback_id: String,
        source: String,
        tester: String,
        tester_role: String,
        version: u32,
        verdicts: usize,
    },
    /// An improvement item changed status: consensus, routing or resolution.
    ItemChanged {
        item: String,
        source_key: String,
        skill_target: String,
        from: String,
        to: String,
        reason: String,
    },
    /// An outside review system announced new items (`corrections-ingest`).
    CorrectionsIngested {
        source: String,
        feedback_id: String,
        by_skill: BTreeMap<String, u32>,
    },
    /// A block with `outputs.gaps` succeeded: its gaps replace those it
    /// found before ([`crate::gaps`]).
    GapsFound {
        block: String,
        attempt: u32,
        gaps: Vec<crate::gaps::Gap>,
    },
    /// A gap was addressed by a block's output (`by` the block), or
    /// accepted or reopened by a person (`by` the actor).
    GapChanged {
        id: String,
        status: crate::gaps::GapStatus,
        by: String,
        reason: String,
    },
}

impl Event {
    /// The block this event makes `done`: on its own (`block_done`),
    /// through its after-gate (`gate_approved`, after), or as a fan-out
    /// block whose instances settled (`group_done`).
    pub fn done_block(&self) -> Option<&str> {
        match self {
            Event::BlockDone { block }
            | Event::GroupDone { block, .. }
            | Event::GateApproved {
                block,
                phase: GatePhase::After,
                ..
            } => Some(block),
            _ => None,
        }
    }

    /// Whether the run's graph ([`crate::Pipeline::for_run`]) changes with
    /// this event: a fan-out block expands, or lets go of its expansion.
    pub fn reshapes_graph(&self) -> bool {
        matches!(
            self,
            Event::BlockExpanded { .. } | Event::BlockReset { regroup: true, .. }
        )
    }

    /// The block the event concerns, if any.
    pub fn block(&self) -> Option<&str> {
        match self {
            Event::RunCreated { .. }
            | Event::RunStatusChanged { .. }
            | Event::CorrectionsRouted { .. }
            | Event::FeedbackSubmitted { .. }
            | Event::CorrectionsIngested { .. }
            | Event::GapChanged { .. } => None,
            Event::GapsFound { block, .. } => Some(block),
            Event::ItemChanged { skill_target, .. } => Some(skill_target),
            Event::BlockReady { block, .. }
            | Event::BlockWaiting { block, .. }
            | Event::BlockBlocked { block, .. }
            | Event::BlockStarted { block, .. }
            | Event::AttemptFinished { block, .. }
            | Event::AttemptAbandoned { block, .. }
            | Event::RetryScheduled { block, .. }
            | Event::BlockDone { block }
            | Event::BlockFailed { block, .. }
            | Event::ReviewFlagged { block }
            | Event::AuditFlagged { block, .. }
            | Event::GateApproved { block, .. }
            | Event::GateRejected { block, .. }
            | Event::BlockReset { block, .. }
            | Event::BlockExpanded { block, .. }
            | Event::GroupDone { block, .. }
            | Event::AutonomyChanged { block, .. } => Some(block),
        }
    }

    /// The blocks whose state in the run document [`RunDoc::apply`] changes
    /// for this event: the store writes exactly these blocks' rows, and the
    /// scheduler's [`crate::scheduler::RunIndex`] re-reads exactly these. An
    /// item change names its target block but changes no block state.
    pub fn changed_blocks(&self) -> Vec<&str> {
        match self {
            Event::RunCreated { blocks, .. } => blocks.iter().map(|(id, _)| id.as_str()).collect(),
            Event::CorrectionsRouted { targets, .. } => {
                targets.keys().map(String::as_str).collect()
            }
            Event::BlockExpanded {
                block, instances, ..
            } => std::iter::once(block.as_str())
                .chain(instances.iter().map(|i| i.id.as_str()))
                .collect(),
            Event::RunStatusChanged { .. }
            | Event::FeedbackSubmitted { .. }
            | Event::ItemChanged { .. }
            | Event::CorrectionsIngested { .. }
            | Event::GapsFound { .. }
            | Event::GapChanged { .. } => Vec::new(),
            other => other.block().into_iter().collect(),
        }
    }

    /// The snake_case name used in the log and the store.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::RunCreated { .. } => "run_created",
            Event::BlockReady { .. } => "block_ready",
            Event::BlockWaiting { .. } => "block_waiting",
            Event::BlockBlocked { .. } => "block_blocked",
            Event::BlockStarted { .. } => "block_started",
            Event::AttemptFinished { .. } => "attempt_finished",
            Event::AttemptAbandoned { .. } => "attempt_abandoned",
            Event::RetryScheduled { .. } => "retry_scheduled",
            Event::BlockDone { .. } => "block_done",
            Event::BlockFailed { .. } => "block_failed",
            Event::ReviewFlagged { .. } => "review_flagged",
            Event::AuditFlagged { .. } => "audit_flagged",
            Event::GateApproved { .. } => "gate_approved",
            Event::GateRejected { .. } => "gate_rejected",
            Event::BlockReset { .. } => "block_reset",
            Event::BlockExpanded { .. } => "block_expanded",
            Event::GroupDone { .. } => "group_done",
            Event::AutonomyChanged { .. } => "autonomy_changed",
            Event::RunStatusChanged { .. } => "run_status_changed",
            Event::CorrectionsRouted { .. } => "corrections_routed",
            Event::FeedbackSubmitted { .. } => "feedback_submitted",
            Event::ItemChanged { .. } => "item_changed",
            Event::CorrectionsIngested { .. } => "corrections_ingested",
            Event::GapsFound { .. } => "gaps_found",
            Event::GapChanged { .. } => "gap_changed",
        }
    }
}

/// The people who set `block`'s current pass in motion: whoever created the
/// run, approved its before-gate, or reset it (retry, run now). Gates with
/// `separate_reviewer` refuse their approval. System actors (the scheduler and
/// workers) never count.
pub fn ran_by(records: &[EventRecord], block: &str) -> BTreeSet<String> {
    // Whoever set a fan-out block's pass in motion set its instances' too
    // (an instance made by expanding anew has no reset of its own).
    let group = group_id(block);
    let mut actors = BTreeSet::new();
    for record in records {
        let counts = match &record.event {
            Event::RunCreated { .. } => true,
            Event::GateApproved {
                block: b,
                phase: GatePhase::Before,
                ..
            }
            | Event::BlockReset { block: b, .. } => b == block || b == group,
            _ => false,
        };
        if counts && !is_system_actor(&record.actor) {
            actors.insert(record.actor.clone());
        }
    }
    actors
}

fn is_system_actor(actor: &str) -> bool {
    actor == "scheduler" || actor == "engine" || actor.starts_with("worker:")
}

/// An event that would make an illegal transition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event {seq} is out of order: the document is at {doc_seq}")]
    OutOfOrder { seq: u64, doc_seq: u64 },
    #[error("unknown block `{0}`")]
    UnknownBlock(String),
    #[error("block `{block}` is {status}; `{event}` needs it to be {expected}")]
    IllegalTransition {
        block: String,
        status: &'static str,
        event: &'static str,
        expected: &'static str,
    },
    #[error("block `{block}` has no running attempt {attempt}")]
    NoSuchAttempt { block: String, attempt: u32 },
    #[error("the first event of a run must be run_created")]
    NotCreated,
    #[error("corrections routed from version {from}, but the run is at version {version}")]
    VersionMismatch { from: u32, version: u32 },
    #[error("the run has no gap `{0}`")]
    UnknownGap(String),
}

impl RunDoc {
    /// Builds a document from the first event of a log.
    pub fn from_created(record: &EventRecord) -> Result<RunDoc, ApplyError> {
        let Event::RunCreated {
            run_id,
            template_id,
            template_version,
            autonomy_profile,
            params,
            blocks,
            models,
            default_model,
            sampling,
            max_concurrency,
            no_cache,
            past_ratings,
        } = &record.event
        else {
            return Err(ApplyError::NotCreated);
        };
        Ok(RunDoc {
            run_id: run_id.clone(),
            template_id: template_id.clone(),
            template_version: template_version.clone(),
            status: RunStatus::Running,
            autonomy_profile: autonomy_profile.clone(),
            params: params.clone(),
            models: models.clone(),
            default_model: default_model.clone(),
            sampling: sampling.clone(),
            max_concurrency: *max_concurrency,
            no_cache: *no_cache,
            past_ratings: past_ratings.clone(),
            gaps: BTreeMap::new(),
            created_at: record.at,
            updated_at: record.at,
            seq: record.seq,
            version: 1,
            blocks: blocks
                .iter()
                .map(|(id, autonomy)| (id.clone(), BlockState::new(*autonomy)))
                .collect(),
        })
    }

    /// Rebuilds a document from a whole event log.
    pub fn replay(records: &[EventRecord]) -> Result<RunDoc, ApplyError> {
        let (first, rest) = records.split_first().ok_or(ApplyError::NotCreated)?;
        let mut doc = RunDoc::from_created(first)?;
        for record in rest {
            doc.apply(record)?;
        }
        Ok(doc)
    }

    pub fn block(&self, block_id: &str) -> Option<&BlockState> {
        self.blocks.get(block_id)
    }

    /// Counts of blocks per status, for summaries.
    pub fn status_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for state in self.blocks.values().filter(|s| !s.dropped) {
            *counts.entry(state.status.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Folds one event into the document, or explains why it is illegal.
    /// On error the document is unchanged.
    pub fn apply(&mut self, record: &EventRecord) -> Result<(), ApplyError> {
        if record.seq != self.seq + 1 {
            return Err(ApplyError::OutOfOrder {
                seq: record.seq,
                doc_seq: self.seq,
            });
        }
        let at = record.at;
        let event = &record.event;
        let kind = event.kind();
        match event {
            Event::RunCreated { .. } => return Err(ApplyError::NotCreated),
            Event::RunStatusChanged { status } => self.status = *status,
            Event::BlockReady { block, .. } => {
                let state = self.state_mut(block)?;
                expect(
                    block,
                    state,
                    kind,
                    &[BlockStatus::Pending, BlockStatus::Blocked],
                )?;
                state.status = BlockStatus::Ready;
                state.gate = None;
                state.not_before = None;
            }
            Event::BlockWaiting { block, phase } => {
                let state = self.state_mut(block)?;
                match phase {
                    GatePhase::Before => expect(block, state, kind, &[BlockStatus::Pending])?,
                    GatePhase::After => expect(block, state, kind, &[BlockStatus::Running])?,
                }
                state.status = BlockStatus::Waiting;
                state.gate = Some(*phase);
            }
            Event::BlockBlocked { block, .. } => {
                let state = self.state_mut(block)?;
                expect(
                    block,
                    state,
                    kind,
                    &[BlockStatus::Pending, BlockStatus::Ready],
                )?;
                state.status = BlockStatus::Blocked;
            }
            Event::BlockStarted {
                block,
                attempt,
                owner,
                ..
            } => {
                let version = self.version;
                let state = self.state_mut(block)?;
                expect(block, state, kind, &[BlockStatus::Ready])?;
                state.status = BlockStatus::Running;
                state.attempts = *attempt;
                state.started_at = Some(at);
                state.ended_at = None;
                state.error = None;
                state.not_before = None;
                state.audit_flagged = false;
                let corrections_version = state.corrections.as_ref().map(|c| c.version.clone());
                state.history.push(Attempt {
                    n: *attempt,
                    owner: owner.clone(),
                    started_at: at,
                    ended_at: None,
                    outcome: None,
                    report: None,
                    corrections_version,
                    version,
                    why: None,
                });
            }
            Event::AttemptFinished {
                block,
                attempt,
                outcome,
                report,
                score,
            } => {
                let state = self.state_mut(block)?;
                expect(block, state, kind, &[BlockStatus::Running])?;
                let current = running_attempt(block, state, *attempt)?;
                current.ended_at = Some(at);
                current.outcome = Some(*outcome);
                current.report = Some(report.clone());
                state.ended_at = Some(at);
                state.error = report.error.clone();
                if score.is_some() {
                    state.score = *score;
                }
            }
            Event::AttemptAbandoned {
                block,
                attempt,
                reason,
            } => {
                let state = self.state_mut(block)?;
                expect(block, state, kind, &[BlockStatus::Running])?;
                let current = running_attempt(block, state, *attempt)?;
                current.ended_at = Some(at);
                current.outcome = Some(AttemptOutcome::Abandoned);
                current.report = Some(AttemptReport {
                    error: Some(reason.clone()),
                    ..AttemptReport::default()
                });
                state.status = BlockStatus::Ready;
                state.ended_at = Some(at);
            }
            Event::RetryScheduled {
                block,
                not_before,
                reason,
                corrections,
                reply_note,
                counted,
            } => {
                let state = self.state_mut(block)?;
                expect(block, state, kind, &[BlockStatus::Running])?;
                ensure_finished(block, state, kind)?;
                state.status = BlockStatus::Ready;
                if *counted {
                    state.retries_used += 1;
                }
                state.not_before = Some(*not_before);
                state.error = Some(reason.clone());
                if let Some(last) = state.history.last_mut() {
                    last.why = Some(reason.clone());
                }
                if corrections.is_some() {
                    state.corrections = corrections.clone();
                    // The reply was usable (the audit judged it): no note.
                    state.reply_note = None;
                }
                if reply_note.is_some() {
                    state.reply_note = reply_note.clone();
                }
            }
            Event::BlockDone { block } => {
                let state = self.state_mut(block)?;
                expect(block, state, kind, &[BlockStatus::Running])?;
                ensure_finished(block, state, kind)?;
                state.status = BlockStatus::Done;
                state.error = None;
                state.reply_note = None;
            }
            Event::BlockFailed { block, error } => {
                let state = self.state_mut(block)?;
                expect(block, state, kind, &[BlockStatus::Running])?;
                ensure_finished(block, state, kind)?;
                state.status = BlockStatus::Failed;
                state.error = Some(error.clone());
                if let Some(last) = state.history.last_mut() {
                    last.why = Some(error.clone());
                }
            }
            Event::ReviewFlagged { block } => {
                let state = self.state_mut(block)?;
                state.review_flag = true;
            }
            Event::AuditFlagged { block, .. } => {
                let state = self.state_mut(block)?;
                state.audit_flagged = true;
            }
            Event::GateApproved { block, phase, note } => {
                let actor = record.actor.clone();
                let state = self.state_mut(block)?;
                expect_gate(block, state, kind, *phase)?;
                state.decisions.push(GateDecision {
                    phase: *phase,
                    approved: true,
                    actor,
                    at,
                    note: note.clone(),
                });
                state.gate = None;
                match phase {
                    GatePhase::Before => {
                        state.before_gate_passed = true;
                        state.status = BlockStatus::Ready;
                    }
                    GatePhase::After => state.status = BlockStatus::Done,
                }
            }
            Event::GateRejected {
                block,
                phase,
                feedback,
                corrections,
            } => {
                let actor = record.actor.clone();
                let state = self.state_mut(block)?;
                expect_gate(block, state, kind, *phase)?;
                state.decisions.push(GateDecision {
                    phase: *phase,
                    approved: false,
                    actor,
                    at,
                    note: Some(feedback.clone()),
                });
                state.gate = None;
                state.corrections = Some(corrections.clone());
                state.reply_note = None;
                state.retries_used = 0;
                // A person asked for new work: no memo answers it, even one
                // made from the same words of feedback in another run.
                state.fresh = true;
                // Rejected before it ran: the reviewer has spoken for this pass,
                // so the block runs with the corrections instead of waiting again.
                state.before_gate_passed = true;
                state.status = BlockStatus::Ready;
            }
            Event::BlockReset {
                block,
                fresh,
                regroup,
                ..
            } => {
                let state = self.state_mut(block)?;
                if state.status == BlockStatus::Running {
                    return Err(ApplyError::IllegalTransition {
                        block: block.clone(),
                        status: state.status.as_str(),
                        event: kind,
                        expected: "not running",
                    });
                }
                if *regroup {
                    // A group lets go of its expansion, and its instances of
                    // their place in the run until it expands again.
                    state.instances = None;
                    state.left_out.clear();
                    state.dropped = state.instance.is_some();
                }
                // Corrections belong to the pass they were given for (the
                // router resets first, then routes).
                state.new_pass(None, *fresh);
            }
            Event::AutonomyChanged { block, autonomy } => {
                self.state_mut(block)?.autonomy = *autonomy;
            }
            Event::BlockExpanded {
                block,
                instances,
                left_out,
            } => self.expand(block, instances, left_out, kind)?,
            Event::GroupDone { block, .. } => {
                let state = self.state_mut(block)?;
                expect(block, state, kind, &[BlockStatus::Pending])?;
                if state.instances.is_none() {
                    return Err(ApplyError::IllegalTransition {
                        block: block.clone(),
                        status: "not expanded",
                        event: kind,
                        expected: "expanded",
                    });
                }
                state.status = BlockStatus::Done;
                state.ended_at = Some(at);
                state.error = None;
            }
            Event::CorrectionsRouted {
                from, to, targets, ..
            } => {
                if *from != self.version {
                    return Err(ApplyError::VersionMismatch {
                        from: *from,
                        version: self.version,
                    });
                }
                for (block, corrections) in targets {
                    let state = self.state_mut(block)?;
                    state.corrections = Some(corrections.clone());
                    state.reply_note = None;
                }
                self.version = *to;
            }
            // Recorded for the audit trail; the items live in the store.
            Event::FeedbackSubmitted { .. }
            | Event::ItemChanged { .. }
            | Event::CorrectionsIngested { .. } => {}
            Event::GapsFound {
                block,
                attempt,
                gaps,
            } => crate::gaps::apply_found(&mut self.gaps, block, *attempt, gaps, at),
            Event::GapChanged {
                id,
                status,
                by,
                reason,
            } => {
                let gap = self
                    .gaps
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::UnknownGap(id.clone()))?;
                gap.status = *status;
                gap.by = Some(by.clone());
                gap.reason = reason.clone();
                gap.at = at;
            }
        }
        // Output that is reset or rejected no longer addresses anything.
        if let Event::BlockReset { block, .. } | Event::GateRejected { block, .. } = event {
            crate::gaps::reopen_addressed_by(&mut self.gaps, block, at);
        }
        self.seq = record.seq;
        self.updated_at = at;
        Ok(())
    }

    /// [`Event::BlockExpanded`]: checked in full before anything changes, so
    /// a refused event leaves the document as it was.
    fn expand(
        &mut self,
        block: &str,
        instances: &[Instance],
        left_out: &[crate::lens::LeftOut],
        kind: &'static str,
    ) -> Result<(), ApplyError> {
        let group = self.state_mut(block)?;
        expect(block, group, kind, &[BlockStatus::Running])?;
        ensure_finished(block, group, kind)?;
        let illegal = |id: &str, status: &'static str, expected: &'static str| {
            ApplyError::IllegalTransition {
                block: id.to_string(),
                status,
                event: kind,
                expected,
            }
        };
        for instance in instances {
            if instance.id != instance_id(block, &instance.key) {
                return Err(illegal(&instance.id, "misnamed", "named <group>[<key>]"));
            }
            if let Some(state) = self.blocks.get(&instance.id)
                && state.status == BlockStatus::Running
            {
                return Err(illegal(&instance.id, "running", "not running"));
            }
        }
        let group = self.state_mut(block)?;
        group.status = BlockStatus::Pending;
        group.instances = Some(instances.iter().map(|i| i.key.clone()).collect());
        group.left_out = left_out.to_vec();
        let (autonomy, corrections, fresh) =
            (group.autonomy, group.corrections.clone(), group.fresh);
        for instance in instances {
            let state = self
                .blocks
                .entry(instance.id.clone())
                .or_insert_with(|| BlockState::new(autonomy));
            // A new pass, as after a reset, with what was asked of the group.
            state.new_pass(corrections.clone(), fresh);
            // Past ratings asked for a person to look at this one: it
            // waits at a gate whatever the group's autonomy.
            state.autonomy = if instance.review {
                Autonomy::Gate
            } else {
                autonomy
            };
            state.dropped = false;
            state.instance = Some(InstanceOf {
                group: block.to_string(),
                key: instance.key.clone(),
                item: instance.item.clone(),
                review: instance.review,
            });
        }
        Ok(())
    }

    fn state_mut(&mut self, block: &str) -> Result<&mut BlockState, ApplyError> {
        self.blocks
            .get_mut(block)
            .ok_or_else(|| ApplyError::UnknownBlock(block.to_string()))
    }
}

fn expect(
    block: &str,
    state: &BlockState,
    event: &'static str,
    allowed: &[BlockStatus],
) -> Result<(), ApplyError> {
    if allowed.contains(&state.status) {
        return Ok(());
    }
    Err(ApplyError::IllegalTransition {
        block: block.to_string(),
        status: state.status.as_str(),
        event,
        expected: allowed.first().map_or("", |s| s.as_str()),
    })
}

fn expect_gate(
    block: &str,
    state: &BlockState,
    event: &'static str,
    phase: GatePhase,
) -> Result<(), ApplyError> {
    if state.status == BlockStatus::Waiting && state.gate == Some(phase) {
        return Ok(());
    }
    Err(ApplyError::IllegalTransition {
        block: block.to_string(),
        status: state.status.as_str(),
        event,
        expected: "waiting at that gate",
    })
}

fn running_attempt<'a>(
    block: &str,
    state: &'a mut BlockState,
    attempt: u32,
) -> Result<&'a mut Attempt, ApplyError> {
    match state.history.last_mut() {
        Some(current) if current.n == attempt && current.ended_at.is_none() => Ok(current),
        _ => Err(ApplyError::NoSuchAttempt {
            block: block.to_string(),
            attempt,
        }),
    }
}

/// `key` of the block's last successful attempt.
fn last_artifact<'a>(
    block: &str,
    state: &'a BlockState,
    key: &str,
) -> Result<&'a ArtifactRef, String> {
    let attempt = state
        .last_success()
        .ok_or_else(|| format!("upstream block `{block}` has no successful attempt"))?;
    attempt
        .report
        .as_ref()
        .and_then(|r| r.artifacts.get(key))
        .ok_or_else(|| {
            format!(
                "upstream `{block}` attempt {} has no artifact `{key}`",
                attempt.n
            )
        })
}

fn ensure_finished(block: &str, state: &BlockState, event: &'static str) -> Result<(), ApplyError> {
    match state.history.last() {
        Some(last) if last.ended_at.is_some() => Ok(()),
        _ => Err(ApplyError::IllegalTransition {
            block: block.to_string(),
            status: "running with an unfinished attempt",
            event,
            expected: "running with a finished attempt",
        }),
    }
}

/// The run-level quality line of the workbench's summary bar: the mean of the
/// blocks' latest audits, the weakest dimension on average, and every
/// calibration or score-inflation warning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunQuality {
    pub composite: f64,
    pub audited_blocks: usize,
    /// `d1` … `d5`, the lowest mean across audited blocks.
    pub weakest: String,
    pub weakest_score: f64,
    pub warnings: Vec<String>,
}

impl RunDoc {
    /// None while no block has been audited.
    pub fn quality(&self) -> Option<RunQuality> {
        let audits: Vec<(&str, &AuditReport)> = self
            .blocks
            .iter()
            .filter_map(|(id, state)| Some((id.as_str(), state.latest_audit()?)))
            .collect();
        if audits.is_empty() {
            return None;
        }
        let n = audits.len() as f64;
        let composite = audits.iter().map(|(_, a)| a.composite).sum::<f64>() / n;
        // Each dimension's mean over the blocks that judged it (n/a is left out).
        let mut sums = [(0.0f64, 0usize); 5];
        for (_, audit) in &audits {
            for (i, (_, dimension)) in audit.dimensions().iter().enumerate() {
                if let Some(score) = dimension.score {
                    sums[i].0 += score;
                    sums[i].1 += 1;
                }
            }
        }
        let (weakest_index, weakest_score) = sums
            .iter()
            .enumerate()
            .filter(|(_, (_, judged))| *judged > 0)
            .map(|(i, (sum, judged))| (i, sum / *judged as f64))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let mut warnings = Vec::new();
        for (id, audit) in &audits {
            if let Some(warning) = &audit.calibration_warning {
                warnings.push(format!("{id}: calibration: {warning}"));
            }
            if audit.score_inflation {
                warnings.push(format!(
                    "{id}: score inflation: the self-score rose while the audit fell"
                ));
            }
        }
        Some(RunQuality {
            composite: (composite * 10.0).round() / 10.0,
            audited_blocks: audits.len(),
            weakest: format!("d{}", weakest_index + 1),
            weakest_score: (weakest_score * 10.0).round() / 10.0,
            warnings,
        })
    }
}

/// A fresh run `r1` of `pipeline` with `params`, created at 1 ms, for tests.
#[cfg(test)]
pub(crate) fn test_run(pipeline: &crate::Pipeline, params: BTreeMap<String, Value>) -> RunDoc {
    let request = crate::transitions::RunRequest {
        run_id: "r1".into(),
        params,
        ..Default::default()
    };
    let created = crate::transitions::create_run(pipeline, &request, &|_| true).unwrap();
    RunDoc::from_created(&EventRecord {
        seq: 1,
        at: 1,
        actor: "test".into(),
        event: created,
    })
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_block_awaits_a_new_pass_until_it_runs() {
        let mut state = BlockState::new(Autonomy::Auto);
        state.status = BlockStatus::Pending;
        assert!(!state.awaits_new_pass(), "never ran: nothing stale");
        state.history.push(
            serde_json::from_value(serde_json::json!({"n": 1, "owner": "w", "started_at": 0}))
                .unwrap(),
        );
        for (status, retries, gate, stale) in [
            (BlockStatus::Done, 0, None, false),
            (BlockStatus::Failed, 2, None, false),
            (BlockStatus::Running, 0, None, false),
            (BlockStatus::Waiting, 0, Some(GatePhase::After), false),
            (BlockStatus::Ready, 1, None, false),
            (BlockStatus::Pending, 0, None, true),
            (BlockStatus::Blocked, 0, None, true),
            (BlockStatus::Ready, 0, None, true),
            (BlockStatus::Waiting, 0, Some(GatePhase::Before), true),
        ] {
            state.status = status;
            state.retries_used = retries;
            state.gate = gate;
            assert_eq!(
                state.awaits_new_pass(),
                stale,
                "{status:?} retries {retries} {gate:?}"
            );
        }
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_795_000_000_000), "2026-11-18 11:06:40");
    }

    fn full_doc(blocks: BTreeMap<String, BlockState>) -> RunDoc {
        RunDoc {
            run_id: "run-\"1\"".to_string(),
            template_id: "t".to_string(),
            template_version: "1.0.0".to_string(),
            status: RunStatus::Waiting,
            autonomy_profile: Some("cautious".to_string()),
            params: BTreeMap::from([("title".to_string(), Value::from("A"))]),
            models: BTreeMap::from([("b".to_string(), "m".to_string())]),
            default_model: Some("m".to_string()),
            sampling: BTreeMap::from([("temperature".to_string(), Value::from(0.5))]),
            max_concurrency: Some(3),
            no_cache: true,
            past_ratings: vec![crate::lens::PastRatings {
                block: "b".to_string(),
                perspective: Some("p".to_string()),
                aggregate_key: "entity=e".to_string(),
                count: 2,
                mean: 3.5,
                comments: Vec::new(),
            }],
            gaps: BTreeMap::from([(
                "g01".to_string(),
                crate::gaps::GapState {
                    gap: crate::gaps::Gap {
                        id: "g01".to_string(),
                        severity: "high".to_string(),
                        description: "thin".to_string(),
                        target_block: Some("b".to_string()),
                        target_artifact: None,
                        path: None,
                        resolution: String::new(),
                    },
                    source: "a".to_string(),
                    attempt: 1,
                    status: crate::gaps::GapStatus::Accepted,
                    by: Some("lead".to_string()),
                    reason: "known".to_string(),
                    at: 7,
                },
            )]),
            created_at: 5,
            updated_at: 9,
            seq: 12,
            version: 2,
            blocks,
        }
    }

    #[test]
    fn header_and_block_rows_splice_into_the_documents_own_text() {
        let mut gated = BlockState::new(Autonomy::Gate);
        gated.status = BlockStatus::Waiting;
        gated.gate = Some(GatePhase::After);
        gated.score = Some(7.25);
        let blocks = BTreeMap::from([
            (
                "a \"quoted\" id".to_string(),
                BlockState::new(Autonomy::Auto),
            ),
            ("b".to_string(), gated),
        ]);
        for doc in [full_doc(blocks), full_doc(BTreeMap::new())] {
            let header = serde_json::to_string(&doc.header()).unwrap();
            let states: Vec<(String, String)> = doc
                .blocks
                .iter()
                .map(|(id, s)| (id.clone(), serde_json::to_string(s).unwrap()))
                .collect();
            let spliced = splice_doc_json(
                &header,
                states.iter().map(|(i, s)| (i.as_str(), s.as_str())),
            );
            assert_eq!(spliced, serde_json::to_string(&doc).unwrap());
            let parsed: RunDoc = serde_json::from_str(&header).unwrap();
            assert_eq!(
                parsed,
                full_doc(BTreeMap::new()),
                "a header reads back without blocks"
            );
        }
        // A header as PostgreSQL's jsonb prints it (spaces, other key order).
        let spliced = splice_doc_json(r#"{"seq": 3, "run_id": "r"} "#, [("x", "{}")]);
        assert_eq!(spliced, r#"{"seq": 3, "run_id": "r","blocks":{"x":{}}}"#);
    }

    #[test]
    fn block_head_and_attempt_rows_splice_into_the_blocks_own_text() {
        let mut state = BlockState::new(Autonomy::Gate);
        state.status = BlockStatus::Failed;
        state.score = Some(4.5);
        state.error = Some("exit 1".to_string());
        state.retries_used = 1;
        state.before_gate_passed = true;
        state.decisions.push(GateDecision {
            phase: GatePhase::Before,
            approved: true,
            actor: "ana".to_string(),
            at: 3,
            note: None,
        });
        let fresh = BlockState::new(Autonomy::Auto);
        for attempts in 0..3u32 {
            let mut state = state.clone();
            for n in 1..=attempts {
                state.history.push(Attempt {
                    n,
                    owner: "w".to_string(),
                    started_at: 10 * n as i64,
                    ended_at: Some(10 * n as i64 + 5),
                    outcome: Some(AttemptOutcome::Failed),
                    report: Some(AttemptReport {
                        error: Some("boom".to_string()),
                        ..AttemptReport::default()
                    }),
                    corrections_version: None,
                    version: 1,
                    why: Some("retry".to_string()),
                });
            }
            for state in [&state, &fresh] {
                let head = serde_json::to_string(&state.head()).unwrap();
                let rows: Vec<String> = state
                    .history
                    .iter()
                    .map(|a| serde_json::to_string(a).unwrap())
                    .collect();
                let spliced = splice_history_json(&head, rows.iter().map(String::as_str));
                assert_eq!(spliced, serde_json::to_string(state).unwrap());
                let parsed: BlockState = serde_json::from_str(&head).unwrap();
                assert!(
                    parsed.history.is_empty(),
                    "a head reads back without attempts"
                );
                assert_eq!(
                    BlockState {
                        history: state.history.clone(),
                        ..parsed
                    },
                    *state
                );
            }
        }
        // A head as PostgreSQL's jsonb prints it (spaces).
        let spliced = splice_history_json(r#"{"status": "done"} "#, [r#"{"n":1}"#]);
        assert_eq!(spliced, r#"{"status": "done","history":[{"n":1}]}"#);
    }
}
