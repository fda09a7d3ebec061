//! PostgreSQL store: many workers on many machines share one database.
//!
//! The run row's `version` check in `commit` is the claim protocol: two
//! workers that both try to start the same ready block race on the same
//! version, one wins and the other gets a conflict, reloads, and sees the block
//! running. The row lock taken by that UPDATE serialises writers per run, and
//! the `(run_id, seq)` key on events guards the log independently.

use std::time::Duration;

use async_trait::async_trait;
use factory_core::run::{EventRecord, Millis, RunDoc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use crate::{
    AttemptRow, BlobRef, FeedbackRecord, HeldLease, History, ImprovementItem, Lease, NewRun,
    Result, RunChanges, RunFilter, RunListing, RunRecord, RunSummary, Store, StoreError, StoredRun,
    TemplateRecord, TokenRecord, WriterTurn, Writes, all_attempt_rows, all_block_rows,
    assemble_doc, blob_hash, block_rows_json, changed_attempt_rows, changed_block_rows,
    final_lease_ops, header_and_blocks, header_json, like_contains, like_prefix, parse_event,
    run_changes, splice_rows_json,
};

/// How long a request waits for a pooled connection before the store
/// reports itself unavailable.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections in the pool; at most half of them hold writers' turns, so a
/// writer holding one always finds a connection to commit with.
const POOL_CONNECTIONS: u32 = 8;

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    turns: std::sync::Arc<tokio::sync::Semaphore>,
}

impl PostgresStore {
    /// Connects to `url` (e.g. `postgres://user@127.0.0.1:5432/db`) and migrates.
    pub async fn connect(url: &str) -> Result<PostgresStore> {
        // One direct attempt first: a wrong URL fails at once instead of after
        // the pool's acquire timeout.
        let probe = sqlx::PgConnection::connect(url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact_password(url),
                source,
            })?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            // When the server is down every request waits this long before it
            // is answered `503`: short, so callers hear about an outage quickly.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(|source| StoreError::Open {
                url: redact_password(url),
                source,
            })?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(PostgresStore {
            pool,
            turns: std::sync::Arc::new(tokio::sync::Semaphore::new(POOL_CONNECTIONS as usize / 2)),
        })
    }
}

/// Hides the password of a connection URL in messages.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_run(&self, run: NewRun<'_>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO runs (run_id, template_id, template_json, template_path, status, version, doc, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 1, $6::jsonb, $7, $8)
             RETURNING pg_notify('factory_runs', run_id)",
        )
        .bind(&run.doc.run_id)
        .bind(&run.doc.template_id)
        .bind(run.template_json)
        .bind(run.template_path)
        .bind(run.doc.status.as_str())
        .bind(header_json(run.doc)?)
        .bind(run.doc.created_at)
        .bind(run.doc.updated_at)
        .execute(&mut *tx)
        .await?;
        upsert_blocks(&mut tx, &run.doc.run_id, &all_block_rows(run.doc)?).await?;
        upsert_attempts(&mut tx, &run.doc.run_id, &all_attempt_rows(run.doc)?).await?;
        insert_events(&mut tx, &run.doc.run_id, run.records).await?;
        let feed = factory_core::bus::run_events(run.doc, run.records);
        bq::insert_bus_events(&mut tx, &feed, run.doc.updated_at).await?;
        insert_blobs(&mut tx, run.blobs).await?;
        q::upsert_records(&mut tx, run.side).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn load_run(&self, run_id: &str) -> Result<StoredRun> {
        let rows = sqlx::query(LOAD_RUN)
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        let (head, blocks) = header_and_blocks(&rows, block_id, seq, |row| row.get("body"))
            .ok_or_else(|| StoreError::RunNotFound(run_id.to_string()))?;
        Ok(StoredRun {
            doc: assemble_doc(run_id, head.get("body"), blocks)?,
            version: head.get::<Option<i64>, _>("version").unwrap_or_default(),
            template_json: head
                .get::<Option<String>, _>("template_json")
                .unwrap_or_default(),
            template_path: head.get("template_path"),
        })
    }

    async fn load_run_json(&self, run_id: &str, history: History) -> Result<String> {
        let query = match history {
            History::All => LOAD_RUN_JSON,
            History::None => LOAD_RUN_HEADS_JSON,
        };
        let rows = sqlx::query(query)
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        let (head, blocks) = header_and_blocks(&rows, block_id, seq, |row| row.get("body"))
            .ok_or_else(|| StoreError::RunNotFound(run_id.to_string()))?;
        crate::check_gaps(run_id, &blocks)?;
        Ok(splice_rows_json(head.get("body"), &blocks))
    }

    async fn run_version(&self, run_id: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT version FROM runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn load_block_json(&self, run_id: &str, block: &str) -> Result<Option<String>> {
        let rows = sqlx::query(LOAD_BLOCK_JSON)
            .bind(run_id)
            .bind(block)
            .fetch_all(&self.pool)
            .await?;
        Ok(block_rows_json(&rows, seq, |row| row.get("body")))
    }

    async fn commit_with(
        &self,
        run_id: &str,
        expected_version: i64,
        records: &[EventRecord],
        doc: &RunDoc,
        writes: &Writes<'_>,
    ) -> Result<i64> {
        let header = header_json(doc)?;
        let blocks = changed_block_rows(doc, records)?;
        let attempts = changed_attempt_rows(doc, records)?;
        let attempt_blocks: Vec<&str> = attempts.iter().map(|a| a.block).collect();
        let attempt_seqs: Vec<i32> = attempts.iter().map(|a| a.seq).collect();
        let attempt_jsons: Vec<&str> = attempts.iter().map(|a| a.json.as_str()).collect();
        let (block_ids, block_states): (Vec<&str>, Vec<&str>) = blocks
            .iter()
            .map(|(id, state)| (*id, state.as_str()))
            .unzip();
        let events = EventColumns::of(records)?;
        let mut feed = factory_core::bus::run_events(doc, records);
        feed.extend_from_slice(writes.emitted);
        let feed = FeedColumns::of(&feed)?;
        let memos = crate::memo::MemoColumns::of(doc, records)?;
        let (takes, releases) = final_lease_ops(records);
        let lease_blocks: Vec<&str> = takes.iter().map(|t| t.block).collect();
        let lease_attempts: Vec<i32> = takes.iter().map(|t| t.attempt as i32).collect();
        let lease_owners: Vec<&str> = takes.iter().map(|t| t.owner).collect();
        let lease_expiry: Vec<i64> = takes.iter().map(|t| t.expires_at).collect();
        let blob_hashes: Vec<&str> = writes.blobs.iter().map(|b| b.hash.as_str()).collect();
        let blob_sizes: Vec<i64> = writes
            .blobs
            .iter()
            .map(|b| b.content.len() as i64)
            .collect();
        let blob_contents: Vec<&[u8]> = writes.blobs.iter().map(|b| b.content.as_slice()).collect();
        // Everything in one statement: the run's row lock is held for one
        // round trip (several workers on one run queue on it), and without
        // side rows the statement is its own transaction.
        let query = sqlx::query_as::<_, (i64, bool)>(COMMIT_RUN)
            .bind(&header)
            .bind(doc.status.as_str())
            .bind(doc.updated_at)
            .bind(run_id)
            .bind(expected_version)
            .bind(&block_ids)
            .bind(&block_states)
            .bind(&events.seqs)
            .bind(&events.ats)
            .bind(&events.actors)
            .bind(&events.kinds)
            .bind(&events.blocks)
            .bind(&events.bodies)
            .bind(&releases)
            .bind(&lease_blocks)
            .bind(&lease_attempts)
            .bind(&lease_owners)
            .bind(&lease_expiry)
            .bind(&blob_hashes)
            .bind(&blob_sizes)
            .bind(&blob_contents)
            .bind(&attempt_blocks)
            .bind(&attempt_seqs)
            .bind(&attempt_jsons)
            .bind(&feed.names)
            .bind(&feed.templates)
            .bind(&feed.runs)
            .bind(&feed.blocks)
            .bind(&feed.keys)
            .bind(&feed.payloads)
            .bind(&memos.keys)
            .bind(&memos.blocks)
            .bind(&memos.attempts)
            .bind(&memos.reports);
        let (updated, exists) = if writes.feedback.is_none() && writes.items.is_empty() {
            query.fetch_one(&self.pool).await?
        } else {
            let mut tx = self.pool.begin().await?;
            let (updated, exists) = query.fetch_one(&mut *tx).await?;
            if updated == 1 {
                if let Some(feedback) = writes.feedback {
                    q::insert_feedback(&mut tx, feedback).await?;
                }
                q::upsert_items(&mut tx, writes.items).await?;
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            (updated, exists)
        };
        match (updated, exists) {
            (1, _) => {}
            (_, false) => return Err(StoreError::RunNotFound(run_id.to_string())),
            _ => {
                return Err(StoreError::Conflict {
                    run_id: run_id.to_string(),
                    expected: expected_version,
                });
            }
        }
        Ok(expected_version + 1)
    }

    async fn memo(&self, key: &factory_core::memo::MemoKey) -> Result<Option<crate::MemoHit>> {
        let row = sqlx::query_as::<_, crate::memo::LookedUp>(crate::memo::LOOKUP)
            .bind(key.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.and_then(|row| crate::memo::hit(key, row)))
    }

    async fn events(&self, run_id: &str, after_seq: u64) -> Result<Vec<EventRecord>> {
        let rows = sqlx::query(
            "SELECT body::text AS body FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(run_id)
        // Past i64::MAX nothing can follow (a cast would wrap to -1 and replay all).
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| parse_event(run_id, row.get::<&str, _>("body")))
            .collect()
    }

    async fn changes_since(&self, run_id: &str, after_seq: u64) -> Result<RunChanges> {
        let rows = sqlx::query(CHANGES_SINCE)
            .bind(run_id)
            .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        run_changes(
            run_id,
            &rows,
            |row| row.get("seq"),
            |row| row.get("version"),
            |row| row.get("body"),
        )
    }

    async fn writer_turn(&self, run_id: &str) -> Result<Option<WriterTurn>> {
        let Ok(permit) = self.turns.clone().acquire_owned().await else {
            return Ok(None);
        };
        let mut lock = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(run_id)
            .execute(&mut *lock)
            .await?;
        Ok(Some(WriterTurn::holding(lock, permit)))
    }

    async fn subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(notification) => {
                        if sender
                            .send(notification.payload().to_string())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    // The listener reconnects on its next `recv`; what was
                    // committed meanwhile is found by the subscriber's scan.
                    Err(error) => {
                        tracing::warn!(%error, "lost the database's change notifications; reconnecting");
                        if sender.is_closed() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(Some(receiver))
    }

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>> {
        let rows = sqlx::query(
            "SELECT run_id, template_id, status, created_at, updated_at FROM runs ORDER BY created_at DESC, run_id DESC LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| RunSummary {
                run_id: row.get("run_id"),
                template_id: row.get("template_id"),
                status: row.get("status"),
                created_at: row.get("created_at"),
                updated_at: row.get("updated_at"),
            })
            .collect())
    }

    async fn find_runs(&self, filter: &RunFilter) -> Result<Vec<RunListing>> {
        let rows = sqlx::query(
            "SELECT r.run_id, r.template_id, r.status, r.created_at, r.updated_at,
                    COALESCE(e.actor, '') AS started_by
             FROM runs r LEFT JOIN events e ON e.run_id = r.run_id AND e.seq = 1
             WHERE ($1::text IS NULL OR r.template_id = $1)
               AND ($2::text IS NULL OR r.status = $2)
               AND ($3::text IS NULL OR r.run_id LIKE $3
                    OR (r.doc -> 'params')::text ILIKE $4)
               AND ($5::bigint IS NULL OR (r.created_at, r.run_id) < ($5, $6::text))
             ORDER BY r.created_at DESC, r.run_id DESC LIMIT $7",
        )
        .bind(filter.template.as_deref())
        .bind(filter.status.as_deref())
        .bind(filter.text.as_deref().map(like_prefix))
        .bind(filter.text.as_deref().map(like_contains))
        .bind(filter.before.as_ref().map(|(at, _)| *at))
        .bind(filter.before.as_ref().map(|(_, id)| id.as_str()))
        .bind(filter.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| RunListing {
                run: RunSummary {
                    run_id: row.get("run_id"),
                    template_id: row.get("template_id"),
                    status: row.get("status"),
                    created_at: row.get("created_at"),
                    updated_at: row.get("updated_at"),
                },
                started_by: row.get("started_by"),
            })
            .collect())
    }

    async fn run_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT run_id FROM runs WHERE run_id LIKE $1 ESCAPE '\\' ORDER BY run_id LIMIT 5",
        )
        .bind(like_prefix(prefix))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|row| row.get("run_id")).collect())
    }

    async fn put_blob(&self, content: &[u8]) -> Result<BlobRef> {
        let hash = blob_hash(content);
        sqlx::query(crate::side::INSERT_BLOB)
            .bind(&hash)
            .bind(content.len() as i64)
            .bind(content)
            .execute(&self.pool)
            .await?;
        Ok(BlobRef {
            hash,
            size: content.len() as u64,
        })
    }

    async fn get_blob(&self, hash: &str) -> Result<Vec<u8>> {
        let row = sqlx::query("SELECT content FROM blobs WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::BlobNotFound(hash.to_string()))?;
        Ok(row.get("content"))
    }

    async fn renew_leases(&self, owner: &str, expires_at: Millis) -> Result<Vec<HeldLease>> {
        let rows = sqlx::query(
            "UPDATE leases SET expires_at = $1 WHERE owner = $2 RETURNING run_id, block_id, attempt",
        )
        .bind(expires_at)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| HeldLease {
                run_id: row.get("run_id"),
                block_id: row.get("block_id"),
                attempt: row.get::<i32, _>("attempt") as u32,
            })
            .collect())
    }

    async fn set_lease_pid(
        &self,
        run_id: &str,
        block_id: &str,
        attempt: u32,
        pid: i32,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE leases SET pid = $1 WHERE run_id = $2 AND block_id = $3 AND attempt = $4",
        )
        .bind(pid)
        .bind(run_id)
        .bind(block_id)
        .bind(attempt as i32)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_live_log(
        &self,
        run_id: &str,
        block_id: &str,
        attempt: u32,
        log: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE leases SET live_log = $1 WHERE run_id = $2 AND block_id = $3 AND attempt = $4",
        )
        .bind(log)
        .bind(run_id)
        .bind(block_id)
        .bind(attempt as i32)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn live_log(&self, run_id: &str, block_id: &str, attempt: u32) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT live_log FROM leases WHERE run_id = $1 AND block_id = $2 AND attempt = $3",
        )
        .bind(run_id)
        .bind(block_id)
        .bind(attempt as i32)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|row| row.get::<Option<String>, _>("live_log")))
    }

    async fn leases(&self, run_id: &str) -> Result<Vec<Lease>> {
        let rows = sqlx::query(
            "SELECT run_id, block_id, attempt, owner, pid, expires_at FROM leases WHERE run_id = $1 ORDER BY block_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Lease {
                run_id: row.get("run_id"),
                block_id: row.get("block_id"),
                attempt: row.get::<i32, _>("attempt") as u32,
                owner: row.get("owner"),
                pid: row.get::<Option<i32>, _>("pid"),
                expires_at: row.get("expires_at"),
            })
            .collect())
    }

    async fn take_permit(
        &self,
        key: &str,
        limit: u32,
        holder: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<Option<u32>> {
        q::take_permit(&self.pool, key, limit, holder, now, expires_at).await
    }

    async fn keep_permit(
        &self,
        key: &str,
        slot: u32,
        holder: &str,
        until: Option<Millis>,
    ) -> Result<bool> {
        q::keep_permit(&self.pool, key, slot, holder, until).await
    }

    async fn spend_budget(
        &self,
        key: &str,
        holder: &str,
        amount: u64,
        limit: u64,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool> {
        // A transaction-scoped advisory lock per key: the next spender reads
        // the room (a new snapshot per statement) only after this one committed.
        let mut tx = self.pool.begin().await?;
        // READ COMMITTED whatever the server's default: each statement then
        // reads what committed before it, the lock holder's spend included.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        let spent = q::spend_budget(&mut tx, key, holder, amount, limit, now, expires_at).await?;
        tx.commit().await?;
        Ok(spent)
    }

    async fn settle_budget(&self, key: &str, holder: &str, amount: u64) -> Result<()> {
        q::settle_budget(&self.pool, key, holder, amount).await
    }

    async fn feed_after(
        &self,
        name: &str,
        after: crate::FeedPosition,
        limit: u32,
    ) -> Result<Vec<crate::FeedEvent>> {
        bq::feed_after(&self.pool, name, after, limit).await
    }

    async fn feed_cursor(&self, consumer: &str, now: Millis) -> Result<crate::FeedPosition> {
        bq::feed_cursor(&self.pool, consumer, now).await
    }

    async fn advance_feed_cursor(
        &self,
        consumer: &str,
        to: crate::FeedPosition,
        now: Millis,
    ) -> Result<()> {
        bq::advance_feed_cursor(&self.pool, consumer, to, now).await
    }

    async fn enqueue_notifications(
        &self,
        rows: &[crate::NewNotification],
        consumer: &str,
        to: crate::FeedPosition,
        now: Millis,
    ) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let added = nq::enqueue(&mut tx, rows, consumer, to, now).await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn claim_notifications(
        &self,
        holder: &str,
        channels: &[String],
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<crate::Notification>> {
        nq::claim(&self.pool, holder, channels, now, until, limit).await
    }

    async fn finish_notification(
        &self,
        id: &str,
        holder: &str,
        outcome: &crate::DeliveryOutcome,
    ) -> Result<bool> {
        nq::finish(&self.pool, id, holder, outcome).await
    }

    async fn notifications(
        &self,
        filter: &crate::NotificationFilter,
    ) -> Result<Vec<crate::Notification>> {
        nq::list(&self.pool, filter).await
    }

    async fn retry_notification(&self, id: &str, now: Millis) -> Result<bool> {
        nq::retry_now(&self.pool, id, now).await
    }

    async fn feed(&self, filter: &crate::FeedFilter) -> Result<Vec<crate::FeedEvent>> {
        bq::feed(&self.pool, filter).await
    }

    async fn prune_feed(&self, before: Millis) -> Result<crate::Pruned> {
        bq::prune_feed(&self.pool, before).await
    }

    async fn receive_records(
        &self,
        records: &[crate::NewStreamRecord<'_>],
    ) -> Result<Vec<crate::Receipt>> {
        let mut tx = self.pool.begin().await?;
        let receipts = sq::receive_records(&mut tx, records).await?;
        tx.commit().await?;
        Ok(receipts)
    }

    async fn claim_records(
        &self,
        template_id: &str,
        state: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<crate::ClaimedRecord>> {
        sq::claim_records(
            &self.pool,
            template_id,
            state,
            limit,
            owner,
            now,
            lease_until,
        )
        .await
    }

    async fn settle_records(&self, moves: &crate::StageMoves<'_>) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        let written = sq::settle_records(&mut tx, moves).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn retry_record(
        &self,
        template_id: &str,
        key: &str,
        actor: &str,
        now: Millis,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let retried = sq::retry_record(&mut tx, template_id, key, actor, now).await?;
        tx.commit().await?;
        Ok(retried)
    }

    async fn list_records(
        &self,
        filter: &crate::RecordFilter,
        now: Millis,
    ) -> Result<Vec<crate::StreamRecordRow>> {
        sq::list_records(&self.pool, filter, now).await
    }

    async fn record(
        &self,
        template_id: &str,
        key: &str,
        now: Millis,
    ) -> Result<Option<(crate::StreamRecordRow, Vec<crate::RecordHistoryEntry>)>> {
        sq::record(&self.pool, template_id, key, now).await
    }

    async fn count_records(
        &self,
        template_id: &str,
        now: Millis,
    ) -> Result<Vec<crate::RecordCount>> {
        sq::count_records(&self.pool, template_id, now).await
    }

    async fn record_lease_owners(&self) -> Result<Vec<String>> {
        sq::record_lease_owners(&self.pool).await
    }

    async fn claim_firing(
        &self,
        template_id: &str,
        block: &str,
        tick: Millis,
        at: Millis,
        skipped: u64,
        stale_before: Millis,
    ) -> Result<bool> {
        sq::claim_firing(
            &self.pool,
            template_id,
            block,
            tick,
            at,
            skipped,
            stale_before,
        )
        .await
    }

    async fn finish_firing(
        &self,
        template_id: &str,
        block: &str,
        tick: Millis,
        outcome: &crate::FiringOutcome,
        at: Millis,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sq::finish_firing(&mut tx, template_id, block, tick, outcome, at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn last_firing(
        &self,
        template_id: &str,
        block: &str,
        stale_before: Millis,
    ) -> Result<Option<Millis>> {
        sq::last_firing(&self.pool, template_id, block, stale_before).await
    }

    async fn firings(&self, template_id: &str, limit: u32) -> Result<Vec<crate::Firing>> {
        sq::firings(&self.pool, template_id, limit).await
    }

    async fn release_record_leases(&self, owner: &str) -> Result<u64> {
        sq::release_record_leases(&self.pool, owner).await
    }

    async fn runs_updated_since(&self, since: Millis) -> Result<Vec<RunSummary>> {
        q::runs_updated_since(&self.pool, since).await
    }

    async fn runs_with_status(&self, status: &str) -> Result<Vec<RunSummary>> {
        q::runs_with_status(&self.pool, status).await
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<()> {
        q::create_token(&self.pool, token).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>> {
        q::token_by_hash(&self.pool, hash).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        q::list_tokens(&self.pool).await
    }

    async fn revoke_token(&self, id: &str, at: Millis) -> Result<bool> {
        q::revoke_token(&self.pool, id, at).await
    }

    async fn put_template(&self, template: &TemplateRecord) -> Result<()> {
        q::put_template(&self.pool, template).await
    }

    async fn list_templates(&self) -> Result<Vec<TemplateRecord>> {
        q::list_templates(&self.pool).await
    }

    async fn put_record(&self, record: &RunRecord) -> Result<()> {
        q::put_record(&self.pool, record).await
    }

    async fn records(&self, run_id: &str, kind: &str) -> Result<Vec<RunRecord>> {
        q::records(&self.pool, run_id, kind).await
    }

    async fn add_feedback(&self, feedback: &FeedbackRecord) -> Result<()> {
        q::add_feedback(&self.pool, feedback).await
    }

    async fn feedback(&self, run_id: &str) -> Result<Vec<FeedbackRecord>> {
        q::feedback(&self.pool, run_id).await
    }

    async fn put_items(&self, items: &[ImprovementItem]) -> Result<()> {
        q::put_items(&self.pool, items).await
    }

    async fn item(&self, id: &str) -> Result<Option<ImprovementItem>> {
        q::item(&self.pool, id).await
    }

    async fn item_by_key(&self, run_id: &str, source_key: &str) -> Result<Option<ImprovementItem>> {
        q::item_by_key(&self.pool, run_id, source_key).await
    }

    async fn items(
        &self,
        run_id: &str,
        status: Option<&str>,
        skill_target: Option<&str>,
    ) -> Result<Vec<ImprovementItem>> {
        q::items(&self.pool, run_id, status, skill_target).await
    }

    async fn records_for_template(
        &self,
        template_id: &str,
        kind: &str,
        limit: u32,
    ) -> Result<Vec<RunRecord>> {
        q::records_for_template(&self.pool, template_id, kind, limit).await
    }
}

/// A run's header row, then per block (by id, bytewise, as Rust's `String`
/// orders them) its head row and its attempt rows by position, read by one
/// statement so they come from one snapshot.
const LOAD_RUN: &str = r#"SELECT NULL::text COLLATE "C" AS block_id, NULL::int AS seq, doc::text AS body, version, template_json, template_path
     FROM runs WHERE run_id = $1
     UNION ALL
     SELECT block_id COLLATE "C", NULL::int, state, NULL::bigint, NULL::text, NULL::text FROM run_blocks WHERE run_id = $1
     UNION ALL
     SELECT block_id COLLATE "C", seq, attempt, NULL::bigint, NULL::text, NULL::text FROM run_attempts WHERE run_id = $1
     ORDER BY block_id NULLS FIRST, seq NULLS FIRST"#;

/// The run's version (the row with seq -1), then its events after `$2`, in
/// one statement so both come from one snapshot.
const CHANGES_SINCE: &str =
    "SELECT -1::bigint AS seq, version, NULL::text AS body FROM runs WHERE run_id = $1
     UNION ALL
     SELECT seq, NULL::bigint, body::text FROM events WHERE run_id = $1 AND seq > $2
     ORDER BY seq";

/// Every commit to a run (and its creation) notifies this channel with the
/// run id, in the same transaction: delivered when it commits, never for a
/// write that failed.
const NOTIFY_CHANNEL: &str = "factory_runs";

/// [`LOAD_RUN`] without the template: the API's hot read.
const LOAD_RUN_JSON: &str = r#"SELECT NULL::text COLLATE "C" AS block_id, NULL::int AS seq, doc::text AS body
     FROM runs WHERE run_id = $1
     UNION ALL
     SELECT block_id COLLATE "C", NULL::int, state FROM run_blocks WHERE run_id = $1
     UNION ALL
     SELECT block_id COLLATE "C", seq, attempt FROM run_attempts WHERE run_id = $1
     ORDER BY block_id NULLS FIRST, seq NULLS FIRST"#;

/// [`LOAD_RUN_JSON`] without the attempts.
const LOAD_RUN_HEADS_JSON: &str = r#"SELECT NULL::text COLLATE "C" AS block_id, NULL::int AS seq, doc::text AS body
     FROM runs WHERE run_id = $1
     UNION ALL
     SELECT block_id COLLATE "C", NULL::int, state FROM run_blocks WHERE run_id = $1
     ORDER BY block_id NULLS FIRST, seq NULLS FIRST"#;

/// One block's head row, then its attempt rows by position.
const LOAD_BLOCK_JSON: &str =
    "SELECT NULL::int AS seq, state AS body FROM run_blocks WHERE run_id = $1 AND block_id = $2
     UNION ALL
     SELECT seq, attempt FROM run_attempts WHERE run_id = $1 AND block_id = $2
     ORDER BY seq NULLS FIRST";

fn block_id(row: &PgRow) -> Option<&str> {
    row.get("block_id")
}

fn seq(row: &PgRow) -> Option<i32> {
    row.get("seq")
}

/// Content-addressed blobs in one statement, however many.
async fn insert_blobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    blobs: &[crate::NewBlob],
) -> Result<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    let hashes: Vec<&str> = blobs.iter().map(|b| b.hash.as_str()).collect();
    let sizes: Vec<i64> = blobs.iter().map(|b| b.content.len() as i64).collect();
    let contents: Vec<&[u8]> = blobs.iter().map(|b| b.content.as_slice()).collect();
    sqlx::query(
        "INSERT INTO blobs (hash, size, content)
         SELECT b.hash, b.size, b.content FROM UNNEST($1::text[], $2::bigint[], $3::bytea[]) AS b (hash, size, content)
         ON CONFLICT (hash) DO NOTHING",
    )
    .bind(&hashes)
    .bind(&sizes)
    .bind(&contents)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Attempt rows in one statement, however many.
async fn upsert_attempts(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    run_id: &str,
    attempts: &[AttemptRow<'_>],
) -> Result<()> {
    if attempts.is_empty() {
        return Ok(());
    }
    let blocks: Vec<&str> = attempts.iter().map(|a| a.block).collect();
    let seqs: Vec<i32> = attempts.iter().map(|a| a.seq).collect();
    let jsons: Vec<&str> = attempts.iter().map(|a| a.json.as_str()).collect();
    sqlx::query(
        "INSERT INTO run_attempts (run_id, block_id, seq, attempt)
         SELECT $1, a.block_id, a.seq, a.attempt FROM UNNEST($2::text[], $3::int[], $4::text[]) AS a (block_id, seq, attempt)
         ON CONFLICT (run_id, block_id, seq) DO UPDATE SET attempt = excluded.attempt",
    )
    .bind(run_id)
    .bind(&blocks)
    .bind(&seqs)
    .bind(&jsons)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Block rows in one statement, however many (a run's creation writes all).
async fn upsert_blocks(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    run_id: &str,
    blocks: &[(&str, String)],
) -> Result<()> {
    if blocks.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = blocks.iter().map(|(id, _)| *id).collect();
    let states: Vec<&str> = blocks.iter().map(|(_, state)| state.as_str()).collect();
    sqlx::query(
        "INSERT INTO run_blocks (run_id, block_id, state)
         SELECT $1, b.id, b.state FROM UNNEST($2::text[], $3::text[]) AS b (id, state)
         ON CONFLICT (run_id, block_id) DO UPDATE SET state = excluded.state",
    )
    .bind(run_id)
    .bind(&ids)
    .bind(&states)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A commit's events as columns, for `UNNEST`.
struct EventColumns<'a> {
    seqs: Vec<i64>,
    ats: Vec<i64>,
    actors: Vec<&'a str>,
    kinds: Vec<&'a str>,
    blocks: Vec<Option<&'a str>>,
    bodies: Vec<String>,
}

impl<'a> EventColumns<'a> {
    fn of(records: &'a [EventRecord]) -> Result<EventColumns<'a>> {
        Ok(EventColumns {
            seqs: records.iter().map(|r| r.seq as i64).collect(),
            ats: records.iter().map(|r| r.at).collect(),
            actors: records.iter().map(|r| r.actor.as_str()).collect(),
            kinds: records.iter().map(|r| r.event.kind()).collect(),
            blocks: records.iter().map(|r| r.event.block()).collect(),
            bodies: records
                .iter()
                .map(serde_json::to_string)
                .collect::<std::result::Result<Vec<_>, _>>()?,
        })
    }
}

/// Feed events as columns, for the commit statement.
struct FeedColumns<'a> {
    names: Vec<&'a str>,
    templates: Vec<&'a str>,
    runs: Vec<Option<&'a str>>,
    blocks: Vec<Option<&'a str>>,
    keys: Vec<Option<&'a str>>,
    payloads: Vec<String>,
}

impl<'a> FeedColumns<'a> {
    fn of(events: &'a [factory_core::bus::BusEvent]) -> Result<FeedColumns<'a>> {
        Ok(FeedColumns {
            names: events.iter().map(|e| e.name.as_str()).collect(),
            templates: events.iter().map(|e| e.template_id.as_str()).collect(),
            runs: events.iter().map(|e| e.run_id.as_deref()).collect(),
            blocks: events.iter().map(|e| e.block.as_deref()).collect(),
            keys: events.iter().map(|e| e.record_key.as_deref()).collect(),
            payloads: events
                .iter()
                .map(|e| {
                    serde_json::to_string(&e.payload)
                        .map(|p| crate::stream::storable(&p).into_owned())
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
        })
    }
}

/// Every event in one statement (arrays unnested), so a commit that starts
/// or records hundreds of blocks costs one round trip, not hundreds.
async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    run_id: &str,
    records: &[EventRecord],
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let events = EventColumns::of(records)?;
    sqlx::query(
        "INSERT INTO events (run_id, seq, at, actor, kind, block_id, body)
         SELECT $1, e.seq, e.at, e.actor, e.kind, e.block_id, e.body::jsonb
         FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[])
              AS e (seq, at, actor, kind, block_id, body)",
    )
    .bind(run_id)
    .bind(&events.seqs)
    .bind(&events.ats)
    .bind(&events.actors)
    .bind(&events.kinds)
    .bind(&events.blocks)
    .bind(&events.bodies)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A commit as one statement: the version check (`head`, which also
/// notifies listeners), then — only if it matched, since each part reads
/// `head` — the blobs ($19–$21), the changed block rows, the events, and the
/// leases the events release ($14) and take ($15–$18, the last operation per
/// block: see [`final_lease_ops`]). Returns whether the version matched (1 or
/// 0) and whether the run exists (to tell a conflict from a missing run).
const COMMIT_RUN: &str = "WITH head AS (
    UPDATE runs SET doc = $1::jsonb, status = $2, version = version + 1, updated_at = $3
    WHERE run_id = $4 AND version = $5
    RETURNING run_id, pg_notify('factory_runs', run_id)
), blob_rows AS (
    INSERT INTO blobs (hash, size, content)
    SELECT b.hash, b.size, b.content FROM head, UNNEST($19::text[], $20::bigint[], $21::bytea[]) AS b (hash, size, content)
    ON CONFLICT (hash) DO NOTHING
), block_rows AS (
    INSERT INTO run_blocks (run_id, block_id, state)
    SELECT head.run_id, b.id, b.state FROM head, UNNEST($6::text[], $7::text[]) AS b (id, state)
    ON CONFLICT (run_id, block_id) DO UPDATE SET state = excluded.state
), attempt_rows AS (
    INSERT INTO run_attempts (run_id, block_id, seq, attempt)
    SELECT head.run_id, a.block_id, a.seq, a.attempt
    FROM head, UNNEST($22::text[], $23::int[], $24::text[]) AS a (block_id, seq, attempt)
    ON CONFLICT (run_id, block_id, seq) DO UPDATE SET attempt = excluded.attempt
), event_rows AS (
    INSERT INTO events (run_id, seq, at, actor, kind, block_id, body)
    SELECT head.run_id, e.seq, e.at, e.actor, e.kind, e.block_id, e.body::jsonb
    FROM head, UNNEST($8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[])
         AS e (seq, at, actor, kind, block_id, body)
), released AS (
    DELETE FROM leases WHERE run_id = (SELECT run_id FROM head) AND block_id = ANY($14::text[])
), taken AS (
    INSERT INTO leases (run_id, block_id, attempt, owner, pid, expires_at)
    SELECT head.run_id, l.block_id, l.attempt, l.owner, NULL, l.expires_at
    FROM head, UNNEST($15::text[], $16::int[], $17::text[], $18::bigint[])
         AS l (block_id, attempt, owner, expires_at)
    ON CONFLICT (run_id, block_id) DO UPDATE SET attempt = excluded.attempt,
        owner = excluded.owner, pid = NULL, expires_at = excluded.expires_at, live_log = NULL
), feed_rows AS (
    INSERT INTO bus_events (name, template_id, run_id, block_id, record_key, payload, at)
    SELECT f.name, f.template_id, f.run_id, f.block_id, f.record_key, f.payload, $3
    FROM head, UNNEST($25::text[], $26::text[], $27::text[], $28::text[], $29::text[], $30::text[])
         WITH ORDINALITY AS f (name, template_id, run_id, block_id, record_key, payload, n)
    ORDER BY f.n
), memo_rows AS (
    INSERT INTO attempt_memos (memo_key, run_id, block_id, attempt, report, created_at)
    SELECT m.memo_key, head.run_id, m.block_id, m.attempt, m.report, $3
    FROM head, UNNEST($31::text[], $32::text[], $33::int[], $34::text[])
         AS m (memo_key, block_id, attempt, report)
    ON CONFLICT (memo_key) DO UPDATE SET run_id = excluded.run_id, block_id = excluded.block_id,
        attempt = excluded.attempt, report = excluded.report, created_at = excluded.created_at
)
SELECT (SELECT count(*) FROM head), EXISTS (SELECT 1 FROM runs WHERE run_id = $4)";

/// The side-table queries for this backend.
mod q {
    crate::side::side_queries!(
        sqlx::postgres::PgPool,
        sqlx::postgres::PgRow,
        sqlx::Postgres
    );
}

/// The event feed's queries for this backend.
mod bq {
    crate::bus::bus_queries!(
        sqlx::postgres::PgPool,
        sqlx::postgres::PgRow,
        sqlx::Postgres,
        true
    );

    /// Writes `events` in the caller's transaction, in one statement.
    pub(crate) async fn insert_bus_events(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        events: &[factory_core::bus::BusEvent],
        at: factory_core::run::Millis,
    ) -> crate::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let feed = super::FeedColumns::of(events)?;
        sqlx::query(INSERT_POSTGRES)
            .bind(&feed.names)
            .bind(&feed.templates)
            .bind(&feed.runs)
            .bind(&feed.blocks)
            .bind(&feed.keys)
            .bind(&feed.payloads)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The stream-record queries for this backend.
mod sq {
    crate::stream::stream_queries!(
        sqlx::postgres::PgPool,
        sqlx::postgres::PgRow,
        sqlx::Postgres,
        crate::stream::CLAIM_POSTGRES
    );
}

/// The notification outbox's queries for this backend.
mod nq {
    crate::outbox::outbox_queries!(
        sqlx::postgres::PgPool,
        sqlx::postgres::PgRow,
        sqlx::Postgres,
        true
    );
}
