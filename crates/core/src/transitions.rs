//! Commands on a run: each checks that it is legal now and returns the events
//! that carry it out. Nothing here mutates a document; the caller applies the
//! events (and persists them) so that every change goes through the log.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::pipeline::Pipeline;
use crate::run::{
    AttemptOutcome, AttemptReport, BlockStatus, CorrectionItem, Corrections, Event, FailureKind,
    GatePhase, Millis, ReplyNote, RunDoc,
};
use crate::scheduler::gate_phase;
use crate::template::Autonomy;

/// The instruction text handed to a block with human corrections when its
/// template sets none (`corrections_instruction`); seed `002`'s wording
/// without its expert.
pub const CORRECTIONS_INSTRUCTION: &str = "IMPORTANT: A reviewer checked the previous version and flagged these corrections. Apply each correction to the output. Do not lose existing correct content — only fix the flagged items.";

/// Knobs the engine passes to the pure core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Backoff before the first automatic retry; doubles each retry.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a worker's claim on a running block lasts without renewal.
    pub lease_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            lease_ms: 30_000,
        }
    }
}

impl Policy {
    pub fn backoff_ms(&self, retries_used: u32) -> u64 {
        let factor = 1u64.checked_shl(retries_used.min(32)).unwrap_or(u64::MAX);
        self.retry_base_ms
            .saturating_mul(factor)
            .min(self.retry_max_ms)
    }
}

/// A command that cannot be carried out in the run's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("block `{0}` is not in this run's template")]
    UnknownBlock(String),
    #[error("block `{block}` is {status}, not waiting at a gate; nothing to {action}")]
    NotWaiting {
        block: String,
        status: &'static str,
        action: &'static str,
    },
    #[error("block `{block}` is {status}; only a ready block can start")]
    NotReady { block: String, status: &'static str },
    #[error("block `{block}` is {status}; retry needs a failed or done block")]
    NotRetryable { block: String, status: &'static str },
    #[error("block `{block}` cannot be retried while its dependent `{dependent}` is running")]
    DependentRunning { block: String, dependent: String },
    #[error("block `{block}` has no running attempt {attempt} (it may have been reclaimed)")]
    StaleAttempt { block: String, attempt: u32 },
    #[error("rejection feedback is empty; say what must change")]
    EmptyFeedback,
    #[error(
        "{} started block `{block}`'s current pass and its gate asks for a separate reviewer; someone else must approve it",
        who(actor, for_whom.as_deref())
    )]
    SelfApproval {
        block: String,
        actor: String,
        /// Set when `actor` is a review link minted by someone who ran the block.
        for_whom: Option<String>,
    },
    #[error(
        "{} started block `{block}`'s current pass, and its gate asks for a separate reviewer: they may not lower it to `{autonomy}`; someone who did not start it may",
        who(actor, for_whom.as_deref())
    )]
    GuardedGate {
        block: String,
        actor: String,
        for_whom: Option<String>,
        autonomy: &'static str,
    },
    #[error("block `{block}` already has autonomy `{autonomy}`")]
    SameAutonomy {
        block: String,
        autonomy: &'static str,
    },
}

/// `` `actor` `` or `` `actor` (a review link minted by `for_whom`) ``.
fn who(actor: &str, for_whom: Option<&str>) -> String {
    match for_whom {
        Some(minter) => format!("`{actor}` acts for `{minter}`, who minted its review link;"),
        None => format!("`{actor}`"),
    }
}

/// Who does something to a run. A review link's token acts for the person
/// who minted it: a rule about who may approve holds against both, or an
/// operator could close their own gate with a link for a made-up tester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal<'a> {
    /// Recorded in the event log.
    pub actor: &'a str,
    /// The person a review link acts for.
    pub for_whom: Option<&'a str>,
}

impl<'a> Principal<'a> {
    pub fn new(actor: &'a str) -> Principal<'a> {
        Principal {
            actor,
            for_whom: None,
        }
    }

    /// Which of the identities this principal acts as ran `block`'s
    /// current pass, if any: the minter when it is them, else the actor.
    fn who_ran(&self, records: &[crate::run::EventRecord], block: &str) -> Option<Option<String>> {
        let ran = crate::run::ran_by(records, block);
        if let Some(minter) = self.for_whom
            && ran.contains(minter)
        {
            return Some(Some(minter.to_string()));
        }
        ran.contains(self.actor).then_some(None)
    }
}

/// True when setting `block` to `autonomy` would take away the stop its gate
/// makes for a separate reviewer.
pub fn lowers_guarded_gate(pipeline: &Pipeline, block: &str, autonomy: Autonomy) -> bool {
    autonomy != Autonomy::Gate
        && pipeline.block(block).is_some_and(|spec| {
            spec.execution.separate_reviewer
                && spec.execution.human_gate != crate::template::HumanGate::None
        })
}

/// What a run is created from.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub run_id: String,
    /// Values given by the user; strings from the CLI, any JSON from the API.
    pub params: BTreeMap<String, Value>,
    pub autonomy_profile: Option<String>,
    /// Per-block autonomy overrides for this run only.
    pub overrides: BTreeMap<String, Autonomy>,
    /// Per-block model overrides for this run only.
    pub models: BTreeMap<String, String>,
    /// Model for `llm` blocks without one, for this run.
    pub default_model: Option<String>,
    /// Sampling for the run's `llm` blocks that set none themselves
    /// (`temperature`, `top_p`, `seed`, `stop`).
    pub sampling: BTreeMap<String, Value>,
    /// Blocks of this run running at once across all workers (0: no limit);
    /// None: each worker's own default.
    pub max_concurrency: Option<u32>,
    /// No memo stands in for the run's attempts.
    pub no_cache: bool,
    /// The template's stored ratings (the engine reads them when a lens
    /// block has `feedback_loop`), condensed into the run's `past_ratings`.
    pub ratings: Vec<crate::lens::RatingEntry>,
}

/// The model an `llm` block uses in a run: the run's override for the block,
/// else the block's own, else the run's default, else the template's (None:
/// the configured default).
pub fn effective_model<'a>(
    template: &'a crate::template::Template,
    block: &'a crate::template::Block,
    run_models: &'a BTreeMap<String, String>,
    run_default: Option<&'a str>,
) -> Option<&'a str> {
    let chosen = run_models
        .get(&block.id)
        .or_else(|| run_models.get(crate::run::group_id(&block.id)))
        .map(String::as_str)
        .or(block.model.as_deref());
    if block.runtime.makes_media() {
        // The defaults name chat models; an image or speech block without
        // a model of its own takes the configured image or speech default.
        return chosen;
    }
    chosen.or(run_default).or(template.default_model.as_deref())
}

/// Every reason a run could not be created, collected at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.problems.join("\n"))]
pub struct CreateRunError {
    pub problems: Vec<String>,
    /// Blocks whose separate-reviewer gate an override tried to lower: the
    /// request is forbidden, not merely malformed.
    pub guarded: Vec<String>,
}

/// What a mistyped name was probably meant to be: the nearest candidate, if
/// it shares something with the word (`zz` is not a typo of `a`).
fn near_miss<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    crate::validate::closest(word, candidates)
        .filter(|near| strsim::damerau_levenshtein(word, near) < word.chars().count())
}

/// Checks params, env and autonomy settings; returns the `RunCreated` event.
/// `env_is_set` answers whether an environment variable is set (and non-empty).
pub fn create_run(
    pipeline: &Pipeline,
    request: &RunRequest,
    env_is_set: &dyn Fn(&str) -> bool,
) -> Result<Event, CreateRunError> {
    let template = pipeline.template();
    let mut problems = Vec::new();
    let mut params = BTreeMap::new();
    for (name, spec) in &template.params {
        match (request.params.get(name), &spec.default) {
            (Some(value), _) => {
                params.insert(name.clone(), value.clone());
            }
            (None, Some(default)) => {
                params.insert(name.clone(), default.clone());
            }
            (None, None) if spec.required => {
                let about = spec
                    .description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                problems.push(format!(
                    "missing required run param `{name}`{about}: pass --param {name}=VALUE"
                ));
            }
            (None, None) => {}
        }
    }
    for name in request.params.keys() {
        if !template.params.contains_key(name) {
            let declared: Vec<&str> = template.params.keys().map(String::as_str).collect();
            let guess = near_miss(name, declared.iter().copied())
                .map(|near| format!("did you mean `{near}`? "))
                .unwrap_or_default();
            problems.push(format!(
                "unknown run param `{name}`; {guess}the template declares: {}",
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            ));
        }
    }

    let mut missing_env: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for block in pipeline.blocks() {
        for name in &block.inputs.env {
            if !env_is_set(name) {
                missing_env.entry(name).or_default().push(&block.id);
            }
        }
    }
    for (name, blocks) in missing_env {
        problems.push(format!(
            "missing required environment variable `{name}` (needed by {}): export {name}=… before creating the run",
            blocks.join(", ")
        ));
    }

    let profile = match &request.autonomy_profile {
        Some(name) => match template.autonomy_profiles.get(name) {
            Some(profile) => Some(profile),
            None => {
                let known: Vec<&str> = template
                    .autonomy_profiles
                    .keys()
                    .map(String::as_str)
                    .collect();
                problems.push(format!(
                    "unknown autonomy profile `{name}`; the template defines: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
                None
            }
        },
        None => None,
    };
    let mut guarded = Vec::new();
    for (block_id, autonomy) in &request.overrides {
        if pipeline.index_of(block_id).is_none() {
            let guess = near_miss(block_id, pipeline.blocks().iter().map(|b| b.id.as_str()))
                .map(|near| format!("; did you mean `{near}`?"))
                .unwrap_or_default();
            problems.push(format!(
                "autonomy override names unknown block `{block_id}`{guess}"
            ));
        } else if lowers_guarded_gate(pipeline, block_id, *autonomy) {
            guarded.push(block_id.clone());
            problems.push(format!(
                "autonomy override `{block_id}={}`: block `{block_id}`'s gate asks for a separate reviewer, and whoever creates the run may not lower it; create the run without the override (another operator may change it later with `factory autonomy` or PUT …/autonomy)",
                autonomy.as_str()
            ));
        }
    }
    for block_id in request.models.keys() {
        match pipeline.block(block_id) {
            None => problems.push(format!(
                "model override names unknown block `{block_id}`{}",
                near_miss(block_id, pipeline.blocks().iter().map(|b| b.id.as_str()))
                    .map(|near| format!("; did you mean `{near}`?"))
                    .unwrap_or_default()
            )),
            Some(block) if !block.runtime.calls_model() => {
                problems.push(format!(
                    "model override for `{block_id}`, which is a `{}` block, not `llm`, `image` or `speech`",
                    block.runtime.as_str()
                ))
            }
            Some(_) => {}
        }
    }
    for key in request.sampling.keys() {
        if !crate::llm_options::RUN_KEYS.contains(&key.as_str()) {
            problems.push(format!(
                "`{key}` cannot be set per run; a run sets {} (other knobs are per block, in inputs.config)",
                crate::llm_options::RUN_KEYS.join(", ")
            ));
        }
    }
    if let Err(errors) = crate::llm_options::parse(&request.sampling) {
        for error in errors {
            problems.push(format!(
                "run setting `{}` must be {}",
                error.key, error.message
            ));
        }
    }
    if !problems.is_empty() {
        return Err(CreateRunError { problems, guarded });
    }

    let blocks = pipeline
        .blocks()
        .iter()
        .enumerate()
        .map(|(i, block)| {
            let autonomy = request
                .overrides
                .get(&block.id)
                .copied()
                .or_else(|| profile.and_then(|p| p.blocks.get(&block.id).copied()))
                // A profile's default never lowers a separate reviewer's gate:
                // the template must name the block to change it.
                .or_else(|| {
                    profile
                        .and_then(|p| p.default)
                        .filter(|level| !lowers_guarded_gate(pipeline, &block.id, *level))
                })
                .unwrap_or_else(|| pipeline.default_autonomy(i));
            (block.id.clone(), autonomy)
        })
        .collect();
    let past_ratings = crate::lens::past_for_run(template, &params, &request.ratings);
    Ok(Event::RunCreated {
        run_id: request.run_id.clone(),
        template_id: template.id.clone(),
        template_version: template.version.clone(),
        autonomy_profile: request.autonomy_profile.clone(),
        params,
        blocks,
        models: request.models.clone(),
        default_model: request.default_model.clone(),
        sampling: request.sampling.clone(),
        max_concurrency: request.max_concurrency,
        no_cache: request.no_cache,
        past_ratings,
    })
}

fn status_of(doc: &RunDoc, block: &str) -> Result<BlockStatus, TransitionError> {
    doc.blocks
        .get(block)
        .map(|s| s.status)
        .ok_or_else(|| TransitionError::UnknownBlock(block.to_string()))
}

/// Claims a ready block for `owner`.
pub fn start(
    doc: &RunDoc,
    block: &str,
    owner: &str,
    now: Millis,
    policy: &Policy,
) -> Result<Event, TransitionError> {
    let status = status_of(doc, block)?;
    let state = &doc.blocks[block];
    if status != BlockStatus::Ready || state.not_before.is_some_and(|t| t > now) {
        return Err(TransitionError::NotReady {
            block: block.to_string(),
            status: status.as_str(),
        });
    }
    Ok(Event::BlockStarted {
        block: block.to_string(),
        attempt: state.attempts + 1,
        owner: owner.to_string(),
        lease_expires_at: now.saturating_add(policy.lease_ms as Millis),
    })
}

/// The block and state of `block_id` while `attempt` is its running one;
/// otherwise the attempt is stale (reclaimed by another worker meanwhile).
pub(crate) fn running<'a>(
    pipeline: &'a Pipeline,
    doc: &'a RunDoc,
    block_id: &str,
    attempt: u32,
) -> Result<(&'a crate::template::Block, &'a crate::run::BlockState), TransitionError> {
    let block = pipeline
        .block(block_id)
        .ok_or_else(|| TransitionError::UnknownBlock(block_id.to_string()))?;
    let state = doc
        .blocks
        .get(block_id)
        .ok_or_else(|| TransitionError::UnknownBlock(block_id.to_string()))?;
    if state.status != BlockStatus::Running || state.current_attempt().map(|a| a.n) != Some(attempt)
    {
        return Err(TransitionError::StaleAttempt {
            block: block_id.to_string(),
            attempt,
        });
    }
    Ok((block, state))
}

/// Records what an attempt produced and decides what follows: done, an
/// after-gate, a retry with backoff, or failure.
pub fn finish(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block_id: &str,
    attempt: u32,
    report: AttemptReport,
    now: Millis,
    policy: &Policy,
) -> Result<Vec<Event>, TransitionError> {
    let (block, state) = running(pipeline, doc, block_id, attempt)?;
    let mut report = report;
    let threshold = block.execution.threshold.as_ref();
    let metric_value = |key: &str| report.metrics.get(key).and_then(metric_as_f64);
    let score = metric_value("score").or_else(|| threshold.and_then(|t| metric_value(&t.metric)));

    let (outcome, failure) = if let Some(error) = &report.error {
        let outcome = if report.timed_out {
            AttemptOutcome::TimedOut
        } else {
            AttemptOutcome::Failed
        };
        (outcome, Some(error.clone()))
    } else if let Some(threshold) = threshold {
        match metric_value(&threshold.metric) {
            None => {
                let error = if block.runtime == crate::template::Runtime::Llm {
                    // The model reports it in its reply: a reply problem.
                    report.failure = Some(FailureKind::Reply);
                    format!(
                        "metric `{0}` needed by the threshold was not reported: the reply's JSON artifact has no top-level number `{0}`",
                        threshold.metric
                    )
                } else {
                    format!(
                        "metric `{}` needed by the threshold was not reported (write it to metrics.json)",
                        threshold.metric
                    )
                };
                report.error = Some(error.clone());
                (AttemptOutcome::Failed, Some(error))
            }
            Some(value) if value < threshold.min => (
                AttemptOutcome::ThresholdMissed,
                Some(format!(
                    "metric `{}` = {} is below the threshold {}",
                    threshold.metric,
                    format_number(value),
                    format_number(threshold.min)
                )),
            ),
            Some(_) => (AttemptOutcome::Succeeded, None),
        }
    } else {
        (AttemptOutcome::Succeeded, None)
    };

    // The audit threshold: a succeeded attempt whose audit composite is too
    // low is retried with the fix suggestions (when the block says so and has
    // retries left) or flagged for the operator.
    let execution = &block.execution;
    let can_retry = execution.retryable && state.retries_used < execution.max_retries;
    let mut audit_flag = None;
    let mut retry_corrections = None;
    // A blocking audit that is still missed when no corrected retry is left fails the block.
    let mut audit_blocks = false;
    let (outcome, failure) = match (outcome, failure, audit_shortfall(block, &report)) {
        (AttemptOutcome::Succeeded, None, Some((composite, threshold))) => {
            let wants_retry = block.audit.as_ref().is_some_and(|a| a.retry);
            let blocking = block.audit.as_ref().is_some_and(|a| a.blocking);
            if wants_retry && can_retry {
                retry_corrections = report
                    .audit
                    .as_ref()
                    .map(|audit| audit_corrections(audit, attempt));
                (
                    AttemptOutcome::ThresholdMissed,
                    Some(format!(
                        "audit composite {composite:.1} is below the audit threshold {threshold:.1}"
                    )),
                )
            } else if blocking {
                audit_flag = Some((composite, threshold));
                audit_blocks = true;
                let why = report
                    .audit
                    .as_ref()
                    .map(|audit| match audit.ceiling.as_ref().filter(|c| c.binding) {
                        Some(ceiling) => {
                            format!("capped at {:.1}: {}", ceiling.score, ceiling.reason)
                        }
                        None => format!("weakest {}", audit.weakest),
                    })
                    .unwrap_or_default();
                (
                    AttemptOutcome::ThresholdMissed,
                    Some(format!(
                        "audit composite {composite:.1} is below the blocking audit threshold {threshold:.1} ({why}); its artifacts are not passed downstream"
                    )),
                )
            } else {
                audit_flag = Some((composite, threshold));
                (AttemptOutcome::Succeeded, None)
            }
        }
        (outcome, failure, _) => (outcome, failure),
    };

    let report_failure = report.failure;
    let report_excerpt = report.reply_excerpt.clone();
    let mut events = vec![Event::AttemptFinished {
        block: block_id.to_string(),
        attempt,
        outcome,
        report,
        score,
    }];
    if let Some((composite, threshold)) = audit_flag {
        events.push(Event::AuditFlagged {
            block: block_id.to_string(),
            composite,
            threshold,
        });
    }
    match failure {
        None => match gate_phase(block.execution.human_gate, state.autonomy) {
            Some(GatePhase::After) => events.push(Event::BlockWaiting {
                block: block_id.to_string(),
                phase: GatePhase::After,
            }),
            _ => {
                events.push(Event::BlockDone {
                    block: block_id.to_string(),
                });
                if state.autonomy == Autonomy::Guided {
                    events.push(Event::ReviewFlagged {
                        block: block_id.to_string(),
                    });
                }
            }
        },
        Some(error) if report_failure == Some(FailureKind::Wait) => {
            events.push(Event::RetryScheduled {
                block: block_id.to_string(),
                not_before: now.saturating_add(WAIT_MS),
                reason: format!("{error}; tries again in {WAIT_MS} ms (waiting uses up no retry)"),
                corrections: retry_corrections,
                reply_note: None,
                counted: false,
            });
        }
        Some(error) => {
            let permanent = report_failure == Some(FailureKind::Permanent);
            if can_retry && !permanent && !audit_blocks {
                // A model's unusable reply is fixable by the model: the retry
                // is told what was wrong with it, apart from any corrections.
                let reply_note = (report_failure == Some(FailureKind::Reply)
                    && outcome == AttemptOutcome::Failed)
                    .then(|| ReplyNote {
                        attempt,
                        problem: error
                            .strip_prefix(&format!("block `{block_id}`: "))
                            .unwrap_or(&error)
                            .to_string(),
                        excerpt: report_excerpt.clone(),
                    });
                let delay = policy.backoff_ms(state.retries_used);
                events.push(Event::RetryScheduled {
                    block: block_id.to_string(),
                    not_before: now.saturating_add(delay as Millis),
                    reason: format!(
                        "{error}; retry {} of {} in {delay} ms",
                        state.retries_used + 1,
                        execution.max_retries
                    ),
                    corrections: retry_corrections,
                    reply_note,
                    counted: true,
                });
            } else {
                let tries = state.retries_used + 1;
                events.push(Event::BlockFailed {
                    block: block_id.to_string(),
                    error: format!(
                        "{error} ({}after {tries} attempt{})",
                        if permanent {
                            "not retried: no retry can fix it; "
                        } else {
                            ""
                        },
                        if tries == 1 { "" } else { "s" }
                    ),
                });
            }
        }
    }
    Ok(events)
}

/// How long a block that must wait ([`FailureKind::Wait`]) waits before it
/// tries again.
pub const WAIT_MS: Millis = 2_000;

/// `(composite, threshold)` when the attempt's audit is below the block's
/// audit threshold.
fn audit_shortfall(block: &crate::template::Block, report: &AttemptReport) -> Option<(f64, f64)> {
    let threshold = block.audit.as_ref()?.threshold?;
    let composite = report.audit.as_ref()?.composite;
    (composite < threshold).then_some((composite, threshold))
}

/// The instruction handed to a block retried because of its audit.
pub const AUDIT_INSTRUCTION: &str = "IMPORTANT: The automatic audit of the previous attempt found these problems. Fix each one. Do not lose existing correct content — only fix the flagged items.";

/// The audit's fix suggestions (most important first, at most ten) as corrections.
fn audit_corrections(audit: &factory_audit::AuditReport, attempt: u32) -> Corrections {
    Corrections {
        version: format!("v{attempt}→v{}", attempt + 1),
        source: format!("auto-audit {}", audit.badge),
        items: audit
            .suggestions
            .iter()
            .take(10)
            .map(|s| CorrectionItem {
                finding: format!("{} {} ({})", s.artifact, s.location, s.dimension)
                    .replace("  ", " "),
                correction: s.message.clone(),
                priority: s.priority.as_str().to_string(),
                improvement_item_id: None,
            })
            .collect(),
        instruction: AUDIT_INSTRUCTION.to_string(),
    }
}

fn metric_as_f64(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// Gives a running block back after its worker died or lost the lease; the
/// block becomes ready and its next attempt starts afresh.
pub fn abandon(doc: &RunDoc, block: &str, reason: &str) -> Result<Event, TransitionError> {
    let status = status_of(doc, block)?;
    let attempt = doc.blocks[block].current_attempt().map(|a| a.n);
    match (status, attempt) {
        (BlockStatus::Running, Some(attempt)) => Ok(Event::AttemptAbandoned {
            block: block.to_string(),
            attempt,
            reason: reason.to_string(),
        }),
        _ => Err(TransitionError::NotReady {
            block: block.to_string(),
            status: status.as_str(),
        }),
    }
}

/// Approves the gate the block waits at.
pub fn approve(doc: &RunDoc, block: &str, note: Option<String>) -> Result<Event, TransitionError> {
    let phase = waiting_phase(doc, block, "approve")?;
    Ok(Event::GateApproved {
        block: block.to_string(),
        phase,
        note,
    })
}

/// [`approve`] on behalf of `actor`, enforcing the block's
/// `separate_reviewer` rule against the run's event log.
pub fn approve_as(
    pipeline: &Pipeline,
    doc: &RunDoc,
    records: &[crate::run::EventRecord],
    block: &str,
    principal: Principal<'_>,
    note: Option<String>,
) -> Result<Event, TransitionError> {
    let event = approve(doc, block, note)?;
    may_approve(pipeline, records, block, principal)?;
    Ok(event)
}

/// The `separate_reviewer` rule alone: refused when `principal` (or the
/// person its review link acts for) started `block`'s current pass.
pub fn may_approve(
    pipeline: &Pipeline,
    records: &[crate::run::EventRecord],
    block: &str,
    principal: Principal<'_>,
) -> Result<(), TransitionError> {
    let separate = pipeline
        .block(block)
        .is_some_and(|b| b.execution.separate_reviewer);
    if separate && let Some(for_whom) = principal.who_ran(records, block) {
        return Err(TransitionError::SelfApproval {
            block: block.to_string(),
            actor: principal.actor.to_string(),
            for_whom,
        });
    }
    Ok(())
}

/// Changes a block's autonomy for this run only. Whoever started a block's
/// current pass may not lower a gate that asks for a separate reviewer
/// (see [`lowers_guarded_gate`]); someone else may.
pub fn set_autonomy(
    pipeline: &Pipeline,
    doc: &RunDoc,
    records: &[crate::run::EventRecord],
    block: &str,
    autonomy: Autonomy,
    principal: Principal<'_>,
) -> Result<Event, TransitionError> {
    status_of(doc, block)?;
    if lowers_guarded_gate(pipeline, block, autonomy)
        && let Some(for_whom) = principal.who_ran(records, block)
    {
        return Err(TransitionError::GuardedGate {
            block: block.to_string(),
            actor: principal.actor.to_string(),
            for_whom,
            autonomy: autonomy.as_str(),
        });
    }
    if doc.blocks[block].autonomy == autonomy {
        return Err(TransitionError::SameAutonomy {
            block: block.to_string(),
            autonomy: autonomy.as_str(),
        });
    }
    Ok(Event::AutonomyChanged {
        block: block.to_string(),
        autonomy,
    })
}

/// Rejects the gate with feedback; the feedback becomes the block's
/// corrections and the block runs again with them.
pub fn reject(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block: &str,
    feedback: &str,
    actor: &str,
) -> Result<Event, TransitionError> {
    let phase = waiting_phase(doc, block, "reject")?;
    let feedback = feedback.trim();
    if feedback.is_empty() {
        return Err(TransitionError::EmptyFeedback);
    }
    let state = &doc.blocks[block];
    let done_attempts = state
        .history
        .iter()
        .filter(|a| a.outcome == Some(AttemptOutcome::Succeeded))
        .count();
    let corrections = Corrections {
        version: format!("v{}→v{}", done_attempts, done_attempts + 1),
        source: format!("gate rejection by {actor}"),
        items: vec![CorrectionItem {
            finding: format!(
                "Rejected at the {} gate",
                match phase {
                    GatePhase::Before => "before",
                    GatePhase::After => "after",
                }
            ),
            correction: feedback.to_string(),
            priority: "high".to_string(),
            improvement_item_id: None,
        }],
        instruction: pipeline.template().corrections_instruction().to_string(),
    };
    Ok(Event::GateRejected {
        block: block.to_string(),
        phase,
        feedback: feedback.to_string(),
        corrections,
    })
}

fn waiting_phase(
    doc: &RunDoc,
    block: &str,
    action: &'static str,
) -> Result<GatePhase, TransitionError> {
    let status = status_of(doc, block)?;
    match (status, doc.blocks[block].gate) {
        (BlockStatus::Waiting, Some(phase)) => Ok(phase),
        _ => Err(TransitionError::NotWaiting {
            block: block.to_string(),
            status: status.as_str(),
            action,
        }),
    }
}

/// Re-runs a failed or done block: resets it and every block downstream of it
/// (their inputs are about to change) to pending. The scheduler does the rest.
pub fn retry(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block: &str,
    reason: &str,
) -> Result<Vec<Event>, TransitionError> {
    let status = status_of(doc, block)?;
    if !matches!(status, BlockStatus::Failed | BlockStatus::Done) {
        return Err(TransitionError::NotRetryable {
            block: block.to_string(),
            status: status.as_str(),
        });
    }
    reset_with_descendants(pipeline, doc, block, reason)
}

/// Whether a block in a reset plan needs a `block_reset`: one not pending
/// does, and so does a pending fan-out block that must let go of its
/// instances, or a pending instance that must leave.
pub(crate) fn needs_reset(state: &crate::run::BlockState, regroup: bool) -> bool {
    state.status != BlockStatus::Pending
        || (regroup && (state.instances.is_some() || (state.instance.is_some() && !state.dropped)))
}

/// Resets `block` and its descendants to pending (a person's retry): the
/// block runs anew, not from a memo. Blocks already pending are left alone.
pub fn reset_with_descendants(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block: &str,
    reason: &str,
) -> Result<Vec<Event>, TransitionError> {
    let index = pipeline
        .index_of(block)
        .ok_or_else(|| TransitionError::UnknownBlock(block.to_string()))?;
    let mut events = Vec::new();
    for (i, regroup) in pipeline.reset_plan(&[index]) {
        let id = &pipeline.blocks()[i].id;
        let state = doc
            .blocks
            .get(id)
            .ok_or_else(|| TransitionError::UnknownBlock(id.clone()))?;
        if state.status == BlockStatus::Running {
            return Err(TransitionError::DependentRunning {
                block: block.to_string(),
                dependent: id.clone(),
            });
        }
        if needs_reset(state, regroup) {
            events.push(Event::BlockReset {
                block: id.clone(),
                reason: if id == block {
                    reason.to_string()
                } else {
                    format!("upstream `{block}` is re-running")
                },
                // The block itself was asked for anew; what follows it may
                // reuse a memo when its inputs come out the same.
                fresh: id == block,
                regroup,
            });
        }
    }
    Ok(events)
}
