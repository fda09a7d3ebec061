-- Pattern 2, stream/event: records that move through a stream template's
-- `record_state.states`. A record is keyed by its template and the value of
-- the template's `track_per` field; `state` is the last state it reached
-- and `status` whether it waits for the next stage (`ready`), was given up
-- on (`failed`, until a person retries it) or reached the last state
-- (`done`). A stage claims a record with a lease (`lease_owner` until
-- `lease_until`) and moves it in the same transaction that writes its
-- history; the move is conditional on the state it took it from and on its
-- lease, so it happens once however often a record is delivered or claimed.
CREATE TABLE stream_records (
    template_id TEXT    NOT NULL,
    record_key  TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL,
    error       TEXT,
    lease_owner TEXT,
    lease_until BIGINT,
    next_at     BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (template_id, record_key)
);
CREATE INDEX stream_records_waiting ON stream_records (template_id, state, status, next_at);
CREATE INDEX stream_records_updated ON stream_records (template_id, updated_at);

-- A record's history, one row per change, numbered from 1.
CREATE TABLE stream_record_events (
    template_id TEXT    NOT NULL,
    record_key  TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    at          BIGINT  NOT NULL,
    kind        TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    PRIMARY KEY (template_id, record_key, seq)
);

-- Signed webhook deliveries by their `webhook-id`: a delivery seen before
-- is acknowledged and not processed again.
CREATE TABLE webhook_receipts (
    template_id TEXT   NOT NULL,
    block_id    TEXT   NOT NULL,
    webhook_id  TEXT   NOT NULL,
    record_key  TEXT   NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (template_id, block_id, webhook_id)
);

-- Each firing of a cron intake, one row per tick: inserting it is the
-- claim (of all the processes that see the tick due, one fires it), and
-- the row is the firing's event: what it found and what went wrong.
CREATE TABLE trigger_firings (
    template_id TEXT    NOT NULL,
    block_id    TEXT    NOT NULL,
    tick        BIGINT  NOT NULL,
    fired_at    BIGINT  NOT NULL,
    skipped     BIGINT  NOT NULL,
    finished_at BIGINT,
    created     INTEGER,
    known       INTEGER,
    rejected    INTEGER,
    error       TEXT,
    PRIMARY KEY (template_id, block_id, tick)
);
