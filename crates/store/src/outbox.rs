//! The notification outbox's rows ([`factory_core::notify`]): made from
//! the event feed by the engine's notifier, claimed and settled by its
//! senders, listed for people.
//!
//! The SQL is written once with `$N` placeholders; the backends differ only
//! in how a claim skips rows another sender is claiming (PostgreSQL:
//! `FOR UPDATE SKIP LOCKED`; SQLite has one writer at a time).

pub(crate) use factory_core::notify::{NotificationStatus, Occasion};
use factory_core::run::Millis;
use serde::Serialize;

/// A notification to store (its message already composed).
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    /// [`factory_core::notify::delivery_id`].
    pub id: String,
    pub event_seq: i64,
    pub channel: String,
    pub occasion: Occasion,
    pub template_id: String,
    pub run_id: Option<String>,
    pub block: Option<String>,
    pub subject: String,
    /// The [`factory_core::notify::Message`] as JSON.
    pub message: String,
    pub created_at: Millis,
}

/// A stored notification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub id: String,
    pub event_seq: i64,
    pub channel: String,
    pub occasion: Occasion,
    pub template_id: String,
    pub run_id: Option<String>,
    pub block: Option<String>,
    pub subject: String,
    #[serde(skip)]
    pub message: String,
    pub status: NotificationStatus,
    pub attempts: u32,
    pub next_at: Millis,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub delivered_at: Option<Millis>,
}

/// How a try to send a claimed notification ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered {
        at: Millis,
    },
    /// Failed; try again at `next_at`.
    Retry {
        next_at: Millis,
        error: String,
    },
    /// Failed for good (tries used up, or the channel refused it).
    Failed {
        error: String,
    },
}

/// Which notifications to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub status: Option<NotificationStatus>,
    pub run_id: Option<String>,
    pub channel: Option<String>,
    pub limit: u32,
}

macro_rules! columns {
    () => {
        "id, event_seq, channel, occasion, template_id, run_id, block_id, subject, message, status, attempts, next_at, last_error, created_at, delivered_at"
    };
}

pub(crate) const INSERT: &str = "INSERT INTO notifications (id, event_seq, channel, occasion, template_id, run_id, block_id, subject, message, status, attempts, next_at, created_at)
 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10) ON CONFLICT (id) DO NOTHING";

/// Only the channels the sender has (`$5`, a JSON array): a process with
/// another configuration leaves the rest to those that have them.
pub(crate) const CLAIM_SQLITE: &str = concat!(
    "UPDATE notifications SET claimed_by = $1, claim_until = $2 WHERE id IN (
   SELECT id FROM notifications WHERE status = 'pending' AND next_at <= $3
     AND (claim_until IS NULL OR claim_until < $3)
     AND channel IN (SELECT value FROM json_each($5)) ORDER BY next_at, id LIMIT $4)
 RETURNING ",
    columns!()
);
/// The same, skipping rows another sender's claim is locking.
pub(crate) const CLAIM_POSTGRES: &str = concat!(
    "UPDATE notifications SET claimed_by = $1, claim_until = $2 WHERE id IN (
   SELECT id FROM notifications WHERE status = 'pending' AND next_at <= $3
     AND (claim_until IS NULL OR claim_until < $3)
     AND channel IN (SELECT jsonb_array_elements_text($5::jsonb)) ORDER BY next_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
 RETURNING ",
    columns!()
);

pub(crate) const DELIVERED: &str =
    "UPDATE notifications SET status = 'delivered', attempts = attempts + 1, delivered_at = $3,
 last_error = NULL, claimed_by = NULL, claim_until = NULL WHERE id = $1 AND claimed_by = $2";
pub(crate) const FAILED_TRY: &str =
    "UPDATE notifications SET status = $3, attempts = attempts + 1, next_at = $4,
 last_error = $5, claimed_by = NULL, claim_until = NULL WHERE id = $1 AND claimed_by = $2";
/// A failed row, or a pending one nobody is trying now (a try in flight
/// keeps its claim: clearing it would let a second sender in and drop the
/// first one's outcome).
pub(crate) const RETRY_NOW: &str = "UPDATE notifications SET status = 'pending', next_at = $2, claimed_by = NULL, claim_until = NULL
 WHERE id = $1 AND (status = 'failed' OR (status = 'pending' AND (claim_until IS NULL OR claim_until < $2)))";

pub(crate) const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM notifications WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR run_id = $2)
   AND ($3 IS NULL OR channel = $3) ORDER BY created_at DESC, id DESC LIMIT $4"
);

macro_rules! outbox_queries {
    ($pool:ty, $row:ty, $db:ty, $postgres:expr) => {
        use sqlx::Row as _;
        use $crate::outbox::*;

        fn notification_row(row: &$row) -> $crate::Result<Notification> {
            let id: String = row.try_get("id")?;
            let corrupt = |what: &'static str, message: String| $crate::StoreError::Corrupt {
                run_id: format!("notification {id}"),
                what,
                source: <serde_json::Error as serde::de::Error>::custom(message),
            };
            let occasion: String = row.try_get("occasion")?;
            let status: String = row.try_get("status")?;
            let attempts: i64 = row.try_get("attempts")?;
            Ok(Notification {
                event_seq: row.try_get("event_seq")?,
                channel: row.try_get("channel")?,
                occasion: occasion.parse().map_err(|e| corrupt("occasion", e))?,
                template_id: row.try_get("template_id")?,
                run_id: row.try_get("run_id")?,
                block: row.try_get("block_id")?,
                subject: row.try_get("subject")?,
                message: row.try_get("message")?,
                status: status.parse().map_err(|e| corrupt("status", e))?,
                attempts: u32::try_from(attempts).unwrap_or(0),
                next_at: row.try_get("next_at")?,
                last_error: row.try_get("last_error")?,
                created_at: row.try_get("created_at")?,
                delivered_at: row.try_get("delivered_at")?,
                id,
            })
        }

        /// Stores `rows` (those already there stay as they are) and moves
        /// `consumer`'s feed cursor to `to`, in the caller's transaction.
        pub(crate) async fn enqueue(
            tx: &mut sqlx::Transaction<'_, $db>,
            rows: &[NewNotification],
            consumer: &str,
            to: $crate::FeedPosition,
            now: factory_core::run::Millis,
        ) -> $crate::Result<u64> {
            let mut added = 0;
            for row in rows {
                added += sqlx::query(INSERT)
                    .bind(&row.id)
                    .bind(row.event_seq)
                    .bind(&row.channel)
                    .bind(row.occasion.as_str())
                    .bind(&row.template_id)
                    .bind(row.run_id.as_deref())
                    .bind(row.block.as_deref())
                    .bind(&row.subject)
                    .bind(&row.message)
                    .bind(row.created_at)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
            }
            sqlx::query($crate::bus::START_CURSOR)
                .bind(consumer)
                .bind(to.tx)
                .bind(to.seq)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            sqlx::query($crate::bus::ADVANCE_CURSOR)
                .bind(consumer)
                .bind(to.tx)
                .bind(to.seq)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            Ok(added)
        }

        pub(crate) async fn claim(
            pool: &$pool,
            holder: &str,
            channels: &[String],
            now: factory_core::run::Millis,
            until: factory_core::run::Millis,
            limit: u32,
        ) -> $crate::Result<Vec<Notification>> {
            let rows = sqlx::query(if $postgres {
                CLAIM_POSTGRES
            } else {
                CLAIM_SQLITE
            })
            .bind(holder)
            .bind(until)
            .bind(now)
            .bind(i64::from(limit))
            .bind(serde_json::to_string(channels)?)
            .fetch_all(pool)
            .await?;
            rows.iter().map(notification_row).collect()
        }

        pub(crate) async fn finish(
            pool: &$pool,
            id: &str,
            holder: &str,
            outcome: &DeliveryOutcome,
        ) -> $crate::Result<bool> {
            let done = match outcome {
                DeliveryOutcome::Delivered { at } => {
                    sqlx::query(DELIVERED)
                        .bind(id)
                        .bind(holder)
                        .bind(*at)
                        .execute(pool)
                        .await?
                }
                DeliveryOutcome::Retry { next_at, error } => {
                    sqlx::query(FAILED_TRY)
                        .bind(id)
                        .bind(holder)
                        .bind(NotificationStatus::Pending.as_str())
                        .bind(*next_at)
                        .bind(error)
                        .execute(pool)
                        .await?
                }
                DeliveryOutcome::Failed { error } => {
                    sqlx::query(FAILED_TRY)
                        .bind(id)
                        .bind(holder)
                        .bind(NotificationStatus::Failed.as_str())
                        .bind(0_i64)
                        .bind(error)
                        .execute(pool)
                        .await?
                }
            };
            Ok(done.rows_affected() == 1)
        }

        pub(crate) async fn list(
            pool: &$pool,
            filter: &NotificationFilter,
        ) -> $crate::Result<Vec<Notification>> {
            let rows = sqlx::query(LIST)
                .bind(filter.status.map(NotificationStatus::as_str))
                .bind(filter.run_id.as_deref())
                .bind(filter.channel.as_deref())
                .bind(i64::from(filter.limit.max(1)))
                .fetch_all(pool)
                .await?;
            rows.iter().map(notification_row).collect()
        }

        pub(crate) async fn retry_now(
            pool: &$pool,
            id: &str,
            now: factory_core::run::Millis,
        ) -> $crate::Result<bool> {
            Ok(sqlx::query(RETRY_NOW)
                .bind(id)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
                == 1)
        }
    };
}

pub(crate) use outbox_queries;
