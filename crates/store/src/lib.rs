//! Durable storage for runs: one JSON document per run (stored as a header
//! row and one row per block, so a commit writes only what it changed), an
//! append-only event log, content-addressed blobs (artifacts and logs) and
//! worker leases.
//!
//! Two implementations share one trait: SQLite (the embedded default, a single
//! file) and PostgreSQL (many workers on many machines).
//!
//! Architecture Invariant: a run document is only ever written together with
//! the events that produced it, in one transaction, and only if the writer saw
//! the latest version (`expected_version`). A stale writer gets
//! [`StoreError::Conflict`] and must reload and decide again; nothing is
//! silently overwritten. No code here assumes one process owns a run.

pub mod bus;
mod memo;
pub mod outbox;
mod postgres;
mod side;
mod sqlite;
pub mod stream;

use async_trait::async_trait;
use factory_core::run::{Event, EventRecord, Millis, RunDoc};
use sha2::{Digest, Sha256};

pub use bus::{FeedEvent, FeedFilter, FeedPosition, Pruned};
pub use memo::MemoHit;
pub use outbox::{DeliveryOutcome, NewNotification, Notification, NotificationFilter};
pub use postgres::PostgresStore;
pub use side::{
    FeedbackRecord, ImprovementItem, ReviewScope, RunRecord, TemplateRecord, TokenRecord, kinds,
};
pub use sqlite::SqliteStore;
pub use stream::{
    ClaimedRecord, Firing, FiringOutcome, NewStreamRecord, Receipt, RecordCount, RecordFilter,
    RecordHistoryEntry, StageMoves, StreamRecordRow,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run `{0}` not found")]
    RunNotFound(String),
    #[error("run id prefix `{prefix}` is ambiguous: matches {}", matches.join(", "))]
    AmbiguousRunId {
        prefix: String,
        matches: Vec<String>,
    },
    #[error(
        "run `{run_id}` changed underneath this writer (expected version {expected}); reload and retry"
    )]
    Conflict { run_id: String, expected: i64 },
    #[error("blob `{0}` not found")]
    BlobNotFound(String),
    #[error("run `{run_id}` holds a corrupt {what}: {source}")]
    Corrupt {
        run_id: String,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("cannot open the store at `{url}`: {source}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("serialization error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported database URL `{0}`: use a file path, sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
}

impl StoreError {
    /// True when the database could not be reached (down, unreachable, the
    /// pool gave up waiting for a connection): the request may succeed later,
    /// and nothing was written.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(error) | StoreError::Open { source: error, .. } => matches!(
                error,
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            ),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A run as stored.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub doc: RunDoc,
    /// Optimistic-concurrency counter; pass it back to [`Store::commit`].
    pub version: i64,
    /// The template JSON the run was created from (runs are self-contained).
    pub template_json: String,
    /// Where the template file was, for resolving relative paths (skills, scripts).
    pub template_path: Option<String>,
}

/// A writer's turn on a run ([`Store::writer_turn`]), held until
/// [`WriterTurn::end`]. Dropped without it (a cancelled task), the turn ends
/// when its connection is next used or closed: end it explicitly.
pub struct WriterTurn {
    /// PostgreSQL: the transaction holding the run's advisory lock.
    lock: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    /// One of the store's few connections for turns.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl WriterTurn {
    pub(crate) fn holding(
        lock: sqlx::Transaction<'static, sqlx::Postgres>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> WriterTurn {
        WriterTurn {
            lock: Some(lock),
            _permit: permit,
        }
    }

    /// Gives the turn to the next writer waiting for it.
    pub async fn end(mut self) {
        if let Some(lock) = self.lock.take()
            && let Err(error) = lock.commit().await
        {
            // The connection is gone, and the lock with it.
            tracing::warn!(%error, "could not end a writer's turn cleanly");
        }
    }
}

/// What other writers committed to a run since a given event
/// ([`Store::changes_since`]).
#[derive(Debug, Clone)]
pub struct RunChanges {
    /// The run's version after `records`.
    pub version: i64,
    pub records: Vec<EventRecord>,
}

/// Rows written in the same transaction as a run's events and document.
#[derive(Debug, Default, Clone, Copy)]
pub struct Writes<'a> {
    pub blobs: &'a [NewBlob],
    /// A review submission.
    pub feedback: Option<&'a FeedbackRecord>,
    /// Improvement items created or changed by the same action.
    pub items: &'a [ImprovementItem],
    /// Feed events the action emits besides those of its run events
    /// (a block's `outputs.emits`).
    pub emitted: &'a [factory_core::bus::BusEvent],
}

/// A new run: its template snapshot, first document and first events.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub doc: &'a RunDoc,
    pub records: &'a [EventRecord],
    pub template_json: &'a str,
    pub template_path: Option<&'a str>,
    /// Stored in the same transaction as the run: its uploaded files'
    /// contents and their records, so no block can start without them.
    pub blobs: &'a [NewBlob],
    pub side: &'a [RunRecord],
}

/// One line of `factory runs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub run_id: String,
    pub template_id: String,
    pub status: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Which runs a listing wants (every field optional), newest first, a page
/// at a time: `before` is the (created_at, run_id) of the last run of the
/// previous page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub template: Option<String>,
    pub status: Option<String>,
    /// A run id prefix, or text anywhere in the run's params (any case).
    pub text: Option<String>,
    pub before: Option<(Millis, String)>,
    pub limit: u32,
}

/// A run in a listing, with who started it (the actor of its first event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunListing {
    pub run: RunSummary,
    pub started_by: String,
}

/// A worker's claim on a running block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: String,
    pub block_id: String,
    pub attempt: u32,
    pub owner: String,
    pub pid: Option<i32>,
    pub expires_at: Millis,
}

/// One attempt a worker holds a lease for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldLease {
    pub run_id: String,
    pub block_id: String,
    pub attempt: u32,
}

/// Content to store under its SHA-256 address (see [`NewBlob::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlob {
    pub hash: String,
    pub content: Vec<u8>,
}

impl NewBlob {
    pub fn new(content: Vec<u8>) -> NewBlob {
        NewBlob {
            hash: blob_hash(&content),
            content,
        }
    }
}

/// A stored blob's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub hash: String,
    pub size: u64,
}

/// SHA-256 of `content`, lowercase hex: the blob's address.
pub fn blob_hash(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// Whether a read of a run brings each block's attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    All,
    None,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Inserts a new run with its first events.
    async fn create_run(&self, run: NewRun<'_>) -> Result<()>;

    async fn load_run(&self, run_id: &str) -> Result<StoredRun>;

    /// The run document as stored JSON text, unparsed: the API's hot read.
    /// With [`History::None`] its blocks come without their attempts (their
    /// rows are not read), for callers that poll a large run's state.
    async fn load_run_json(&self, run_id: &str, history: History) -> Result<String>;

    /// The run's version (one more with every commit), `None` when there is
    /// no such run: what a reader checks before serving a copy it kept.
    async fn run_version(&self, run_id: &str) -> Result<Option<i64>>;

    /// One block's state with its attempts, as JSON text, read from its own
    /// rows only (the rest of the run is not read): the attempts of one
    /// block on demand. `None` when the run has no such block (or there is
    /// no such run).
    async fn load_block_json(&self, run_id: &str, block: &str) -> Result<Option<String>>;

    /// Appends `records` and stores the document — its header and the
    /// blocks `records` change ([`Event::changed_blocks`]), nothing else —
    /// if the stored version is still `expected_version`; returns the new
    /// version. `doc` must be the stored document with `records` applied.
    /// Leases follow the events: `block_started` takes one,
    /// `attempt_finished` and `attempt_abandoned` release it.
    async fn commit(
        &self,
        run_id: &str,
        expected_version: i64,
        records: &[EventRecord],
        doc: &RunDoc,
    ) -> Result<i64> {
        self.commit_with(run_id, expected_version, records, doc, &Writes::default())
            .await
    }

    /// [`Store::commit`] with everything else the same action changes
    /// (`writes`) in one transaction: an attempt's outputs (blobs, stored
    /// before the events that reference them), a review's row and its items
    /// land with the events and the document, or not at all.
    async fn commit_with(
        &self,
        run_id: &str,
        expected_version: i64,
        records: &[EventRecord],
        doc: &RunDoc,
        writes: &Writes<'_>,
    ) -> Result<i64>;

    /// The accepted attempt remembered under `key` (written by the commit
    /// that made its block done; see `factory_core::memo`), if any.
    async fn memo(&self, key: &factory_core::memo::MemoKey) -> Result<Option<MemoHit>>;

    /// Events with `seq > after_seq`, in order.
    async fn events(&self, run_id: &str, after_seq: u64) -> Result<Vec<EventRecord>>;

    /// The run's version and its events after `after_seq`, read in one
    /// snapshot: what a holder of the document at `after_seq` applies to
    /// catch up, instead of reading the whole run again.
    async fn changes_since(&self, run_id: &str, after_seq: u64) -> Result<RunChanges>;

    /// Waits for this writer's turn to write `run_id` among the writers that
    /// also take turns, and holds it until [`WriterTurn::end`]. Writers that
    /// keep losing races on a busy run take turns instead: the one whose turn
    /// it is catches up, decides and commits without racing, and nobody's
    /// work is thrown away. `None` where there is nothing to gain (SQLite
    /// writers are serialised by the database already). The version check
    /// still guards every commit: a turn is an optimisation, not the claim.
    async fn writer_turn(&self, run_id: &str) -> Result<Option<WriterTurn>> {
        let _ = run_id;
        Ok(None)
    }

    /// Run ids as they are committed to, by any process, where the database
    /// can push them (PostgreSQL's LISTEN/NOTIFY); `None` where it cannot
    /// (SQLite: look with [`Store::runs_with_status`] instead). Delivery is
    /// best effort — a reconnect can miss some — so subscribers still scan,
    /// only less often.
    async fn subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        Ok(None)
    }

    /// Most recent runs first.
    async fn list_runs(&self, limit: u32) -> Result<Vec<RunSummary>>;

    /// One page of the runs `filter` asks for, newest first.
    async fn find_runs(&self, filter: &RunFilter) -> Result<Vec<RunListing>>;

    /// Run ids starting with `prefix` (at most a few).
    async fn run_ids_with_prefix(&self, prefix: &str) -> Result<Vec<String>>;

    /// Stores content under its hash (idempotent).
    async fn put_blob(&self, content: &[u8]) -> Result<BlobRef>;

    async fn get_blob(&self, hash: &str) -> Result<Vec<u8>>;

    /// Extends every lease `owner` holds; returns the ones it still holds, so
    /// a worker learns which of its attempts another worker has taken over.
    async fn renew_leases(&self, owner: &str, expires_at: Millis) -> Result<Vec<HeldLease>>;

    /// Records the process id of a running attempt, so a reclaiming worker on
    /// the same host can make sure it is gone.
    async fn set_lease_pid(
        &self,
        run_id: &str,
        block_id: &str,
        attempt: u32,
        pid: i32,
    ) -> Result<()>;

    /// Publishes the tail of a running attempt's output (JSON `{"stdout":
    /// …, "stderr": …}`) on its lease; false when the lease has moved on (the
    /// attempt ended, or another took the block over).
    async fn set_live_log(
        &self,
        run_id: &str,
        block_id: &str,
        attempt: u32,
        log: &str,
    ) -> Result<bool>;

    /// What a running attempt last published of its output (None once it
    /// ended: its logs are then in its report).
    async fn live_log(&self, run_id: &str, block_id: &str, attempt: u32) -> Result<Option<String>>;

    async fn leases(&self, run_id: &str) -> Result<Vec<Lease>>;

    /// Takes one of `limit` slots of the limit `key` that every worker of the
    /// store shares (calls in flight to an LLM provider), for `holder` until
    /// `expires_at`, if one is free at `now`; returns the slot. A slot is free
    /// when nobody holds it or its holder's time ran out (a crashed worker).
    async fn take_permit(
        &self,
        key: &str,
        limit: u32,
        holder: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<Option<u32>>;

    /// Extends a slot `holder` took to `Some(expires_at)`, or gives it back
    /// (`None`); false when `holder` no longer holds it.
    async fn keep_permit(
        &self,
        key: &str,
        slot: u32,
        holder: &str,
        until: Option<Millis>,
    ) -> Result<bool>;

    /// Counts `amount` against the budget `key` shares among all workers:
    /// admitted (true) when the spends of the key still live at `now` leave
    /// room for it under `limit` — or there are none, so a spend larger than
    /// the whole budget goes alone — and then counted until `expires_at`.
    /// Two workers asking at once are admitted one after the other, never
    /// both on the same room.
    async fn spend_budget(
        &self,
        key: &str,
        holder: &str,
        amount: u64,
        limit: u64,
        now: Millis,
        expires_at: Millis,
    ) -> Result<bool>;

    /// Sets the amount of `holder`'s spend under `key` (what the request
    /// really used); nothing when it has expired.
    async fn settle_budget(&self, key: &str, holder: &str, amount: u64) -> Result<()>;

    /// Runs whose document changed at or after `since` (oldest change first).
    async fn runs_updated_since(&self, since: Millis) -> Result<Vec<RunSummary>>;

    /// Runs in one status (`running`, `waiting`, …), oldest first.
    async fn runs_with_status(&self, status: &str) -> Result<Vec<RunSummary>>;

    async fn create_token(&self, token: &TokenRecord) -> Result<()>;

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>>;

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;

    /// Marks a token revoked; false if there was no such live token.
    async fn revoke_token(&self, id: &str, at: Millis) -> Result<bool>;

    /// Registers a template version (replacing the same id and version).
    async fn put_template(&self, template: &TemplateRecord) -> Result<()>;

    /// Every registered template version, newest first within an id.
    async fn list_templates(&self) -> Result<Vec<TemplateRecord>>;

    /// Inserts or replaces a record attached to a run.
    async fn put_record(&self, record: &RunRecord) -> Result<()>;

    /// A run's records of one kind, oldest first.
    async fn records(&self, run_id: &str, kind: &str) -> Result<Vec<RunRecord>>;

    /// Stores a review submission (feedback ids are unique).
    async fn add_feedback(&self, feedback: &FeedbackRecord) -> Result<()>;

    /// A run's review submissions, oldest first.
    async fn feedback(&self, run_id: &str) -> Result<Vec<FeedbackRecord>>;

    /// Inserts or updates an improvement item by id.
    async fn put_item(&self, item: &ImprovementItem) -> Result<()> {
        self.put_items(std::slice::from_ref(item)).await
    }

    /// Inserts or updates several items in one transaction: all or none.
    async fn put_items(&self, items: &[ImprovementItem]) -> Result<()>;

    async fn item(&self, id: &str) -> Result<Option<ImprovementItem>>;

    /// The item a run already has for a source key (the same finding).
    async fn item_by_key(&self, run_id: &str, source_key: &str) -> Result<Option<ImprovementItem>>;

    /// A run's items, optionally of one status and one target block.
    async fn items(
        &self,
        run_id: &str,
        status: Option<&str>,
        skill_target: Option<&str>,
    ) -> Result<Vec<ImprovementItem>>;

    /// The newest records of one kind across all runs of a template.
    async fn records_for_template(
        &self,
        template_id: &str,
        kind: &str,
        limit: u32,
    ) -> Result<Vec<RunRecord>>;

    // ── Stream records (pattern 2) ──

    /// Stores a delivery: the receipt of its `webhook-id` (a replay stores
    /// nothing) and the record, unless a record with its key exists. One
    /// transaction.
    async fn receive_record(&self, record: &NewStreamRecord<'_>) -> Result<Receipt> {
        let mut receipts = self.receive_records(std::slice::from_ref(record)).await?;
        Ok(receipts.pop().unwrap_or(Receipt::Replayed))
    }

    /// [`Store::receive_record`] for several deliveries in one transaction
    /// (in order: a later one with an earlier one's webhook-id is a replay,
    /// with its key a known record). One receipt per delivery.
    async fn receive_records(&self, records: &[NewStreamRecord<'_>]) -> Result<Vec<Receipt>>;

    /// Leases up to `limit` records waiting in `state` whose retry time has
    /// come and whom no live lease holds.
    #[allow(clippy::too_many_arguments)]
    async fn claim_records(
        &self,
        template_id: &str,
        state: &str,
        limit: u32,
        owner: &str,
        now: Millis,
        lease_until: Millis,
    ) -> Result<Vec<ClaimedRecord>>;

    /// Writes a stage's moves and their history in one transaction; a move
    /// applies only while the record is in `from_state` under `owner`'s
    /// lease. Returns how many applied.
    async fn settle_records(&self, moves: &StageMoves<'_>) -> Result<usize>;

    /// A failed record waits for its stage again. False when it is not failed.
    async fn retry_record(
        &self,
        template_id: &str,
        key: &str,
        actor: &str,
        now: Millis,
    ) -> Result<bool>;

    async fn list_records(
        &self,
        filter: &RecordFilter,
        now: Millis,
    ) -> Result<Vec<StreamRecordRow>>;

    /// One record with its data and history.
    async fn record(
        &self,
        template_id: &str,
        key: &str,
        now: Millis,
    ) -> Result<Option<(StreamRecordRow, Vec<RecordHistoryEntry>)>>;

    async fn count_records(&self, template_id: &str, now: Millis) -> Result<Vec<RecordCount>>;

    /// Who holds record leases (to release those of dead workers).
    async fn record_lease_owners(&self) -> Result<Vec<String>>;

    async fn release_record_leases(&self, owner: &str) -> Result<u64>;

    /// Claims a cron intake's tick: true for the one process that fires
    /// it. An unfinished claim made before `stale_before` (its process
    /// died) may be claimed again.
    async fn claim_firing(
        &self,
        template_id: &str,
        block: &str,
        tick: Millis,
        at: Millis,
        skipped: u64,
        stale_before: Millis,
    ) -> Result<bool>;

    async fn finish_firing(
        &self,
        template_id: &str,
        block: &str,
        tick: Millis,
        outcome: &FiringOutcome,
        at: Millis,
    ) -> Result<()>;

    /// The last tick a cron intake fired or is firing (claims made before
    /// `stale_before` and never finished do not count).
    async fn last_firing(
        &self,
        template_id: &str,
        block: &str,
        stale_before: Millis,
    ) -> Result<Option<Millis>>;

    /// A stream's firings, newest first.
    async fn firings(&self, template_id: &str, limit: u32) -> Result<Vec<Firing>>;

    // ── The event feed ([`factory_core::bus`]). Run commits, record
    // changes and webhook receipts write their events themselves. ──

    /// Events named `name` after `after`, oldest first: only events no
    /// running transaction can still add to, so a reader that moves its
    /// cursor past them never misses one.
    async fn feed_after(
        &self,
        name: &str,
        after: FeedPosition,
        limit: u32,
    ) -> Result<Vec<FeedEvent>>;

    /// The position of `consumer`; a new consumer starts at the feed's end.
    async fn feed_cursor(&self, consumer: &str, now: Millis) -> Result<FeedPosition>;

    /// Moves `consumer` forward to `to` (never back).
    async fn advance_feed_cursor(
        &self,
        consumer: &str,
        to: FeedPosition,
        now: Millis,
    ) -> Result<()>;

    /// Events for people, newest first.
    async fn feed(&self, filter: &FeedFilter) -> Result<Vec<FeedEvent>>;

    /// Removes events, webhook receipts and finished trigger firings older
    /// than `before` (a trigger's last firing stays: it says which tick is
    /// next). A receipt older than the signature tolerance cannot be
    /// replayed anyway: its timestamp is refused.
    async fn prune_feed(&self, before: Millis) -> Result<Pruned>;

    // ── The notification outbox ([`factory_core::notify`]). ──

    /// Stores the notifications made from the feed up to `to` (those
    /// already stored stay as they are) and moves `consumer`'s cursor
    /// there, in one transaction; returns how many were new.
    async fn enqueue_notifications(
        &self,
        rows: &[NewNotification],
        consumer: &str,
        to: FeedPosition,
        now: Millis,
    ) -> Result<u64>;

    /// Claims up to `limit` pending notifications of `channels` due at
    /// `now` for `holder` until `until` (a crashed holder's claim runs out
    /// then).
    async fn claim_notifications(
        &self,
        holder: &str,
        channels: &[String],
        now: Millis,
        until: Millis,
        limit: u32,
    ) -> Result<Vec<Notification>>;

    /// Records how a try of a notification `holder` claimed ended; false
    /// when it no longer holds the claim.
    async fn finish_notification(
        &self,
        id: &str,
        holder: &str,
        outcome: &DeliveryOutcome,
    ) -> Result<bool>;

    /// Notifications, newest first.
    async fn notifications(&self, filter: &NotificationFilter) -> Result<Vec<Notification>>;

    /// Makes a failed notification, or a pending one no sender is trying,
    /// due at `now` (an operator's "send again"); false otherwise (none,
    /// delivered, or a try in flight).
    async fn retry_notification(&self, id: &str, now: Millis) -> Result<bool>;

    /// Resolves a full run id or a unique prefix of one.
    async fn resolve_run_id(&self, id_or_prefix: &str) -> Result<String> {
        let matches = self.run_ids_with_prefix(id_or_prefix).await?;
        if matches.iter().any(|m| m == id_or_prefix) {
            return Ok(id_or_prefix.to_string());
        }
        match matches.len() {
            0 => Err(StoreError::RunNotFound(id_or_prefix.to_string())),
            1 => Ok(matches.into_iter().next().unwrap_or_default()),
            _ => Err(StoreError::AmbiguousRunId {
                prefix: id_or_prefix.to_string(),
                matches,
            }),
        }
    }
}

/// Opens the store a URL names: `postgres://…`/`postgresql://…`, or
/// `sqlite://PATH` / a plain file path for SQLite. Runs migrations.
pub async fn open(url: &str) -> Result<Box<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Box::new(PostgresStore::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Box::new(SqliteStore::open(path).await?))
    } else if url.contains("://") {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    } else {
        Ok(Box::new(SqliteStore::open(url).await?))
    }
}

/// A lease a commit takes.
pub(crate) struct LeaseTake<'a> {
    pub(crate) block: &'a str,
    pub(crate) attempt: u32,
    pub(crate) owner: &'a str,
    pub(crate) expires_at: Millis,
}

/// What a commit's events do to the lease table: `block_started` takes a
/// lease, `attempt_finished` and `attempt_abandoned` release it. Reduced to
/// the last operation per block — the leases to write and the blocks whose
/// lease to delete — because each take writes a whole row and each release
/// deletes it, so the last one alone gives the same table.
pub(crate) fn final_lease_ops(records: &[EventRecord]) -> (Vec<LeaseTake<'_>>, Vec<&str>) {
    // Per block: `Some` a take, `None` a release.
    let mut last: std::collections::BTreeMap<&str, Option<LeaseTake<'_>>> =
        std::collections::BTreeMap::new();
    for record in records {
        match &record.event {
            Event::BlockStarted {
                block,
                attempt,
                owner,
                lease_expires_at,
            } => {
                last.insert(
                    block,
                    Some(LeaseTake {
                        block,
                        attempt: *attempt,
                        owner,
                        expires_at: *lease_expires_at,
                    }),
                );
            }
            Event::AttemptFinished { block, .. } | Event::AttemptAbandoned { block, .. } => {
                last.insert(block, None);
            }
            _ => {}
        }
    }
    let mut takes = Vec::new();
    let mut releases = Vec::new();
    for (block, op) in last {
        match op {
            Some(take) => takes.push(take),
            None => releases.push(block),
        }
    }
    (takes, releases)
}

/// The run row's document: everything but the blocks.
pub(crate) fn header_json(doc: &RunDoc) -> Result<String> {
    Ok(serde_json::to_string(&doc.header())?)
}

/// `(block id, head JSON)` for every block `records` change: the block
/// rows a commit writes (without their attempts, which have rows of their
/// own). Blocks the document does not have are skipped (applying such an
/// event would have failed before reaching the store).
pub(crate) fn changed_block_rows<'a>(
    doc: &'a RunDoc,
    records: &'a [EventRecord],
) -> Result<Vec<(&'a str, String)>> {
    let ids: std::collections::BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.event.changed_blocks())
        .collect();
    ids.into_iter()
        .filter_map(|id| doc.blocks.get_key_value(id))
        .map(|(id, state)| Ok((id.as_str(), serde_json::to_string(&state.head())?)))
        .collect()
}

/// One attempt's row: its block, its position in the block's history and
/// its JSON.
pub(crate) struct AttemptRow<'a> {
    pub block: &'a str,
    pub seq: i32,
    pub json: String,
}

/// The attempt rows a commit writes: those `records` changed
/// ([`factory_core::run::changed_attempts`]).
pub(crate) fn changed_attempt_rows<'a>(
    doc: &'a RunDoc,
    records: &'a [EventRecord],
) -> Result<Vec<AttemptRow<'a>>> {
    factory_core::run::changed_attempts(doc, records)
        .into_iter()
        .map(|(block, seq)| attempt_row(doc, block, seq))
        .collect()
}

fn attempt_row<'a>(doc: &'a RunDoc, block: &'a str, seq: usize) -> Result<AttemptRow<'a>> {
    let attempt = &doc.blocks[block].history[seq];
    Ok(AttemptRow {
        block,
        seq: i32::try_from(seq).unwrap_or(i32::MAX),
        json: serde_json::to_string(attempt)?,
    })
}

/// Every block's row, for a new run.
pub(crate) fn all_block_rows(doc: &RunDoc) -> Result<Vec<(&str, String)>> {
    doc.blocks
        .iter()
        .map(|(id, state)| Ok((id.as_str(), serde_json::to_string(&state.head())?)))
        .collect()
}

/// Every attempt's row, for a new run (which has none unless it is copied).
pub(crate) fn all_attempt_rows(doc: &RunDoc) -> Result<Vec<AttemptRow<'_>>> {
    doc.blocks
        .iter()
        .flat_map(|(id, state)| (0..state.history.len()).map(move |seq| (id.as_str(), seq)))
        .map(|(block, seq)| attempt_row(doc, block, seq))
        .collect()
}

/// One block of a run read: its head row and its attempts' rows in order.
pub(crate) struct BlockRows<'r> {
    pub id: &'r str,
    pub head: &'r str,
    pub attempts: Vec<&'r str>,
    /// An attempt row's position was not the next one (a row is missing):
    /// the block cannot be read back as it was written.
    pub gap: bool,
}

/// A run read's rows (both stores' `LOAD_RUN` queries order them: the header
/// row, then per block by id its head row and its attempt rows by position):
/// the header row and the blocks. An attempt row tells itself from a head
/// row by its `seq`. `None` when there is no header: no such run.
pub(crate) fn header_and_blocks<'r, R>(
    rows: &'r [R],
    block_id: impl Fn(&'r R) -> Option<&'r str>,
    seq: impl Fn(&'r R) -> Option<i32>,
    body: impl Fn(&'r R) -> &'r str,
) -> Option<(&'r R, Vec<BlockRows<'r>>)> {
    let (head, rows) = rows
        .split_first()
        .filter(|(head, _)| block_id(head).is_none())?;
    let mut blocks: Vec<BlockRows<'r>> = Vec::with_capacity(rows.len());
    for row in rows {
        let id = block_id(row).unwrap_or_default();
        match (seq(row), blocks.last_mut()) {
            (Some(n), Some(block)) if block.id == id => {
                block.gap |= usize::try_from(n).ok() != Some(block.attempts.len());
                block.attempts.push(body(row));
            }
            // An attempt without its block's row cannot be placed: skipped,
            // as a block row without attempts is simply a block.
            (Some(_), _) => {}
            (None, _) => blocks.push(BlockRows {
                id,
                head: body(row),
                attempts: Vec::new(),
                gap: false,
            }),
        }
    }
    Some((head, blocks))
}

/// A block's text from a block read's rows (its head row, then its attempt
/// rows by position): `None` without a head row.
pub(crate) fn block_rows_json<'r, R>(
    rows: &'r [R],
    seq: impl Fn(&'r R) -> Option<i32>,
    body: impl Fn(&'r R) -> &'r str,
) -> Option<String> {
    let (head, attempts) = rows.split_first().filter(|(head, _)| seq(head).is_none())?;
    Some(factory_core::run::splice_history_json(
        body(head),
        attempts.iter().map(body),
    ))
}

/// A block whose attempt rows have a gap, as a corrupt-store error: read on,
/// its history would be misnumbered, and the next commit would overwrite an
/// attempt instead of adding one.
pub(crate) fn check_gaps(run_id: &str, blocks: &[BlockRows<'_>]) -> Result<()> {
    match blocks.iter().find(|b| b.gap) {
        None => Ok(()),
        Some(block) => Err(StoreError::Corrupt {
            run_id: run_id.to_string(),
            what: "attempt rows",
            source: <serde_json::Error as serde::de::Error>::custom(format!(
                "block `{}` has a missing attempt row",
                block.id
            )),
        }),
    }
}

/// The document's text from a run read's header and blocks, without parsing
/// either (see [`factory_core::run::splice_doc_json`]).
pub(crate) fn splice_rows_json(header: &str, blocks: &[BlockRows<'_>]) -> String {
    let texts: Vec<std::borrow::Cow<'_, str>> = blocks
        .iter()
        .map(|b| {
            if b.attempts.is_empty() {
                std::borrow::Cow::Borrowed(b.head)
            } else {
                std::borrow::Cow::Owned(factory_core::run::splice_history_json(
                    b.head,
                    b.attempts.iter().copied(),
                ))
            }
        })
        .collect();
    factory_core::run::splice_doc_json(
        header,
        blocks.iter().zip(&texts).map(|(b, t)| (b.id, t.as_ref())),
    )
}

/// A `CHANGES_SINCE` read's rows (both stores: the run's row with seq -1
/// first, then the events): the version and the parsed events. No run row:
/// no such run.
pub(crate) fn run_changes<'r, R>(
    run_id: &str,
    rows: &'r [R],
    seq: impl Fn(&'r R) -> i64,
    version: impl Fn(&'r R) -> i64,
    body: impl Fn(&'r R) -> &'r str,
) -> Result<RunChanges> {
    let Some((head, events)) = rows.split_first().filter(|(head, _)| seq(head) < 0) else {
        return Err(StoreError::RunNotFound(run_id.to_string()));
    };
    let records = events
        .iter()
        .map(|row| parse_event(run_id, body(row)))
        .collect::<Result<Vec<_>>>()?;
    Ok(RunChanges {
        version: version(head),
        records,
    })
}

/// A document from its header row and its blocks' rows.
pub(crate) fn assemble_doc(
    run_id: &str,
    header: &str,
    blocks: Vec<BlockRows<'_>>,
) -> Result<RunDoc> {
    check_gaps(run_id, &blocks)?;
    let mut doc = parse_doc(run_id, header)?;
    let corrupt = |what, source| StoreError::Corrupt {
        run_id: run_id.to_string(),
        what,
        source,
    };
    for block in blocks {
        let mut state: factory_core::run::BlockState =
            serde_json::from_str(block.head).map_err(|e| corrupt("block state", e))?;
        for attempt in block.attempts {
            state
                .history
                .push(serde_json::from_str(attempt).map_err(|e| corrupt("attempt", e))?);
        }
        doc.blocks.insert(block.id.to_string(), state);
    }
    Ok(doc)
}

pub(crate) fn parse_doc(run_id: &str, json: &str) -> Result<RunDoc> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        run_id: run_id.to_string(),
        what: "run document",
        source,
    })
}

pub(crate) fn parse_event(run_id: &str, json: &str) -> Result<EventRecord> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        run_id: run_id.to_string(),
        what: "event",
        source,
    })
}

/// Escapes `%` and `_` for a `LIKE '%text%'` query.
pub(crate) fn like_contains(text: &str) -> String {
    let prefix = like_prefix(text);
    format!("%{prefix}")
}

/// Escapes `%` and `_` for a `LIKE 'prefix%'` query.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

/// Helpers for test suites that need a real PostgreSQL server.
pub mod testing {
    use sqlx::Connection;

    /// The server tests use: `FACTORY_TEST_PG`, or the local trust-auth default.
    pub fn postgres_base_url() -> String {
        std::env::var("FACTORY_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
    }

    /// Creates a fresh, empty database and returns its URL, so every test
    /// gets its own schema. Panics with a clear message when the server is
    /// unreachable: PostgreSQL tests are never silently skipped.
    pub async fn fresh_postgres_database() -> String {
        let base = postgres_base_url();
        let mut connection = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|error| {
                panic!("PostgreSQL tests need a server at {base} (set FACTORY_TEST_PG): {error}")
            });
        drop_stale_test_databases(&mut connection).await;
        let name = format!("factory_test_{}", uuid::Uuid::now_v7().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
        let _ = connection.close().await;
        match base.rfind('/') {
            Some(slash) => format!("{}/{name}", &base[..slash]),
            None => format!("{base}/{name}"),
        }
    }

    /// Test databases are named after a UUIDv7, which carries its creation
    /// time; drop those older than an hour so repeated runs do not pile up.
    async fn drop_stale_test_databases(connection: &mut sqlx::PgConnection) {
        let Ok(names) = sqlx::query_scalar::<_, String>(
            "SELECT datname FROM pg_database WHERE datname LIKE 'factory\\_test\\_%'",
        )
        .fetch_all(&mut *connection)
        .await
        else {
            return;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for name in names {
            let Some(created_ms) = name
                .strip_prefix("factory_test_")
                .and_then(|hex| uuid::Uuid::parse_str(hex).ok())
                .and_then(|id| id.get_timestamp())
                .map(|ts| {
                    let (secs, nanos) = ts.to_unix();
                    secs * 1000 + u64::from(nanos) / 1_000_000
                })
            else {
                continue;
            };
            if now_ms.saturating_sub(created_ms) > 3_600_000 {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut *connection)
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, event: Event) -> EventRecord {
        EventRecord {
            seq,
            at: 0,
            actor: "test".into(),
            event,
        }
    }

    fn started(block: &str, attempt: u32) -> Event {
        Event::BlockStarted {
            block: block.into(),
            attempt,
            owner: "w".into(),
            lease_expires_at: 100,
        }
    }

    fn abandoned(block: &str, attempt: u32) -> Event {
        Event::AttemptAbandoned {
            block: block.into(),
            attempt,
            reason: "gone".into(),
        }
    }

    /// Rows as the LOAD queries order them: a gap in a block's attempt
    /// positions is corruption, told, not read past.
    #[test]
    fn attempt_rows_group_under_their_block_and_a_gap_is_corrupt() {
        type Row = (Option<&'static str>, Option<i32>, &'static str);
        let read = |rows: &'static [Row]| {
            let (head, blocks) =
                header_and_blocks(rows, |r: &Row| r.0, |r: &Row| r.1, |r: &Row| r.2).unwrap();
            (head.2, blocks)
        };
        let (header, blocks) = read(&[
            (None, None, "{}"),
            (Some("a"), None, r#"{"status":"done"}"#),
            (Some("a"), Some(0), r#"{"n":1}"#),
            (Some("a"), Some(1), r#"{"n":2}"#),
            (Some("b"), None, r#"{"status":"pending"}"#),
        ]);
        assert_eq!(header, "{}");
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].attempts, [r#"{"n":1}"#, r#"{"n":2}"#]);
        assert!(blocks[1].attempts.is_empty());
        assert!(check_gaps("r", &blocks).is_ok());
        assert_eq!(
            splice_rows_json("{}", &blocks),
            r#"{"blocks":{"a":{"status":"done","history":[{"n":1},{"n":2}]},"b":{"status":"pending"}}}"#
        );

        let (_, blocks) = read(&[
            (None, None, "{}"),
            (Some("a"), None, r#"{"status":"done"}"#),
            (Some("a"), Some(0), r#"{"n":1}"#),
            (Some("a"), Some(2), r#"{"n":3}"#),
        ]);
        let error = check_gaps("r", &blocks).unwrap_err().to_string();
        assert!(
            error.contains("block `a` has a missing attempt row"),
            "{error}"
        );
    }

    #[test]
    fn the_last_lease_operation_per_block_decides() {
        let records = [
            record(1, abandoned("a", 1)),
            record(2, started("a", 2)),
            record(3, started("b", 1)),
            record(4, abandoned("b", 1)),
            record(5, started("c", 1)),
        ];
        let (takes, releases) = final_lease_ops(&records);
        let takes: Vec<(&str, u32)> = takes.iter().map(|t| (t.block, t.attempt)).collect();
        assert_eq!(takes, [("a", 2), ("c", 1)]);
        assert_eq!(releases, ["b"]);
    }
}
