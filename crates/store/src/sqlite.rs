//! SQLite store: the embedded default.
//!
//! WAL mode with `synchronous=NORMAL`: a committed transaction survives a crash
//! of the process (not necessarily a power cut), which is the durability the
//! engine promises, at a fraction of the cost of an fsync per commit. Writers
//! take the lock up front (`BEGIN IMMEDIATE`) so two processes never deadlock
//! upgrading read locks; `busy_timeout` makes the loser wait instead of failing.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use factory_core::run::{EventRecord, Millis, RunDoc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::{
    AttemptRow, BlobRef, FeedbackRecord, HeldLease, History, ImprovementItem, Lease, NewRun,
    Result, RunChanges, RunFilter, RunListing, RunRecord, RunSummary, Store, StoreError, StoredRun,
    TemplateRecord, TokenRecord, Writes, all_attempt_rows, all_block_rows, assemble_doc, blob_hash,
    block_rows_json, changed_attempt_rows, changed_block_rows, final_lease_ops, header_and_blocks,
    header_json, like_contains, like_prefix, parse_event, run_changes, splice_rows_json,
};

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and migrates it.
    pub async fn open(path: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|source| StoreError::Open {
                url: path.to_string(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: path.to_string(),
                source,
            })?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(SqliteStore { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_run(&self, run: NewRun<'_>) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "INSERT INTO runs (run_id, template_id, status, version, doc, created_at, updated_at)
             VALUES (?, ?, ?, 1, ?, ?, ?)",
        )
        .bind(&run.doc.run_id)
        .bind(&run.doc.template_id)
        .bind(run.doc.status.as_str())
        .bind(header_json(run.doc)?)
        .bind(run.doc.created_at)
        .bind(run.doc.updated_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO run_templates (run_id, template_json, template_path) VALUES (?, ?, ?)",
        )
        .bind(&run.doc.run_id)
        .bind(run.template_json)
        .bind(run.template_path)
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
            version: head.get("version"),
            template_json: head.get("template_json"),
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
            sqlx::query_scalar("SELECT version FROM runs WHERE run_id = ?")
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE runs SET doc = ?, status = ?, version = version + 1, updated_at = ?
             WHERE run_id = ? AND version = ?",
        )
        .bind(&header)
        .bind(doc.status.as_str())
        .bind(doc.updated_at)
        .bind(run_id)
        .bind(expected_version)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Err(missing_or_conflict(self, run_id, expected_version).await);
        }
        upsert_blocks(&mut tx, run_id, &blocks).await?;
        upsert_attempts(&mut tx, run_id, &attempts).await?;
        insert_blobs(&mut tx, writes.blobs).await?;
        if let Some(feedback) = writes.feedback {
            q::insert_feedback(&mut tx, feedback).await?;
        }
        q::upsert_items(&mut tx, writes.items).await?;
        insert_events(&mut tx, run_id, records).await?;
        let mut feed = factory_core::bus::run_events(doc, records);
        feed.extend_from_slice(writes.emitted);
        bq::insert_bus_events(&mut tx, &feed, doc.updated_at).await?;
        insert_memos(&mut tx, doc, records).await?;
        write_leases(&mut tx, run_id, records).await?;
        tx.commit().await?;
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
        let rows = sqlx::query("SELECT body FROM events WHERE run_id = ? AND seq > ? ORDER BY seq")
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

    async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>> {
        let rows = sqlx::query(
            "SELECT run_id, template_id, status, created_at, updated_at FROM runs ORDER BY created_at DESC, run_id DESC LIMIT ?",
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
             WHERE (?1 IS NULL OR r.template_id = ?1)
               AND (?2 IS NULL OR r.status = ?2)
               AND (?3 IS NULL OR r.run_id LIKE ?3 ESCAPE '\\'
                    OR json_extract(r.doc, '$.params') LIKE ?4 ESCAPE '\\')
               AND (?5 IS NULL OR r.created_at < ?5 OR (r.created_at = ?5 AND r.run_id < ?6))
             ORDER BY r.created_at DESC, r.run_id DESC LIMIT ?7",
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
            "SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY run_id LIMIT 5",
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
        let row = sqlx::query("SELECT content FROM blobs WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::BlobNotFound(hash.to_string()))?;
        Ok(row.get("content"))
    }

    async fn renew_leases(&self, owner: &str, expires_at: Millis) -> Result<Vec<HeldLease>> {
        let rows = sqlx::query(
            "UPDATE leases SET expires_at = ? WHERE owner = ? RETURNING run_id, block_id, attempt",
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
                attempt: row.get::<i64, _>("attempt") as u32,
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
        sqlx::query("UPDATE leases SET pid = ? WHERE run_id = ? AND block_id = ? AND attempt = ?")
            .bind(pid)
            .bind(run_id)
            .bind(block_id)
            .bind(attempt as i64)
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
            "UPDATE leases SET live_log = ? WHERE run_id = ? AND block_id = ? AND attempt = ?",
        )
        .bind(log)
        .bind(run_id)
        .bind(block_id)
        .bind(attempt as i64)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn live_log(&self, run_id: &str, block_id: &str, attempt: u32) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT live_log FROM leases WHERE run_id = ? AND block_id = ? AND attempt = ?",
        )
        .bind(run_id)
        .bind(block_id)
        .bind(attempt as i64)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|row| row.get::<Option<String>, _>("live_log")))
    }

    async fn leases(&self, run_id: &str) -> Result<Vec<Lease>> {
        let rows = sqlx::query(
            "SELECT run_id, block_id, attempt, owner, pid, expires_at FROM leases WHERE run_id = ? ORDER BY block_id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Lease {
                run_id: row.get("run_id"),
                block_id: row.get("block_id"),
                attempt: row.get::<i64, _>("attempt") as u32,
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
        // SQLite has one writer at a time: `BEGIN IMMEDIATE` takes the lock
        // before the room is read, so spenders are admitted one after another.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
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

/// A run's header row, then per block (by id) its head row and its attempt
/// rows by position, read by one statement so they come from one snapshot.
/// SQLite's default BINARY collation orders ids as Rust's `String` does,
/// and NULL first (the header before the blocks, a head before its attempts).
const LOAD_RUN: &str =
    "SELECT NULL AS block_id, NULL AS seq, r.doc AS body, r.version, t.template_json, t.template_path
     FROM runs r JOIN run_templates t ON t.run_id = r.run_id WHERE r.run_id = ?1
     UNION ALL
     SELECT block_id, NULL, state, NULL, NULL, NULL FROM run_blocks WHERE run_id = ?1
     UNION ALL
     SELECT block_id, seq, attempt, NULL, NULL, NULL FROM run_attempts WHERE run_id = ?1
     ORDER BY block_id, seq";

/// The run's version (the row with seq -1), then its events after `?2`, in
/// one statement so both come from one snapshot.
const CHANGES_SINCE: &str = "SELECT -1 AS seq, version, NULL AS body FROM runs WHERE run_id = ?1
     UNION ALL
     SELECT seq, NULL, body FROM events WHERE run_id = ?1 AND seq > ?2
     ORDER BY seq";

/// [`LOAD_RUN`] without the template: the API's hot read.
const LOAD_RUN_JSON: &str =
    "SELECT NULL AS block_id, NULL AS seq, doc AS body FROM runs WHERE run_id = ?1
     UNION ALL
     SELECT block_id, NULL, state FROM run_blocks WHERE run_id = ?1
     UNION ALL
     SELECT block_id, seq, attempt FROM run_attempts WHERE run_id = ?1
     ORDER BY block_id, seq";

/// [`LOAD_RUN_JSON`] without the attempts.
const LOAD_RUN_HEADS_JSON: &str =
    "SELECT NULL AS block_id, NULL AS seq, doc AS body FROM runs WHERE run_id = ?1
     UNION ALL
     SELECT block_id, NULL, state FROM run_blocks WHERE run_id = ?1
     ORDER BY block_id, seq";

/// One block's head row, then its attempt rows by position.
const LOAD_BLOCK_JSON: &str =
    "SELECT NULL AS seq, state AS body FROM run_blocks WHERE run_id = ?1 AND block_id = ?2
     UNION ALL
     SELECT seq, attempt FROM run_attempts WHERE run_id = ?1 AND block_id = ?2
     ORDER BY seq";

fn block_id(row: &SqliteRow) -> Option<&str> {
    row.get("block_id")
}

fn seq(row: &SqliteRow) -> Option<i32> {
    row.get("seq")
}

/// Rows per multi-row statement: each statement is a round trip to sqlx's
/// SQLite thread, which costs more than the row itself, so a commit that
/// starts or records hundreds of blocks writes them in a few statements.
/// (SQLite allows 32,766 bound values per statement.)
const ROWS_PER_STATEMENT: usize = 200;

async fn upsert_blocks(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    run_id: &str,
    blocks: &[(&str, String)],
) -> Result<()> {
    for chunk in blocks.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO run_blocks (run_id, block_id, state) ",
        );
        insert.push_values(chunk, |mut row, (block_id, state)| {
            row.push_bind(run_id)
                .push_bind(*block_id)
                .push_bind(state.as_str());
        });
        insert.push(" ON CONFLICT (run_id, block_id) DO UPDATE SET state = excluded.state");
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Content-addressed blobs, a few statements for any number (a commit that
/// records several attempts stores each one's outputs).
async fn insert_blobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    blobs: &[crate::NewBlob],
) -> Result<()> {
    for chunk in blobs.chunks(ROWS_PER_STATEMENT) {
        let mut insert =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO blobs (hash, size, content) ");
        insert.push_values(chunk, |mut row, blob| {
            row.push_bind(blob.hash.as_str())
                .push_bind(blob.content.len() as i64)
                .push_bind(blob.content.as_slice());
        });
        insert.push(" ON CONFLICT (hash) DO NOTHING");
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn upsert_attempts(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    run_id: &str,
    attempts: &[AttemptRow<'_>],
) -> Result<()> {
    for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO run_attempts (run_id, block_id, seq, attempt) ",
        );
        insert.push_values(chunk, |mut row, attempt| {
            row.push_bind(run_id)
                .push_bind(attempt.block)
                .push_bind(attempt.seq)
                .push_bind(attempt.json.as_str());
        });
        insert
            .push(" ON CONFLICT (run_id, block_id, seq) DO UPDATE SET attempt = excluded.attempt");
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// What the events do to the lease table, a few statements for any number
/// of blocks: the last operation per block decides (a take writes the whole
/// row, a release deletes it), so applying only those equals applying all.
async fn write_leases(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    run_id: &str,
    records: &[EventRecord],
) -> Result<()> {
    let (takes, releases) = final_lease_ops(records);
    for chunk in releases.chunks(ROWS_PER_STATEMENT) {
        let mut delete =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM leases WHERE run_id = ");
        delete.push_bind(run_id).push(" AND block_id IN (");
        let mut ids = delete.separated(", ");
        for block in chunk {
            ids.push_bind(*block);
        }
        delete.push(")");
        delete.build().execute(&mut **tx).await?;
    }
    for chunk in takes.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO leases (run_id, block_id, attempt, owner, pid, expires_at) ",
        );
        insert.push_values(chunk, |mut row, take| {
            row.push_bind(run_id)
                .push_bind(take.block)
                .push_bind(i64::from(take.attempt))
                .push_bind(take.owner)
                .push_bind(None::<i64>)
                .push_bind(take.expires_at);
        });
        insert.push(
            " ON CONFLICT (run_id, block_id) DO UPDATE SET attempt = excluded.attempt, owner = excluded.owner, pid = NULL, expires_at = excluded.expires_at, live_log = NULL",
        );
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_events(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    run_id: &str,
    records: &[EventRecord],
) -> Result<()> {
    let bodies = records
        .iter()
        .map(serde_json::to_string)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let rows: Vec<(&EventRecord, &String)> = records.iter().zip(&bodies).collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO events (run_id, seq, at, actor, kind, block_id, body) ",
        );
        insert.push_values(chunk, |mut row, (record, body)| {
            row.push_bind(run_id)
                .push_bind(record.seq as i64)
                .push_bind(record.at)
                .push_bind(record.actor.as_str())
                .push_bind(record.event.kind())
                .push_bind(record.event.block())
                .push_bind(body.as_str());
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

async fn missing_or_conflict(store: &SqliteStore, run_id: &str, expected: i64) -> StoreError {
    match sqlx::query("SELECT 1 FROM runs WHERE run_id = ?")
        .bind(run_id)
        .fetch_optional(&store.pool)
        .await
    {
        Ok(None) => StoreError::RunNotFound(run_id.to_string()),
        Ok(Some(_)) => StoreError::Conflict {
            run_id: run_id.to_string(),
            expected,
        },
        Err(error) => StoreError::Database(error),
    }
}

/// The accepted attempts a commit makes done, remembered by memo key (few
/// per commit: one statement each).
async fn insert_memos(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    doc: &RunDoc,
    records: &[EventRecord],
) -> Result<()> {
    let memos = crate::memo::MemoColumns::of(doc, records)?;
    for (i, key) in memos.keys.iter().enumerate() {
        sqlx::query(crate::memo::INSERT)
            .bind(key)
            .bind(&doc.run_id)
            .bind(memos.blocks[i])
            .bind(memos.attempts[i])
            .bind(&memos.reports[i])
            .bind(doc.updated_at)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The side-table queries for this backend.
mod q {
    crate::side::side_queries!(
        sqlx::sqlite::SqlitePool,
        sqlx::sqlite::SqliteRow,
        sqlx::Sqlite
    );
}

/// The event feed's queries for this backend.
mod bq {
    crate::bus::bus_queries!(
        sqlx::sqlite::SqlitePool,
        sqlx::sqlite::SqliteRow,
        sqlx::Sqlite,
        false
    );

    /// Writes `events` in the caller's transaction, in one statement.
    pub(crate) async fn insert_bus_events(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        events: &[factory_core::bus::BusEvent],
        at: factory_core::run::Millis,
    ) -> crate::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        sqlx::query(INSERT_SQLITE)
            .bind(feed_json(events)?)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The stream-record queries for this backend.
mod sq {
    crate::stream::stream_queries!(
        sqlx::sqlite::SqlitePool,
        sqlx::sqlite::SqliteRow,
        sqlx::Sqlite,
        crate::stream::CLAIM_SQLITE
    );
}

/// The notification outbox's queries for this backend.
mod nq {
    crate::outbox::outbox_queries!(
        sqlx::sqlite::SqlitePool,
        sqlx::sqlite::SqliteRow,
        sqlx::Sqlite,
        false
    );
}
