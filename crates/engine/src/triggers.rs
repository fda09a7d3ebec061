//! Triggers that act on their own: cron ticks and feed events
//! ([`factory_core::bus`]), for stream intakes (they bring records) and for
//! dag-batch templates (they start runs, [`factory_core::starter`]).
//!
//! Both are safe with any number of processes running the same template.
//! A cron tick is claimed in the store before it fires, so one process
//! fires it. A feed event is taken at least once (each trigger reads the
//! feed from a cursor that moves past an event only after its effect is
//! stored) and acts at most once: a record is keyed, and a started run's
//! id is derived from the trigger and the event, so a second try finds
//! what the first made.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use factory_core::Pipeline;
use factory_core::bus::EventFilter;
use factory_core::starter::{Starter, StarterKind};
use factory_core::stream::cron::{self, CronSchedule};
use factory_core::transitions::RunRequest;
use factory_store::{FeedEvent, FiringOutcome, Store};
use tokio::sync::watch;

use crate::{Engine, Result, now_ms};

/// How often an idle event trigger reads the feed.
const FEED_POLL: Duration = Duration::from_millis(500);
/// Events read at once.
const FEED_BATCH: u32 = 200;
/// A cron claim whose firing did not finish within the step's time plus
/// this margin belongs to a process that died: the tick counts as missed.
pub(crate) const CLAIM_MARGIN_MS: i64 = 30_000;

/// The cron trigger of one block.
pub(crate) struct CronTrigger<'a> {
    pub template_id: &'a str,
    pub block: &'a str,
    pub expression: &'a str,
    pub timezone: Option<&'a str>,
    pub catch_up: u32,
    /// How long a firing may take before its claim is stale.
    pub claim_ms: i64,
}

/// Fires each due tick of `trigger` (claimed in the store first) with
/// `fire`, and stores how it went, until stopped.
pub(crate) async fn cron_ticks<F, Fut>(
    store: Arc<dyn Store>,
    trigger: CronTrigger<'_>,
    mut stopped: watch::Receiver<bool>,
    fire: F,
) where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = FiringOutcome>,
{
    let CronTrigger {
        template_id, block, ..
    } = trigger;
    let schedule = match CronSchedule::parse(trigger.expression, trigger.timezone) {
        Ok(schedule) => schedule,
        Err(error) => {
            tracing::error!(%block, %error, "cron trigger cannot run");
            return;
        }
    };
    let mut warned_after = None;
    while !*stopped.borrow() {
        let now = now_ms();
        let stale_before = now - trigger.claim_ms;
        match store.last_firing(template_id, block, stale_before).await {
            Ok(last) => {
                let due = cron::due(&schedule, last, now, trigger.catch_up);
                if due.skipped > 0 && warned_after != Some(last) {
                    warned_after = Some(last);
                    tracing::warn!(%block, skipped = due.skipped, catch_up = trigger.catch_up, "missed cron ticks skipped");
                }
                for (n, tick) in due.fire.iter().enumerate() {
                    let skipped = if n == 0 { due.skipped } else { 0 };
                    match store
                        .claim_firing(template_id, block, *tick, now, skipped, stale_before)
                        .await
                    {
                        Ok(true) => {
                            let outcome = fire(*tick).await;
                            finish(store.as_ref(), template_id, block, *tick, &outcome).await;
                        }
                        Ok(false) => {}
                        Err(error) => tracing::warn!(%block, %error, "cannot claim a cron tick"),
                    }
                }
            }
            Err(error) => tracing::warn!(%block, %error, "cannot read the last cron firing"),
        }
        // Until just past the next tick; at most a minute, then look again
        // (the clock may have jumped).
        let now = now_ms();
        let next = schedule.next_after(now).unwrap_or(now + 60_000);
        let wait = Duration::from_millis((next - now + 5).clamp(5, 60_000) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

async fn finish(
    store: &dyn Store,
    template_id: &str,
    block: &str,
    tick: i64,
    outcome: &FiringOutcome,
) {
    if let Some(error) = &outcome.error {
        tracing::warn!(%block, tick, %error, "trigger firing");
    }
    if let Err(error) = store
        .finish_firing(template_id, block, tick, outcome, now_ms())
        .await
    {
        tracing::warn!(%block, %error, "cannot record the firing's outcome");
    }
}

/// Reads the feed for the event trigger of `template_id`'s block `block`
/// (its cursor is `template/block`): the events `filter` matches, but
/// those of the trigger's own template, go to `take`, a batch at a time, and the
/// cursor moves past a batch once `take` has stored its effects. A batch
/// `take` could not store is read again after a pause.
pub(crate) async fn feed_loop<F, Fut>(
    store: Arc<dyn Store>,
    template_id: &str,
    block: &str,
    filter: EventFilter,
    mut stopped: watch::Receiver<bool>,
    take: F,
) where
    F: Fn(Vec<FeedEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let consumer = format!("{template_id}/{block}");
    let mut cursor = None;
    let mut backoff = FEED_POLL;
    while !*stopped.borrow() {
        let pause = match read_once(
            store.as_ref(),
            template_id,
            &consumer,
            &filter,
            &mut cursor,
            &take,
        )
        .await
        {
            Ok(true) => {
                backoff = FEED_POLL;
                Duration::ZERO
            }
            Ok(false) => {
                backoff = FEED_POLL;
                FEED_POLL
            }
            Err(error) => {
                tracing::warn!(%consumer, %error, ?backoff, "event trigger: cannot take events; trying again");
                backoff = (backoff * 2).min(Duration::from_secs(30));
                backoff
            }
        };
        if pause.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// One read of the feed; true when there may be more right away.
async fn read_once<F, Fut>(
    store: &dyn Store,
    template_id: &str,
    consumer: &str,
    filter: &EventFilter,
    cursor: &mut Option<factory_store::FeedPosition>,
    take: &F,
) -> Result<bool>
where
    F: Fn(Vec<FeedEvent>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let at = match *cursor {
        Some(at) => at,
        None => *cursor.insert(store.feed_cursor(consumer, now_ms()).await?),
    };
    let events = store.feed_after(&filter.name, at, FEED_BATCH).await?;
    let Some(last) = events.last().map(FeedEvent::position) else {
        return Ok(false);
    };
    let full = events.len() as u32 == FEED_BATCH;
    // A trigger does not take its own template's events: a `run.finished`
    // trigger would start its template again each time a run of it ends.
    let matching: Vec<FeedEvent> = events
        .into_iter()
        .filter(|e| e.event.template_id != template_id && filter.matches(&e.event))
        .collect();
    if !matching.is_empty() {
        take(matching).await?;
    }
    store.advance_feed_cursor(consumer, last, now_ms()).await?;
    *cursor = Some(last);
    Ok(full)
}

/// The id of the run a trigger starts for one tick or event: the same
/// for every try, so a second try finds the run the first created.
pub(crate) fn triggered_run_id(template_id: &str, block: &str, occasion: &str) -> String {
    let hash = factory_store::blob_hash(format!("{template_id}\n{block}\n{occasion}").as_bytes());
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// The running triggers of one dag-batch template: a task per block whose
/// `cron` or `event` trigger starts runs.
pub struct StarterRunner {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a started run needs of its template.
struct Source {
    engine: Arc<Engine>,
    pipeline: Arc<Pipeline>,
    source: String,
    path: Option<PathBuf>,
}

impl StarterRunner {
    /// None when the template has no starters.
    pub fn start(
        engine: Arc<Engine>,
        pipeline: Arc<Pipeline>,
        source: String,
        path: Option<PathBuf>,
    ) -> Option<StarterRunner> {
        if pipeline.starters().is_empty() {
            return None;
        }
        let (stop, stopped) = watch::channel(false);
        let shared = Arc::new(Source {
            engine,
            pipeline: pipeline.clone(),
            source,
            path,
        });
        let tasks = pipeline
            .starters()
            .iter()
            .map(|starter| {
                let (shared, stopped, starter) = (shared.clone(), stopped.clone(), starter.clone());
                let name = starter.block.clone();
                tokio::spawn(crate::stream::supervise(name, stopped.clone(), move || {
                    starter_loop(shared.clone(), starter.clone(), stopped.clone())
                }))
            })
            .collect();
        tracing::info!(template = %pipeline.template().id, starters = pipeline.starters().len(), "run triggers started");
        Some(StarterRunner { stop, tasks })
    }

    /// Stops its triggers; a run being created is finished first.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn starter_loop(shared: Arc<Source>, starter: Starter, stopped: watch::Receiver<bool>) {
    let template_id = shared.pipeline.template().id.clone();
    let store = shared.engine.store().clone();
    match &starter.kind {
        StarterKind::Cron {
            expression,
            timezone,
            catch_up,
        } => {
            let trigger = CronTrigger {
                template_id: &template_id,
                block: &starter.block,
                expression,
                timezone: timezone.as_deref(),
                catch_up: *catch_up,
                claim_ms: CLAIM_MARGIN_MS,
            };
            let fire = |tick: i64| {
                let shared = shared.clone();
                let block = starter.block.clone();
                async move {
                    let occasion = format!("tick-{tick}");
                    // The run's id is the tick's: trying again after a store
                    // error cannot start two.
                    let mut started = Err(crate::EngineError::Unavailable(String::new()));
                    for wait in [0, 1, 5] {
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        let params = shared.pipeline.template().param_defaults();
                        started = shared.start_run(&block, &occasion, params, "cron").await;
                        if !matches!(started, Err(crate::EngineError::Store(_))) {
                            break;
                        }
                    }
                    run_outcome(started)
                }
            };
            cron_ticks(store, trigger, stopped, fire).await;
        }
        StarterKind::Event(filter) => {
            let take = |events: Vec<FeedEvent>| {
                let shared = shared.clone();
                let block = starter.block.clone();
                async move { shared.start_runs_for(&block, events).await }
            };
            feed_loop(
                store,
                &template_id,
                &starter.block,
                filter.clone(),
                stopped,
                take,
            )
            .await;
        }
    }
}

fn run_outcome(started: Result<String>) -> FiringOutcome {
    match started {
        Ok(run_id) => FiringOutcome {
            created: 1,
            run_id: Some(run_id),
            ..FiringOutcome::default()
        },
        Err(error) => FiringOutcome {
            error: Some(error.to_string()),
            ..FiringOutcome::default()
        },
    }
}

impl Source {
    /// Starts the run of `block`'s trigger for `occasion` (a tick, an
    /// event), or finds the one an earlier try started.
    async fn start_run(
        &self,
        block: &str,
        occasion: &str,
        params: std::collections::BTreeMap<String, serde_json::Value>,
        via: &str,
    ) -> Result<String> {
        let template_id = &self.pipeline.template().id;
        let run_id = triggered_run_id(template_id, block, occasion);
        if self.engine.store().run_version(&run_id).await?.is_some() {
            return Ok(run_id);
        }
        let request = RunRequest {
            run_id: run_id.clone(),
            params,
            ..RunRequest::default()
        };
        let actor = format!("trigger:{via}:{block}");
        self.engine
            .create_run_by(&actor, &self.source, self.path.as_deref(), request)
            .await?;
        tracing::info!(template = %template_id, %block, %run_id, %occasion, "trigger started a run");
        Ok(run_id)
    }

    /// One run per event, each recorded as a firing (its tick is the
    /// event's number). A run that cannot be created (a required param the
    /// event lacks) is a failed firing, not a stuck trigger; one this
    /// process cannot create (its LLM settings) leaves the event unread.
    async fn start_runs_for(&self, block: &str, events: Vec<FeedEvent>) -> Result<()> {
        let template_id = &self.pipeline.template().id;
        let store = self.engine.store();
        for event in events {
            let params =
                factory_core::starter::params_from_event(self.pipeline.template(), &event.event);
            let started = self
                .start_run(block, &format!("event-{}", event.seq), params, "event")
                .await;
            if let Err(crate::EngineError::Store(error)) = &started {
                // The store is out of reach: read the event again later.
                return Err(crate::EngineError::Unavailable(error.to_string()));
            }
            // What this process lacks (an LLM provider, a skill or golden
            // file): another process running the template may have it, so
            // the event is left to be read again, not used up here. The
            // firing says why, until a process that can starts the run.
            let this_process = matches!(
                started,
                Err(crate::EngineError::LlmSetup(_) | crate::EngineError::MissingGolden(_))
            );
            let now = now_ms();
            let claimed = store
                .claim_firing(template_id, block, event.seq, now, 0, i64::MAX)
                .await?;
            let why = started.as_ref().err().map(ToString::to_string);
            // Another process recorded this event's firing already: a
            // failure here must not hide the run it started.
            if claimed || started.is_ok() {
                store
                    .finish_firing(template_id, block, event.seq, &run_outcome(started), now)
                    .await?;
            }
            if this_process {
                return Err(crate::EngineError::Unavailable(format!(
                    "this process cannot start a run of `{template_id}`; the event waits for one that can: {}",
                    why.unwrap_or_default()
                )));
            }
        }
        Ok(())
    }
}

impl Engine {
    /// The feed's events for people, newest first.
    pub async fn feed(&self, filter: &factory_store::FeedFilter) -> Result<Vec<FeedEvent>> {
        Ok(self.store().feed(filter).await?)
    }

    /// Removes feed events, webhook receipts and finished trigger firings
    /// older than `keep` (a trigger's last firing stays).
    pub async fn prune_feed(&self, keep: Duration) -> Result<factory_store::Pruned> {
        let before = now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        Ok(self.store().prune_feed(before).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_triggered_runs_id_is_the_same_for_the_same_occasion_only() {
        let a = triggered_run_id("t", "b", "event-7");
        assert_eq!(a, triggered_run_id("t", "b", "event-7"));
        assert_ne!(a, triggered_run_id("t", "b", "event-8"));
        assert_ne!(a, triggered_run_id("t", "c", "event-7"));
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
    }
}
