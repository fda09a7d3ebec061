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

pub(crate) const INSERT_TOKEN: &str = "INSERT INTO api_tokens (id, name, role, hash, created_by, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)";
pub(crate) const TOKEN_BY_HASH: &str = "SELECT id, name, role, hash, created_by, created_at, revoked_at FROM api_tokens WHERE hash = $1";
pub(crate) const LIST_TOKENS: &str = "SELECT id, name, role, hash, created_by, created_at, revoked_at FROM api_tokens ORDER BY created_at, id";
pub(crate) const REVOKE_TOKEN: &str =
    "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL";
pub(crate) const UPSERT_TEMPLATE: &str = "INSERT INTO templates (template_id, version, name, source, path, registered_by, registered_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (template_id, version) DO UPDATE SET name = excluded.name, source = excluded.source, path = excluded.path, registered_by = excluded.registered_by, registered_at = excluded.registered_at";
pub(crate) const LIST_TEMPLATES: &str = "SELECT template_id, version, name, source, path, registered_by, registered_at FROM templates ORDER BY template_id, registered_at DESC";
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
    ($pool:ty, $row:ty) => {
        use sqlx::Row as _;
        use $crate::side::*;

        pub(crate) async fn create_token(pool: &$pool, t: &TokenRecord) -> $crate::Result<()> {
            sqlx::query(INSERT_TOKEN)
                .bind(&t.id)
                .bind(&t.name)
                .bind(&t.role)
                .bind(&t.hash)
                .bind(&t.created_by)
                .bind(t.created_at)
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
            sqlx::query(UPSERT_RECORD)
                .bind(&r.run_id)
                .bind(&r.template_id)
                .bind(&r.kind)
                .bind(&r.key)
                .bind(&r.actor)
                .bind(r.at)
                .bind(serde_json::to_string(&r.body)?)
                .execute(pool)
                .await?;
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
