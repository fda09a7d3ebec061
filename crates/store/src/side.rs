//! Records that live beside a run's event log: API tokens, registered
//! templates, and per-run records (drafts, reflections, chat, uploads).
//!
//! The SQL is written once with `$N` placeholders, which both SQLite and
//! PostgreSQL accept, so the two backends differ only in their pool type.

use factory_core::run::Millis;
use serde::{Deserialize, Serialize};

/// A stored API token (never the token itself, only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public prefix of the token, shown to identify it.
    pub id: String,
    pub name: String,
    pub role: String,
    /// SHA-256 of the whole token, hex.
    #[serde(skip_serializing)]
    pub hash: String,
    pub created_by: String,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
    /// Set for review-link tokens: the one run and tester they act for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ReviewScope>,
    /// For ordinary tokens: the tester role an admin granted, which a review
    /// submitted with the token counts as. `None`: the token does not vote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tester_role: Option<String>,
}

/// What a review link's token may do: review one run as one tester.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewScope {
    pub run_id: String,
    pub tester: String,
    /// `expert`, `product_lead`, `tech_lead`, `team` or `external`.
    pub tester_role: String,
}

/// A template registered through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub template_id: String,
    pub version: String,
    pub name: String,
    pub source: String,
    pub path: Option<String>,
    pub registered_by: String,
    pub registered_at: Millis,
}

/// Kinds of [`RunRecord`].
pub mod kinds {
    /// A form's saved values, so they survive a page refresh.
    pub const DRAFT: &str = "draft";
    /// The four post-run questions, kept as the template's process memory.
    pub const REFLECTION: &str = "reflection";
    /// One message of a block-scoped chat (key: `<block>/<time-ordered id>`).
    pub const CHAT: &str = "chat";
    /// An uploaded input file (body names its blob).
    pub const UPLOAD: &str = "upload";
    /// A person's rating of a lens output (body: `factory_core::lens::Rating`;
    /// key: output and person, so rating again replaces).
    pub const RATING: &str = "rating";
}

/// Something attached to a run, upserted by `(run_id, kind, key)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub template_id: String,
    pub kind: String,
    pub key: String,
    pub actor: String,
    pub at: Millis,
    pub body: serde_json::Value,
}

/// One submission from a review page (extraction review or expert audit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub id: String,
    pub run_id: String,
    /// The run version reviewed (`v1`, `v2`, …).
    pub version: String,
    /// `extraction-review` or `expert-audit`.
    pub source: String,
    pub tester: String,
    /// `expert`, `product_lead`, `tech_lead`, `team` or `external`.
    pub tester_role: String,
    pub free_text: String,
    /// Per-item verdicts and corrections, as submitted.
    pub items: serde_json::Value,
    pub created_at: Millis,
}

/// A finding to correct, with its consensus across testers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImprovementItem {
    pub id: String,
    pub run_id: String,
    /// Identifies "the same item" across testers (e.g. `frameworks.json $.frameworks[2]`).
    pub source_key: String,
    /// The block whose output the finding is about.
    pub skill_target: String,
    pub finding_type: String,
    /// `critical`, `high`, `medium` or `low`.
    pub priority: String,
    pub source_text: String,
    pub expert_correction: String,
    /// `open`, `accepted`, `rejected`, `triage` or `resolved`.
    pub status: String,
    pub consensus_score: f64,
    /// `[{tester, role, weight, feedback_id}]`.
    pub flagged_by: serde_json::Value,
    pub prompt_version: Option<String>,
    pub extraction_version: Option<String>,
    pub resolved_in_version: Option<String>,
    pub resolution_notes: Option<String>,
    /// The review that produced it (`extraction-review`, `expert-audit`, …).
    #[serde(default)]
    pub source: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

pub(crate) const INSERT_FEEDBACK: &str = "INSERT INTO feedback (id, run_id, version, source, tester, tester_role, free_text, items, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
pub(crate) const FEEDBACK_OF_RUN: &str = "SELECT id, run_id, version, source, tester, tester_role, free_text, items, created_at FROM feedback WHERE run_id = $1 ORDER BY created_at, id";
pub(crate) const UPSERT_ITEM: &str = "INSERT INTO improvement_items (id, run_id, source_key, skill_target, finding_type, priority, source_text, expert_correction, status, consensus_score, flagged_by, prompt_version, extraction_version, resolved_in_version, resolution_notes, created_at, updated_at, source)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
     ON CONFLICT (id) DO UPDATE SET skill_target = excluded.skill_target, finding_type = excluded.finding_type, priority = excluded.priority, source_text = excluded.source_text, expert_correction = excluded.expert_correction, status = excluded.status, consensus_score = excluded.consensus_score, flagged_by = excluded.flagged_by, prompt_version = excluded.prompt_version, extraction_version = excluded.extraction_version, resolved_in_version = excluded.resolved_in_version, resolution_notes = excluded.resolution_notes, updated_at = excluded.updated_at, source = excluded.source";
pub(crate) const ITEM_BY_ID: &str = "SELECT * FROM improvement_items WHERE id = $1";
pub(crate) const ITEM_BY_KEY: &str =
    "SELECT * FROM improvement_items WHERE run_id = $1 AND source_key = $2";
pub(crate) const ITEMS_OF_RUN: &str = "SELECT * FROM improvement_items WHERE run_id = $1 AND status = COALESCE($2, status) AND skill_target = COALESCE($3, skill_target) ORDER BY created_at, id";

pub(crate) const INSERT_TOKEN: &str = "INSERT INTO api_tokens (id, name, role, hash, created_by, created_at, revoked_at, scope, tester_role) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8)";
pub(crate) const TOKEN_BY_HASH: &str = "SELECT id, name, role, hash, created_by, created_at, revoked_at, scope, tester_role FROM api_tokens WHERE hash = $1";
pub(crate) const LIST_TOKENS: &str = "SELECT id, name, role, hash, created_by, created_at, revoked_at, scope, tester_role FROM api_tokens ORDER BY created_at, id";
pub(crate) const REVOKE_TOKEN: &str =
    "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
/// Takes the lowest free slot below the limit ($2): one with no row, or whose
/// holder's time ran out. Two takers racing for one slot: the second finds
/// the first's row on conflict, not expired, and takes nothing (it asks again).
pub(crate) const TAKE_PERMIT: &str = "WITH RECURSIVE slots (s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM slots WHERE s + 1 < $2)
     INSERT INTO permits (key, slot, holder, expires_at)
     SELECT $1, s, $3, $5 FROM slots
     WHERE NOT EXISTS (SELECT 1 FROM permits p WHERE p.key = $1 AND p.slot = slots.s AND p.expires_at >= $4)
     ORDER BY s LIMIT 1
     ON CONFLICT (key, slot) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
     WHERE permits.expires_at < $4
     RETURNING slot";
pub(crate) const RENEW_PERMIT: &str =
    "UPDATE permits SET expires_at = $1 WHERE key = $2 AND slot = $3 AND holder = $4";
pub(crate) const RELEASE_PERMIT: &str =
    "DELETE FROM permits WHERE key = $1 AND slot = $2 AND holder = $3";
/// Forgets a budget's spends whose time is over.
pub(crate) const EXPIRE_SPENDS: &str =
    "DELETE FROM budget_spends WHERE key = $1 AND expires_at <= $2";
/// A spend, admitted only while the live spends leave room (or there are
/// none). Run in a transaction that serialises spenders of the key.
pub(crate) const SPEND_BUDGET: &str = "INSERT INTO budget_spends (key, holder, amount, expires_at)
     SELECT $1, $2, $3, $5
     WHERE (SELECT COALESCE(SUM(amount), 0) FROM budget_spends WHERE key = $1 AND expires_at > $6) + $3 <= $4
        OR NOT EXISTS (SELECT 1 FROM budget_spends WHERE key = $1 AND expires_at > $6)
     ON CONFLICT (key, holder) DO NOTHING";
pub(crate) const SETTLE_BUDGET: &str =
    "UPDATE budget_spends SET amount = $3 WHERE key = $1 AND holder = $2";
pub(crate) const UPSERT_TEMPLATE: &str = "INSERT INTO templates (template_id, version, name, source, path, registered_by, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (template_id, version) DO UPDATE SET name = excluded.name, source = excluded.source, path = excluded.path, registered_by = excluded.registered_by, registered_at = excluded.registered_at";
pub(crate) const LIST_TEMPLATES: &str = "SELECT template_id, version, name, source, path, registered_by, registered_at FROM templates ORDER BY template_id, registered_at DESC";
pub(crate) const INSERT_BLOB: &str =
    "INSERT INTO blobs (hash, size, content) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING";
pub(crate) const UPSERT_RECORD: &str = "INSERT INTO run_records (run_id, template_id, kind, key, actor, at, body) VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (run_id, kind, key) DO UPDATE SET actor = excluded.actor, at = excluded.at, body = excluded.body";
pub(crate) const RECORDS_OF_RUN: &str = "SELECT run_id, template_id, kind, key, actor, at, body FROM run_records WHERE run_id = $1 AND kind = $2 ORDER BY at, key";
pub(crate) const RECORDS_OF_TEMPLATE: &str = "SELECT run_id, template_id, kind, key, actor, at, body FROM run_records WHERE template_id = $1 AND kind = $2 ORDER BY at DESC, key LIMIT $3";
pub(crate) const RUNS_UPDATED_SINCE: &str = "SELECT run_id, template_id, status, created_at, updated_at FROM runs WHERE updated_at >= $1 ORDER BY updated_at";
pub(crate) const RUNS_WITH_STATUS: &str = "SELECT run_id, template_id, status, created_at, updated_at FROM runs WHERE status = $1 ORDER BY created_at";

/// Row mapping shared by both backends.
macro_rules! map_rows {
    (token, $row:expr) => {
        $crate::side::TokenRecord {
            id: $row.get("id"),
            name: $row.get("name"),
            role: $row.get("role"),
            hash: $row.get("hash"),
            created_by: $row.get("created_by"),
            created_at: $row.get("created_at"),
            revoked_at: $row.get("revoked_at"),
            scope: $row
                .get::<Option<&str>, _>("scope")
                .and_then(|text| serde_json::from_str(text).ok()),
            tester_role: $row.get("tester_role"),
        }
    };
    (template, $row:expr) => {
        $crate::side::TemplateRecord {
            template_id: $row.get("template_id"),
            version: $row.get("version"),
            name: $row.get("name"),
            source: $row.get("source"),
            path: $row.get("path"),
            registered_by: $row.get("registered_by"),
            registered_at: $row.get("registered_at"),
        }
    };
    (summary, $row:expr) => {
        $crate::RunSummary {
            run_id: $row.get("run_id"),
            template_id: $row.get("template_id"),
            status: $row.get("status"),
            created_at: $row.get("created_at"),
            updated_at: $row.get("updated_at"),
        }
    };
}
pub(crate) use map_rows;

fn parse_json(run_id: &str, what: &'static str, text: &str) -> crate::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|source| crate::StoreError::Corrupt {
        run_id: run_id.to_string(),
        what,
        source,
    })
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn parse_feedback(
    id: String,
    run_id: String,
    version: String,
    source: String,
    tester: String,
    tester_role: String,
    free_text: String,
    items: &str,
    created_at: Millis,
) -> crate::Result<FeedbackRecord> {
    let items = parse_json(&run_id, "feedback items", items)?;
    Ok(FeedbackRecord {
        id,
        run_id,
        version,
        source,
        tester,
        tester_role,
        free_text,
        items,
        created_at,
    })
}

pub(crate) fn parse_flagged_by(run_id: &str, text: &str) -> crate::Result<serde_json::Value> {
    parse_json(run_id, "improvement item flagged_by", text)
}

pub(crate) fn parse_record(
    run_id: String,
    template_id: String,
    kind: String,
    key: String,
    actor: String,
    at: Millis,
    body: &str,
) -> crate::Result<RunRecord> {
    let body = serde_json::from_str(body).map_err(|source| crate::StoreError::Corrupt {
        run_id: run_id.clone(),
        what: "run record",
        source,
    })?;
    Ok(RunRecord {
        run_id,
        template_id,
        kind,
        key,
        actor,
        at,
        body,
    })
}

/// Defines the side-table queries for one backend's pool type, so both
/// backends run the same SQL through the same code.
macro_rules! side_queries {
    ($pool:ty, $row:ty, $db:ty) => {
        use sqlx::Row as _;
        use $crate::side::*;

        /// Run records, inside the caller's transaction.
        pub(crate) async fn upsert_records(
            tx: &mut sqlx::Transaction<'_, $db>,
            records: &[RunRecord],
        ) -> $crate::Result<()> {
            for r in records {
                sqlx::query(UPSERT_RECORD)
                    .bind(&r.run_id)
                    .bind(&r.template_id)
                    .bind(&r.kind)
                    .bind(&r.key)
                    .bind(&r.actor)
                    .bind(r.at)
                    .bind(serde_json::to_string(&r.body)?)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        pub(crate) async fn create_token(pool: &$pool, t: &TokenRecord) -> $crate::Result<()> {
            sqlx::query(INSERT_TOKEN)
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.role)
                .bind(&t.hash)
                .bind(&t.created_by)
                .bind(t.created_at)
                .bind(t.scope.as_ref().map(serde_json::to_string).transpose()?)
                .bind(&t.tester_role)
                .execute(pool)
                .await?;
            Ok(())
        }

        pub(crate) async fn token_by_hash(
            pool: &$pool,
            hash: &str,
        ) -> $crate::Result<Option<TokenRecord>> {
            let row = sqlx::query(TOKEN_BY_HASH)
                .bind(hash)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|row| map_rows!(token, row)))
        }

        pub(crate) async fn list_tokens(pool: &$pool) -> $crate::Result<Vec<TokenRecord>> {
            let rows = sqlx::query(LIST_TOKENS).fetch_all(pool).await?;
            Ok(rows.iter().map(|row| map_rows!(token, row)).collect())
        }

        pub(crate) async fn revoke_token(
            pool: &$pool,
            id: &str,
            at: factory_core::run::Millis,
        ) -> $crate::Result<bool> {
            let done = sqlx::query(REVOKE_TOKEN)
                .bind(at)
                .bind(id)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        pub(crate) async fn take_permit(
            pool: &$pool,
            key: &str,
            limit: u32,
            holder: &str,
            now: factory_core::run::Millis,
            expires_at: factory_core::run::Millis,
        ) -> $crate::Result<Option<u32>> {
            if limit == 0 {
                return Ok(None);
            }
            let row = sqlx::query(TAKE_PERMIT)
                .bind(key)
                .bind(i32::try_from(limit).unwrap_or(i32::MAX))
                .bind(holder)
                .bind(now)
                .bind(expires_at)
                .fetch_optional(pool)
                .await?;
            Ok(row.map(|row| row.get::<i32, _>("slot") as u32))
        }

        pub(crate) async fn keep_permit(
            pool: &$pool,
            key: &str,
            slot: u32,
            holder: &str,
            until: Option<factory_core::run::Millis>,
        ) -> $crate::Result<bool> {
            let done = match until {
                Some(expires_at) => {
                    sqlx::query(RENEW_PERMIT)
                        .bind(expires_at)
                        .bind(key)
                        .bind(slot as i32)
                        .bind(holder)
                        .execute(pool)
                        .await?
                }
                None => {
                    sqlx::query(RELEASE_PERMIT)
                        .bind(key)
                        .bind(slot as i32)
                        .bind(holder)
                        .execute(pool)
                        .await?
                }
            };
            Ok(done.rows_affected() == 1)
        }

        /// [`SPEND_BUDGET`] in the caller's transaction, after it has
        /// serialised the key's spenders.
        pub(crate) async fn spend_budget<'c>(
            tx: &mut sqlx::Transaction<'c, $db>,
            key: &str,
            holder: &str,
            amount: u64,
            limit: u64,
            now: factory_core::run::Millis,
            expires_at: factory_core::run::Millis,
        ) -> $crate::Result<bool> {
            let amount = i64::try_from(amount).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            sqlx::query(EXPIRE_SPENDS)
                .bind(key)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            let done = sqlx::query(SPEND_BUDGET)
                .bind(key)
                .bind(holder)
                .bind(amount)
                .bind(limit)
                .bind(expires_at)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        pub(crate) async fn settle_budget(
            pool: &$pool,
            key: &str,
            holder: &str,
            amount: u64,
        ) -> $crate::Result<()> {
            sqlx::query(SETTLE_BUDGET)
                .bind(key)
                .bind(holder)
                .bind(i64::try_from(amount).unwrap_or(i64::MAX))
                .execute(pool)
                .await?;
            Ok(())
        }

        pub(crate) async fn put_template(pool: &$pool, t: &TemplateRecord) -> $crate::Result<()> {
            sqlx::query(UPSERT_TEMPLATE)
                .bind(&t.template_id)
                .bind(&t.version)
                .bind(&t.name)
                .bind(&t.source)
                .bind(&t.path)
                .bind(&t.registered_by)
                .bind(t.registered_at)
                .execute(pool)
                .await?;
            Ok(())
        }

        pub(crate) async fn list_templates(pool: &$pool) -> $crate::Result<Vec<TemplateRecord>> {
            let rows = sqlx::query(LIST_TEMPLATES).fetch_all(pool).await?;
            Ok(rows.iter().map(|row| map_rows!(template, row)).collect())
        }

        pub(crate) async fn put_record(pool: &$pool, r: &RunRecord) -> $crate::Result<()> {
            let mut tx = pool.begin().await?;
            upsert_records(&mut tx, std::slice::from_ref(r)).await?;
            tx.commit().await?;
            Ok(())
        }

        fn map_records(rows: &[$row]) -> $crate::Result<Vec<RunRecord>> {
            rows.iter()
                .map(|row| {
                    parse_record(
                        row.get("run_id"),
                        row.get("template_id"),
                        row.get("kind"),
                        row.get("key"),
                        row.get("actor"),
                        row.get("at"),
                        row.get::<&str, _>("body"),
                    )
                })
                .collect()
        }

        pub(crate) async fn records(
            pool: &$pool,
            run_id: &str,
            kind: &str,
        ) -> $crate::Result<Vec<RunRecord>> {
            let rows = sqlx::query(RECORDS_OF_RUN)
                .bind(run_id)
                .bind(kind)
                .fetch_all(pool)
                .await?;
            map_records(&rows)
        }

        pub(crate) async fn records_for_template(
            pool: &$pool,
            template_id: &str,
            kind: &str,
            limit: u32,
        ) -> $crate::Result<Vec<RunRecord>> {
            let rows = sqlx::query(RECORDS_OF_TEMPLATE)
                .bind(template_id)
                .bind(kind)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?;
            map_records(&rows)
        }

        pub(crate) async fn add_feedback(pool: &$pool, f: &FeedbackRecord) -> $crate::Result<()> {
            let mut tx = pool.begin().await?;
            insert_feedback(&mut tx, f).await?;
            tx.commit().await?;
            Ok(())
        }

        /// A review submission's row, inside the caller's transaction.
        pub(crate) async fn insert_feedback(
            tx: &mut sqlx::Transaction<'_, $db>,
            f: &FeedbackRecord,
        ) -> $crate::Result<()> {
            sqlx::query(INSERT_FEEDBACK)
                .bind(&f.id)
                .bind(&f.run_id)
                .bind(&f.version)
                .bind(&f.source)
                .bind(&f.tester)
                .bind(&f.tester_role)
                .bind(&f.free_text)
                .bind(serde_json::to_string(&f.items)?)
                .bind(f.created_at)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        pub(crate) async fn feedback(
            pool: &$pool,
            run_id: &str,
        ) -> $crate::Result<Vec<FeedbackRecord>> {
            let rows = sqlx::query(FEEDBACK_OF_RUN)
                .bind(run_id)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    parse_feedback(
                        row.get("id"),
                        row.get("run_id"),
                        row.get("version"),
                        row.get("source"),
                        row.get("tester"),
                        row.get("tester_role"),
                        row.get("free_text"),
                        row.get::<&str, _>("items"),
                        row.get("created_at"),
                    )
                })
                .collect()
        }

        /// All or none, in one transaction.
        pub(crate) async fn put_items(
            pool: &$pool,
            items: &[ImprovementItem],
        ) -> $crate::Result<()> {
            let mut tx = pool.begin().await?;
            upsert_items(&mut tx, items).await?;
            tx.commit().await?;
            Ok(())
        }

        /// Improvement items, inside the caller's transaction.
        pub(crate) async fn upsert_items(
            tx: &mut sqlx::Transaction<'_, $db>,
            items: &[ImprovementItem],
        ) -> $crate::Result<()> {
            for i in items {
                sqlx::query(UPSERT_ITEM)
                    .bind(&i.id)
                    .bind(&i.run_id)
                    .bind(&i.source_key)
                    .bind(&i.skill_target)
                    .bind(&i.finding_type)
                    .bind(&i.priority)
                    .bind(&i.source_text)
                    .bind(&i.expert_correction)
                    .bind(&i.status)
                    .bind(i.consensus_score)
                    .bind(serde_json::to_string(&i.flagged_by)?)
                    .bind(&i.prompt_version)
                    .bind(&i.extraction_version)
                    .bind(&i.resolved_in_version)
                    .bind(&i.resolution_notes)
                    .bind(i.created_at)
                    .bind(i.updated_at)
                    .bind(&i.source)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        fn map_item(row: &$row) -> $crate::Result<ImprovementItem> {
            let run_id: String = row.get("run_id");
            let flagged_by = parse_flagged_by(&run_id, row.get::<&str, _>("flagged_by"))?;
            Ok(ImprovementItem {
                id: row.get("id"),
                run_id,
                source_key: row.get("source_key"),
                skill_target: row.get("skill_target"),
                finding_type: row.get("finding_type"),
                priority: row.get("priority"),
                source_text: row.get("source_text"),
                expert_correction: row.get("expert_correction"),
                status: row.get("status"),
                consensus_score: row.get("consensus_score"),
                flagged_by,
                prompt_version: row.get("prompt_version"),
                extraction_version: row.get("extraction_version"),
                resolved_in_version: row.get("resolved_in_version"),
                resolution_notes: row.get("resolution_notes"),
                source: row.get("source"),
                created_at: row.get("created_at"),
                updated_at: row.get("updated_at"),
            })
        }

        pub(crate) async fn item(
            pool: &$pool,
            id: &str,
        ) -> $crate::Result<Option<ImprovementItem>> {
            let row = sqlx::query(ITEM_BY_ID)
                .bind(id)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(map_item).transpose()
        }

        pub(crate) async fn item_by_key(
            pool: &$pool,
            run_id: &str,
            source_key: &str,
        ) -> $crate::Result<Option<ImprovementItem>> {
            let row = sqlx::query(ITEM_BY_KEY)
                .bind(run_id)
                .bind(source_key)
                .fetch_optional(pool)
                .await?;
            row.as_ref().map(map_item).transpose()
        }

        pub(crate) async fn items(
            pool: &$pool,
            run_id: &str,
            status: Option<&str>,
            skill_target: Option<&str>,
        ) -> $crate::Result<Vec<ImprovementItem>> {
            let rows = sqlx::query(ITEMS_OF_RUN)
                .bind(run_id)
                .bind(status)
                .bind(skill_target)
                .fetch_all(pool)
                .await?;
            rows.iter().map(map_item).collect()
        }

        pub(crate) async fn runs_updated_since(
            pool: &$pool,
            since: factory_core::run::Millis,
        ) -> $crate::Result<Vec<$crate::RunSummary>> {
            let rows = sqlx::query(RUNS_UPDATED_SINCE)
                .bind(since)
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(|row| map_rows!(summary, row)).collect())
        }

        pub(crate) async fn runs_with_status(
            pool: &$pool,
            status: &str,
        ) -> $crate::Result<Vec<$crate::RunSummary>> {
            let rows = sqlx::query(RUNS_WITH_STATUS)
                .bind(status)
                .fetch_all(pool)
                .await?;
            Ok(rows.iter().map(|row| map_rows!(summary, row)).collect())
        }
    };
}
pub(crate) use side_queries;
