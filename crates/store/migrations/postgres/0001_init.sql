-- One JSON document per run; `version` is the optimistic-concurrency counter.
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    template_id   TEXT NOT NULL,
    template_json TEXT NOT NULL,
    template_path TEXT,
    status        TEXT NOT NULL,
    version       BIGINT NOT NULL,
    doc           JSONB NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX runs_created ON runs (created_at);
CREATE INDEX runs_status ON runs (status);

-- Append-only log; (run_id, seq) is a second guard against two writers.
CREATE TABLE events (
    run_id   TEXT NOT NULL REFERENCES runs (run_id),
    seq      BIGINT NOT NULL,
    at       BIGINT NOT NULL,
    actor    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    block_id TEXT,
    body     JSONB NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Content-addressed artifact and log bodies (SHA-256, hex).
CREATE TABLE blobs (
    hash    TEXT PRIMARY KEY,
    size    BIGINT NOT NULL,
    content BYTEA NOT NULL
);

-- Which worker holds a running block, until when; renewed while it runs.
-- Workers on many machines claim ready blocks through the run document's
-- version check and keep them alive here.
CREATE TABLE leases (
    run_id     TEXT NOT NULL REFERENCES runs (run_id),
    block_id   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    pid        INTEGER,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, block_id)
);
CREATE INDEX leases_owner ON leases (owner);
CREATE INDEX leases_expiry ON leases (expires_at);
