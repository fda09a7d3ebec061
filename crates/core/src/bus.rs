//! The factory's event feed: what happened, as named events that triggers
//! can wait for (`trigger: {type: "event", event: "entity.created(gate=2)"}`).
//!
//! The store writes each event in the same transaction as the change it
//! tells of (a run's commit, a record's move, a webhook receipt), so an
//! event exists exactly when its change does. This module decides which
//! events a change makes ([`run_events`], [`record_events`], [`emitted`])
//! and whether a trigger's filter matches one ([`EventFilter`]).
//!
//! The vocabulary (README "Events"):
//!
//! | name | when | fields |
//! |---|---|---|
//! | `run.created` | a run is created | `template`, `run_id`, `params` |
//! | `run.finished` | a run ends | `template`, `run_id`, `status` (`done`/`failed`) |
//! | `block.done` | a block of a run is done | `template`, `run_id`, `block` |
//! | `block.failed` | a block gave up | `template`, `run_id`, `block`, `error` |
//! | `gate.waiting` | a human gate waits | `template`, `run_id`, `block`, `phase` |
//! | `review.submitted` | a review page's form was submitted | `template`, `run_id`, `block`, `feedback_id`, `source`, `tester`, `role`, `version`, `free_text`, `items`, `changed`, `accepted`, `critical` |
//! | `run.ready_to_ship` | a run meets its convergence criteria | `template`, `run_id`, `version` |
//! | `record.received` | a record entered a stream | `template`, `key`, `block`, `state`, `via`, `webhook_id` (a delivery) |
//! | `record.moved` | a stage moved a record on | `template`, `key`, `block`, `from`, `state`, `status` (`ready`/`done`) |
//! | `record.failed` | a stage gave up on a record | `template`, `key`, `block`, `state`, `error` |
//! | `record.retried` | a person retried a record | `template`, `key`, `state`, `actor` |
//! | `trigger.fired` | a cron tick or an event was acted on | `template`, `block`, `tick`, `created`, `known`, `rejected`, `error`, `run_id` |
//! | `webhook.received` | a signed delivery of a known record was stored | `template`, `block`, `webhook_id`, `key` |
//! | any other `noun.verb` | a block emits it (`outputs.emits`) | the item's own fields, `template`, `run_id`, `block` |

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::run::{Event, EventRecord, RunDoc};
use crate::stream::settle::RecordEvent;

pub const RUN_CREATED: &str = "run.created";
pub const RUN_FINISHED: &str = "run.finished";
pub const BLOCK_DONE: &str = "block.done";
pub const BLOCK_FAILED: &str = "block.failed";
pub const GATE_WAITING: &str = "gate.waiting";
pub const REVIEW_SUBMITTED: &str = "review.submitted";
pub const RUN_READY_TO_SHIP: &str = "run.ready_to_ship";
pub const RECORD_RECEIVED: &str = "record.received";
pub const RECORD_MOVED: &str = "record.moved";
pub const RECORD_FAILED: &str = "record.failed";
pub const RECORD_RETRIED: &str = "record.retried";
pub const WEBHOOK_RECEIVED: &str = "webhook.received";
pub const TRIGGER_FIRED: &str = "trigger.fired";

/// Every name the factory itself emits.
pub const VOCABULARY: [&str; 13] = [
    RUN_CREATED,
    RUN_FINISHED,
    BLOCK_DONE,
    BLOCK_FAILED,
    GATE_WAITING,
    REVIEW_SUBMITTED,
    RUN_READY_TO_SHIP,
    RECORD_RECEIVED,
    RECORD_MOVED,
    RECORD_FAILED,
    RECORD_RETRIED,
    WEBHOOK_RECEIVED,
    TRIGGER_FIRED,
];

/// First words kept for the factory's own events: a block may not emit
/// `run.*` and have triggers believe a run ended.
pub const RESERVED_NOUNS: [&str; 7] = [
    "run", "block", "gate", "record", "webhook", "trigger", "review",
];

/// The most events one block's `outputs.emits` entry may make per attempt.
pub const MAX_EMITTED: usize = 1000;

/// One event, before the store numbers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusEvent {
    pub name: String,
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_key: Option<String>,
    /// What the event says; a filter's `key=value` tests these fields.
    pub payload: Map<String, Value>,
}

impl BusEvent {
    fn new(name: &str, template_id: &str) -> BusEvent {
        let mut payload = Map::new();
        payload.insert("template".into(), Value::from(template_id));
        BusEvent {
            name: name.to_string(),
            template_id: template_id.to_string(),
            run_id: None,
            block: None,
            record_key: None,
            payload,
        }
    }

    fn of_run(name: &str, doc: &RunDoc) -> BusEvent {
        let mut event = BusEvent::new(name, &doc.template_id);
        event.run_id = Some(doc.run_id.clone());
        event
            .payload
            .insert("run_id".into(), doc.run_id.clone().into());
        event
    }

    fn of_block(name: &str, doc: &RunDoc, block: &str) -> BusEvent {
        let mut event = BusEvent::of_run(name, doc);
        event.block = Some(block.to_string());
        event.payload.insert("block".into(), block.into());
        event
    }

    fn with(mut self, field: &str, value: impl Into<Value>) -> BusEvent {
        self.payload.insert(field.to_string(), value.into());
        self
    }
}

/// What a review submission did, for its `review.submitted` event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewSummary<'a> {
    pub feedback_id: &'a str,
    /// `extraction-review`, `expert-audit`, …
    pub source: &'a str,
    pub tester: &'a str,
    pub role: &'a str,
    pub version: &'a str,
    pub free_text: &'a str,
    /// Items the review judged.
    pub items: usize,
    /// Items whose status it changed.
    pub changed: usize,
    /// The run's items accepted after it.
    pub accepted: usize,
    /// The run's critical items still open or accepted after it.
    pub critical: usize,
}

/// The event of a review of `page` (the block serving the form).
pub fn review_submitted(doc: &RunDoc, page: &str, review: &ReviewSummary<'_>) -> BusEvent {
    /// Free text is quoted up to this many characters: the event is not
    /// the review's store.
    const FREE_TEXT_CHARS: usize = 500;
    let free_text: String = review
        .free_text
        .trim()
        .chars()
        .take(FREE_TEXT_CHARS)
        .collect();
    BusEvent::of_block(REVIEW_SUBMITTED, doc, page)
        .with("feedback_id", review.feedback_id)
        .with("source", review.source)
        .with("tester", review.tester)
        .with("role", review.role)
        .with("version", review.version)
        .with("free_text", free_text)
        .with("items", review.items)
        .with("changed", review.changed)
        .with("accepted", review.accepted)
        .with("critical", review.critical)
}

/// The event of a run meeting its convergence criteria in `version`.
pub fn ready_to_ship(doc: &RunDoc, version: u32) -> BusEvent {
    // `v3`, as a review's `version` says it.
    BusEvent::of_run(RUN_READY_TO_SHIP, doc).with("version", format!("v{version}"))
}

/// The events of a run's commit: `records` applied to reach `doc`.
pub fn run_events(doc: &RunDoc, records: &[EventRecord]) -> Vec<BusEvent> {
    let mut out = Vec::new();
    for record in records {
        if let Some(block) = record.event.done_block() {
            out.push(BusEvent::of_block(BLOCK_DONE, doc, block));
            continue;
        }
        match &record.event {
            Event::RunCreated { params, .. } => out.push(BusEvent::of_run(RUN_CREATED, doc).with(
                "params",
                Value::Object(params.clone().into_iter().collect()),
            )),
            Event::RunStatusChanged { status } if status.is_terminal() => {
                out.push(BusEvent::of_run(RUN_FINISHED, doc).with("status", status.as_str()))
            }
            Event::BlockFailed { block, error } => {
                out.push(BusEvent::of_block(BLOCK_FAILED, doc, block).with("error", error.clone()))
            }
            Event::BlockWaiting { block, phase } => out.push(
                BusEvent::of_block(GATE_WAITING, doc, block)
                    .with("phase", serde_json::to_value(phase).unwrap_or(Value::Null)),
            ),
            _ => {}
        }
    }
    out
}

/// Where a record is after a change. Its data is not copied into the
/// event (the record holds it, and a feed that copied every move's data
/// would grow by the stream's whole content once per state): readers look
/// it up by `template` and `key`.
#[derive(Debug, Clone, Copy)]
pub struct RecordAfter<'a> {
    pub state: &'a str,
    /// `ready`, `done` or `failed`.
    pub status: &'a str,
}

/// The events of one change to a stream record.
pub fn record_events(
    template_id: &str,
    key: &str,
    change: &RecordEvent,
    after: RecordAfter<'_>,
) -> Vec<BusEvent> {
    let RecordAfter { state, status } = after;
    let of_record = |name: &str| {
        let mut event = BusEvent::new(name, template_id);
        event.record_key = Some(key.to_string());
        event.payload.insert("key".into(), key.into());
        event
    };
    let with_block = |mut event: BusEvent, block: &str| {
        event.block = Some(block.to_string());
        event.with("block", block)
    };
    match change {
        RecordEvent::Received {
            block,
            webhook_id,
            tick,
            by,
            event,
        } => {
            let via = match (webhook_id, tick, by, event) {
                (Some(_), ..) => "webhook",
                (_, Some(_), ..) => "cron",
                (_, _, Some(_), _) => "manual",
                (.., Some(_)) => "event",
                _ => "intake",
            };
            let mut received = with_block(of_record(RECORD_RECEIVED), block)
                .with("state", state)
                .with("via", via);
            // A delivery that makes a record is told of once: here.
            if let Some(id) = webhook_id {
                received = received.with("webhook_id", id.clone());
            }
            vec![received]
        }
        RecordEvent::Moved {
            block, from, to, ..
        } => vec![
            with_block(of_record(RECORD_MOVED), block)
                .with("from", from.clone())
                .with("state", to.clone())
                .with("status", status),
        ],
        RecordEvent::Failed { block, error, .. } => vec![
            with_block(of_record(RECORD_FAILED), block)
                .with("state", state)
                .with("error", error.clone()),
        ],
        RecordEvent::Retried { actor } => vec![
            of_record(RECORD_RETRIED)
                .with("state", state)
                .with("actor", actor.clone()),
        ],
        RecordEvent::AttemptFailed { .. } => Vec::new(),
    }
}

/// A signed delivery stored for a record that was known already (a
/// delivery that makes a record is its `record.received`, `via: webhook`).
pub fn webhook_received(template_id: &str, block: &str, webhook_id: &str, key: &str) -> BusEvent {
    let mut event = BusEvent::new(WEBHOOK_RECEIVED, template_id);
    event.block = Some(block.to_string());
    event.record_key = Some(key.to_string());
    event
        .with("block", block)
        .with("webhook_id", webhook_id)
        .with("key", key)
}

/// How a trigger's firing went, for its `trigger.fired` event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fired<'a> {
    /// Records it made, or 1 for a run it started.
    pub created: u64,
    pub known: u64,
    pub rejected: u64,
    pub error: Option<&'a str>,
    pub run_id: Option<&'a str>,
}

/// A trigger fired: a cron tick (`tick` its time) or, for a run trigger, an
/// event (`tick` the event's number).
pub fn trigger_fired(template_id: &str, block: &str, tick: i64, fired: Fired<'_>) -> BusEvent {
    let mut event = BusEvent::new(TRIGGER_FIRED, template_id)
        .with("block", block)
        .with("tick", tick)
        .with("created", fired.created)
        .with("known", fired.known)
        .with("rejected", fired.rejected);
    event.block = Some(block.to_string());
    if let Some(error) = fired.error {
        event = event.with("error", error);
    }
    if let Some(run_id) = fired.run_id {
        event.run_id = Some(run_id.to_string());
        event = event.with("run_id", run_id);
    }
    event
}

/// The events a block emits through `outputs.emits`: the artifact's JSON,
/// an object (one event) or an array of objects (one each).
pub fn emitted(
    doc: &RunDoc,
    block: &str,
    name: &str,
    artifact_key: &str,
    json: &Value,
) -> Result<Vec<BusEvent>, String> {
    let items = emittable(name, artifact_key, json)?;
    let mut out = Vec::with_capacity(items.len());
    for fields in items {
        let mut event = BusEvent::of_block(name, doc, block);
        // The item's fields, then the envelope over them: an item cannot
        // pass for another template's, run's or block's event.
        let envelope = std::mem::replace(&mut event.payload, fields.clone());
        event.payload.extend(envelope);
        out.push(event);
    }
    Ok(out)
}

/// The objects an artifact's JSON would emit as `name`, or why it cannot:
/// checked when the attempt ends, so an artifact that cannot be emitted
/// fails its attempt instead of being dropped when the block is done.
pub fn emittable<'a>(
    name: &str,
    artifact_key: &str,
    json: &'a Value,
) -> Result<Vec<&'a Map<String, Value>>, String> {
    let items: Vec<&Value> = match json {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![json],
        _ => {
            return Err(format!(
                "artifact `{artifact_key}` emits `{name}`: it must be a JSON object or an array of objects"
            ));
        }
    };
    if items.len() > MAX_EMITTED {
        return Err(format!(
            "artifact `{artifact_key}` lists {} items to emit as `{name}`; at most {MAX_EMITTED} per attempt",
            items.len()
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(n, item)| match item {
            Value::Object(fields) => Ok(fields),
            _ => Err(format!(
                "artifact `{artifact_key}` item {n} is not a JSON object, so it cannot be emitted as `{name}`"
            )),
        })
        .collect()
}

/// Whether a block may emit `name`: `noun.verb` (lowercase words joined by
/// `.`), not in the factory's own nouns.
pub fn check_emitted_name(name: &str) -> Result<(), String> {
    if !valid_name(name) {
        return Err(format!(
            "`{name}` is not an event name: lowercase words joined by `.`, e.g. `entity.created`"
        ));
    }
    let noun = name.split('.').next().unwrap_or_default();
    if RESERVED_NOUNS.contains(&noun) {
        return Err(format!(
            "`{name}`: `{noun}.*` events are the factory's own ({}); a block may not emit them",
            VOCABULARY.join(", ")
        ));
    }
    Ok(())
}

fn word(w: &str) -> bool {
    w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && w.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `noun.verb`: two or more lowercase words joined by `.`.
pub fn valid_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() >= 2 && parts.iter().all(|p| word(p))
}

/// A trigger's filter: `name` or `name(key=value, …)`. Every condition
/// must hold: the payload's field equals the value (a number compares as a
/// number, or as the same text; a word or quoted text as text; `true` and
/// `false` as booleans). A field the event does not have fails.
#[derive(Debug, Clone, PartialEq)]
pub struct EventFilter {
    pub name: String,
    pub conditions: Vec<(String, FilterValue)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Number(f64, String),
    Text(String),
    Bool(bool),
}

impl FilterValue {
    fn matches(&self, value: &Value) -> bool {
        match (self, value) {
            (FilterValue::Number(n, _), Value::Number(v)) => v.as_f64() == Some(*n),
            (FilterValue::Number(_, text), Value::String(s)) => s == text,
            (FilterValue::Text(t), Value::String(s)) => s == t,
            (FilterValue::Bool(b), Value::Bool(v)) => b == v,
            _ => false,
        }
    }
}

impl fmt::Display for FilterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterValue::Number(_, text) => f.write_str(text),
            FilterValue::Text(t) if word(t) => f.write_str(t),
            FilterValue::Text(t) => write!(f, "{t:?}"),
            FilterValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl fmt::Display for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.conditions.is_empty() {
            let conditions: Vec<String> = self
                .conditions
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            write!(f, "({})", conditions.join(", "))?;
        }
        Ok(())
    }
}

impl EventFilter {
    /// Parses `name.verb` or `name.verb(key=value, …)`; on failure, why.
    pub fn parse(filter: &str) -> Result<EventFilter, String> {
        let filter = filter.trim();
        let (name, args) = match filter.find('(') {
            Some(open) => {
                let Some(inner) = filter[open + 1..].strip_suffix(')') else {
                    return Err("`(` is not closed by a `)` at the end".into());
                };
                (filter[..open].trim(), Some(inner))
            }
            None => (filter, None),
        };
        if !valid_name(name) {
            return Err(format!(
                "`{name}` is not an event name: lowercase words joined by `.`, e.g. `entity.created`"
            ));
        }
        if args.is_some_and(|a| a.trim().is_empty()) {
            return Err("empty parentheses: drop them, or filter on a field".into());
        }
        let mut conditions = Vec::new();
        for arg in args
            .into_iter()
            .flat_map(split_outside_quotes)
            .map(str::trim)
        {
            let Some((key, value)) = arg.split_once('=') else {
                return Err(format!("`{arg}` is not `key=value`"));
            };
            let (key, value) = (key.trim(), value.trim());
            if !word(key) {
                return Err(format!("`{key}` is not a field name"));
            }
            if conditions.iter().any(|(k, _)| k == key) {
                return Err(format!("field `{key}` is tested twice"));
            }
            let quoted = value.len() >= 2
                && ((value.starts_with('"') && value.ends_with('"'))
                    || (value.starts_with('\'') && value.ends_with('\'')));
            let parsed = if quoted {
                FilterValue::Text(value[1..value.len() - 1].to_string())
            } else if value == "true" || value == "false" {
                FilterValue::Bool(value == "true")
            } else if let Ok(n) = value.parse::<f64>()
                && n.is_finite()
            {
                FilterValue::Number(n, value.to_string())
            } else if word(value) {
                FilterValue::Text(value.to_string())
            } else {
                return Err(format!(
                    "`{value}` is not a value: a number, a word or quoted text"
                ));
            };
            conditions.push((key.to_string(), parsed));
        }
        Ok(EventFilter {
            name: name.to_string(),
            conditions,
        })
    }

    pub fn matches(&self, event: &BusEvent) -> bool {
        event.name == self.name
            && self.conditions.iter().all(|(field, value)| {
                event
                    .payload
                    .get(field)
                    .is_some_and(|actual| value.matches(actual))
            })
    }
}

/// `a=1, b="x,y"` → `a=1`, ` b="x,y"`: commas inside quotes do not split.
fn split_outside_quotes(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quote) = (0, None);
    for (i, c) in text.char_indices() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (c, Some(open)) if c == open => quote = None,
            (',', None) => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests;
