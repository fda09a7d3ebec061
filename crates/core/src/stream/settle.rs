//! What happens to each record: its key from a delivery, and where a stage's
//! results take it (next state, a retry later, or failed until a person
//! retries it). Pure: the store writes what these functions decide, one
//! transaction per delivery or per stage attempt.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{MAX_KEY_BYTES, Stage};
use crate::run::Millis;

/// Where a record stands, beside the state it has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    /// Waiting for the stage after its state (perhaps until a retry time).
    Ready,
    /// Its stage gave up on it; a person retries it.
    Failed,
    /// In the last state.
    Done,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Ready => "ready",
            RecordStatus::Failed => "failed",
            RecordStatus::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<RecordStatus> {
        match text {
            "ready" => Some(RecordStatus::Ready),
            "failed" => Some(RecordStatus::Failed),
            "done" => Some(RecordStatus::Done),
            _ => None,
        }
    }
}

/// One entry of a record's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordEvent {
    /// A delivery created the record in the first state.
    Received {
        block: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        webhook_id: Option<String>,
        /// The cron tick whose firing found it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tick: Option<Millis>,
        /// The person who added it (a manual intake).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        /// The feed event (its number) an event intake took it from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<u64>,
    },
    /// A stage moved it on.
    Moved {
        block: String,
        from: String,
        to: String,
        attempt: u32,
    },
    /// A stage's attempt failed for it; it is tried again at `retry_at`.
    AttemptFailed {
        block: String,
        attempt: u32,
        error: String,
        retry_at: Millis,
    },
    /// The stage gave up on it after its last attempt.
    Failed {
        block: String,
        attempt: u32,
        error: String,
    },
    /// A person asked for the failed stage again.
    Retried { actor: String },
}

impl RecordEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            RecordEvent::Received { .. } => "received",
            RecordEvent::Moved { .. } => "moved",
            RecordEvent::AttemptFailed { .. } => "attempt_failed",
            RecordEvent::Failed { .. } => "failed",
            RecordEvent::Retried { .. } => "retried",
        }
    }
}

/// Why a delivery is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the body is not a JSON object")]
    NotAnObject,
    #[error("the body has no `{0}` field, which names the record")]
    Missing(String),
    #[error("`{0}` must be a non-empty string without control characters, or a whole number")]
    NotAKey(String),
    #[error("`{field}` is {bytes} bytes long; a record key is at most {MAX_KEY_BYTES}")]
    TooLong { field: String, bytes: usize },
}

/// The record a delivery names: the value of its `track_per` field.
pub fn record_key(track_per: &str, payload: &Value) -> Result<String, KeyError> {
    let object = payload.as_object().ok_or(KeyError::NotAnObject)?;
    let key = match object.get(track_per) {
        None | Some(Value::Null) => return Err(KeyError::Missing(track_per.to_string())),
        // Control characters (a NUL PostgreSQL cannot store) are no key.
        Some(Value::String(s)) if !s.trim().is_empty() && !s.chars().any(char::is_control) => {
            s.clone()
        }
        // Whole numbers only: a float would make distinct large ids equal.
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => return Err(KeyError::NotAKey(track_per.to_string())),
    };
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong {
            field: track_per.to_string(),
            bytes: key.len(),
        });
    }
    Ok(key)
}

/// A record a stage attempt holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub key: String,
    /// Attempts at this move made before this one.
    pub attempts: u32,
    pub data: Value,
}

/// What a stage attempt produced, as far as records care.
#[derive(Debug, Clone, Copy)]
pub enum StageOutput<'a> {
    /// `builtin: noop`: every record moves on unchanged.
    PassAll,
    /// The step failed as a whole (exit status, timeout, no results file).
    Failed(&'a str),
    /// The results artifact.
    Results(&'a [u8]),
}

/// Where one record goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Move {
    /// To the stage's next state, with its data after the stage.
    Advance {
        key: String,
        attempt: u32,
        data: Value,
    },
    /// Stays, to be tried again at `at`.
    Retry {
        key: String,
        attempt: u32,
        error: String,
        at: Millis,
    },
    /// Stays, failed until a person retries it.
    GiveUp {
        key: String,
        attempt: u32,
        error: String,
    },
}

impl Move {
    pub fn key(&self) -> &str {
        match self {
            Move::Advance { key, .. } | Move::Retry { key, .. } | Move::GiveUp { key, .. } => key,
        }
    }
}

/// A stage attempt's moves, one per claimed record, and what the results
/// said that concerns no claimed record (for the log).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settled {
    pub moves: Vec<Move>,
    pub notes: Vec<String>,
}

/// How long a record waits before its stage tries it again: 1 s after the
/// first failure, doubling, at most 5 minutes.
pub fn retry_delay_ms(attempt: u32) -> Millis {
    let exponent = attempt.saturating_sub(1).min(16);
    (1000_i64 << exponent).min(300_000)
}

/// Decides every claimed record's move from what the stage produced.
///
/// Results file: a JSON array with one object per record, `{"key": K,
/// "data": {…}}` to move it on (the object's fields are merged into the
/// record's data; `data` may be left out) or `{"key": K, "error": "…"}` to
/// fail it. A record the results do not mention has failed ("no result").
pub fn settle(stage: &Stage, claimed: &[Claimed], output: StageOutput<'_>, now: Millis) -> Settled {
    let mut settled = Settled::default();
    let results = match output {
        StageOutput::PassAll => {
            settled.moves = claimed
                .iter()
                .map(|c| Move::Advance {
                    key: c.key.clone(),
                    attempt: c.attempts + 1,
                    data: c.data.clone(),
                })
                .collect();
            return settled;
        }
        StageOutput::Failed(error) => {
            settled.moves = claimed
                .iter()
                .map(|c| failure(stage, c, error.to_string(), now))
                .collect();
            return settled;
        }
        StageOutput::Results(bytes) => match parse_results(bytes) {
            Ok(results) => results,
            Err(error) => {
                let error = format!(
                    "block `{}` wrote results that cannot be read: {error}",
                    stage.block
                );
                settled.moves = claimed
                    .iter()
                    .map(|c| failure(stage, c, error.clone(), now))
                    .collect();
                return settled;
            }
        },
    };
    let mut by_key: std::collections::HashMap<String, Outcome> = std::collections::HashMap::new();
    for (key, outcome) in results {
        if !claimed.iter().any(|c| c.key == key) {
            settled.notes.push(format!(
                "result for record `{key}`, which this attempt was not given: ignored"
            ));
            continue;
        }
        if by_key.insert(key.clone(), outcome).is_some() {
            settled.notes.push(format!(
                "two results for record `{key}`: the last one counts"
            ));
        }
    }
    for c in claimed {
        let mv = match by_key.remove(&c.key) {
            Some(Outcome::Data(extra)) => Move::Advance {
                key: c.key.clone(),
                attempt: c.attempts + 1,
                data: merged(&c.data, extra),
            },
            Some(Outcome::Error(error)) => failure(stage, c, error, now),
            None => failure(
                stage,
                c,
                format!("block `{}` wrote no result for this record", stage.block),
                now,
            ),
        };
        settled.moves.push(mv);
    }
    settled
}

enum Outcome {
    Data(Option<Map<String, Value>>),
    Error(String),
}

fn parse_results(bytes: &[u8]) -> Result<Vec<(String, Outcome)>, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e})"))?;
    let Value::Array(items) = value else {
        return Err("expected a JSON array of `{\"key\": …, \"data\": {…}}` objects".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for (n, item) in items.into_iter().enumerate() {
        let Value::Object(mut object) = item else {
            return Err(format!("item {n} is not an object"));
        };
        let key = match object.remove("key") {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(format!("item {n} has no `key` (a string or a number)")),
        };
        let outcome = match (object.remove("error"), object.remove("data")) {
            (Some(Value::Null) | None, None | Some(Value::Null)) => Outcome::Data(None),
            (Some(Value::Null) | None, Some(Value::Object(data))) => Outcome::Data(Some(data)),
            (Some(Value::Null) | None, Some(_)) => {
                return Err(format!("item {n} (`{key}`): `data` must be an object"));
            }
            (Some(Value::String(error)), _) => Outcome::Error(error),
            (Some(other), _) => Outcome::Error(other.to_string()),
        };
        out.push((key, outcome));
    }
    Ok(out)
}

fn merged(data: &Value, extra: Option<Map<String, Value>>) -> Value {
    let Some(extra) = extra else {
        return data.clone();
    };
    let mut object = data.as_object().cloned().unwrap_or_default();
    object.extend(extra);
    Value::Object(object)
}

fn failure(stage: &Stage, claimed: &Claimed, error: String, now: Millis) -> Move {
    let attempt = claimed.attempts + 1;
    if attempt >= stage.max_attempts {
        Move::GiveUp {
            key: claimed.key.clone(),
            attempt,
            error,
        }
    } else {
        Move::Retry {
            key: claimed.key.clone(),
            attempt,
            error,
            at: now + retry_delay_ms(attempt),
        }
    }
}
