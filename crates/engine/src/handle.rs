//! A run held in memory between writes, with the optimistic write loop.

use std::collections::BTreeMap;
use std::sync::Arc;

use factory_core::run::{BlockState, Event, EventRecord, Millis, RunDoc};
use factory_core::scheduler::{Decision, RunIndex};
use factory_core::transitions::{self, Policy};
use factory_core::{Pipeline, commit_in_place as commit};
use factory_store::{NewBlob, Store, StoreError, StoredRun, Writes};

use crate::{EngineError, Result, load_pipeline, now_ms};

/// How often a conflicting write is recomputed before giving up.
pub(crate) const MAX_CONFLICTS: u32 = 64;

/// After a conflict, how long this handle's writes take turns
/// ([`Store::writer_turn`]) instead of racing.
const CONTENDED_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// A worker claiming ready blocks in [`RunHandle::apply_with`].
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub owner: &'a str,
    pub policy: &'a Policy,
    /// At most this many blocks (the worker's free slots).
    pub limit: usize,
}

/// A run's document as last committed, with the scheduler's index of it.
///
/// Writes apply their events to the held document in place (no copy of a
/// document that grows with the run) and hand the store only what changed.
/// If anything fails between applying and committing, the document no longer
/// matches the store: the handle is then marked stale and reloads before it
/// is used again.
pub struct RunHandle {
    store: Arc<dyn Store>,
    /// The template's graph.
    base: Arc<Pipeline>,
    /// The run's: `base` with the instances of the fan-out blocks the run
    /// has expanded ([`Pipeline::for_run`]); rebuilt when an expansion
    /// changes.
    pipeline: Arc<Pipeline>,
    stored: StoredRun,
    index: RunIndex,
    stale: bool,
    max_concurrency: usize,
    /// Until when writes take turns: other writers were seen racing for
    /// this run.
    contended_until: Option<std::time::Instant>,
}

impl RunHandle {
    pub async fn load(
        store: Arc<dyn Store>,
        run_id: &str,
        max_concurrency: usize,
    ) -> Result<RunHandle> {
        let stored = store.load_run(run_id).await?;
        let base = cached_stored_pipeline(&stored.template_json)?;
        let pipeline = for_run(&base, &stored.doc);
        let index = RunIndex::new(&pipeline, &stored.doc);
        Ok(RunHandle {
            store,
            base,
            pipeline,
            stored,
            index,
            stale: false,
            max_concurrency,
            contended_until: None,
        })
    }

    pub fn doc(&self) -> &RunDoc {
        &self.stored.doc
    }

    pub fn into_doc(self) -> RunDoc {
        self.stored.doc
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    pub fn template_path(&self) -> Option<&str> {
        self.stored.template_path.as_deref()
    }

    pub async fn reload(&mut self) -> Result<()> {
        let run_id = self.stored.doc.run_id.clone();
        self.stored = self.store.load_run(&run_id).await?;
        self.refit();
        self.stale = false;
        Ok(())
    }

    /// Brings the held document up to the store's by applying the events
    /// other writers committed since it was read, so the cost of a conflict
    /// is what changed, not the size of the run. Falls back to a whole
    /// reload when the held document is stale or the events do not follow
    /// on from it.
    pub async fn catch_up(&mut self) -> Result<()> {
        if self.stale {
            return self.reload().await;
        }
        let run_id = self.stored.doc.run_id.clone();
        let changes = self
            .store
            .changes_since(&run_id, self.stored.doc.seq)
            .await?;
        if changes.version == self.stored.version {
            return Ok(());
        }
        let follows = !changes.records.is_empty()
            && changes
                .records
                .iter()
                .zip(self.stored.doc.seq + 1..)
                .all(|(record, seq)| record.seq == seq);
        if !follows {
            return self.reload().await;
        }
        self.stale = true;
        for record in &changes.records {
            if let Err(error) = self.stored.doc.apply(record) {
                tracing::warn!(run = %run_id, %error, "catching up failed; reading the whole run");
                return self.reload().await;
            }
        }
        self.observe(&changes.records);
        self.stored.version = changes.version;
        self.stale = false;
        Ok(())
    }

    /// Reloads if a failed write left the held document ahead of the store.
    async fn ensure_fresh(&mut self) -> Result<()> {
        if self.stale {
            self.reload().await?;
        }
        Ok(())
    }

    /// When the earliest backoff of a ready block ends, if one is pending.
    pub fn wake_at(&mut self, now: Millis) -> Option<Millis> {
        self.decide_next(now, 0).wake_at
    }

    /// How many blocks are in each status.
    pub fn counts(&self) -> factory_core::scheduler::StatusCounts {
        self.index.counts()
    }

    /// One try at writing `events`, the scheduler's follow-up and `writes`
    /// in one transaction. `Ok(None)` when the run changed underneath: the
    /// handle is reloaded, and the caller decides again from fresh reads
    /// (its `writes` were computed from what it read, so they cannot simply
    /// be replayed onto the new document).
    pub async fn apply_once(
        &mut self,
        actor: &str,
        events: Vec<Event>,
        writes: &Writes<'_>,
    ) -> Result<Option<Vec<EventRecord>>> {
        self.ensure_fresh().await?;
        self.try_write(actor, events, now_ms(), None, writes).await
    }

    /// Commits `events` on the held document, the scheduler's follow-up (and,
    /// with `claim`, the starts it allows that worker) and `writes`, in one
    /// transaction. `Ok(None)` on a conflict, after reloading. Nothing to
    /// record: nothing is written.
    async fn try_write(
        &mut self,
        actor: &str,
        events: Vec<Event>,
        now: Millis,
        claim: Option<Claim<'_>>,
        writes: &Writes<'_>,
    ) -> Result<Option<Vec<EventRecord>>> {
        // From here until the commit lands, the held document runs ahead of
        // the store.
        self.stale = true;
        let mut undo = Undo::new(&mut self.stored.doc);
        let mut records = self.apply_in_place(events, actor, now, &mut undo)?;
        let take = claim.map_or(0, |c| c.limit);
        let decision = self.decide_next(now, take);
        records.extend(self.apply_in_place(decision.events, "scheduler", now, &mut undo)?);
        if let Some(claim) = claim {
            let starts = decision
                .startable
                .iter()
                .map(|block| {
                    transitions::start(&self.stored.doc, block, claim.owner, now, claim.policy)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            records.extend(self.apply_in_place(starts, actor, now, &mut undo)?);
            let decision = self.decide_next(now, 0);
            records.extend(self.apply_in_place(decision.events, "scheduler", now, &mut undo)?);
        }
        if records.is_empty() {
            self.stale = false;
            return Ok(Some(records));
        }
        let emitted = match self.emitted_events(&records, writes).await {
            Ok(emitted) => emitted,
            Err(error) => {
                undo.restore(&mut self.stored.doc);
                self.observe(&records);
                self.stale = false;
                return Err(error);
            }
        };
        let writes = Writes {
            emitted: &emitted,
            ..*writes
        };
        let doc = &self.stored.doc;
        match self
            .store
            .commit_with(&doc.run_id, self.stored.version, &records, doc, &writes)
            .await
        {
            Ok(version) => {
                self.stored.version = version;
                self.stale = false;
                Ok(Some(records))
            }
            Err(StoreError::Conflict { .. }) => {
                crate::telemetry::conflict();
                self.contended_until = Some(std::time::Instant::now() + CONTENDED_FOR);
                // Take this try's events back out, then apply what the other
                // writer committed: both cost what changed, not the run's size.
                undo.restore(&mut self.stored.doc);
                self.observe(&records);
                self.stale = false;
                self.catch_up().await?;
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// The feed events the caller emits (`writes.emitted`: a review's),
    /// then those of blocks these records mark done that emit some
    /// (`outputs.emits`), from the artifacts of their last attempt: in the
    /// same commit's blobs, or stored by an earlier one (a gate passed).
    async fn emitted_events(
        &self,
        records: &[EventRecord],
        writes: &Writes<'_>,
    ) -> Result<Vec<factory_core::bus::BusEvent>> {
        let mut out = writes.emitted.to_vec();
        for record in records {
            let Some(block) = record.event.done_block() else {
                continue;
            };
            let Some(spec) = self.pipeline.block(block) else {
                continue;
            };
            if spec.outputs.emits.is_empty() {
                continue;
            }
            let artifacts = self
                .stored
                .doc
                .blocks
                .get(block)
                .and_then(|state| {
                    state
                        .history
                        .iter()
                        .rev()
                        .find_map(|attempt| attempt.report.as_ref())
                })
                .map(|report| &report.artifacts);
            for emit in &spec.outputs.emits {
                let Some(artifact) = artifacts.and_then(|a| a.get(&emit.artifact)) else {
                    return Err(EngineError::Emit(format!(
                        "block `{block}` is done without its `{}` artifact, so `{}` cannot be emitted",
                        emit.artifact, emit.event
                    )));
                };
                let bytes = match writes.blobs.iter().find(|b| b.hash == artifact.hash) {
                    Some(blob) => blob.content.clone(),
                    None => self.store.get_blob(&artifact.hash).await?,
                };
                let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|error| {
                    EngineError::Emit(format!(
                        "block `{block}`'s `{}` is not JSON ({error}), so `{}` cannot be emitted",
                        emit.artifact, emit.event
                    ))
                })?;
                out.extend(
                    factory_core::bus::emitted(
                        &self.stored.doc,
                        block,
                        &emit.event,
                        &emit.artifact,
                        &json,
                    )
                    .map_err(EngineError::Emit)?,
                );
            }
        }
        Ok(out)
    }

    fn apply_in_place(
        &mut self,
        events: Vec<Event>,
        actor: &str,
        now: Millis,
        undo: &mut Undo,
    ) -> Result<Vec<EventRecord>> {
        for event in &events {
            undo.keep(&self.stored.doc, event);
        }
        let records = commit(&mut self.stored.doc, events, actor, now)?;
        self.observe(&records);
        Ok(records)
    }

    /// Takes in what `records` changed in the held document: the index
    /// follows the blocks they changed, or — when they expand a fan-out
    /// block or let go of an expansion — the run's graph is rebuilt.
    fn observe(&mut self, records: &[EventRecord]) {
        if records.iter().any(|r| r.event.reshapes_graph()) {
            self.refit();
        } else {
            self.index
                .observe(&self.pipeline, &self.stored.doc, records);
        }
    }

    /// Rebuilds the run's graph and the scheduler's index from the document.
    fn refit(&mut self) {
        self.pipeline = for_run(&self.base, &self.stored.doc);
        self.index = RunIndex::new(&self.pipeline, &self.stored.doc);
    }

    fn decide_next(&mut self, now: Millis, take: usize) -> Decision {
        self.index.decide(
            &self.pipeline,
            &self.stored.doc,
            now,
            self.stored.doc.concurrency_limit(self.max_concurrency),
            take,
        )
    }

    /// Computes events with `step` on the latest document, adds the
    /// scheduler's follow-up decisions, and writes both atomically. On a
    /// conflict, reloads and computes again. Returns the committed records
    /// (empty if there was nothing to do).
    pub async fn apply<F>(&mut self, actor: &str, step: F) -> Result<Vec<EventRecord>>
    where
        F: FnMut(&Pipeline, &RunDoc, Millis) -> Result<Vec<Event>>,
    {
        self.apply_with(actor, step, None, &[]).await
    }

    /// [`RunHandle::apply`], plus: store `blobs` in the same transaction, and
    /// when `claim` is given, start every block the scheduler now allows for
    /// that worker. Finishing one block and starting the next is then a single
    /// commit, which is what makes a chain of blocks cheap.
    pub async fn apply_with<F>(
        &mut self,
        actor: &str,
        mut step: F,
        claim: Option<Claim<'_>>,
        blobs: &[NewBlob],
    ) -> Result<Vec<EventRecord>>
    where
        F: FnMut(&Pipeline, &RunDoc, Millis) -> Result<Vec<Event>>,
    {
        let writes = Writes {
            blobs,
            ..Writes::default()
        };
        let mut turn = None;
        let written = async {
            for _ in 0..MAX_CONFLICTS {
                // Racing lost recently: wait for a turn, then catch up with
                // what the writers before it committed, and write once.
                let contended = self
                    .contended_until
                    .is_some_and(|until| std::time::Instant::now() < until);
                if contended && turn.is_none() {
                    turn = self.store.writer_turn(&self.stored.doc.run_id).await?;
                    self.catch_up().await?;
                }
                self.ensure_fresh().await?;
                let now = now_ms();
                let events = step(&self.pipeline, &self.stored.doc, now)?;
                if let Some(records) = self.try_write(actor, events, now, claim, &writes).await? {
                    return Ok(records);
                }
            }
            Err(EngineError::TooManyConflicts {
                run_id: self.stored.doc.run_id.clone(),
                tries: MAX_CONFLICTS,
            })
        }
        .await;
        if let Some(turn) = turn {
            turn.end().await;
        }
        written
    }
}

/// The run's graph: the template's, or with the instances the run made.
pub fn for_run(base: &Arc<Pipeline>, doc: &RunDoc) -> Arc<Pipeline> {
    base.for_run(doc).map_or_else(|| base.clone(), Arc::new)
}

/// What a try's events changed in the held document, kept so a conflict can
/// take them back out: the header as it was and the prior state of each
/// block an event names (`Event::changed_blocks` lists everything
/// `RunDoc::apply` writes, so nothing else changed).
struct Undo {
    header: RunDoc,
    blocks: BTreeMap<String, Option<BlockState>>,
}

impl Undo {
    fn new(doc: &mut RunDoc) -> Undo {
        let blocks = std::mem::take(&mut doc.blocks);
        let header = doc.clone();
        doc.blocks = blocks;
        Undo {
            header,
            blocks: BTreeMap::new(),
        }
    }

    /// Remembers the blocks `event` is about to change, unless already kept.
    fn keep(&mut self, doc: &RunDoc, event: &Event) {
        for block in event.changed_blocks() {
            if !self.blocks.contains_key(block) {
                self.blocks
                    .insert(block.to_string(), doc.blocks.get(block).cloned());
            }
        }
    }

    fn restore(self, doc: &mut RunDoc) {
        let blocks = std::mem::take(&mut doc.blocks);
        *doc = self.header;
        doc.blocks = blocks;
        for (block, before) in self.blocks {
            match before {
                Some(state) => doc.blocks.insert(block, state),
                None => doc.blocks.remove(&block),
            };
        }
    }
}

/// Validated pipelines by template text. Validation (JSON Schema plus
/// semantics) costs more than a whole no-op block, and every command on a run
/// reopens it, so each distinct template is validated once per process.
pub fn cached_pipeline(template_json: &str) -> Result<Arc<Pipeline>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Pipeline>>>> = OnceLock::new();
    cached_in(&CACHE, template_json, load_pipeline)
}

/// [`cached_pipeline`] for a stored run's template ([`crate::load_stored_pipeline`]),
/// in a cache of its own: a template a stored run may keep is not thereby
/// accepted for a new run.
pub fn cached_stored_pipeline(template_json: &str) -> Result<Arc<Pipeline>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Pipeline>>>> = OnceLock::new();
    cached_in(&CACHE, template_json, crate::load_stored_pipeline)
}

type PipelineCache =
    std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Arc<Pipeline>>>>;

fn cached_in(
    cache: &PipelineCache,
    template_json: &str,
    load: fn(&str) -> Result<Pipeline>,
) -> Result<Arc<Pipeline>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let cache = cache.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(pipeline) = cache
        .lock()
        .ok()
        .and_then(|c| c.get(template_json).cloned())
    {
        return Ok(pipeline);
    }
    let pipeline = Arc::new(load(template_json)?);
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(template_json.to_string(), pipeline.clone());
    }
    Ok(pipeline)
}
