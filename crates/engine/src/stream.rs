//! The stream runner (pattern 2): takes deliveries in as records and keeps
//! one daemon task per stage that moves them through the template's states.
//!
//! Per stage, a loop: claim up to `batch` records waiting in the stage's
//! state (a lease that outlives the block's timeout), run the block once on
//! them, and write every record's move in one transaction
//! ([`factory_core::stream::settle`] decides them). A stage that moved
//! records wakes the next; an idle stage looks again every second (retries
//! come due on their own). A stage task that dies is started again after a
//! back-off. Execution is at least once for records in flight when a
//! process is killed (their lease runs out, or is released at once when
//! the process is provably dead); the state move is exactly once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use factory_core::Pipeline;
use factory_core::stream::settle::{self, Claimed, Move, StageOutput};
use factory_core::stream::{IntakeKind, Stage, StreamPlan};
use factory_core::template::ArtifactFormat;
use factory_runtime::{AttemptInput, InputArtifact};
use factory_store::{NewStreamRecord, Receipt, StageMoves};
use serde_json::Value;
use tokio::sync::{Notify, watch};

use crate::{Engine, EngineError, Result, now_ms};

/// A claim outlives the block's timeout by this much, so a slow attempt
/// still holds its records when it writes their moves.
const LEASE_MARGIN_MS: i64 = 30_000;
/// An idle stage looks for records this often (retries come due, other
/// processes take deliveries).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often a stage looks for leases held by dead processes of this host.
const DEAD_LEASE_LOOK: Duration = Duration::from_secs(10);

/// What a delivery became.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivered {
    pub receipt: Receipt,
    pub key: String,
    pub state: String,
}

impl Engine {
    /// Takes one delivery to an intake block of a stream template: the
    /// payload's `track_per` field names the record, which is created in
    /// the first state unless it exists; a `webhook_id` seen before stores
    /// nothing.
    pub async fn receive_delivery(
        &self,
        pipeline: &Pipeline,
        block: &str,
        payload: &Value,
        webhook_id: Option<&str>,
    ) -> Result<Delivered> {
        let template_id = &pipeline.template().id;
        let plan = pipeline
            .stream()
            .ok_or_else(|| EngineError::NotFound(format!("stream template `{template_id}`")))?;
        if plan.webhook_intake(block).is_none() {
            return Err(EngineError::NotFound(format!(
                "intake block `{block}` of template `{template_id}`"
            )));
        }
        self.enqueue(
            template_id,
            plan,
            block,
            payload,
            webhook_id.map(str::to_string),
            None,
        )
        .await
    }

    /// A person adds a record to a stream through its manual intake
    /// (`block`, or the only one).
    pub async fn add_record(
        &self,
        actor: &str,
        pipeline: &Pipeline,
        block: Option<&str>,
        payload: &Value,
    ) -> Result<Delivered> {
        let template_id = &pipeline.template().id;
        let plan = pipeline
            .stream()
            .ok_or_else(|| EngineError::NotFound(format!("stream template `{template_id}`")))?;
        let Some(intake) = plan.manual_intake(block) else {
            let manual: Vec<&str> = plan
                .intakes
                .iter()
                .filter(|i| i.kind == factory_core::stream::IntakeKind::Manual)
                .map(|i| i.block.as_str())
                .collect();
            return Err(EngineError::BadDelivery(match (block, manual.as_slice()) {
                (_, []) => format!(
                    "`{template_id}` has no manual intake (a block with `trigger: {{type: manual}}`): records come from its hooks or its schedule"
                ),
                (Some(block), _) => format!(
                    "`{block}` is not a manual intake of `{template_id}`; its manual intakes: {}",
                    manual.join(", ")
                ),
                (None, _) => format!(
                    "`{template_id}` has several manual intakes ({}): name one",
                    manual.join(", ")
                ),
            }));
        };
        let block = intake.block.clone();
        self.enqueue(
            template_id,
            plan,
            &block,
            payload,
            None,
            Some(actor.to_string()),
        )
        .await
    }

    /// Hands a record to the intake writer and waits for its receipt.
    async fn enqueue(
        &self,
        template_id: &str,
        plan: &StreamPlan,
        block: &str,
        payload: &Value,
        webhook_id: Option<String>,
        by: Option<String>,
    ) -> Result<Delivered> {
        let key = settle::record_key(&plan.track_per, payload)
            .map_err(|e| EngineError::BadDelivery(e.to_string()))?;
        let (reply, receipt) = tokio::sync::oneshot::channel();
        let mut pending = Pending {
            template_id: template_id.to_string(),
            block: block.to_string(),
            key: key.clone(),
            state: plan.first_state().to_string(),
            data: payload.clone(),
            webhook_id,
            tick: None,
            by,
            at: now_ms(),
            reply,
        };
        // A writer that died (a panic) is replaced, once.
        for _ in 0..2 {
            let queue = {
                let mut slot = self.intake.lock().unwrap_or_else(|p| p.into_inner());
                match slot.as_ref().filter(|q| !q.is_closed()) {
                    Some(queue) => queue.clone(),
                    None => slot
                        .insert(start_intake_writer(self.store().clone()))
                        .clone(),
                }
            };
            match queue.send(pending).await {
                Ok(()) => break,
                Err(returned) => pending = returned.0,
            }
        }
        let receipt = receipt.await.map_err(|_| {
            EngineError::Unavailable(
                "the delivery writer stopped before answering; send it again".into(),
            )
        })??;
        Ok(Delivered {
            receipt,
            key,
            state: plan.first_state().to_string(),
        })
    }
}

/// A delivery waiting for the intake writer.
pub(crate) struct Pending {
    template_id: String,
    block: String,
    key: String,
    state: String,
    data: Value,
    webhook_id: Option<String>,
    tick: Option<i64>,
    by: Option<String>,
    at: i64,
    reply: tokio::sync::oneshot::Sender<std::result::Result<Receipt, factory_store::StoreError>>,
}

/// Deliveries that wait together are written together.
const INTAKE_BATCH: usize = 256;

/// The task that writes deliveries: whatever has arrived while the last
/// transaction was committing goes into the next one (group commit), so
/// many concurrent deliveries cost a few transactions, not one each. A
/// batch that fails is written one delivery at a time, so each gets its
/// own answer.
fn start_intake_writer(store: Arc<dyn factory_store::Store>) -> tokio::sync::mpsc::Sender<Pending> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Pending>(4 * INTAKE_BATCH);
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(INTAKE_BATCH);
        while receiver.recv_many(&mut batch, INTAKE_BATCH).await > 0 {
            let records: Vec<NewStreamRecord<'_>> = batch.iter().map(new_record).collect();
            match store.receive_records(&records).await {
                Ok(receipts) => {
                    drop(records);
                    for (pending, receipt) in batch.drain(..).zip(receipts) {
                        let _ = pending.reply.send(Ok(receipt));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, deliveries = batch.len(), "cannot write a batch of deliveries; writing them one by one");
                    drop(records);
                    for pending in batch.drain(..) {
                        let receipt = store.receive_record(&new_record(&pending)).await;
                        let _ = pending.reply.send(receipt);
                    }
                }
            }
        }
    });
    sender
}

fn new_record(p: &Pending) -> NewStreamRecord<'_> {
    NewStreamRecord {
        template_id: &p.template_id,
        block: &p.block,
        key: &p.key,
        state: &p.state,
        data: &p.data,
        webhook_id: p.webhook_id.as_deref(),
        tick: p.tick,
        by: p.by.as_deref(),
        event: None,
        at: p.at,
    }
}

impl Engine {
    /// Records of a stream template, newest change first, with how many
    /// sit in each state and status.
    pub async fn records(
        &self,
        filter: &factory_store::RecordFilter,
    ) -> Result<(
        Vec<factory_store::StreamRecordRow>,
        Vec<factory_store::RecordCount>,
    )> {
        let now = now_ms();
        let rows = self.store().list_records(filter, now).await?;
        let counts = self.store().count_records(&filter.template_id, now).await?;
        Ok((rows, counts))
    }

    /// A stream's cron firings, newest first.
    pub async fn firings(
        &self,
        template_id: &str,
        limit: u32,
    ) -> Result<Vec<factory_store::Firing>> {
        Ok(self.store().firings(template_id, limit).await?)
    }

    /// One record with its data and history.
    pub async fn record(
        &self,
        template_id: &str,
        key: &str,
    ) -> Result<(
        factory_store::StreamRecordRow,
        Vec<factory_store::RecordHistoryEntry>,
    )> {
        self.store()
            .record(template_id, key, now_ms())
            .await?
            .ok_or_else(|| {
                EngineError::NotFound(format!("record `{key}` of template `{template_id}`"))
            })
    }

    /// A failed record waits for its stage again, as `actor`'s doing.
    pub async fn retry_record(&self, actor: &str, template_id: &str, key: &str) -> Result<()> {
        if self
            .store()
            .retry_record(template_id, key, actor, now_ms())
            .await?
        {
            return Ok(());
        }
        // Not failed: say where it is instead.
        let (record, _) = self.record(template_id, key).await?;
        Err(EngineError::RecordNotFailed {
            key: key.to_string(),
            state: record.state,
            status: record.status,
        })
    }
}

/// The running stages of one stream template.
pub struct StreamRunner {
    template_id: String,
    /// One per stage, in chain order: rung when records wait in its state.
    wakers: Vec<Arc<Notify>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StreamRunner {
    /// Starts a supervised task per stage. `template_dir` resolves the
    /// blocks' scripts and skills.
    pub fn start(
        engine: Arc<Engine>,
        pipeline: Arc<Pipeline>,
        template_dir: Option<PathBuf>,
    ) -> Option<StreamRunner> {
        let plan = pipeline.stream()?.clone();
        let template_id = pipeline.template().id.clone();
        let (stop, stopped) = watch::channel(false);
        let wakers: Vec<Arc<Notify>> = plan
            .stages
            .iter()
            .map(|_| Arc::new(Notify::new()))
            .collect();
        let params = pipeline.template().param_defaults();
        let shared = Arc::new(Shared {
            engine,
            pipeline,
            plan,
            template_dir,
            params,
            wakers: wakers.clone(),
        });
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = (0..shared.plan.stages.len())
            .map(|k| {
                let (shared, stopped) = (shared.clone(), stopped.clone());
                let name = shared.plan.stages[k].block.clone();
                tokio::spawn(supervise(name, stopped.clone(), move || {
                    stage_loop(shared.clone(), k, stopped.clone())
                }))
            })
            .collect();
        for (i, intake) in shared.plan.intakes.iter().enumerate() {
            let (shared, stopped) = (shared.clone(), stopped.clone());
            let name = intake.block.clone();
            match intake.kind {
                IntakeKind::Cron(_) => {
                    tasks.push(tokio::spawn(supervise(name, stopped.clone(), move || {
                        cron_loop(shared.clone(), i, stopped.clone())
                    })))
                }
                IntakeKind::Event(_) => {
                    tasks.push(tokio::spawn(supervise(name, stopped.clone(), move || {
                        event_loop(shared.clone(), i, stopped.clone())
                    })))
                }
                IntakeKind::Webhook { .. } | IntakeKind::Manual => {}
            }
        }
        tracing::info!(template = %template_id, stages = wakers.len(), "stream runner started");
        Some(StreamRunner {
            template_id,
            wakers,
            stop,
            tasks,
        })
    }

    pub fn template_id(&self) -> &str {
        &self.template_id
    }

    /// Records arrived or were retried: every stage looks now.
    pub fn wake(&self) {
        for waker in &self.wakers {
            waker.notify_one();
        }
    }

    /// Stops taking records; a batch in flight finishes and writes its moves.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct Shared {
    engine: Arc<Engine>,
    pipeline: Arc<Pipeline>,
    plan: StreamPlan,
    template_dir: Option<PathBuf>,
    params: BTreeMap<String, Value>,
    wakers: Vec<Arc<Notify>>,
}

/// Runs a stage's (or a cron intake's) loop until stopped, starting it
/// again (1 s, doubling to 60 s) whenever its task dies.
pub(crate) async fn supervise<F, Fut>(block: String, mut stopped: watch::Receiver<bool>, start: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let task = tokio::spawn(start());
        match task.await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(%block, %error, ?backoff, "stream task died; starting it again");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// A cron intake: on each due tick (claimed in the store, so one process
/// fires it), run the block's step and take the records it lists.
async fn cron_loop(shared: Arc<Shared>, i: usize, stopped: watch::Receiver<bool>) {
    let intake = &shared.plan.intakes[i];
    let IntakeKind::Cron(cron) = &intake.kind else {
        return;
    };
    let trigger = crate::triggers::CronTrigger {
        template_id: &shared.pipeline.template().id,
        block: &intake.block,
        expression: &cron.expression,
        timezone: cron.timezone.as_deref(),
        catch_up: cron.catch_up,
        claim_ms: cron.timeout_ms as i64 + LEASE_MARGIN_MS,
    };
    let fire = |tick| fire(&shared, &intake.block, cron, tick);
    crate::triggers::cron_ticks(shared.engine.store().clone(), trigger, stopped, fire).await;
}

/// An event intake: each feed event its filter matches becomes a record
/// (its payload is the record's data), unless its key is known.
async fn event_loop(shared: Arc<Shared>, i: usize, stopped: watch::Receiver<bool>) {
    let intake = &shared.plan.intakes[i];
    let IntakeKind::Event(filter) = &intake.kind else {
        return;
    };
    let take = |events: Vec<factory_store::FeedEvent>| take_events(&shared, &intake.block, events);
    crate::triggers::feed_loop(
        shared.engine.store().clone(),
        &shared.pipeline.template().id,
        &intake.block,
        filter.clone(),
        stopped,
        take,
    )
    .await;
}

async fn take_events(
    shared: &Shared,
    block_id: &str,
    events: Vec<factory_store::FeedEvent>,
) -> Result<()> {
    let mut keyed = Vec::with_capacity(events.len());
    for event in &events {
        let data = Value::Object(event.event.payload.clone());
        match settle::record_key(&shared.plan.track_per, &data) {
            Ok(key) => keyed.push((key, data, Found::Event(event.seq))),
            Err(problem) => tracing::warn!(
                block = %block_id,
                event = event.seq,
                name = %event.event.name,
                %problem,
                "an event names no record; passed over"
            ),
        }
    }
    enter_first_state(shared, block_id, &keyed).await?;
    Ok(())
}

/// Where a record an intake found comes from, for its history.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// The cron tick whose firing listed it.
    Tick(i64),
    /// The feed event (its number) it was made from.
    Event(i64),
}

/// The records an intake found enter the first state in one transaction
/// (known keys are left alone); the first stage looks at once when any is
/// new.
async fn enter_first_state(
    shared: &Shared,
    block_id: &str,
    found: &[(String, Value, Found)],
) -> Result<Vec<Receipt>> {
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let at = now_ms();
    let records: Vec<NewStreamRecord<'_>> = found
        .iter()
        .map(|(key, data, from)| NewStreamRecord {
            template_id: &shared.pipeline.template().id,
            block: block_id,
            key,
            state: shared.plan.first_state(),
            data,
            webhook_id: None,
            tick: match from {
                Found::Tick(tick) => Some(*tick),
                Found::Event(_) => None,
            },
            by: None,
            event: match from {
                Found::Event(seq) => Some(*seq),
                Found::Tick(_) => None,
            },
            at,
        })
        .collect();
    let receipts = shared.engine.store().receive_records(&records).await?;
    if receipts.contains(&Receipt::Created)
        && let Some(first) = shared.wakers.first()
    {
        first.notify_one();
    }
    Ok(receipts)
}

/// One firing: the step lists records (a JSON array of payloads, each
/// with the `track_per` field); the new ones enter the first state in one
/// transaction. Its outcome goes in the firing's row.
async fn fire(
    shared: &Shared,
    block_id: &str,
    cron: &factory_core::stream::CronIntake,
    tick: i64,
) -> factory_store::FiringOutcome {
    let mut outcome = factory_store::FiringOutcome::default();
    match shared.pipeline.block(block_id) {
        None => outcome.error = Some("the block is gone from the template".into()),
        Some(block) => {
            let (execution, dir) =
                run_step(shared, block, Vec::new(), 1, &format!("tick-{tick}")).await;
            match (&execution.error, execution.artifacts.get(&cron.records_key)) {
                (Some(error), _) => outcome.error = Some(error.clone()),
                (None, None) => {
                    outcome.error = Some(format!(
                        "block `{block_id}` wrote no `{}` artifact",
                        cron.records_key
                    ))
                }
                (None, Some(bytes)) => {
                    take_listed(shared, block_id, tick, cron, bytes, &mut outcome).await
                }
            }
            if outcome.error.is_none() && !shared.engine.config.keep_work_dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    outcome
}

/// The records a firing's step listed: new keys enter the first state.
async fn take_listed(
    shared: &Shared,
    block_id: &str,
    tick: i64,
    cron: &factory_core::stream::CronIntake,
    bytes: &[u8],
    outcome: &mut factory_store::FiringOutcome,
) {
    let items = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Array(items)) => items,
        Ok(_) => {
            outcome.error = Some(format!(
                "block `{block_id}`'s `{}` is not a JSON array of records",
                cron.records_key
            ));
            return;
        }
        Err(error) => {
            outcome.error = Some(format!(
                "block `{block_id}`'s `{}` is not JSON: {error}",
                cron.records_key
            ));
            return;
        }
    };
    let mut keyed = Vec::new();
    for item in items {
        match settle::record_key(&shared.plan.track_per, &item) {
            Ok(key) => keyed.push((key, item, Found::Tick(tick))),
            Err(problem) => {
                outcome.rejected += 1;
                outcome
                    .error
                    .get_or_insert_with(|| format!("an item names no record: {problem}"));
            }
        }
    }
    match enter_first_state(shared, block_id, &keyed).await {
        Ok(receipts) => {
            outcome.created = receipts.iter().filter(|r| **r == Receipt::Created).count() as u64;
            outcome.known = receipts.len() as u64 - outcome.created;
        }
        Err(error) => outcome.error = Some(format!("cannot store the records: {error}")),
    }
}

/// Runs a stream block's step once, in its own directory under the work
/// root (`stream/<template>/<block>/<name>`), with the template's param
/// defaults.
async fn run_step(
    shared: &Shared,
    block: &factory_core::template::Block,
    inputs: Vec<InputArtifact>,
    attempt: u32,
    name: &str,
) -> (factory_runtime::Execution, PathBuf) {
    let template_id = &shared.pipeline.template().id;
    let attempt_dir = shared
        .engine
        .config
        .work_root
        .join("stream")
        .join(template_id)
        .join(&block.id)
        .join(name);
    let run_id = format!("stream:{template_id}");
    let no_map = BTreeMap::new();
    let golden = BTreeMap::new();
    let execution = factory_runtime::execute(AttemptInput {
        item: None,
        lens: None,
        open_gaps: None,
        run_id: &run_id,
        block,
        attempt,
        run_version: 1,
        params: &shared.params,
        inputs,
        corrections: None,
        reply_note: None,
        run_sampling: &no_map,
        golden: &golden,
        attempt_dir: attempt_dir.clone(),
        template_dir: shared.template_dir.clone(),
        on_spawn: None,
        llm: shared.engine.config.llm.clone(),
        model: factory_core::transitions::effective_model(
            shared.pipeline.template(),
            block,
            &BTreeMap::new(),
            None,
        )
        .map(str::to_string),
        progress: None,
    })
    .await;
    (execution, attempt_dir)
}

async fn stage_loop(shared: Arc<Shared>, k: usize, mut stopped: watch::Receiver<bool>) {
    let stage = &shared.plan.stages[k];
    let store = shared.engine.store().clone();
    let owner = shared.engine.owner.id();
    let mut released_at: Option<std::time::Instant> = None;
    let mut errors = 0u32;
    while !*stopped.borrow() {
        // At start and every so often: a process of this host may have died
        // (kill -9) holding records.
        if released_at.is_none_or(|at| at.elapsed() > DEAD_LEASE_LOOK) {
            release_dead_leases(store.as_ref()).await;
            released_at = Some(std::time::Instant::now());
        }
        let now = now_ms();
        let lease_until = now + stage.timeout_ms as i64 + LEASE_MARGIN_MS;
        let claimed = match store
            .claim_records(
                &shared.pipeline.template().id,
                &shared.plan.states[stage.from],
                stage.batch as u32,
                &owner,
                now,
                lease_until,
            )
            .await
        {
            Ok(claimed) => {
                errors = 0;
                claimed
            }
            Err(error) => {
                errors += 1;
                let wait = Duration::from_millis(200 * u64::from(errors.min(50)));
                tracing::warn!(block = %stage.block, %error, ?wait, "cannot claim records");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = shared.wakers[k].notified() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            continue;
        }
        let full = claimed.len() == stage.batch;
        let moved = run_batch(&shared, stage, &owner, claimed).await;
        if moved > 0
            && let Some(next) = shared.wakers.get(k + 1)
        {
            next.notify_one();
        }
        if !full {
            // Drained: give deliveries a moment to gather into a batch.
            tokio::task::yield_now().await;
        }
    }
}

/// Runs the stage on its claimed records and writes their moves; returns
/// how many moved on.
async fn run_batch(
    shared: &Shared,
    stage: &Stage,
    owner: &str,
    claimed: Vec<factory_store::ClaimedRecord>,
) -> usize {
    let claimed: Vec<Claimed> = claimed
        .into_iter()
        .map(|c| Claimed {
            key: c.key,
            attempts: c.attempts,
            data: c.data,
        })
        .collect();
    let now_started = now_ms();
    let settled = if stage.pass_through {
        settle::settle(stage, &claimed, StageOutput::PassAll, now_started)
    } else {
        execute(shared, stage, &claimed).await
    };
    for note in &settled.notes {
        tracing::warn!(block = %stage.block, "{note}");
    }
    let moves = StageMoves {
        template_id: &shared.pipeline.template().id,
        block: &stage.block,
        from_state: &shared.plan.states[stage.from],
        to_state: shared.plan.state_after(stage),
        to_last: stage.from + 2 == shared.plan.states.len(),
        owner,
        moves: &settled.moves,
        now: now_ms(),
    };
    // A failed write leaves the records leased; they are taken again when
    // the lease runs out.
    let mut tries = 0;
    loop {
        match shared.engine.store().settle_records(&moves).await {
            Ok(_) => break,
            Err(error) if tries < 5 => {
                tries += 1;
                tracing::warn!(block = %stage.block, %error, "cannot write record moves; trying again");
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            Err(error) => {
                tracing::error!(block = %stage.block, %error, "cannot write record moves; the records are taken again when their lease ends");
                return 0;
            }
        }
    }
    settled
        .moves
        .iter()
        .filter(|m| matches!(m, Move::Advance { .. }))
        .count()
}

/// One attempt of the block on a batch: the records go in as the upstream
/// artifact the block depends on (a JSON array of `{key, state, attempt,
/// data}`), the results come back as its one JSON artifact.
async fn execute(shared: &Shared, stage: &Stage, claimed: &[Claimed]) -> settle::Settled {
    let now = now_ms();
    let Some(block) = shared.pipeline.block(&stage.block) else {
        return settle::settle(
            stage,
            claimed,
            StageOutput::Failed("the block is gone from the template"),
            now,
        );
    };
    let from_state = &shared.plan.states[stage.from];
    let batch: Vec<Value> = claimed
        .iter()
        .map(|c| {
            serde_json::json!({
                "key": c.key,
                "state": from_state,
                "attempt": c.attempts + 1,
                "data": c.data,
            })
        })
        .collect();
    let content = serde_json::to_vec_pretty(&batch).unwrap_or_default();
    let inputs: Vec<InputArtifact> = block
        .inputs
        .depends
        .iter()
        .map(|dep| {
            let path = shared
                .pipeline
                .block(&dep.block)
                .and_then(|up| up.outputs.artifacts.iter().find(|a| a.key == dep.key))
                .map(|a| a.path.clone())
                .unwrap_or_else(|| "records.json".to_string());
            InputArtifact {
                block: dep.block.clone(),
                key: dep.key.clone(),
                path,
                format: ArtifactFormat::Json,
                content: content.clone(),
            }
        })
        .collect();
    let attempt = claimed.iter().map(|c| c.attempts + 1).max().unwrap_or(1);
    let (execution, attempt_dir) = run_step(
        shared,
        block,
        inputs,
        attempt,
        &uuid::Uuid::now_v7().to_string(),
    )
    .await;
    let now = now_ms();
    let settled = match (
        &execution.error,
        stage
            .results_key
            .as_ref()
            .and_then(|k| execution.artifacts.get(k)),
    ) {
        (Some(error), _) => settle::settle(stage, claimed, StageOutput::Failed(error), now),
        (None, Some(results)) => settle::settle(stage, claimed, StageOutput::Results(results), now),
        (None, None) => settle::settle(
            stage,
            claimed,
            StageOutput::Failed(&format!(
                "block `{}` wrote no results artifact",
                stage.block
            )),
            now,
        ),
    };
    let all_moved = settled
        .moves
        .iter()
        .all(|m| matches!(m, Move::Advance { .. }));
    if all_moved && !shared.engine.config.keep_work_dirs {
        let _ = std::fs::remove_dir_all(&attempt_dir);
    }
    settled
}

/// Leases held by a process of this host that is gone are released at
/// once instead of when they run out.
async fn release_dead_leases(store: &dyn factory_store::Store) {
    let owners = match store.record_lease_owners().await {
        Ok(owners) => owners,
        Err(error) => {
            tracing::warn!(%error, "cannot list record leases");
            return;
        }
    };
    for owner in owners {
        if crate::Owner::parse(&owner).is_some_and(|o| o.is_dead_local()) {
            match store.release_record_leases(&owner).await {
                Ok(n) if n > 0 => {
                    tracing::info!(%owner, records = n, "released the record leases of a dead worker")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%owner, %error, "cannot release record leases"),
            }
        }
    }
}
