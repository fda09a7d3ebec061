//! Pattern 2, stream/event: records that move through `record_state.states`.
//!
//! A stream template is a chain of daemon blocks over a stream of records
//! (seed `001`, "Pattern 2"). Its shape, checked by [`plan`]:
//!
//! - **Intake blocks** have no dependencies and a trigger that brings records
//!   into the first state, keyed by the payload's `record_state.track_per`
//!   field. A webhook intake runs no step of its own (`builtin: noop`): each
//!   signed delivery is a record. A cron intake runs its step on each tick
//!   ([`cron`] decides which are due) and the records it lists whose key is
//!   new enter the stream.
//! - **Stage blocks** depend on the block before them. The block at position
//!   `i` of the chain (intakes are position 0) leaves records in
//!   `states[i]`: it takes records waiting in `states[i - 1]`, one or
//!   `inputs.config.batch` at a time, and moves each to `states[i]` exactly
//!   once. So a chain of N blocks has N states.
//!
//! The DAG scheduler of pattern 1 is not involved: records have their own,
//! per-record state machine ([`settle`] decides every move).

pub mod cron;
pub mod settle;

use std::collections::BTreeMap;

use crate::diagnostics::{Diagnostic, codes};
use crate::template::{HumanGate, LifecycleMode, RecordState, Runtime, Template, TriggerType};

/// Records a stage takes at once when `inputs.config.batch` is not set.
pub const DEFAULT_BATCH: usize = 1;
/// The most records one stage attempt may take.
pub const MAX_BATCH: usize = 1000;
/// A record key's longest form, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// The validated shape of a stream template.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPlan {
    /// The payload field whose value names a record.
    pub track_per: String,
    /// The states a record moves through, first to last.
    pub states: Vec<String>,
    pub intakes: Vec<Intake>,
    /// In chain order: `stages[k]` moves records from `states[k]` to
    /// `states[k + 1]`.
    pub stages: Vec<Stage>,
}

/// A block whose trigger brings records into the first state.
#[derive(Debug, Clone, PartialEq)]
pub struct Intake {
    pub block: String,
    pub kind: IntakeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IntakeKind {
    /// Each signed delivery is one record.
    Webhook {
        /// The declared `trigger.webhook` path, mounted under
        /// `/api/v1/hooks/` beside `{template}/{block}`.
        hook_path: Option<String>,
        /// The server's environment variable holding the signing secret.
        secret_env: String,
    },
    /// On each tick the block's step runs and lists records (a JSON array
    /// of payloads); those whose key is new enter the first state.
    Cron(CronIntake),
    /// A person adds records (CLI, API, the Streams page).
    Manual,
    /// Each feed event that matches the filter is one record (its payload
    /// is the record's data; [`crate::bus`]).
    Event(crate::bus::EventFilter),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CronIntake {
    pub expression: String,
    pub timezone: Option<String>,
    pub catch_up: u32,
    /// The artifact the step lists its records in.
    pub records_key: String,
    pub timeout_ms: u64,
}

impl Intake {
    /// `(declared path, secret variable)` of a webhook intake.
    pub fn webhook(&self) -> Option<(Option<&str>, &str)> {
        match &self.kind {
            IntakeKind::Webhook {
                hook_path,
                secret_env,
            } => Some((hook_path.as_deref(), secret_env)),
            IntakeKind::Cron(_) | IntakeKind::Manual | IntakeKind::Event(_) => None,
        }
    }
}

/// A block that moves records from one state to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub block: String,
    /// Index into [`StreamPlan::states`] of the state it takes records from.
    pub from: usize,
    pub batch: usize,
    /// Attempts per record before it is failed and waits for a person.
    pub max_attempts: u32,
    /// `builtin: noop`: every record moves on unchanged, no step runs.
    pub pass_through: bool,
    /// The artifact key the block writes its per-record results to.
    pub results_key: Option<String>,
    /// The block's timeout: a claim on a record lasts this long plus a margin.
    pub timeout_ms: u64,
}

impl StreamPlan {
    pub fn first_state(&self) -> &str {
        &self.states[0]
    }

    pub fn last_state(&self) -> &str {
        &self.states[self.states.len() - 1]
    }

    /// The manual intake `block`, or the only one when `block` is `None`.
    pub fn manual_intake(&self, block: Option<&str>) -> Option<&Intake> {
        let mut manual = self.intakes.iter().filter(|i| i.kind == IntakeKind::Manual);
        match block {
            Some(block) => manual.find(|i| i.block == block),
            None => {
                let first = manual.next();
                if manual.next().is_some() { None } else { first }
            }
        }
    }

    /// The webhook intake `block`.
    pub fn webhook_intake(&self, block: &str) -> Option<&Intake> {
        self.intakes
            .iter()
            .find(|i| i.block == block && i.webhook().is_some())
    }

    /// The webhook intake mounted at a declared hook path.
    pub fn intake_at_path(&self, path: &str) -> Option<&Intake> {
        let path = path.trim_matches('/');
        self.intakes.iter().find(|i| {
            i.webhook()
                .and_then(|(declared, _)| declared)
                .map(|p| p.trim_matches('/'))
                == Some(path)
        })
    }

    pub fn state_after(&self, stage: &Stage) -> &str {
        &self.states[stage.from + 1]
    }
}

/// True when the template uses any field of the stream pattern.
pub fn is_stream(template: &Template) -> bool {
    template.blocks.iter().any(|b| {
        b.record_state.is_some()
            || b.lifecycle.as_ref().map(|l| l.mode) == Some(LifecycleMode::Daemon)
            || b.trigger.trigger_type == TriggerType::Webhook
    })
}

/// The stream plan of a template, `None` for a template of another pattern,
/// or every problem with its shape. Field-level checks (a trigger's own
/// fields, `record_state` itself) are `validate`'s; this checks how the
/// blocks fit together. Expects ids unique and dependencies resolved.
pub fn plan(template: &Template) -> Result<Option<StreamPlan>, Vec<Diagnostic>> {
    if !is_stream(template) {
        return Ok(None);
    }
    let mut out = Vec::new();
    let at = |i: usize, suffix: &str| format!("$.blocks[{i}]{suffix}");
    let index: BTreeMap<&str, usize> = template
        .blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id.as_str(), i))
        .collect();

    for (field, set) in [
        ("autonomy_profiles", !template.autonomy_profiles.is_empty()),
        ("convergence", template.convergence.is_some()),
        ("audit", template.audit.is_some()),
        (
            "corrections_instruction",
            template.corrections_instruction.is_some(),
        ),
    ] {
        if set {
            out.push(
                Diagnostic::error(
                    codes::STREAM,
                    format!("$.{field}"),
                    format!("`{field}` belongs to dag-batch runs (their gates, audits and reviews); a stream template has none to apply it to"),
                )
                .with_help(format!("remove `{field}`")),
            );
        }
    }
    for (name, spec) in &template.params {
        if spec.default.is_none() {
            out.push(
                Diagnostic::error(
                    codes::STREAM,
                    format!("$.params.{name}"),
                    format!("param `{name}` has no default, and nobody passes params to a stream"),
                )
                .with_help("give it a `default` (its steps read it like a run's param)"),
            );
        }
    }

    // Positions along the chain: intakes are 0, a stage one past its upstream.
    let mut position: Vec<Option<usize>> = vec![None; template.blocks.len()];
    let mut record_state: Option<(usize, &RecordState)> = None;
    let mut intakes = Vec::new();
    for (i, block) in template.blocks.iter().enumerate() {
        let push =
            |out: &mut Vec<Diagnostic>, d: Diagnostic| out.push(d.in_block(block.id.clone()));
        if block.lifecycle.as_ref().map(|l| l.mode) != Some(LifecycleMode::Daemon) {
            push(
                &mut out,
                Diagnostic::error(
                    codes::STREAM,
                    at(i, ".lifecycle"),
                    "in a stream template every block is a daemon block; this one would run once and never see a record",
                )
                .with_help("add `\"lifecycle\": {\"mode\": \"daemon\"}`, or move one-shot work to a dag-batch template"),
            );
        }
        if block.execution.human_gate != HumanGate::None {
            push(
                &mut out,
                not_yet(
                    at(i, ".execution.human_gate"),
                    "a human gate on a stream block (per-record gates)",
                ),
            );
        }
        if block.execution.threshold.is_some() {
            push(
                &mut out,
                not_yet(
                    at(i, ".execution.threshold"),
                    "a threshold on a stream block (per-record audit)",
                ),
            );
        }
        if block.audit.is_some() {
            push(
                &mut out,
                not_yet(
                    at(i, ".audit"),
                    "audit settings on a stream block (per-record audit)",
                ),
            );
        }
        if !block.outputs.metrics.is_empty() {
            push(
                &mut out,
                not_yet(
                    at(i, ".outputs.metrics"),
                    "metrics of a stream block (per-record metrics)",
                ),
            );
        }
        if !block.outputs.emits.is_empty() {
            push(
                &mut out,
                not_yet(
                    at(i, ".outputs.emits"),
                    "`outputs.emits` on a stream block (a stage's moves are `record.moved` events already)",
                ),
            );
        }
        if block.outputs.gaps.is_some() {
            push(
                &mut out,
                not_yet(
                    at(i, ".outputs.gaps"),
                    "`outputs.gaps` on a stream block (gaps belong to a run)",
                ),
            );
        }
        if block.execution.separate_reviewer {
            push(
                &mut out,
                not_yet(
                    at(i, ".execution.separate_reviewer"),
                    "`separate_reviewer` on a stream block (it has no gate)",
                ),
            );
        }
        if block.execution.parallel_group.is_some() {
            push(
                &mut out,
                not_yet(
                    at(i, ".execution.parallel_group"),
                    "`parallel_group` on a stream block (each stage runs on its own)",
                ),
            );
        }
        if block.inputs.mode != crate::template::DependencyMode::All {
            push(
                &mut out,
                not_yet(
                    at(i, ".inputs.mode"),
                    "`inputs.mode` on a stream block (a stage takes records by state)",
                ),
            );
        }
        if !block.inputs.env.is_empty() {
            push(
                &mut out,
                not_yet(
                    at(i, ".inputs.env"),
                    "`inputs.env` on a stream block (checked when a run is created; a stream has no run)",
                ),
            );
        }
        if !block.inputs.files.is_empty() {
            push(
                &mut out,
                Diagnostic::error(
                    codes::STREAM,
                    at(i, ".inputs.files"),
                    "a stream has no run to upload files to",
                )
                .with_help("remove `inputs.files`; records bring their data in their payload"),
            );
        }
        if let Some(own) = &block.record_state {
            match record_state {
                None => record_state = Some((i, own)),
                Some((first, theirs)) if theirs != own => push(
                    &mut out,
                    Diagnostic::error(
                        codes::STREAM,
                        at(i, ".record_state"),
                        format!(
                            "`record_state` differs from block `{}`'s: a stream has one record lifecycle",
                            template.blocks[first].id
                        ),
                    )
                    .with_help("declare it once, on the intake block, or repeat it exactly"),
                ),
                Some(_) => {}
            }
        }
        if block.inputs.depends.is_empty() {
            position[i] = Some(0);
            // Defaults are `retryable: true, max_retries: 2`.
            if !block.execution.retryable || block.execution.max_retries != 2 {
                push(
                    &mut out,
                    Diagnostic::error(
                        codes::STREAM,
                        at(i, ".execution"),
                        "an intake does not retry: a delivery is answered at once, a failed cron firing waits for the next tick",
                    )
                    .with_help("remove `retryable` and `max_retries` from the intake; set them on the stages"),
                );
            }
            match block.trigger.trigger_type {
                TriggerType::Webhook | TriggerType::Manual | TriggerType::Event => {
                    let kind = match block.trigger.trigger_type {
                        TriggerType::Webhook => "webhook",
                        TriggerType::Event => "event",
                        _ => "manual",
                    };
                    for (field, set) in [("skill", block.skill.is_some()), ("model", block.model.is_some())] {
                        if set {
                            push(
                                &mut out,
                                Diagnostic::error(
                                    codes::STREAM,
                                    at(i, &format!(".{field}")),
                                    format!("`{field}` on a {kind} intake, which runs no step"),
                                )
                                .with_help(format!("move `{field}` to the stage that does the work")),
                            );
                        }
                    }
                    if !is_noop(block) {
                        push(
                            &mut out,
                            Diagnostic::error(
                                codes::STREAM,
                                at(i, ".runtime"),
                                format!("a {kind} intake takes each delivery (event, or record a person adds) as it is; it runs no step of its own"),
                            )
                            .with_help("make it `\"runtime\": \"builtin\"` with `\"config\": {\"builtin\": \"noop\"}` and put the work in the next block"),
                        );
                    }
                    if block.inputs.config.contains_key("batch") {
                        push(&mut out, batch_not_here(at(i, ".inputs.config.batch")));
                    }
                    if block.record_state.is_none() {
                        push(
                            &mut out,
                            Diagnostic::error(
                                codes::RECORD_STATE,
                                at(i, ".record_state"),
                                "an intake block must say what a record is and which states it moves through",
                            )
                            .with_help("e.g. `\"record_state\": {\"track_per\": \"video_id\", \"states\": [\"raw\", \"annotated\", \"scored\"]}`"),
                        );
                    }
                    intakes.push(Intake {
                        block: block.id.clone(),
                        kind: match block.trigger.trigger_type {
                            TriggerType::Webhook => IntakeKind::Webhook {
                                hook_path: block.trigger.webhook.clone(),
                                secret_env: block.trigger.secret_env.clone().unwrap_or_default(),
                            },
                            // A filter that does not parse is the trigger check's error.
                            TriggerType::Event => IntakeKind::Event(
                                crate::bus::EventFilter::parse(block.trigger.event.as_deref().unwrap_or_default())
                                    .unwrap_or(crate::bus::EventFilter { name: String::new(), conditions: Vec::new() }),
                            ),
                            _ => IntakeKind::Manual,
                        },
                    });
                }
                TriggerType::Cron => {
                    if is_noop(block) {
                        push(
                            &mut out,
                            Diagnostic::error(
                                codes::STREAM,
                                at(i, ".runtime"),
                                "a cron intake runs a step on each tick that lists the records (a no-op lists none)",
                            )
                            .with_help("give it a `command` (or another runtime) that writes the records as a JSON array, e.g. one per new file of a folder"),
                        );
                    }
                    if block.inputs.config.contains_key("batch") {
                        push(&mut out, batch_not_here(at(i, ".inputs.config.batch")));
                    }
                    if block.record_state.is_none() {
                        push(
                            &mut out,
                            Diagnostic::error(
                                codes::RECORD_STATE,
                                at(i, ".record_state"),
                                "an intake block must say what a record is and which states it moves through",
                            )
                            .with_help("e.g. `\"record_state\": {\"track_per\": \"file\", \"states\": [\"found\", \"read\"]}`"),
                        );
                    }
                    let records_key = match block.outputs.artifacts.as_slice() {
                        [one] if one.format == crate::template::ArtifactFormat::Json => one.key.clone(),
                        _ => {
                            push(
                                &mut out,
                                Diagnostic::error(
                                    codes::STREAM,
                                    at(i, ".outputs.artifacts"),
                                    "a cron intake writes one JSON artifact: the records it found, as an array of objects",
                                )
                                .with_help("declare exactly one artifact, e.g. `{\"key\": \"found\", \"path\": \"found.json\", \"format\": \"json\"}`"),
                            );
                            String::new()
                        }
                    };
                    intakes.push(Intake {
                        block: block.id.clone(),
                        kind: IntakeKind::Cron(CronIntake {
                            expression: block.trigger.cron.clone().unwrap_or_default(),
                            timezone: block.trigger.timezone.clone(),
                            catch_up: block.trigger.catch_up.unwrap_or(0),
                            records_key,
                            timeout_ms: block.timeout,
                        }),
                    });
                }
                TriggerType::Dependency => push(
                    &mut out,
                    Diagnostic::error(
                        codes::STREAM,
                        at(i, ".trigger"),
                        "a stream block with no dependency needs a trigger that brings it records",
                    )
                    .with_help("give it `\"trigger\": {\"type\": \"webhook\", \"secret_env\": \"…\"}`, a `cron`, `event` or `manual` trigger, or make it depend on the block before it"),
                ),
            }
        } else if block.trigger.trigger_type != TriggerType::Dependency {
            push(
                &mut out,
                Diagnostic::error(
                    codes::STREAM,
                    at(i, ".trigger.type"),
                    "a stage takes its records from the block it depends on; a trigger of its own would be a second source",
                )
                .with_help("remove `trigger` from this block, or remove its dependencies to make it an intake"),
            );
        }
    }

    let mut hook_paths: BTreeMap<String, &str> = BTreeMap::new();
    for intake in &intakes {
        if let Some((Some(path), _)) = intake.webhook() {
            let path = path.trim_matches('/').to_string();
            if let Some(first) = hook_paths.insert(path.clone(), &intake.block) {
                out.push(
                    Diagnostic::error(
                        codes::STREAM,
                        at(index[intake.block.as_str()], ".trigger.webhook"),
                        format!("webhook path `{path}` is declared by `{first}` too: a delivery there would have two intakes"),
                    )
                    .in_block(intake.block.clone())
                    .with_help("give each webhook intake a path of its own"),
                );
            }
        }
    }
    let Some((_, record_state)) = record_state else {
        if out.is_empty() {
            out.push(
                Diagnostic::error(codes::RECORD_STATE, "$.blocks", "a stream template needs `record_state` on its intake block")
                    .with_help("e.g. `\"record_state\": {\"track_per\": \"video_id\", \"states\": [\"raw\", \"scored\"]}`"),
            );
        }
        return Err(out);
    };

    // Stage positions, in topological order (a stage's upstream first).
    let mut stages_at: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut settled = true;
    while settled {
        settled = false;
        for (i, block) in template.blocks.iter().enumerate() {
            if position[i].is_some() {
                continue;
            }
            let ups: Option<Vec<usize>> = block
                .inputs
                .depends
                .iter()
                .map(|d| index.get(d.block.as_str()).and_then(|&j| position[j]))
                .collect();
            let Some(ups) = ups else { continue };
            let depth = ups.iter().copied().max().unwrap_or(0) + 1;
            if ups.iter().any(|&p| p + 1 != depth) {
                out.push(
                    Diagnostic::error(
                        codes::STREAM,
                        at(i, ".inputs.depends"),
                        "a stage depends on blocks at different places in the chain; it takes records from one state",
                    )
                    .in_block(block.id.clone())
                    .with_help("depend only on the block just before it"),
                );
            }
            position[i] = Some(depth);
            stages_at.entry(depth).or_default().push(i);
            settled = true;
        }
    }

    let mut stages = Vec::new();
    for (&depth, blocks) in &stages_at {
        if blocks.len() > 1 {
            let names: Vec<&str> = blocks
                .iter()
                .map(|&i| template.blocks[i].id.as_str())
                .collect();
            out.push(
                Diagnostic::error(
                    codes::STREAM,
                    at(blocks[1], ".inputs.depends"),
                    format!(
                        "blocks {} both take records from state {depth} of the chain; each record would go to one of them at random",
                        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" and ")
                    ),
                )
                .in_block(names[1].to_string())
                .with_help("chain them one after the other"),
            );
            continue;
        }
        let i = blocks[0];
        let block = &template.blocks[i];
        let batch = match block.inputs.config.get("batch") {
            None => DEFAULT_BATCH,
            Some(value) => match value.as_u64() {
                Some(n) if (1..=MAX_BATCH as u64).contains(&n) => n as usize,
                _ => {
                    out.push(
                        Diagnostic::error(
                            codes::STREAM,
                            at(i, ".inputs.config.batch"),
                            format!("`batch` is {value}; it is the number of records a step takes at once"),
                        )
                        .in_block(block.id.clone())
                        .with_help(format!("a whole number from 1 to {MAX_BATCH}")),
                    );
                    DEFAULT_BATCH
                }
            },
        };
        let pass_through = is_noop(block);
        let results_key = match block.outputs.artifacts.as_slice() {
            _ if pass_through => None,
            [one] if one.format == crate::template::ArtifactFormat::Json => Some(one.key.clone()),
            _ => {
                out.push(
                    Diagnostic::error(
                        codes::STREAM,
                        at(i, ".outputs.artifacts"),
                        "a stage writes one JSON artifact: its result for each record it was given",
                    )
                    .in_block(block.id.clone())
                    .with_help("declare exactly one artifact, e.g. `{\"key\": \"results\", \"path\": \"results.json\", \"format\": \"json\"}`; see README, \"Stream templates\""),
                );
                None
            }
        };
        let max_attempts = if block.execution.retryable {
            block.execution.max_retries + 1
        } else {
            1
        };
        stages.push(Stage {
            block: block.id.clone(),
            from: depth - 1,
            batch,
            max_attempts,
            pass_through,
            results_key,
            timeout_ms: block.timeout,
        });
    }

    let chain = stages_at.len() + 1;
    let track_per = record_state.track_per.clone().unwrap_or_default();
    if record_state.states.len() != chain && record_state.states.len() >= 2 {
        out.push(
            Diagnostic::error(
                codes::STREAM,
                "$.blocks",
                format!(
                    "`record_state.states` lists {} states but the chain has {chain} blocks: the block at place i leaves records in states[i], the intake in the first",
                    record_state.states.len()
                ),
            )
            .with_help("list one state per block of the chain, intake first"),
        );
    }
    if intakes.is_empty() && out.is_empty() {
        out.push(Diagnostic::error(
            codes::STREAM,
            "$.blocks",
            "a stream template needs an intake: a block with no dependency and a webhook, cron or manual trigger",
        ));
    }
    if out.iter().any(Diagnostic::is_error) {
        return Err(out);
    }
    Ok(Some(StreamPlan {
        track_per,
        states: record_state.states.clone(),
        intakes,
        stages,
    }))
}

fn is_noop(block: &crate::template::Block) -> bool {
    block.runtime == Runtime::Builtin
        && block.inputs.config.get("builtin").and_then(|v| v.as_str()) == Some("noop")
}

fn not_yet(path: String, what: &str) -> Diagnostic {
    Diagnostic::error(
        codes::NOT_SUPPORTED_YET,
        path,
        format!("{what}: the stream runner does not act on it yet"),
    )
    .with_help("remove it; a stream block's output is not gated or audited in this release")
}

fn batch_not_here(path: String) -> Diagnostic {
    Diagnostic::error(
        codes::STREAM,
        path,
        "`batch` is read by stream stages only; here it would be ignored",
    )
    .with_help("remove `batch`, or set it on a stage block (one that depends on another)")
}

/// `inputs.config.batch` on a block that is not a stream stage.
pub(crate) fn misplaced_batch(template: &Template) -> Vec<Diagnostic> {
    if is_stream(template) {
        return Vec::new();
    }
    template
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| b.inputs.config.contains_key("batch"))
        .map(|(i, b)| {
            batch_not_here(format!("$.blocks[{i}].inputs.config.batch")).in_block(b.id.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests;
