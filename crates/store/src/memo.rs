//! Memoized attempts' rows ([`factory_core::memo`]): written by the commit
//! that makes a block done, read before an attempt starts.

use factory_core::memo::{MemoKey, remembered, stored_report};
use factory_core::run::{AttemptReport, EventRecord, RunDoc};

/// An accepted attempt remembered under a memo key.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoHit {
    pub run_id: String,
    pub block_id: String,
    pub attempt: u32,
    pub report: AttemptReport,
}

/// The memos a commit writes, as columns: one entry per block the commit
/// makes done whose accepted attempt has a key of its own.
#[derive(Debug, Default)]
pub(crate) struct MemoColumns<'a> {
    pub keys: Vec<&'a str>,
    pub blocks: Vec<&'a str>,
    pub attempts: Vec<i32>,
    pub reports: Vec<String>,
}

impl<'a> MemoColumns<'a> {
    pub fn of(doc: &'a RunDoc, records: &[EventRecord]) -> crate::Result<MemoColumns<'a>> {
        let mut columns = MemoColumns::default();
        let mut seen = std::collections::BTreeSet::new();
        // One row per key: PostgreSQL refuses to upsert a row twice in one
        // statement.
        for memo in remembered(doc, records) {
            if !seen.insert(memo.key) {
                continue;
            }
            columns.keys.push(memo.key.as_str());
            columns.blocks.push(memo.block);
            columns.attempts.push(memo.attempt as i32);
            columns
                .reports
                .push(serde_json::to_string(&stored_report(memo.report))?);
        }
        Ok(columns)
    }
}

/// The latest accepted attempt for a key wins: one a person asked for anew
/// (a retry, a `--no-cache` run) and accepted replaces the one before.
pub(crate) const INSERT: &str =
    "INSERT INTO attempt_memos (memo_key, run_id, block_id, attempt, report, created_at)
 VALUES ($1, $2, $3, $4, $5, $6)
 ON CONFLICT (memo_key) DO UPDATE SET run_id = excluded.run_id, block_id = excluded.block_id,
     attempt = excluded.attempt, report = excluded.report, created_at = excluded.created_at";

/// The attempt read as a BIGINT on both backends, so both read one row type
/// ([`LookedUp`]).
pub(crate) const LOOKUP: &str = "SELECT run_id, block_id, CAST(attempt AS BIGINT), report FROM attempt_memos WHERE memo_key = $1";

/// A row of [`LOOKUP`]: run, block, attempt, report.
pub(crate) type LookedUp = (String, String, i64, String);

/// A looked-up row, parsed; a report that no longer parses is no hit.
pub(crate) fn hit(key: &MemoKey, row: LookedUp) -> Option<MemoHit> {
    let (run_id, block_id, attempt, report) = row;
    match serde_json::from_str(&report) {
        Ok(report) => Some(MemoHit {
            run_id,
            block_id,
            attempt: u32::try_from(attempt).unwrap_or_default(),
            report,
        }),
        Err(error) => {
            tracing::warn!(%key, %error, "a memo's report cannot be read; running the block");
            None
        }
    }
}
