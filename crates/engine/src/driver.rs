//! The run loop: reclaim abandoned work, start ready blocks, record results,
//! until the run is done, failed or waiting at a gate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use factory_core::run::{
    ArtifactRef, Attempt, AttemptReport, BlockState, BlockStatus, Event, EventRecord, LlmUsage,
    LogRef, Millis, RunDoc, RunStatus,
};
use factory_core::transitions;
use factory_runtime::{AttemptInput, Execution};
use factory_store::{NewBlob, Store};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::handle::Claim;
use crate::lease_watch::{self, LostLease, RunningAttempts};
use crate::owner::Owner;
use crate::spool;
use crate::{Engine, EngineError, Result, RunHandle, now_ms};

/// Why [`Engine::drive`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
    /// Stopped at one or more human gates.
    Waiting,
    /// [`Engine::stop_starting`] was called; the run's remaining work is left
    /// for the next worker.
    Stopped,
}

/// Gives a drive's slots back and drops its waker however it ends.
struct LeaveOnDrop<'a> {
    engine: &'a Engine,
    run_id: &'a str,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.engine.slots.leave(self.run_id);
        self.engine.queue_depth.set(self.run_id, 0);
        self.engine.forget_waker(self.run_id);
    }
}

/// A finished attempt on its way back to the loop.
pub(crate) struct Completion {
    pub(crate) block: String,
    pub(crate) attempt: u32,
    pub(crate) report: std::result::Result<AttemptReport, String>,
    /// Artifact and log contents, stored with the events that reference them.
    pub(crate) blobs: Vec<NewBlob>,
    /// A corrections router's accepted items: routed when its attempt commits.
    pub(crate) route_items: Option<Vec<factory_core::feedback::AcceptedItem>>,
    /// A fan-out block's attempt: the value its list comes from, expanded
    /// when the attempt commits.
    pub(crate) list: Option<serde_json::Value>,
}

/// Tries at recording finished attempts before giving up (and keeping them
/// on disk for the next drive); the waits double from the retry backoff.
const RECORD_TRIES: u32 = 5;

impl Engine {
    /// Drives a run until it is done, failed or waiting at a gate. Also the
    /// body of `factory resume`: running blocks whose worker is gone are
    /// reclaimed first and re-run as new attempts.
    #[tracing::instrument(name = "run", skip_all, fields(run = %run_id))]
    pub async fn drive(&self, run_id: &str) -> Result<(Outcome, RunDoc)> {
        let mut handle = self.open(run_id).await?;
        let worker_actor = format!("worker:{}", self.owner.id());
        let (sender, mut receiver) = mpsc::unbounded_channel::<Completion>();
        let mut in_flight: BTreeSet<String> = BTreeSet::new();
        let running = RunningAttempts::default();
        let (lost_sender, mut lost_leases) = mpsc::unbounded_channel::<LostLease>();
        let heartbeat = lease_watch::spawn(
            self.store.clone(),
            self.owner.id(),
            self.config.policy.lease_ms,
            handle.doc().run_id.clone(),
            running.clone(),
            lost_sender,
        );
        let owner_id = self.owner.id();
        let run_id = handle.doc().run_id.clone();
        let waker = self.waker(&run_id);
        let _leave = LeaveOnDrop {
            engine: self,
            run_id: &run_id,
        };

        let work_root = self.config.work_root.clone();
        let result: Result<Outcome> = async {
            // Attempts a previous drive finished but could not record: record
            // them now instead of running their blocks again.
            let mut completions: Vec<Completion> = spool::load(&work_root, &handle.doc().run_id)
                .into_iter()
                .filter(|kept| {
                    let current = handle.doc().blocks.get(&kept.block).is_some_and(|s| {
                        s.status == BlockStatus::Running && s.attempts == kept.attempt
                    });
                    if !current {
                        spool::remove(&work_root, &handle.doc().run_id, &kept.block, kept.attempt);
                    }
                    current
                })
                .collect();
            loop {
                if in_flight.is_empty() {
                    let kept: BTreeSet<&str> =
                        completions.iter().map(|c| c.block.as_str()).collect();
                    self.reclaim(&mut handle, &worker_actor, &kept).await?;
                }

                // One commit: record finished attempts, decide, start what may start.
                for completion in &completions {
                    if in_flight.remove(&completion.block) {
                        self.slots.release(&run_id, 1, true);
                    }
                }
                let granted = if self.is_stopping() {
                    0
                } else {
                    self.slots.reserve(&run_id)
                };
                let records = match self
                    .record_with_retries(&mut handle, &worker_actor, &completions, granted)
                    .await
                {
                    Ok(records) => records,
                    Err(error) => {
                        // Keep the paid work: the next drive records it.
                        let run_id = handle.doc().run_id.clone();
                        for completion in &completions {
                            match spool::save(&work_root, &run_id, completion) {
                                Ok(true) => tracing::warn!(
                                    block = %completion.block,
                                    attempt = completion.attempt,
                                    "attempt kept on disk until the store can record it"
                                ),
                                Ok(false) => {}
                                Err(spool_error) => tracing::error!(
                                    block = %completion.block,
                                    %spool_error,
                                    "attempt could neither be recorded nor kept; it will run again"
                                ),
                            }
                        }
                        return Err(error);
                    }
                };
                for completion in &completions {
                    spool::remove(
                        &work_root,
                        &handle.doc().run_id,
                        &completion.block,
                        completion.attempt,
                    );
                }
                completions.clear();
                self.resolve_completed(&mut handle, &worker_actor, &records)
                    .await?;
                let mut started = 0;
                for record in &records {
                    if let Event::BlockStarted {
                        block,
                        attempt,
                        owner,
                        ..
                    } = &record.event
                        && *owner == owner_id
                    {
                        started += 1;
                        in_flight.insert(block.clone());
                        self.spawn_attempt(&handle, block, *attempt, sender.clone(), &running);
                    }
                }
                crate::telemetry::claimed(started);
                let ready = handle.counts().get(BlockStatus::Ready);
                self.queue_depth.set(&run_id, ready);
                if granted != usize::MAX {
                    let wants = ready > 0;
                    self.slots
                        .unreserve(&run_id, granted.saturating_sub(started), wants);
                }

                if in_flight.is_empty() {
                    let doc = handle.doc();
                    if self.is_stopping() && doc.status == RunStatus::Running {
                        return Ok(Outcome::Stopped);
                    }
                    match doc.status {
                        RunStatus::Done => return Ok(Outcome::Done),
                        RunStatus::Failed => return Ok(Outcome::Failed),
                        RunStatus::Waiting => return Ok(Outcome::Waiting),
                        RunStatus::Running => {}
                    }
                    // Ready blocks in backoff, or blocks another worker runs.
                    let now = now_ms();
                    let wait_ms = match handle.wake_at(now) {
                        Some(at) => (at - now).clamp(1, self.poll_ms()),
                        None => self.poll_ms(),
                    };
                    // Or until the store says the run changed, or slots
                    // this run waits for are given back.
                    let wants_slots = self.slots.is_limited()
                        && handle.counts().get(BlockStatus::Ready) > 0;
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
                        () = waker.notified() => {}
                        () = self.slots.freed(), if wants_slots => {}
                    }
                    handle.catch_up().await?;
                    continue;
                }

                // Wait for a result, a lost lease, or for a backoff to end.
                let backoff = handle
                    .wake_at(now_ms())
                    .map(|at| Duration::from_millis((at - now_ms()).max(1) as u64));
                tokio::select! {
                    message = receiver.recv() => completions.extend(message),
                    Some(lost) = lost_leases.recv() => {
                        // Stopped (and logged) by the watcher; nothing to
                        // record: the block is another worker's now, or is
                        // reclaimed once nothing else is in flight.
                        if in_flight.remove(&lost.block) {
                            self.slots.release(&run_id, 1, true);
                        }
                        handle.catch_up().await?;
                        continue;
                    }
                    // Slots given back elsewhere, while this run has ready
                    // blocks it could not start.
                    () = self.slots.freed(), if self.slots.is_limited()
                        && !self.is_stopping()
                        && handle.counts().get(BlockStatus::Ready) > 0 => continue,
                    () = tokio::time::sleep(backoff.unwrap_or_default()), if backoff.is_some() => continue,
                }
                while let Ok(more) = receiver.try_recv() {
                    completions.push(more);
                }
            }
        }
        .await;
        heartbeat.abort();
        let outcome = result?;
        Ok((outcome, handle.into_doc()))
    }

    fn poll_ms(&self) -> Millis {
        (self.config.policy.lease_ms / 3).clamp(50, 2_000) as Millis
    }

    /// Gives back running blocks whose worker is provably dead (same host) or
    /// whose lease ran out; kills what is left of their process groups.
    async fn reclaim(
        &self,
        handle: &mut RunHandle,
        actor: &str,
        kept: &BTreeSet<&str>,
    ) -> Result<()> {
        let run_id = handle.doc().run_id.clone();
        let running: Vec<String> = handle
            .doc()
            .blocks
            .iter()
            .filter(|(id, s)| s.status == BlockStatus::Running && !kept.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        let leases: BTreeMap<String, factory_store::Lease> = self
            .store
            .leases(&run_id)
            .await?
            .into_iter()
            .map(|l| (l.block_id.clone(), l))
            .collect();
        let now = now_ms();
        let me = self.owner.id();
        let mut reasons: BTreeMap<String, String> = BTreeMap::new();
        for block in running {
            let owner_id = handle
                .doc()
                .blocks
                .get(&block)
                .and_then(|s| s.current_attempt())
                .map(|a| a.owner.clone())
                .unwrap_or_default();
            let lease = leases.get(&block);
            let reason = if owner_id == me {
                // Ours, yet not in flight here: a previous drive in this process.
                Some("this worker no longer runs it".to_string())
            } else if Owner::parse(&owner_id).is_some_and(|o| o.is_dead_local()) {
                Some(format!("worker {owner_id} is no longer running"))
            } else {
                match lease {
                    None => Some("no lease is held for it".to_string()),
                    Some(lease) if lease.expires_at < now => Some(format!(
                        "lease of {owner_id} expired {} ms ago",
                        now - lease.expires_at
                    )),
                    Some(_) => None,
                }
            };
            if let Some(reason) = reason {
                if let Some(pid) = lease.and_then(|l| l.pid)
                    && Owner::parse(&owner_id).is_some_and(|o| o.host == self.owner.host)
                {
                    factory_runtime::process::kill_process_group(pid);
                }
                reasons.insert(block, reason);
            }
        }
        if reasons.is_empty() {
            return Ok(());
        }
        let records = handle
            .apply(actor, |_, doc, _| {
                reasons
                    .iter()
                    .filter(|(block, _)| {
                        doc.blocks
                            .get(*block)
                            .is_some_and(|s| s.status == BlockStatus::Running)
                    })
                    .map(|(block, reason)| {
                        transitions::abandon(doc, block, reason).map_err(EngineError::from)
                    })
                    .collect()
            })
            .await?;
        self.notify(&records, handle);
        Ok(())
    }

    fn spawn_attempt(
        &self,
        handle: &RunHandle,
        block_id: &str,
        attempt: u32,
        sender: mpsc::UnboundedSender<Completion>,
        running: &RunningAttempts,
    ) {
        let store = self.store.clone();
        let pipeline = handle.pipeline().clone();
        let doc = slim_doc(handle.doc(), &pipeline, block_id);
        let attempt_dir = self
            .config
            .work_root
            .join(&doc.run_id)
            .join(block_id)
            .join(format!("attempt-{attempt}"));
        let template_path: Option<PathBuf> = handle.template_path().map(PathBuf::from);
        let keep = self.config.keep_work_dirs;
        let llm_settings = self.config.llm.clone();
        let block_id = block_id.to_string();
        let pid_slot = running.insert(&block_id, attempt);
        let key = block_id.clone();
        let watched = running.clone();
        let span = tracing::info_span!(
            "attempt",
            run = %doc.run_id,
            block = %block_id,
            attempt,
            outcome = tracing::field::Empty
        );
        let expands = pipeline
            .block(&block_id)
            .is_some_and(|block| crate::fan_out::expands(block, &doc));
        let task = tokio::spawn(
            async move {
                if expands {
                    // Reading a list runs nothing: no timer, no audit.
                    let block = pipeline.block(&block_id).cloned();
                    let source = match &block {
                        Some(block) => {
                            crate::fan_out::read_source(store.as_ref(), &doc, block).await
                        }
                        None => Err(format!("block `{block_id}` is not in the template")),
                    };
                    if !watched.finish(&block_id, attempt) {
                        return;
                    }
                    let (report, list) = match source {
                        Ok(list) => (Ok(AttemptReport::default()), Some(list)),
                        Err(error) => (Err(error), None),
                    };
                    let _ = sender.send(Completion {
                        block: block_id,
                        attempt,
                        report,
                        blobs: Vec::new(),
                        route_items: None,
                        list,
                    });
                    return;
                }
                let mut timer = crate::telemetry::AttemptTimer::start();
                let outcome = run_attempt(
                    store,
                    &pipeline,
                    &doc,
                    &block_id,
                    attempt,
                    attempt_dir,
                    template_path,
                    keep,
                    llm_settings,
                    pid_slot,
                )
                .await;
                let (report, blobs, route_items) = match outcome {
                    Ok((report, blobs, items)) => (Ok(report), blobs, items),
                    Err(error) => (Err(error), Vec::new(), None),
                };
                let ok = report.as_ref().is_ok_and(|r| r.error.is_none());
                timer.finished(ok);
                tracing::Span::current().record("outcome", if ok { "ok" } else { "failed" });
                // Stopped for a lost lease meanwhile: the watcher reported it.
                if !watched.finish(&block_id, attempt) {
                    return;
                }
                let _ = sender.send(Completion {
                    block: block_id,
                    attempt,
                    report,
                    blobs,
                    route_items,
                    list: None,
                });
            }
            .instrument(span),
        );
        running.set_abort(&key, attempt, task.abort_handle());
    }

    /// [`Engine::record_and_claim`], retried with a doubling wait while the
    /// store fails (a full disk, a lost connection): the finished attempts'
    /// outputs stay in memory meanwhile, and no new block is started.
    async fn record_with_retries(
        &self,
        handle: &mut RunHandle,
        actor: &str,
        completions: &[Completion],
        free_slots: usize,
    ) -> Result<Vec<EventRecord>> {
        let mut wait_ms = self.config.policy.retry_base_ms.max(1);
        let mut tries = 1;
        let mut slots = free_slots;
        loop {
            match self
                .record_and_claim(handle, actor, completions, slots)
                .await
            {
                Err(EngineError::Store(error))
                    if tries < RECORD_TRIES && !completions.is_empty() =>
                {
                    tracing::warn!(%error, tries, "cannot record finished attempts; trying again");
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    wait_ms = (wait_ms * 2).min(self.config.policy.retry_max_ms.max(1));
                    tries += 1;
                    slots = 0;
                }
                other => return other,
            }
        }
    }

    /// Records finished attempts (storing their outputs in the same
    /// transaction) and claims every block that may start now.
    async fn record_and_claim(
        &self,
        handle: &mut RunHandle,
        actor: &str,
        completions: &[Completion],
        free_slots: usize,
    ) -> Result<Vec<EventRecord>> {
        let policy = self.config.policy;
        let owner = self.owner.id();
        let blobs: Vec<NewBlob> = completions
            .iter()
            .flat_map(|c| c.blobs.iter().cloned())
            .collect();
        // Read before the commit: deciding on gaps needs the artifacts.
        let gap_texts = crate::gaps::texts_for(
            self.store.as_ref(),
            handle.pipeline(),
            handle.doc(),
            completions,
        )
        .await;
        let records = handle
            .apply_with(
                actor,
                |pipeline, doc, now| {
                    let mut events = Vec::new();
                    for completion in completions {
                        if let Some(list) = &completion.list {
                            match factory_core::fan_out::expand(
                                pipeline,
                                doc,
                                &completion.block,
                                completion.attempt,
                                list,
                            ) {
                                Ok(more) => events.extend(more),
                                Err(transitions::TransitionError::StaleAttempt {
                                    block,
                                    attempt,
                                }) => {
                                    tracing::warn!(
                                        block,
                                        attempt,
                                        "discarding the list read of a reclaimed attempt"
                                    );
                                }
                                Err(error) => return Err(error.into()),
                            }
                            continue;
                        }
                        let report = match &completion.report {
                            Ok(report) => report.clone(),
                            Err(error) => AttemptReport {
                                error: Some(error.clone()),
                                ..AttemptReport::default()
                            },
                        };
                        match transitions::finish(
                            pipeline,
                            doc,
                            &completion.block,
                            completion.attempt,
                            report,
                            now,
                            &policy,
                        ) {
                            Ok(more) => {
                                let more = match &completion.route_items {
                                    Some(items) => with_routing(
                                        pipeline, doc, &events, more, completion, items, now,
                                        &policy,
                                    )?,
                                    None => more,
                                };
                                // From the final finish: a routing that failed
                                // made the attempt fail, and it addresses nothing.
                                let gap_events = crate::gaps::after_finish(
                                    pipeline,
                                    doc,
                                    &completion.block,
                                    completion.attempt,
                                    &more,
                                    gap_texts.get(&(completion.block.clone(), completion.attempt)),
                                );
                                events.extend(more);
                                events.extend(gap_events);
                            }
                            // Reclaimed by another worker meanwhile: its attempt wins.
                            Err(transitions::TransitionError::StaleAttempt { block, attempt }) => {
                                tracing::warn!(
                                    block,
                                    attempt,
                                    "discarding the result of a reclaimed attempt"
                                );
                            }
                            Err(error) => return Err(error.into()),
                        }
                    }
                    Ok(events)
                },
                Some(Claim {
                    owner: &owner,
                    policy: &policy,
                    limit: free_slots,
                }),
                &blobs,
            )
            .await?;
        self.notify(&records, handle);
        Ok(records)
    }
}

/// A corrections router's finish plus, when it completed, its routing: the
/// `corrections_routed` event and the resets, in the same commit so nothing
/// downstream of the router starts in between. If a block to reset is still
/// running, the router waits for it ([`FailureKind::Wait`](factory_core::run::FailureKind::Wait):
/// it tries again shortly, using up no retry); any other refusal fails the
/// attempt, which is retried.
#[allow(clippy::too_many_arguments)]
fn with_routing(
    pipeline: &factory_core::Pipeline,
    doc: &RunDoc,
    earlier: &[Event],
    finished: Vec<Event>,
    completion: &Completion,
    items: &[factory_core::feedback::AcceptedItem],
    now: Millis,
    policy: &transitions::Policy,
) -> Result<Vec<Event>> {
    let preceding: Vec<Event> = earlier.iter().chain(&finished).cloned().collect();
    match crate::feedback::routing_after(pipeline, doc, &completion.block, &preceding, items, now) {
        Ok(routing) => Ok(finished.into_iter().chain(routing).collect()),
        Err(EngineError::Transition(error)) => {
            // A dependent still running finishes soon: the router waits for
            // it (its retries are for real failures).
            let failure = matches!(error, transitions::TransitionError::DependentRunning { .. })
                .then_some(factory_core::run::FailureKind::Wait);
            let report = AttemptReport {
                error: Some(format!("cannot route corrections yet: {error}")),
                failure,
                ..AttemptReport::default()
            };
            Ok(transitions::finish(
                pipeline,
                doc,
                &completion.block,
                completion.attempt,
                report,
                now,
                policy,
            )?)
        }
        Err(other) => Err(other),
    }
}

/// The part of the run document an attempt reads: run fields, its own state
/// and, of its upstream blocks, what their outputs are
/// ([`upstream_view`]). Copying only that keeps a wide fan-out from cloning
/// the whole (growing) document once per block, and a join from cloning
/// every upstream block's audit reports.
fn slim_doc(doc: &RunDoc, pipeline: &factory_core::Pipeline, block_id: &str) -> RunDoc {
    let upstream: BTreeSet<&str> = pipeline
        .block(block_id)
        .map(|block| {
            block
                .inputs
                .depends
                .iter()
                .map(|d| d.block.as_str())
                .filter(|id| *id != block_id)
                .collect()
        })
        .unwrap_or_default();
    // A fan-out block upstream is read through its instances.
    let instances: Vec<String> = upstream
        .iter()
        .filter_map(|id| Some((*id, doc.blocks.get(*id)?.instances.as_ref()?)))
        .flat_map(|(group, keys)| {
            keys.iter()
                .map(move |key| factory_core::run::instance_id(group, key))
        })
        .collect();
    let own = doc
        .blocks
        .get_key_value(block_id)
        .map(|(id, state)| (id.clone(), state.clone()));
    RunDoc {
        run_id: doc.run_id.clone(),
        template_id: doc.template_id.clone(),
        template_version: doc.template_version.clone(),
        status: doc.status,
        autonomy_profile: doc.autonomy_profile.clone(),
        params: doc.params.clone(),
        models: doc.models.clone(),
        default_model: doc.default_model.clone(),
        sampling: doc.sampling.clone(),
        max_concurrency: doc.max_concurrency,
        no_cache: doc.no_cache,
        // A lens block's prompt quotes its own; few and small.
        past_ratings: doc.past_ratings.clone(),
        // A block's prompt lists the open gaps that concern it.
        gaps: doc.gaps.clone(),
        created_at: doc.created_at,
        updated_at: doc.updated_at,
        seq: doc.seq,
        version: doc.version,
        blocks: upstream
            .into_iter()
            .chain(instances.iter().map(String::as_str))
            .filter_map(|id| doc.blocks.get_key_value(id))
            .map(|(id, state)| (id.clone(), upstream_view(state)))
            .chain(own)
            .collect(),
    }
}

/// What an attempt reads of an upstream block: its status and its last
/// successful attempt's artifacts (`inputs::locate`), nothing else — not its
/// audit reports, other attempts, gate decisions or corrections.
fn upstream_view(state: &BlockState) -> BlockState {
    let mut view = BlockState::new(state.autonomy);
    view.status = state.status;
    view.attempts = state.attempts;
    view.instances = state.instances.clone();
    view.history = state
        .last_success()
        .map(|attempt| Attempt {
            n: attempt.n,
            owner: attempt.owner.clone(),
            started_at: attempt.started_at,
            ended_at: attempt.ended_at,
            outcome: attempt.outcome,
            report: attempt.report.as_ref().map(|report| AttemptReport {
                artifacts: report.artifacts.clone(),
                ..AttemptReport::default()
            }),
            corrections_version: None,
            version: attempt.version,
            why: None,
        })
        .into_iter()
        .collect();
    view
}

/// Executes one attempt and stores its outputs; returns the report or an
/// infrastructure error (store unreachable, upstream artifact missing).
#[allow(clippy::too_many_arguments)]
async fn run_attempt(
    store: Arc<dyn Store>,
    pipeline: &factory_core::Pipeline,
    doc: &RunDoc,
    block_id: &str,
    attempt: u32,
    attempt_dir: PathBuf,
    template_path: Option<PathBuf>,
    keep_work_dir: bool,
    llm_settings: Option<Arc<factory_runtime::llm::LlmSettings>>,
    pid_slot: Arc<std::sync::Mutex<Option<i32>>>,
) -> std::result::Result<
    (
        AttemptReport,
        Vec<NewBlob>,
        Option<Vec<factory_core::feedback::AcceptedItem>>,
    ),
    String,
> {
    let block = pipeline
        .block(block_id)
        .ok_or_else(|| format!("block `{block_id}` is not in the template"))?;
    let state = doc
        .blocks
        .get(block_id)
        .ok_or_else(|| format!("block `{block_id}` has no state"))?;
    let template_dir: Option<PathBuf> = template_path
        .as_deref()
        .and_then(|p| p.parent().map(|d| d.to_path_buf()));
    let located = crate::inputs::locate(store.as_ref(), doc, block).await?;
    let golden = crate::audit::read_golden(block, template_dir.as_deref());
    let lens = factory_core::lens::brief(pipeline, doc, block_id);
    let open_gaps = crate::gaps::prompt_section(pipeline, doc, block, block_id);
    let memo_key = crate::memo::key(&crate::memo::KeyParts {
        pipeline,
        doc,
        block,
        state,
        inputs: &located,
        golden: &golden,
        template_path: template_path.as_deref(),
        llm: llm_settings.as_deref(),
        lens: lens.as_ref(),
        open_gaps: open_gaps.as_deref(),
    })
    .await;
    let hit = match &memo_key {
        Some(key) => crate::memo::look_up(store.as_ref(), doc, state, key).await,
        None => None,
    };
    let inputs = crate::inputs::read(store.as_ref(), located).await?;
    if let (Some(hit), Some(key)) = (hit, memo_key.clone()) {
        // A memo whose outputs cannot be read back is no hit: the block runs.
        match crate::memo::remembered_execution(store.as_ref(), &hit.report).await {
            Ok(execution) => {
                let audit = crate::audit::audit_execution(
                    &crate::audit::AuditContext {
                        pipeline,
                        doc,
                        block,
                        inputs: &inputs,
                        golden: &golden,
                    },
                    &execution,
                );
                let report = crate::memo::reused(hit, key, audit.map(Box::new));
                return Ok((report, Vec::new(), None));
            }
            Err(error) => {
                tracing::warn!(%error, block = %block_id, "a memo's outputs cannot be read; running the block")
            }
        }
    }
    let audit_inputs = inputs.clone();
    let run_id = doc.run_id.clone();
    let pid_store = store.clone();
    let pid_block = block_id.to_string();
    // While the process runs, the tail of its output goes to the lease for
    // the workbench to show; stopped when the attempt ends.
    let publisher: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    let publishing = publisher.clone();
    let log_dir = attempt_dir.clone();
    // An `llm` block's reply as it streams in goes the same way.
    let (progress, reply_task) = if block.runtime == factory_core::template::Runtime::Llm {
        let (progress, reply) = crate::live_log::reply_channel();
        let task = tokio::spawn(crate::live_log::publish_reply(
            store.clone(),
            doc.run_id.clone(),
            block_id.to_string(),
            attempt,
            reply,
        ));
        (Some(progress), Some(task))
    } else {
        (None, None)
    };
    let on_spawn: Box<dyn FnOnce(i32) + Send> = Box::new(move |pid| {
        if let Ok(mut slot) = pid_slot.lock() {
            *slot = Some(pid);
        }
        let task = tokio::spawn(crate::live_log::publish(
            pid_store.clone(),
            run_id.clone(),
            pid_block.clone(),
            attempt,
            log_dir,
        ));
        if let Ok(mut slot) = publishing.lock() {
            *slot = Some(task);
        }
        tokio::spawn(async move {
            if let Err(error) = pid_store
                .set_lease_pid(&run_id, &pid_block, attempt, pid)
                .await
            {
                tracing::warn!(%error, "could not record the attempt's pid");
            }
        });
    });
    let route_items = if crate::feedback::is_router(block) {
        Some(
            crate::feedback::accepted_items(store.as_ref(), &doc.run_id, block)
                .await
                .map_err(|error| format!("cannot read the run's improvement items: {error}"))?,
        )
    } else {
        None
    };
    let execution = if let Some(items) = &route_items {
        crate::feedback::router_execution(pipeline, doc, block, items)
    } else if let Some(step) = crate::meta_audit::step(block) {
        crate::meta_audit::execution(store.as_ref(), doc, block, step, &inputs).await
    } else {
        factory_runtime::execute(AttemptInput {
            run_id: &doc.run_id,
            block,
            attempt,
            run_version: doc.version,
            params: &doc.params,
            inputs,
            corrections: state.corrections.as_ref(),
            reply_note: state.reply_note.as_ref(),
            run_sampling: &doc.sampling,
            golden: &golden,
            attempt_dir: attempt_dir.clone(),
            template_dir,
            on_spawn: Some(on_spawn),
            llm: llm_settings.clone(),
            model: factory_core::transitions::effective_model(
                pipeline.template(),
                block,
                &doc.models,
                doc.default_model.as_deref(),
            )
            .map(str::to_string),
            progress,
            item: state.instance.as_ref(),
            lens: lens.as_ref(),
            open_gaps,
        })
        .await
    };
    if let Some(task) = reply_task {
        task.abort();
    }
    if let Some(task) = publisher.lock().ok().and_then(|mut slot| slot.take()) {
        task.abort();
    }
    let mut execution = execution;
    // Command and http blocks check their files as they collect them, image
    // and speech blocks what the provider sent; any other runtime's media
    // and sizes are checked here, and an artifact over the limit is not kept.
    if !matches!(
        block.runtime,
        factory_core::template::Runtime::Command
            | factory_core::template::Runtime::Http
            | factory_core::template::Runtime::Image
            | factory_core::template::Runtime::Speech
    ) {
        let mut problems = Vec::new();
        for spec in &block.outputs.artifacts {
            if let Some(bytes) = execution.artifacts.get(&spec.key)
                && (spec.format.is_media() || bytes.len() > factory_runtime::MAX_ARTIFACT_BYTES)
                && let Some(problem) =
                    factory_runtime::check_format(block, &spec.key, &spec.path, spec.format, bytes)
            {
                problems.push(problem);
            }
        }
        if !problems.is_empty() && execution.error.is_none() {
            execution.error = Some(problems.join("; "));
        }
    }
    execution
        .artifacts
        .retain(|_, bytes| bytes.len() <= factory_runtime::MAX_ARTIFACT_BYTES);
    if execution.error.is_none()
        && let Err(problem) = check_emits(block, &execution.artifacts)
            .and_then(|()| crate::gaps::check_source(block, &execution.artifacts))
    {
        execution.error = Some(problem);
    }
    let failed = execution.error.is_some();
    let gap_checks = if failed {
        None
    } else {
        crate::gaps::llm_checks(
            llm_settings.as_deref(),
            factory_core::transitions::effective_model(
                pipeline.template(),
                block,
                &doc.models,
                doc.default_model.as_deref(),
            ),
            pipeline,
            doc,
            block,
            block_id,
            &execution.artifacts,
        )
        .await
    };
    // Audit what was produced; a failed attempt has nothing worth scoring.
    let audit = (!failed).then_some(()).and_then(|()| {
        crate::audit::audit_execution(
            &crate::audit::AuditContext {
                pipeline,
                doc,
                block,
                inputs: &audit_inputs,
                golden: &golden,
            },
            &execution,
        )
    });
    let mut outputs = to_report(block, execution);
    outputs.0.audit = audit.map(Box::new);
    // An optional media block left out for want of a provider made
    // nothing worth reusing: once the provider is set, it must run.
    let left_out =
        block.runtime.makes_media() && outputs.0.error.is_none() && outputs.0.artifacts.is_empty();
    outputs.0.memo_key = memo_key.filter(|_| !left_out);
    outputs.0.gap_checks = gap_checks.map(Box::new);
    if !failed && !keep_work_dir {
        let _ = std::fs::remove_dir_all(&attempt_dir);
    }
    Ok((outputs.0, outputs.1, route_items))
}

/// The artifacts a block emits events from (`outputs.emits`) must be JSON
/// the feed can take; otherwise the attempt fails with why.
fn check_emits(
    block: &factory_core::template::Block,
    artifacts: &BTreeMap<String, Vec<u8>>,
) -> std::result::Result<(), String> {
    for emit in &block.outputs.emits {
        let Some(bytes) = artifacts.get(&emit.artifact) else {
            return Err(format!(
                "artifact `{}` is missing, so `{}` cannot be emitted",
                emit.artifact, emit.event
            ));
        };
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|error| {
            format!(
                "artifact `{}` is not JSON ({error}), so `{}` cannot be emitted",
                emit.artifact, emit.event
            )
        })?;
        factory_core::bus::emittable(&emit.event, &emit.artifact, &json)?;
    }
    Ok(())
}

/// Turns an execution into its report plus the blobs it references; the
/// blobs are written in the same transaction as the report's events, so a
/// recorded artifact is never missing.
fn to_report(
    block: &factory_core::template::Block,
    execution: Execution,
) -> (AttemptReport, Vec<NewBlob>) {
    let mut blobs = Vec::new();
    let mut artifacts = BTreeMap::new();
    let mut execution = execution;
    for spec in &block.outputs.artifacts {
        if let Some(bytes) = execution.artifacts.remove(&spec.key) {
            let blob = NewBlob::new(bytes);
            artifacts.insert(
                spec.key.clone(),
                ArtifactRef {
                    hash: blob.hash.clone(),
                    size: blob.content.len() as u64,
                    path: spec.path.clone(),
                    format: spec.format,
                    // Checked already (a bad file failed the attempt): kept
                    // for the page and the API.
                    media: spec
                        .format
                        .media_kind()
                        .and_then(|kind| factory_audit::media::inspect(kind, &blob.content).ok()),
                },
            );
            blobs.push(blob);
        }
    }
    let mut log = |bytes: Vec<u8>, truncated: bool| -> Option<LogRef> {
        if bytes.is_empty() {
            return None;
        }
        let blob = NewBlob::new(bytes);
        let log = LogRef {
            hash: blob.hash.clone(),
            size: blob.content.len() as u64,
            truncated,
        };
        blobs.push(blob);
        Some(log)
    };
    let stdout = log(
        std::mem::take(&mut execution.stdout),
        execution.stdout_truncated,
    );
    let stderr = log(
        std::mem::take(&mut execution.stderr),
        execution.stderr_truncated,
    );
    let llm = execution.llm.take().map(|call| {
        let call = *call;
        let mut store = |bytes: Vec<u8>| log(bytes, false);
        let prompt = store(call.prompt.into_bytes());
        let request = if call.raw_request.is_null() {
            None
        } else {
            store(call.raw_request.to_string().into_bytes())
        };
        let response = store(call.raw_response.into_bytes());
        Box::new(LlmUsage {
            provider: call.provider,
            model: call.model,
            input_tokens: call.usage.input_tokens,
            output_tokens: call.usage.output_tokens,
            cache_read_tokens: call.usage.cache_read_tokens,
            cache_write_tokens: call.usage.cache_write_tokens,
            latency_ms: call.latency_ms,
            calls: call.calls,
            estimated: call.usage.estimated,
            queued_ms: call.queued_ms,
            response_format: Some(call.response_format).filter(|f| !f.is_empty()),
            notes: call.notes,
            error: call.error,
            stop_reason: call.stop_reason,
            cost_usd: call.cost_usd,
            images: call.images,
            characters: call.characters,
            prompt,
            request,
            response,
        })
    });
    let report = AttemptReport {
        artifacts,
        metrics: execution.metrics,
        exit_code: execution.exit_code,
        stdout,
        stderr,
        error: execution.error,
        timed_out: execution.timed_out,
        llm,
        audit: None,
        failure: execution.failure,
        reply_excerpt: execution.reply_excerpt,
        memo_key: None,
        reused: None,
        gap_checks: None,
    };
    (report, blobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use factory_core::template::ArtifactFormat;

    /// A join copies of each upstream block only what it reads: the status
    /// and the last success's artifacts, not its audit or other attempts.
    #[test]
    fn an_upstream_view_keeps_the_last_success_and_its_artifacts() {
        let pipeline = crate::load_pipeline(&crate::fixtures::fan_out(3)).unwrap();
        let mut state = BlockState::new(factory_core::template::Autonomy::Auto);
        state.status = BlockStatus::Done;
        state.attempts = 3;
        let attempt = |n: u32, outcome| Attempt {
            n,
            owner: "w".into(),
            started_at: 1,
            ended_at: Some(2),
            outcome: Some(outcome),
            report: Some(AttemptReport {
                artifacts: BTreeMap::from([(
                    "out".to_string(),
                    ArtifactRef {
                        path: format!("out-{n}.txt"),
                        format: ArtifactFormat::Text,
                        hash: format!("h{n}"),
                        size: 1,
                        media: None,
                    },
                )]),
                metrics: BTreeMap::from([("quality".to_string(), serde_json::json!(n))]),
                error: Some("noisy".into()),
                ..AttemptReport::default()
            }),
            corrections_version: None,
            version: 1,
            why: Some("retry".into()),
        };
        state.history = vec![
            attempt(1, factory_core::run::AttemptOutcome::Failed),
            attempt(2, factory_core::run::AttemptOutcome::Succeeded),
            attempt(3, factory_core::run::AttemptOutcome::ThresholdMissed),
        ];
        let view = upstream_view(&state);
        assert_eq!(view.status, BlockStatus::Done);
        assert_eq!(view.history.len(), 1);
        let kept = view.last_success().unwrap();
        assert_eq!(kept.n, 2);
        let report = kept.report.as_ref().unwrap();
        assert_eq!(report.artifacts["out"].hash, "h2");
        assert!(report.metrics.is_empty() && report.error.is_none());

        // The slim document: the block's own state whole, its upstream as views.
        let mut doc = RunDoc {
            blocks: BTreeMap::new(),
            ..serde_json::from_value(serde_json::json!({
                "run_id": "r", "template_id": "t", "template_version": "1",
                "status": "running", "params": {}, "created_at": 0, "updated_at": 0, "seq": 0
            }))
            .unwrap()
        };
        for id in pipeline.blocks().iter().map(|b| b.id.clone()) {
            doc.blocks.insert(id, state.clone());
        }
        let join = pipeline.blocks().last().unwrap().id.clone();
        let slim = slim_doc(&doc, &pipeline, &join);
        assert_eq!(slim.blocks[&join], state, "its own state is whole");
        let upstream = pipeline.block(&join).unwrap().inputs.depends.len();
        assert_eq!(slim.blocks.len(), upstream + 1);
        assert!(
            slim.blocks
                .iter()
                .filter(|(id, _)| **id != join)
                .all(|(_, s)| s.history.len() == 1)
        );
    }
}
