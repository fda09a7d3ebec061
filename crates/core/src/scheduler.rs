//! The stateless scheduler: (pipeline, run document, now) → decisions.
//!
//! It holds no memory of its own. Every call looks at the document afresh and
//! returns the transitions that follow from it (pending blocks becoming ready,
//! waiting at a before-gate or blocked behind a failure; the run's status),
//! plus which ready blocks may start now under the concurrency limit. Calling
//! it again on the document those events produce returns no events: the
//! decision is a fixpoint.
//!
//! Readiness rule (C2): a block is ready when every upstream block is `done`,
//! which already includes "its after-gate was approved", because a block whose
//! after-gate is open is `waiting`, not `done`. A block with `mode: any` is
//! ready once every upstream block has settled (done, failed or blocked) and
//! at least one is done.

use crate::pipeline::Pipeline;
use crate::run::{BlockStatus, Event, GatePhase, Millis, RunDoc, RunStatus};
use crate::template::{Autonomy, DependencyMode, HumanGate, Need};

/// What the engine should do next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Transitions to record, in an order that applies cleanly.
    pub events: Vec<Event>,
    /// Ready blocks that may start now, in priority order, within the limit.
    pub startable: Vec<String>,
    /// The earliest future time a ready block's backoff ends.
    pub wake_at: Option<Millis>,
    /// The run status after `events`.
    pub status: RunStatus,
}

/// Where a block's gate sits for a run, given its autonomy level.
/// `gate` autonomy on a block whose template has no gate reviews it after.
pub fn gate_phase(human_gate: HumanGate, autonomy: Autonomy) -> Option<GatePhase> {
    match (autonomy, human_gate) {
        (Autonomy::Gate, HumanGate::Before) => Some(GatePhase::Before),
        (Autonomy::Gate, HumanGate::After | HumanGate::None) => Some(GatePhase::After),
        (Autonomy::Guided | Autonomy::Auto, _) => None,
    }
}

/// Decides the next transitions. `max_concurrency` caps running blocks across
/// the run (0 means no cap).
pub fn decide(pipeline: &Pipeline, doc: &RunDoc, now: Millis, max_concurrency: usize) -> Decision {
    let blocks = pipeline.blocks();
    let mut status: Vec<BlockStatus> = blocks
        .iter()
        .map(|b| {
            doc.blocks
                .get(&b.id)
                .map_or(BlockStatus::Pending, |s| s.status)
        })
        .collect();
    let mut events = Vec::new();

    for &i in pipeline.topo_order() {
        if status[i] != BlockStatus::Pending {
            continue;
        }
        if let Some((next, event)) = step(pipeline, doc, i, |u| status[u]) {
            status[i] = next;
            events.push(event);
        }
    }

    let running = status
        .iter()
        .filter(|s| **s == BlockStatus::Running)
        .count();
    let mut budget = if max_concurrency == 0 {
        usize::MAX
    } else {
        max_concurrency.saturating_sub(running)
    };
    let mut startable = Vec::new();
    let mut wake_at: Option<Millis> = None;
    for &i in pipeline.topo_order() {
        if status[i] != BlockStatus::Ready {
            continue;
        }
        let not_before = doc
            .blocks
            .get(&blocks[i].id)
            .and_then(|s| s.not_before)
            .unwrap_or(Millis::MIN);
        if not_before > now {
            wake_at = Some(wake_at.map_or(not_before, |w| w.min(not_before)));
        } else if budget > 0 {
            budget -= 1;
            startable.push(blocks[i].id.clone());
        }
    }

    let run_status = run_status(&status);
    if run_status != doc.status {
        events.push(Event::RunStatusChanged { status: run_status });
    }
    Decision {
        events,
        startable,
        wake_at,
        status: run_status,
    }
}

/// What follows for pending block `i`, given its upstream statuses: ready,
/// waiting at its before-gate, blocked, or — for an expanded fan-out block,
/// whose upstream are its instances — done as a group. None: not yet.
fn step(
    pipeline: &Pipeline,
    doc: &RunDoc,
    i: usize,
    status: impl Fn(usize) -> BlockStatus,
) -> Option<(BlockStatus, Event)> {
    let blocks = pipeline.blocks();
    let block = &blocks[i];
    let state = doc.blocks.get(&block.id)?;
    let readiness = match (&state.instances, pipeline.members(i), &block.fan_out) {
        (Some(_), Some(instances), Some(fan_out)) => {
            group_readiness(fan_out.need, instances, &status)
        }
        // Expanded, but this graph was built without its instances: never
        // decide a group on a graph that does not hold it.
        (Some(_), _, _) => return None,
        _ => readiness(block.inputs.mode, pipeline.upstream(i), &status),
    };
    let reason = match readiness {
        Readiness::NotYet => return None,
        Readiness::Blocked(bad) => {
            return Some((
                BlockStatus::Blocked,
                Event::BlockBlocked {
                    block: block.id.clone(),
                    because: blocks[bad].id.clone(),
                },
            ));
        }
        Readiness::Ready(reason) => reason,
    };
    if state.instances.is_some() {
        return Some((
            BlockStatus::Done,
            Event::GroupDone {
                block: block.id.clone(),
                reason,
            },
        ));
    }
    // A fan-out block's gates are its instances': reading the list is not
    // the work a reviewer is asked to look at.
    let needs_before_gate = block.fan_out.is_none()
        && gate_phase(block.execution.human_gate, state.autonomy) == Some(GatePhase::Before)
        && !state.before_gate_passed;
    Some(if needs_before_gate {
        (
            BlockStatus::Waiting,
            Event::BlockWaiting {
                block: block.id.clone(),
                phase: GatePhase::Before,
            },
        )
    } else {
        (
            BlockStatus::Ready,
            Event::BlockReady {
                block: block.id.clone(),
                reason,
            },
        )
    })
}

/// An expanded fan-out block: done once its instances settle as `need`
/// asks; blocked as soon as they no longer can.
fn group_readiness(
    need: Need,
    instances: &[usize],
    status: impl Fn(usize) -> BlockStatus,
) -> Readiness {
    let (mut done, mut dead, mut open) = (0, 0, 0);
    let mut first_dead = None;
    for &m in instances {
        match status(m) {
            BlockStatus::Done => done += 1,
            BlockStatus::Failed | BlockStatus::Blocked => {
                dead += 1;
                first_dead.get_or_insert(m);
            }
            _ => open += 1,
        }
    }
    let required = need.required(instances.len());
    if let Some(bad) = first_dead
        && done + open < required
    {
        return Readiness::Blocked(bad);
    }
    if open > 0 {
        return Readiness::NotYet;
    }
    let of = instances.len();
    Readiness::Ready(match need {
        Need::All => format!("all {of} instances done"),
        Need::Any | Need::AtLeast(_) => {
            format!("{done} of {of} instances done ({dead} not), {required} needed")
        }
    })
}

enum Readiness {
    NotYet,
    /// Cannot run in this pass, because of this upstream block.
    Blocked(usize),
    Ready(String),
}

fn readiness(
    mode: DependencyMode,
    upstream: &[usize],
    status: &impl Fn(usize) -> BlockStatus,
) -> Readiness {
    let dead = |u: usize| matches!(status(u), BlockStatus::Failed | BlockStatus::Blocked);
    if upstream.is_empty() {
        return Readiness::Ready("no dependencies".to_string());
    }
    match mode {
        DependencyMode::All => {
            if let Some(&bad) = upstream.iter().find(|&&u| dead(u)) {
                Readiness::Blocked(bad)
            } else if upstream.iter().all(|&u| status(u) == BlockStatus::Done) {
                Readiness::Ready("all dependencies done".to_string())
            } else {
                Readiness::NotYet
            }
        }
        DependencyMode::Any => {
            if !upstream
                .iter()
                .all(|&u| status(u) == BlockStatus::Done || dead(u))
            {
                return Readiness::NotYet;
            }
            let done = upstream
                .iter()
                .filter(|&&u| status(u) == BlockStatus::Done)
                .count();
            if done == 0 {
                Readiness::Blocked(upstream[0])
            } else {
                Readiness::Ready(format!(
                    "any: {done} of {} dependencies done, the rest settled",
                    upstream.len()
                ))
            }
        }
    }
}

fn run_status(status: &[BlockStatus]) -> RunStatus {
    let mut counts = StatusCounts::default();
    for s in status {
        counts.add(*s);
    }
    counts.run_status()
}

/// How many blocks of a run are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts([usize; 7]);

impl StatusCounts {
    /// Counts a whole document (the engine keeps its counts incrementally).
    pub fn of(doc: &RunDoc) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for state in doc.blocks.values().filter(|s| !s.dropped) {
            counts.add(state.status);
        }
        counts
    }

    fn slot(status: BlockStatus) -> usize {
        match status {
            BlockStatus::Pending => 0,
            BlockStatus::Ready => 1,
            BlockStatus::Running => 2,
            BlockStatus::Done => 3,
            BlockStatus::Failed => 4,
            BlockStatus::Blocked => 5,
            BlockStatus::Waiting => 6,
        }
    }

    pub fn get(&self, status: BlockStatus) -> usize {
        self.0[Self::slot(status)]
    }

    pub fn total(&self) -> usize {
        self.0.iter().sum()
    }

    pub(crate) fn add(&mut self, status: BlockStatus) {
        self.0[Self::slot(status)] += 1;
    }

    pub(crate) fn remove(&mut self, status: BlockStatus) {
        let slot = &mut self.0[Self::slot(status)];
        *slot = slot.saturating_sub(1);
    }

    /// The run's status: running while anything runs or may start, waiting
    /// while only gates hold it, done when every block is, failed otherwise.
    pub fn run_status(&self) -> RunStatus {
        if self.get(BlockStatus::Running) > 0 || self.get(BlockStatus::Ready) > 0 {
            RunStatus::Running
        } else if self.get(BlockStatus::Waiting) > 0 {
            RunStatus::Waiting
        } else if self.get(BlockStatus::Done) == self.total() {
            RunStatus::Done
        } else {
            RunStatus::Failed
        }
    }
}

mod index;
pub use index::RunIndex;

#[cfg(test)]
mod tests;
