-- The factory's event feed (README "Events"; `factory_core::bus`): one row
-- per event, written in the same transaction as the change it tells of (a
-- run's commit, a record's move, a webhook receipt), so an event exists
-- exactly when its change does. Readers go in (`tx`, `seq`) order: on SQLite
-- one writer at a time makes `seq` the commit order and `tx` is always 0;
-- on PostgreSQL `tx` is the writing transaction's id (see that migration).
CREATE TABLE bus_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tx          BIGINT  NOT NULL DEFAULT 0,
    name        TEXT    NOT NULL,
    template_id TEXT    NOT NULL,
    run_id      TEXT,
    block_id    TEXT,
    record_key  TEXT,
    payload     TEXT    NOT NULL,
    at          BIGINT  NOT NULL
);
CREATE INDEX bus_events_by_name ON bus_events (name, tx, seq);
-- No index on `at`: pruning scans the table once an hour, and every event
-- written would pay for one.

-- How far each event trigger has read the feed (its consumer id is
-- `template/block`). It only moves forward; the trigger's effects are
-- idempotent, so reading an event twice after a crash does nothing twice.
CREATE TABLE bus_cursors (
    consumer   TEXT   PRIMARY KEY,
    tx         BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- A cron or event trigger of a dag-batch template starts a run: which one.
ALTER TABLE trigger_firings ADD COLUMN run_id TEXT;
