//! Live updates: every committed event becomes a [`LiveEvent`] on one
//! broadcast channel that the SSE streams filter per run.
//!
//! Two sources feed it. This process's engine calls [`Hub::publish_live`] as
//! it commits (no delay); the [`Tailer`] follows the store for changes made by
//! other processes (a `factory run` in a terminal, another server) and
//! publishes what the hub has not seen. Delivery is at least once; the `seq`
//! of each event lets a client drop duplicates.

use std::collections::HashMap;
use std::sync::Mutex;

use factory_core::run::{EventRecord, Millis, RunDoc};
use factory_core::scheduler::StatusCounts;
use factory_engine::Observed;
use factory_store::Store;
use serde::Serialize;
use tokio::sync::broadcast;

/// What the pages and API clients receive for each event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveEvent {
    pub run_id: String,
    pub seq: u64,
    pub at: Millis,
    pub actor: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    /// The block's status after the commit that carried this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_status: Option<String>,
    pub run_status: String,
    pub done: usize,
    pub total: usize,
    /// The event as stored.
    pub event: serde_json::Value,
}

impl LiveEvent {
    pub fn new(record: &EventRecord, run: &Observed<'_>) -> LiveEvent {
        let doc = run.doc;
        let block = record.event.block().map(str::to_string);
        let block_status = block
            .as_deref()
            .and_then(|b| doc.blocks.get(b))
            .map(|s| s.status.as_str().to_string());
        let done = run.counts.get(factory_core::run::BlockStatus::Done);
        LiveEvent {
            run_id: doc.run_id.clone(),
            seq: record.seq,
            at: record.at,
            actor: record.actor.clone(),
            kind: record.event.kind().to_string(),
            block,
            block_status,
            run_status: doc.status.as_str().to_string(),
            done,
            total: run.counts.total(),
            event: serde_json::to_value(&record.event).unwrap_or_default(),
        }
    }
}

pub struct Hub {
    sender: broadcast::Sender<LiveEvent>,
    /// Highest seq published per run.
    published: Mutex<HashMap<String, u64>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        let (sender, _) = broadcast::channel(4096);
        Hub {
            sender,
            published: Mutex::new(HashMap::new()),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.sender.subscribe()
    }

    /// From this process's engine: always published, in commit order.
    pub fn publish_live(&self, record: &EventRecord, run: &Observed<'_>) {
        self.raise(&run.doc.run_id, record.seq);
        let _ = self.sender.send(LiveEvent::new(record, run));
    }

    /// From the store: published unless already seen.
    fn publish_followed(&self, records: &[EventRecord], doc: &RunDoc) {
        let last = self.last_published(&doc.run_id);
        let run = Observed {
            doc,
            counts: StatusCounts::of(doc),
        };
        for record in records.iter().filter(|r| r.seq > last) {
            self.raise(&doc.run_id, record.seq);
            let _ = self.sender.send(LiveEvent::new(record, &run));
        }
    }

    fn last_published(&self, run_id: &str) -> u64 {
        self.published
            .lock()
            .map(|map| map.get(run_id).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn raise(&self, run_id: &str, seq: u64) {
        if let Ok(mut map) = self.published.lock() {
            let entry = map.entry(run_id.to_string()).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }
}

/// Follows the store for runs changed by other processes.
pub struct Tailer {
    /// Runs changed at or after this time are looked at.
    since: Millis,
    /// Events older than this are history, not news, for runs first seen.
    started: Millis,
}

impl Tailer {
    pub fn new(now: Millis) -> Tailer {
        Tailer {
            since: now,
            started: now,
        }
    }

    pub async fn step(&mut self, store: &dyn Store, hub: &Hub) -> factory_store::Result<()> {
        // A small overlap: clocks of writers on other machines drift a little,
        // and duplicates are dropped by seq anyway.
        let changed = store.runs_updated_since(self.since - 2_000).await?;
        for run in changed {
            self.since = self.since.max(run.updated_at);
            let after = hub.last_published(&run.run_id);
            // The log first: a run this process drives has nothing new, and
            // loading its (possibly large) document would be wasted.
            let records = store.events(&run.run_id, after).await?;
            let Some(last) = records.last().map(|r| r.seq) else {
                continue;
            };
            let news: Vec<EventRecord> = records
                .into_iter()
                .filter(|r| after > 0 || r.at >= self.started)
                .collect();
            if news.is_empty() {
                hub.raise(&run.run_id, last);
            } else {
                let stored = store.load_run(&run.run_id).await?;
                hub.publish_followed(&news, &stored.doc);
            }
        }
        Ok(())
    }
}
