//! Dynamic fan-out, decided purely: a fan-out block's attempt reads a list
//! (the engine fetches the param or artifact it comes from), and
//! [`expand`] turns it into the events that record the attempt and make
//! one instance per item — or fail the block, saying what is wrong with the
//! list. Failures here are not retried: the same list would fail again.

use serde_json::Value;

use crate::pipeline::Pipeline;
use crate::run::{AttemptOutcome, AttemptReport, Event, Instance, RunDoc, instance_id};
use crate::template::{FanOut, ListSource};
use crate::transitions::TransitionError;

/// Longest instance key; longer names are cut.
const MAX_KEY_LEN: usize = 64;

/// Where `fan_out.over` points, in words (`param \`perspectives\``).
pub fn source_label(source: &ListSource) -> String {
    let base = match (&source.param, &source.block, &source.artifact) {
        (Some(param), _, _) => format!("param `{param}`"),
        (None, Some(block), Some(artifact)) => format!("`{block}.{artifact}`"),
        _ => "`fan_out.over`".to_string(),
    };
    match source.pointer.as_deref().filter(|p| !p.is_empty()) {
        Some(pointer) => format!("{base} at `{pointer}`"),
        None => base,
    }
}

/// The events that close fan-out block `block_id`'s running `attempt`,
/// given the value its list source holds: `attempt_finished` and
/// `block_expanded`, or `attempt_finished` and `block_failed` when the
/// value is not a usable list.
pub fn expand(
    pipeline: &Pipeline,
    doc: &RunDoc,
    block_id: &str,
    attempt: u32,
    source: &Value,
) -> Result<Vec<Event>, TransitionError> {
    let (block, _) = crate::transitions::running(pipeline, doc, block_id, attempt)?;
    let Some(fan_out) = &block.fan_out else {
        return Err(TransitionError::UnknownBlock(format!(
            "{block_id} (as a fan-out block)"
        )));
    };
    let finished = |outcome, report| Event::AttemptFinished {
        block: block_id.to_string(),
        attempt,
        outcome,
        report,
        score: None,
    };
    match instances(block_id, fan_out, source) {
        Ok(instances) => {
            // A lens with a feedback loop orders, flags and trims its
            // perspectives by the run's past ratings.
            let (instances, left_out) = crate::lens::shape(block, &doc.past_ratings, instances);
            let mut metrics: std::collections::BTreeMap<String, Value> =
                [("instances".to_string(), Value::from(instances.len()))].into();
            if !left_out.is_empty() {
                metrics.insert("left_out".to_string(), Value::from(left_out.len()));
            }
            let report = AttemptReport {
                metrics,
                ..AttemptReport::default()
            };
            Ok(vec![
                finished(AttemptOutcome::Succeeded, report),
                Event::BlockExpanded {
                    block: block_id.to_string(),
                    instances,
                    left_out,
                },
            ])
        }
        Err(error) => {
            let error = format!("block `{block_id}`: {error}");
            let report = AttemptReport {
                error: Some(error.clone()),
                ..AttemptReport::default()
            };
            Ok(vec![
                finished(AttemptOutcome::Failed, report),
                Event::BlockFailed {
                    block: block_id.to_string(),
                    error,
                },
            ])
        }
    }
}

/// The instances a list makes, or what is wrong with it.
pub fn instances(
    block_id: &str,
    fan_out: &FanOut,
    source: &Value,
) -> Result<Vec<Instance>, String> {
    let label = source_label(&fan_out.over);
    let value = match fan_out.over.pointer.as_deref().filter(|p| !p.is_empty()) {
        Some(pointer) => source.pointer(pointer).ok_or_else(|| {
            format!("the list to fan out over, {label}: there is nothing at that pointer")
        })?,
        None => source,
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "the list to fan out over, {label}, is {}, not a JSON array",
            kind(value)
        ));
    };
    if items.len() > fan_out.max as usize {
        return Err(format!(
            "the list to fan out over, {label}, has {} items, more than `fan_out.max` ({}); shorten the list or raise `max` (at most {})",
            items.len(),
            fan_out.max,
            crate::template::FAN_OUT_LIMIT
        ));
    }
    let required = fan_out.need.required(items.len());
    if items.len() < required {
        return Err(format!(
            "the list to fan out over, {label}, has {} items, fewer than the {required} that `need` asks to be done",
            items.len()
        ));
    }
    let mut seen: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let key = key_of(item, fan_out.key.as_deref(), position);
        if let Some(earlier) = seen.insert(key.clone(), position) {
            return Err(format!(
                "items {earlier} and {position} of {label} both make the instance key `{key}` (keys are the {} as lowercase letters, digits, `_` and `-`, at most {MAX_KEY_LEN} characters, or the item's position); make them differ there",
                fan_out
                    .key
                    .as_deref()
                    .map_or("item".to_string(), |field| format!("item's `{field}`"))
            ));
        }
        out.push(Instance {
            id: instance_id(block_id, &key),
            key,
            item: item.clone(),
            review: false,
        });
    }
    Ok(out)
}

/// An item's instance key: the `key` field of an object item, a string or
/// number item itself, otherwise its position — as lowercase letters,
/// digits and `-`.
pub fn key_of(item: &Value, field: Option<&str>, position: usize) -> String {
    let name = match (item, field) {
        (Value::Object(map), Some(field)) => map.get(field).and_then(scalar_text),
        (Value::Object(_), None) => None,
        (other, _) => scalar_text(other),
    };
    name.map(|n| slug(&n))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| position.to_string())
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= MAX_KEY_LEN {
            break;
        }
    }
    out.trim_end_matches('-').to_string()
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
