//! The event feed's rows ([`factory_core::bus`]): written in the
//! transaction of the change they tell of, read by event triggers in
//! (`tx`, `seq`) order from a cursor each, listed for people, pruned.
//!
//! The SQL is written once with `$N` placeholders; the backends differ in
//! where a reader must stop (PostgreSQL: before the oldest transaction still
//! running, see migration 0012) and where a new cursor starts.

use factory_core::bus::BusEvent;
use factory_core::run::Millis;
use serde::Serialize;

/// One event of the feed, numbered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedEvent {
    pub seq: i64,
    #[serde(skip)]
    pub tx: i64,
    pub at: Millis,
    #[serde(flatten)]
    pub event: BusEvent,
}

impl FeedEvent {
    pub fn position(&self) -> FeedPosition {
        FeedPosition {
            tx: self.tx,
            seq: self.seq,
        }
    }
}

/// Where a reader of the feed is: after the event at (`tx`, `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedPosition {
    pub tx: i64,
    pub seq: i64,
}

/// Which events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// An exact name, or a prefix ending in `.` (`record.`).
    pub name: Option<String>,
    pub template_id: Option<String>,
    pub run_id: Option<String>,
    /// Only events numbered below this (to page back).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub events: u64,
    pub webhook_receipts: u64,
    pub firings: u64,
}

/// Every event of a write in one statement of fixed text (so it is
/// prepared once), whatever their number: SQLite takes them as one JSON
/// array ([`feed_json`]), in order.
pub(crate) const INSERT_SQLITE: &str = "INSERT INTO bus_events (name, template_id, run_id, block_id, record_key, payload, at)
 SELECT json_extract(value, '$.n'), json_extract(value, '$.t'), json_extract(value, '$.r'), json_extract(value, '$.b'),
        json_extract(value, '$.k'), json_extract(value, '$.p'), $2
 FROM json_each($1) ORDER BY key";
/// PostgreSQL takes them as arrays, unnested in order.
pub(crate) const INSERT_POSTGRES: &str =
    "INSERT INTO bus_events (name, template_id, run_id, block_id, record_key, payload, at)
 SELECT f.name, f.template_id, f.run_id, f.block_id, f.record_key, f.payload, $7
 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
      WITH ORDINALITY AS f (name, template_id, run_id, block_id, record_key, payload, n)
 ORDER BY f.n";

/// `events` as the JSON array [`INSERT_SQLITE`] reads.
pub(crate) fn feed_json(events: &[BusEvent]) -> serde_json::Result<String> {
    #[derive(Serialize)]
    struct Row<'a> {
        n: &'a str,
        t: &'a str,
        r: Option<&'a str>,
        b: Option<&'a str>,
        k: Option<&'a str>,
        p: &'a serde_json::Map<String, serde_json::Value>,
    }
    serde_json::to_string(
        &events
            .iter()
            .map(|e| Row {
                n: &e.name,
                t: &e.template_id,
                r: e.run_id.as_deref(),
                b: e.block.as_deref(),
                k: e.record_key.as_deref(),
                p: &e.payload,
            })
            .collect::<Vec<_>>(),
    )
}

/// An event trigger's next events.
pub(crate) const FEED_AFTER_SQLITE: &str =
    "SELECT seq, tx, at, name, template_id, run_id, block_id, record_key, payload FROM bus_events
 WHERE name = $1 AND (tx, seq) > ($2, $3) ORDER BY tx, seq LIMIT $4";
/// The same, only from transactions that have ended: below the oldest one
/// still running (migration 0012 says why).
pub(crate) const FEED_AFTER_POSTGRES: &str = "SELECT seq, tx, at, name, template_id, run_id, block_id, record_key, payload FROM bus_events
 WHERE name = $1 AND (tx, seq) > ($2, $3) AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
 ORDER BY tx, seq LIMIT $4";

pub(crate) const FEED_END_SQLITE: &str =
    "SELECT 0 AS tx, COALESCE(MAX(seq), 0) AS seq FROM bus_events";
/// Past every transaction that has ended (events of transactions still
/// running will be read: they commit after the cursor was made).
pub(crate) const FEED_END_POSTGRES: &str = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1 AS tx, 9223372036854775807::bigint AS seq";

pub(crate) const START_CURSOR: &str = "INSERT INTO bus_cursors (consumer, tx, seq, updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (consumer) DO NOTHING";
pub(crate) const CURSOR: &str = "SELECT tx, seq FROM bus_cursors WHERE consumer = $1";
pub(crate) const ADVANCE_CURSOR: &str = "UPDATE bus_cursors SET tx = $2, seq = $3, updated_at = $4 WHERE consumer = $1 AND (tx, seq) < ($2, $3)";

pub(crate) const LIST: &str = "SELECT seq, tx, at, name, template_id, run_id, block_id, record_key, payload FROM bus_events
 WHERE ($1 IS NULL OR name = $1 OR (substr($1, length($1), 1) = '.' AND substr(name, 1, length($1)) = $1))
   AND ($2 IS NULL OR template_id = $2) AND ($3 IS NULL OR run_id = $3) AND seq < $4
 ORDER BY seq DESC LIMIT $5";

pub(crate) const PRUNE_EVENTS: &str = "DELETE FROM bus_events WHERE at < $1";
pub(crate) const PRUNE_RECEIPTS: &str = "DELETE FROM webhook_receipts WHERE received_at < $1";
/// A trigger's last firing stays: it says which tick comes next.
pub(crate) const PRUNE_FIRINGS: &str = "DELETE FROM trigger_firings WHERE fired_at < $1 AND finished_at IS NOT NULL
 AND tick < (SELECT MAX(g.tick) FROM trigger_firings g WHERE g.template_id = trigger_firings.template_id AND g.block_id = trigger_firings.block_id)";

macro_rules! bus_queries {
    ($pool:ty, $row:ty, $db:ty, $postgres:expr) => {
        use sqlx::Row as _;
        use $crate::bus::*;

        fn feed_row(row: &$row) -> $crate::Result<FeedEvent> {
            let seq: i64 = row.try_get("seq")?;
            let payload: &str = row.try_get("payload")?;
            let payload =
                serde_json::from_str(payload).map_err(|source| $crate::StoreError::Corrupt {
                    run_id: format!("feed event {seq}"),
                    what: "event payload",
                    source,
                })?;
            Ok(FeedEvent {
                seq,
                tx: row.try_get("tx")?,
                at: row.try_get("at")?,
                event: factory_core::bus::BusEvent {
                    name: row.try_get("name")?,
                    template_id: row.try_get("template_id")?,
                    run_id: row.try_get("run_id")?,
                    block: row.try_get("block_id")?,
                    record_key: row.try_get("record_key")?,
                    payload,
                },
            })
        }

        pub(crate) async fn feed_after(
            pool: &$pool,
            name: &str,
            after: FeedPosition,
            limit: u32,
        ) -> $crate::Result<Vec<FeedEvent>> {
            let rows = sqlx::query(if $postgres {
                FEED_AFTER_POSTGRES
            } else {
                FEED_AFTER_SQLITE
            })
            .bind(name)
            .bind(after.tx)
            .bind(after.seq)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter().map(feed_row).collect()
        }

        pub(crate) async fn feed_cursor(
            pool: &$pool,
            consumer: &str,
            now: factory_core::run::Millis,
        ) -> $crate::Result<FeedPosition> {
            if let Some(row) = sqlx::query(CURSOR)
                .bind(consumer)
                .fetch_optional(pool)
                .await?
            {
                return Ok(FeedPosition {
                    tx: row.try_get("tx")?,
                    seq: row.try_get("seq")?,
                });
            }
            let end = sqlx::query(if $postgres {
                FEED_END_POSTGRES
            } else {
                FEED_END_SQLITE
            })
            .fetch_one(pool)
            .await?;
            let (tx, seq): (i64, i64) = (end.try_get("tx")?, end.try_get("seq")?);
            sqlx::query(START_CURSOR)
                .bind(consumer)
                .bind(tx)
                .bind(seq)
                .bind(now)
                .execute(pool)
                .await?;
            // Another process may have made it first: its position holds.
            let row = sqlx::query(CURSOR).bind(consumer).fetch_one(pool).await?;
            Ok(FeedPosition {
                tx: row.try_get("tx")?,
                seq: row.try_get("seq")?,
            })
        }

        pub(crate) async fn advance_feed_cursor(
            pool: &$pool,
            consumer: &str,
            to: FeedPosition,
            now: factory_core::run::Millis,
        ) -> $crate::Result<()> {
            sqlx::query(ADVANCE_CURSOR)
                .bind(consumer)
                .bind(to.tx)
                .bind(to.seq)
                .bind(now)
                .execute(pool)
                .await?;
            Ok(())
        }

        pub(crate) async fn feed(
            pool: &$pool,
            filter: &FeedFilter,
        ) -> $crate::Result<Vec<FeedEvent>> {
            let rows = sqlx::query(LIST)
                .bind(filter.name.as_deref())
                .bind(filter.template_id.as_deref())
                .bind(filter.run_id.as_deref())
                .bind(filter.before_seq.unwrap_or(i64::MAX))
                .bind(i64::from(filter.limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(feed_row).collect()
        }

        pub(crate) async fn prune_feed(
            pool: &$pool,
            before: factory_core::run::Millis,
        ) -> $crate::Result<Pruned> {
            // Each delete stands alone: nothing ties the three together.
            let mut pruned = Pruned::default();
            for (query, count) in [
                (PRUNE_EVENTS, &mut pruned.events),
                (PRUNE_RECEIPTS, &mut pruned.webhook_receipts),
                (PRUNE_FIRINGS, &mut pruned.firings),
            ] {
                *count = sqlx::query(query)
                    .bind(before)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
            Ok(pruned)
        }
    };
}
pub(crate) use bus_queries;
