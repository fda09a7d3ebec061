//! The scheduler's incremental view of one run: [`decide`](super::decide)
//! without looking at every block.
//!
//! `decide` reads every block of the document on every call, which makes a
//! run's total scheduling work quadratic in its size (a 10,000-block run
//! decides thousands of times). A [`RunIndex`] keeps what `decide` derives —
//! each block's status, how many blocks are in each status, which are ready
//! (and which of those wait out a backoff) — and is told which blocks each
//! commit changed ([`RunIndex::observe`]). Its [`RunIndex::decide`] then looks
//! only at pending blocks whose upstream changed since they were last looked
//! at, and at ready blocks up to the number the caller may start.
//!
//! Invariants, kept by `observe` and checked against `decide` on every step
//! of the scheduler's tests (hand-built runs and random DAGs):
//! - `status[i]` is the document's status of block `i` (pending if absent).
//! - Every pending block outside `dirty` would be "not yet" for `decide`:
//!   its readiness depends only on its upstream statuses, and a change of
//!   any of those puts it back into `dirty`.
//! - `ready` holds exactly the ready blocks, `backoff` those of them with a
//!   `not_before`, both by topological position.

use std::collections::{BTreeMap, BTreeSet};

use super::{Decision, StatusCounts, step};
use crate::pipeline::Pipeline;
use crate::run::{BlockStatus, Event, EventRecord, Millis, RunDoc};

#[derive(Debug, Clone)]
pub struct RunIndex {
    /// Block index → the block's status in the document.
    status: Vec<BlockStatus>,
    /// Block index → its position in the pipeline's topological order.
    position: Vec<usize>,
    counts: StatusCounts,
    /// Topological positions of ready blocks.
    ready: BTreeSet<usize>,
    /// Ready blocks with a backoff: topological position → `not_before`.
    backoff: BTreeMap<usize, Millis>,
    /// Topological positions of pending blocks to look at again.
    dirty: BTreeSet<usize>,
}

impl RunIndex {
    /// Reads every block once.
    pub fn new(pipeline: &Pipeline, doc: &RunDoc) -> RunIndex {
        let mut position = vec![0; pipeline.len()];
        for (pos, &i) in pipeline.topo_order().iter().enumerate() {
            position[i] = pos;
        }
        let mut index = RunIndex {
            status: vec![BlockStatus::Pending; pipeline.len()],
            position,
            counts: StatusCounts::default(),
            ready: BTreeSet::new(),
            backoff: BTreeMap::new(),
            dirty: BTreeSet::new(),
        };
        for _ in 0..pipeline.len() {
            index.counts.add(BlockStatus::Pending);
        }
        for i in 0..pipeline.len() {
            index.refresh(pipeline, doc, i);
        }
        index
    }

    /// Takes in what `records` (already applied to `doc`) changed.
    pub fn observe(&mut self, pipeline: &Pipeline, doc: &RunDoc, records: &[EventRecord]) {
        for record in records {
            for block in record.event.changed_blocks() {
                if let Some(i) = pipeline.index_of(block) {
                    self.refresh(pipeline, doc, i);
                }
            }
        }
    }

    /// How many blocks are in each status.
    pub fn counts(&self) -> StatusCounts {
        self.counts
    }

    /// Block `i`'s status, as of the last observed commit.
    pub fn status(&self, i: usize) -> BlockStatus {
        self.status[i]
    }

    /// Re-reads block `i` from the document.
    fn refresh(&mut self, pipeline: &Pipeline, doc: &RunDoc, i: usize) {
        let state = doc.blocks.get(&pipeline.blocks()[i].id);
        let now = state.map_or(BlockStatus::Pending, |s| s.status);
        let pos = self.position[i];
        let before = std::mem::replace(&mut self.status[i], now);
        if before != now {
            self.counts.remove(before);
            self.counts.add(now);
            for &d in pipeline.downstream(i) {
                if self.status[d] == BlockStatus::Pending {
                    self.dirty.insert(self.position[d]);
                }
            }
        }
        if now == BlockStatus::Pending {
            self.dirty.insert(pos);
        } else {
            self.dirty.remove(&pos);
        }
        if now == BlockStatus::Ready {
            self.ready.insert(pos);
        } else {
            self.ready.remove(&pos);
        }
        match state.and_then(|s| s.not_before) {
            Some(at) if now == BlockStatus::Ready => {
                self.backoff.insert(pos, at);
            }
            _ => {
                self.backoff.remove(&pos);
            }
        }
    }

    /// What [`super::decide`] returns for the document this index mirrors,
    /// with `startable` cut to the first `take` blocks. Looking at a pending
    /// block that is not ready yet is remembered, so the next call skips it.
    pub fn decide(
        &mut self,
        pipeline: &Pipeline,
        doc: &RunDoc,
        now: Millis,
        max_concurrency: usize,
        take: usize,
    ) -> Decision {
        let blocks = pipeline.blocks();
        let topo = pipeline.topo_order();
        // Statuses this decision changes, by block index (pending blocks only).
        let mut changed: BTreeMap<usize, BlockStatus> = BTreeMap::new();
        let mut events = Vec::new();
        let mut queue = std::mem::take(&mut self.dirty);
        let mut still_dirty = BTreeSet::new();
        let mut newly_ready = BTreeSet::new();

        while let Some(pos) = queue.pop_first() {
            let i = topo[pos];
            if self.status[i] != BlockStatus::Pending || changed.contains_key(&i) {
                continue;
            }
            let status_of = |u: usize| changed.get(&u).copied().unwrap_or(self.status[u]);
            let Some((next, event)) = step(pipeline, doc, i, status_of) else {
                continue;
            };
            still_dirty.insert(pos);
            changed.insert(i, next);
            events.push(event);
            match next {
                BlockStatus::Ready => {
                    newly_ready.insert(pos);
                }
                // What waits on it may follow in this same decision.
                BlockStatus::Blocked | BlockStatus::Done => {
                    for &d in pipeline.downstream(i) {
                        if self.status[d] == BlockStatus::Pending {
                            queue.insert(self.position[d]);
                        }
                    }
                }
                _ => {}
            }
        }
        self.dirty = still_dirty;

        let not_before_in_doc = |pos: usize| {
            doc.blocks
                .get(&blocks[topo[pos]].id)
                .and_then(|s| s.not_before)
                .unwrap_or(Millis::MIN)
        };
        let mut wake_at: Option<Millis> = None;
        let mut wake = |at: Millis| {
            if at > now {
                wake_at = Some(wake_at.map_or(at, |w: Millis| w.min(at)));
            }
        };
        self.backoff.values().for_each(|&at| wake(at));
        newly_ready
            .iter()
            .for_each(|&pos| wake(not_before_in_doc(pos)));

        let running = self.counts.get(BlockStatus::Running);
        let mut budget = if max_concurrency == 0 {
            usize::MAX
        } else {
            max_concurrency.saturating_sub(running)
        }
        .min(take);
        let mut startable = Vec::new();
        let mut old = self.ready.iter().copied().peekable();
        let mut new = newly_ready.iter().copied().peekable();
        while budget > 0 {
            let (pos, not_before) = match (old.peek().copied(), new.peek().copied()) {
                (Some(a), Some(b)) if a < b => (old.next(), self.backoff.get(&a).copied()),
                (Some(a), None) => (old.next(), self.backoff.get(&a).copied()),
                (_, Some(b)) => (new.next(), Some(not_before_in_doc(b))),
                (None, None) => break,
            };
            let Some(pos) = pos else { break };
            if not_before.is_some_and(|at| at > now) {
                continue;
            }
            budget -= 1;
            startable.push(blocks[topo[pos]].id.clone());
        }

        let mut counts = self.counts;
        for status in changed.values() {
            counts.remove(BlockStatus::Pending);
            counts.add(*status);
        }
        let status = counts.run_status();
        if status != doc.status {
            events.push(Event::RunStatusChanged { status });
        }
        Decision {
            events,
            startable,
            wake_at,
            status,
        }
    }
}
