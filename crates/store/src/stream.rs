//! Stream records (pattern 2): deliveries that create records, stage claims
//! with leases, and the moves a stage decided, each written in one
//! transaction with the record's history.
//!
//! The SQL is written once with `$N` placeholders for both backends; only
//! the claim differs (PostgreSQL skips rows another worker is claiming).

use factory_core::run::Millis;
use factory_core::stream::settle::RecordEvent;
use serde::Serialize;
use serde_json::Value;

/// A delivery to store.
#[derive(Debug, Clone)]
pub struct NewStreamRecord<'a> {
    pub template_id: &'a str,
    /// The intake block that received it.
    pub block: &'a str,
    pub key: &'a str,
    /// The stream's first state.
    pub state: &'a str,
    pub data: &'a Value,
    /// The delivery's `webhook-id`, kept so a redelivery is not processed twice.
    pub webhook_id: Option<&'a str>,
    /// The cron tick whose firing found it.
    pub tick: Option<Millis>,
    /// The person who added it (a manual intake).
    pub by: Option<&'a str>,
    /// The feed event an event intake took it from.
    pub event: Option<i64>,
    pub at: Millis,
}

/// One firing of a cron intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Firing {
    pub block: String,
    pub tick: Millis,
    pub fired_at: Millis,
    /// Missed ticks passed over before this one (after downtime).
    pub skipped: u64,
    /// Unset while its step runs (or if the process died during it).
    pub finished_at: Option<Millis>,
    /// New records; records it listed that were known already; items
    /// without a key.
    pub created: Option<u64>,
    pub known: Option<u64>,
    pub rejected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The run it started (a trigger of a dag-batch template).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// How a firing ended.
#[derive(Debug, Clone, Default)]
pub struct FiringOutcome {
    pub created: u64,
    pub known: u64,
    pub rejected: u64,
    pub error: Option<String>,
    pub run_id: Option<String>,
}

/// What a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Receipt {
    /// A new record, in the first state.
    Created,
    /// A record with this key exists: the delivery is kept as received,
    /// the record is not processed again.
    KnownRecord,
    /// This `webhook-id` was received before: nothing was stored.
    Replayed,
}

/// A record a stage claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRecord {
    pub key: String,
    pub attempts: u32,
    pub data: Value,
}

/// What a stage decided for its claimed records, to write in one go.
#[derive(Debug, Clone)]
pub struct StageMoves<'a> {
    pub template_id: &'a str,
    pub block: &'a str,
    pub from_state: &'a str,
    pub to_state: &'a str,
    /// `to_state` is the stream's last state.
    pub to_last: bool,
    /// The lease the records were claimed with.
    pub owner: &'a str,
    pub moves: &'a [factory_core::stream::settle::Move],
    pub now: Millis,
}

/// One record as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamRecordRow {
    pub template_id: String,
    pub key: String,
    pub state: String,
    /// `ready`, `failed` or `done`.
    pub status: String,
    /// A stage holds it right now.
    pub working: bool,
    /// Failed attempts at its next move.
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Not tried before (a retry's back-off).
    pub next_at: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// One entry of a record's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordHistoryEntry {
    pub seq: u32,
    pub at: Millis,
    #[serde(flatten)]
    pub event: RecordEvent,
}

/// How many records sit in each state and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordCount {
    pub state: String,
    pub status: String,
    pub count: u64,
    /// Of them, held by a stage right now.
    pub working: u64,
}

/// Which records to list.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    pub template_id: String,
    pub state: Option<String>,
    pub status: Option<String>,
    pub limit: u32,
}

pub(crate) const INSERT_RECEIPT: &str = "INSERT INTO webhook_receipts (template_id, block_id, webhook_id, record_key, received_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
pub(crate) const INSERT_RECORD: &str = "INSERT INTO stream_records (template_id, record_key, state, status, data, attempts, error, lease_owner, lease_until, next_at, created_at, updated_at, seq) VALUES ($1, $2, $3, 'ready', $4, 0, NULL, NULL, NULL, $5, $5, $5, 1) ON CONFLICT DO NOTHING";
pub(crate) const INSERT_RECORD_EVENT: &str = "INSERT INTO stream_record_events (template_id, record_key, seq, at, kind, body) VALUES ($1, $2, $3, $4, $5, $6)";
/// SQLite: one writer at a time, so the candidates cannot be taken between
/// the select and the update.
pub(crate) const CLAIM_SQLITE: &str = "UPDATE stream_records SET lease_owner = $1, lease_until = $2
 WHERE template_id = $3 AND record_key IN (
   SELECT record_key FROM stream_records
    WHERE template_id = $3 AND state = $4 AND status = 'ready' AND next_at <= $5
      AND (lease_owner IS NULL OR lease_until < $5)
    ORDER BY next_at, created_at, record_key LIMIT $6)
 RETURNING record_key, attempts, data";
/// PostgreSQL: workers on many machines claim at once; each skips the rows
/// another is claiming instead of waiting for them. The candidates are
/// picked once (a materialized CTE), not once per row of the update.
pub(crate) const CLAIM_POSTGRES: &str = "WITH picked AS MATERIALIZED (
   SELECT record_key FROM stream_records
    WHERE template_id = $3 AND state = $4 AND status = 'ready' AND next_at <= $5
      AND (lease_owner IS NULL OR lease_until < $5)
    ORDER BY next_at, created_at, record_key LIMIT $6
    FOR UPDATE SKIP LOCKED)
 UPDATE stream_records AS r SET lease_owner = $1, lease_until = $2
  FROM picked WHERE r.template_id = $3 AND r.record_key = picked.record_key
 RETURNING r.record_key, r.attempts, r.data";
/// A stage's move, only if the record is still where the stage took it
/// from and still under its lease.
pub(crate) const MOVE_RECORD: &str = "UPDATE stream_records SET state = $1, status = $2, data = COALESCE($3, data), attempts = $4, error = $5,
 lease_owner = NULL, lease_until = NULL, next_at = $6, updated_at = $7, seq = seq + 1
 WHERE template_id = $8 AND record_key = $9 AND state = $10 AND lease_owner = $11
 RETURNING seq";
pub(crate) const RETRY_RECORD: &str = "UPDATE stream_records SET status = 'ready', attempts = 0, error = NULL, next_at = $1, updated_at = $1, seq = seq + 1
 WHERE template_id = $2 AND record_key = $3 AND status = 'failed'
 RETURNING seq, state";
pub(crate) const LIST_RECORDS: &str = "SELECT template_id, record_key, state, status, attempts, error, lease_owner, lease_until, next_at, created_at, updated_at FROM stream_records
 WHERE template_id = $1 AND state = COALESCE($2, state) AND status = COALESCE($3, status)
 ORDER BY updated_at DESC, record_key LIMIT $4";
pub(crate) const ONE_RECORD: &str = "SELECT template_id, record_key, state, status, attempts, error, lease_owner, lease_until, next_at, created_at, updated_at, data FROM stream_records WHERE template_id = $1 AND record_key = $2";
pub(crate) const RECORD_EVENTS: &str = "SELECT seq, at, kind, body FROM stream_record_events WHERE template_id = $1 AND record_key = $2 ORDER BY seq";
pub(crate) const COUNT_RECORDS: &str = "SELECT state, status, COUNT(*) AS n,
 SUM(CASE WHEN lease_owner IS NOT NULL AND lease_until >= $2 THEN 1 ELSE 0 END) AS working
 FROM stream_records WHERE template_id = $1 GROUP BY state, status ORDER BY state, status";
/// A tick is claimed by inserting its row; a claim whose firing never
/// finished (its process died) may be taken again once it is stale.
pub(crate) const CLAIM_FIRING: &str = "INSERT INTO trigger_firings (template_id, block_id, tick, fired_at, skipped) VALUES ($1, $2, $3, $4, $5)
 ON CONFLICT (template_id, block_id, tick) DO UPDATE SET fired_at = excluded.fired_at, skipped = excluded.skipped
 WHERE trigger_firings.finished_at IS NULL AND trigger_firings.fired_at < $6";
pub(crate) const FINISH_FIRING: &str = "UPDATE trigger_firings SET finished_at = $1, created = $2, known = $3, rejected = $4, error = $5, run_id = $9 WHERE template_id = $6 AND block_id = $7 AND tick = $8";
/// The last tick fired or being fired (a stale unfinished claim does not
/// count: that tick was missed).
pub(crate) const LAST_FIRING: &str =
    "SELECT MAX(tick) AS tick FROM trigger_firings WHERE template_id = $1 AND block_id = $2
 AND (finished_at IS NOT NULL OR fired_at >= $3)";
pub(crate) const FIRINGS: &str = "SELECT block_id, tick, fired_at, skipped, finished_at, created, known, rejected, error, run_id FROM trigger_firings WHERE template_id = $1 ORDER BY fired_at DESC, tick DESC, block_id LIMIT $2";
pub(crate) const LEASE_OWNERS: &str =
    "SELECT DISTINCT lease_owner FROM stream_records WHERE lease_owner IS NOT NULL";
pub(crate) const RELEASE_LEASES: &str =
    "UPDATE stream_records SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1";

/// Text PostgreSQL can store: a NUL (which a step's output may carry) is
/// replaced. SQLite would take it, but both stores keep the same text.
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

pub(crate) fn corrupt(
    what: &'static str,
    key: &str,
    source: serde_json::Error,
) -> crate::StoreError {
    crate::StoreError::Corrupt {
        run_id: format!("record {key}"),
        what,
        source,
    }
}

/// One change to a record: its history row and its feed events.
pub(crate) struct RecordChange<'a> {
    pub template_id: &'a str,
    pub key: &'a str,
    /// Its number in the record's history.
    pub seq: i32,
    pub at: Millis,
    pub event: &'a RecordEvent,
    pub after: factory_core::bus::RecordAfter<'a>,
}

macro_rules! stream_queries {
    ($pool:ty, $row:ty, $db:ty, $claim:expr) => {
        use super::bq::insert_bus_events;
        use factory_core::stream::settle::{Move, RecordEvent, RecordStatus};
        use sqlx::Row as _;
        use $crate::stream::*;

        /// [`crate::Store::receive_records`]: every delivery, then their
        /// feed events in a few statements, in the caller's transaction.
        pub(crate) async fn receive_records(
            tx: &mut sqlx::Transaction<'_, $db>,
            records: &[NewStreamRecord<'_>],
        ) -> $crate::Result<Vec<Receipt>> {
            let mut feed = Vec::new();
            let mut receipts = Vec::with_capacity(records.len());
            for record in records {
                receipts.push(receive_record(tx, record, &mut feed).await?);
            }
            let at = records.iter().map(|r| r.at).max().unwrap_or_default();
            insert_bus_events(tx, &feed, at).await?;
            Ok(receipts)
        }

        /// One delivery; its feed events go to `feed`, for the caller to
        /// write with the others of the transaction.
        async fn receive_record(
            tx: &mut sqlx::Transaction<'_, $db>,
            r: &NewStreamRecord<'_>,
            feed: &mut Vec<factory_core::bus::BusEvent>,
        ) -> $crate::Result<Receipt> {
            if let Some(id) = r.webhook_id {
                let done = sqlx::query(INSERT_RECEIPT)
                    .bind(r.template_id)
                    .bind(r.block)
                    .bind(id)
                    .bind(r.key)
                    .bind(r.at)
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(Receipt::Replayed);
                }
            }
            let done = sqlx::query(INSERT_RECORD)
                .bind(r.template_id)
                .bind(r.key)
                .bind(r.state)
                .bind(serde_json::to_string(r.data)?)
                .bind(r.at)
                .execute(&mut **tx)
                .await?;
            if done.rows_affected() == 0 {
                if let Some(id) = r.webhook_id {
                    feed.push(factory_core::bus::webhook_received(
                        r.template_id,
                        r.block,
                        id,
                        r.key,
                    ));
                }
                return Ok(Receipt::KnownRecord);
            }
            let event = RecordEvent::Received {
                block: r.block.to_string(),
                webhook_id: r.webhook_id.map(str::to_string),
                tick: r.tick,
                by: r.by.map(str::to_string),
                event: r.event.and_then(|seq| u64::try_from(seq).ok()),
            };
            let after = factory_core::bus::RecordAfter {
                state: r.state,
                status: RecordStatus::Ready.as_str(),
            };
            let change = RecordChange {
                template_id: r.template_id,
                key: r.key,
                seq: 1,
                at: r.at,
                event: &event,
                after,
            };
            insert_event(tx, change, feed).await?;
            Ok(Receipt::Created)
        }

        async fn insert_event(
            tx: &mut sqlx::Transaction<'_, $db>,
            change: RecordChange<'_>,
            feed: &mut Vec<factory_core::bus::BusEvent>,
        ) -> $crate::Result<()> {
            let RecordChange {
                template_id,
                key,
                seq,
                at,
                event,
                after,
            } = change;
            sqlx::query(INSERT_RECORD_EVENT)
                .bind(template_id)
                .bind(key)
                .bind(seq)
                .bind(at)
                .bind(event.kind())
                .bind(serde_json::to_string(event)?)
                .execute(&mut **tx)
                .await?;
            feed.extend(factory_core::bus::record_events(
                template_id,
                key,
                event,
                after,
            ));
            Ok(())
        }

        pub(crate) async fn claim_records(
            pool: &$pool,
            template_id: &str,
            state: &str,
            limit: u32,
            owner: &str,
            now: factory_core::run::Millis,
            lease_until: factory_core::run::Millis,
        ) -> $crate::Result<Vec<ClaimedRecord>> {
            let rows = sqlx::query($claim)
                .bind(owner)
                .bind(lease_until)
                .bind(template_id)
                .bind(state)
                .bind(now)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in rows {
                let key: String = row.try_get("record_key")?;
                let data: &str = row.try_get("data")?;
                let data =
                    serde_json::from_str(data).map_err(|e| corrupt("record data", &key, e))?;
                claimed.push(ClaimedRecord {
                    attempts: row.try_get::<i32, _>("attempts")?.max(0) as u32,
                    key,
                    data,
                });
            }
            claimed.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(claimed)
        }

        /// Writes a stage's moves; returns how many records moved (a record
        /// whose lease was lost meanwhile is left to whoever holds it now).
        pub(crate) async fn settle_records(
            tx: &mut sqlx::Transaction<'_, $db>,
            s: &StageMoves<'_>,
        ) -> $crate::Result<usize> {
            let mut written = 0;
            let mut feed = Vec::new();
            for mv in s.moves {
                let (state, status, data, attempts, error, next_at, event) = match mv {
                    Move::Advance { attempt, data, .. } => (
                        s.to_state,
                        if s.to_last {
                            RecordStatus::Done
                        } else {
                            RecordStatus::Ready
                        },
                        Some(data),
                        0,
                        None,
                        s.now,
                        RecordEvent::Moved {
                            block: s.block.to_string(),
                            from: s.from_state.to_string(),
                            to: s.to_state.to_string(),
                            attempt: *attempt,
                        },
                    ),
                    Move::Retry {
                        attempt, error, at, ..
                    } => (
                        s.from_state,
                        RecordStatus::Ready,
                        None,
                        *attempt,
                        Some(error.as_str()),
                        *at,
                        RecordEvent::AttemptFailed {
                            block: s.block.to_string(),
                            attempt: *attempt,
                            error: error.clone(),
                            retry_at: *at,
                        },
                    ),
                    Move::GiveUp { attempt, error, .. } => (
                        s.from_state,
                        RecordStatus::Failed,
                        None,
                        *attempt,
                        Some(error.as_str()),
                        s.now,
                        RecordEvent::Failed {
                            block: s.block.to_string(),
                            attempt: *attempt,
                            error: error.clone(),
                        },
                    ),
                };
                let data_json = data.map(serde_json::to_string).transpose()?;
                let row = sqlx::query(MOVE_RECORD)
                    .bind(state)
                    .bind(status.as_str())
                    .bind(data_json)
                    .bind(attempts as i32)
                    .bind(error.map(storable))
                    .bind(next_at)
                    .bind(s.now)
                    .bind(s.template_id)
                    .bind(mv.key())
                    .bind(s.from_state)
                    .bind(s.owner)
                    .fetch_optional(&mut **tx)
                    .await?;
                if let Some(row) = row {
                    let seq: i32 = row.try_get("seq")?;
                    let after = factory_core::bus::RecordAfter {
                        state,
                        status: status.as_str(),
                    };
                    let change = RecordChange {
                        template_id: s.template_id,
                        key: mv.key(),
                        seq,
                        at: s.now,
                        event: &event,
                        after,
                    };
                    insert_event(tx, change, &mut feed).await?;
                    written += 1;
                }
            }
            insert_bus_events(tx, &feed, s.now).await?;
            Ok(written)
        }

        pub(crate) async fn retry_record(
            tx: &mut sqlx::Transaction<'_, $db>,
            template_id: &str,
            key: &str,
            actor: &str,
            now: factory_core::run::Millis,
        ) -> $crate::Result<bool> {
            let row = sqlx::query(RETRY_RECORD)
                .bind(now)
                .bind(template_id)
                .bind(key)
                .fetch_optional(&mut **tx)
                .await?;
            let Some(row) = row else { return Ok(false) };
            let seq: i32 = row.try_get("seq")?;
            let event = RecordEvent::Retried {
                actor: actor.to_string(),
            };
            let state: String = row.try_get("state")?;
            let after = factory_core::bus::RecordAfter {
                state: &state,
                status: RecordStatus::Ready.as_str(),
            };
            let mut feed = Vec::new();
            let change = RecordChange {
                template_id,
                key,
                seq,
                at: now,
                event: &event,
                after,
            };
            insert_event(tx, change, &mut feed).await?;
            insert_bus_events(tx, &feed, now).await?;
            Ok(true)
        }

        fn record_row(
            row: &$row,
            now: factory_core::run::Millis,
            with_data: bool,
        ) -> $crate::Result<StreamRecordRow> {
            let key: String = row.try_get("record_key")?;
            let owner: Option<String> = row.try_get("lease_owner")?;
            let until: Option<i64> = row.try_get("lease_until")?;
            let data = if with_data {
                let text: &str = row.try_get("data")?;
                Some(serde_json::from_str(text).map_err(|e| corrupt("record data", &key, e))?)
            } else {
                None
            };
            Ok(StreamRecordRow {
                template_id: row.try_get("template_id")?,
                state: row.try_get("state")?,
                status: row.try_get("status")?,
                working: owner.is_some() && until.is_some_and(|u| u >= now),
                attempts: row.try_get::<i32, _>("attempts")?.max(0) as u32,
                error: row.try_get("error")?,
                next_at: row.try_get("next_at")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                data,
                key,
            })
        }

        pub(crate) async fn list_records(
            pool: &$pool,
            filter: &RecordFilter,
            now: factory_core::run::Millis,
        ) -> $crate::Result<Vec<StreamRecordRow>> {
            let rows = sqlx::query(LIST_RECORDS)
                .bind(&filter.template_id)
                .bind(&filter.state)
                .bind(&filter.status)
                .bind(i64::from(filter.limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(|row| record_row(row, now, false)).collect()
        }

        pub(crate) async fn record(
            pool: &$pool,
            template_id: &str,
            key: &str,
            now: factory_core::run::Millis,
        ) -> $crate::Result<Option<(StreamRecordRow, Vec<RecordHistoryEntry>)>> {
            let Some(row) = sqlx::query(ONE_RECORD)
                .bind(template_id)
                .bind(key)
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let record = record_row(&row, now, true)?;
            let rows = sqlx::query(RECORD_EVENTS)
                .bind(template_id)
                .bind(key)
                .fetch_all(pool)
                .await?;
            let mut history = Vec::with_capacity(rows.len());
            for row in rows {
                let body: &str = row.try_get("body")?;
                history.push(RecordHistoryEntry {
                    seq: row.try_get::<i32, _>("seq")?.max(0) as u32,
                    at: row.try_get("at")?,
                    event: serde_json::from_str(body)
                        .map_err(|e| corrupt("record event", key, e))?,
                });
            }
            Ok(Some((record, history)))
        }

        pub(crate) async fn count_records(
            pool: &$pool,
            template_id: &str,
            now: factory_core::run::Millis,
        ) -> $crate::Result<Vec<RecordCount>> {
            let rows = sqlx::query(COUNT_RECORDS)
                .bind(template_id)
                .bind(now)
                .fetch_all(pool)
                .await?;
            let mut counts = Vec::with_capacity(rows.len());
            for row in rows {
                counts.push(RecordCount {
                    state: row.try_get("state")?,
                    status: row.try_get("status")?,
                    count: row.try_get::<i64, _>("n")?.max(0) as u64,
                    working: row
                        .try_get::<Option<i64>, _>("working")?
                        .unwrap_or(0)
                        .max(0) as u64,
                });
            }
            Ok(counts)
        }

        pub(crate) async fn claim_firing(
            pool: &$pool,
            template_id: &str,
            block: &str,
            tick: factory_core::run::Millis,
            at: factory_core::run::Millis,
            skipped: u64,
            stale_before: factory_core::run::Millis,
        ) -> $crate::Result<bool> {
            let done = sqlx::query(CLAIM_FIRING)
                .bind(template_id)
                .bind(block)
                .bind(tick)
                .bind(at)
                .bind(i64::try_from(skipped).unwrap_or(i64::MAX))
                .bind(stale_before)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        /// Writes how a firing ended, and its `trigger.fired` event, in the
        /// caller's transaction.
        pub(crate) async fn finish_firing(
            tx: &mut sqlx::Transaction<'_, $db>,
            template_id: &str,
            block: &str,
            tick: factory_core::run::Millis,
            outcome: &FiringOutcome,
            at: factory_core::run::Millis,
        ) -> $crate::Result<()> {
            let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
            let fired = factory_core::bus::trigger_fired(
                template_id,
                block,
                tick,
                factory_core::bus::Fired {
                    created: outcome.created,
                    known: outcome.known,
                    rejected: outcome.rejected,
                    error: outcome.error.as_deref(),
                    run_id: outcome.run_id.as_deref(),
                },
            );
            insert_bus_events(tx, &[fired], at).await?;
            sqlx::query(FINISH_FIRING)
                .bind(at)
                .bind(count(outcome.created))
                .bind(count(outcome.known))
                .bind(count(outcome.rejected))
                .bind(outcome.error.as_deref().map(storable))
                .bind(template_id)
                .bind(block)
                .bind(tick)
                .bind(outcome.run_id.as_deref())
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        pub(crate) async fn last_firing(
            pool: &$pool,
            template_id: &str,
            block: &str,
            stale_before: factory_core::run::Millis,
        ) -> $crate::Result<Option<factory_core::run::Millis>> {
            let row = sqlx::query(LAST_FIRING)
                .bind(template_id)
                .bind(block)
                .bind(stale_before)
                .fetch_one(pool)
                .await?;
            Ok(row.try_get::<Option<i64>, _>("tick")?)
        }

        pub(crate) async fn firings(
            pool: &$pool,
            template_id: &str,
            limit: u32,
        ) -> $crate::Result<Vec<Firing>> {
            let rows = sqlx::query(FIRINGS)
                .bind(template_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            let count = |n: Option<i32>| n.map(|n| n.max(0) as u64);
            let mut firings = Vec::with_capacity(rows.len());
            for row in rows {
                firings.push(Firing {
                    block: row.try_get("block_id")?,
                    tick: row.try_get("tick")?,
                    fired_at: row.try_get("fired_at")?,
                    skipped: row.try_get::<i64, _>("skipped")?.max(0) as u64,
                    finished_at: row.try_get("finished_at")?,
                    created: count(row.try_get("created")?),
                    known: count(row.try_get("known")?),
                    rejected: count(row.try_get("rejected")?),
                    error: row.try_get("error")?,
                    run_id: row.try_get("run_id")?,
                });
            }
            Ok(firings)
        }

        pub(crate) async fn record_lease_owners(pool: &$pool) -> $crate::Result<Vec<String>> {
            let rows = sqlx::query(LEASE_OWNERS).fetch_all(pool).await?;
            rows.iter()
                .map(|row| row.try_get("lease_owner").map_err(Into::into))
                .collect()
        }

        pub(crate) async fn release_record_leases(
            pool: &$pool,
            owner: &str,
        ) -> $crate::Result<u64> {
            let done = sqlx::query(RELEASE_LEASES)
                .bind(owner)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        }
    };
}
pub(crate) use stream_queries;
