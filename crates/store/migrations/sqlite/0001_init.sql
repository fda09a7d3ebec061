-- One JSON document per run; `version` is the optimistic-concurrency counter.
CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    template_id   TEXT NOT NULL,
    template_json TEXT NOT NULL,
    template_path TEXT,
    status        TEXT NOT NULL,
    version       INTEGER NOT NULL,
    doc           TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX runs_created ON runs (created_at);

-- Append-only log; (run_id, seq) is a second guard against two writers.
CREATE TABLE events (
    run_id   TEXT NOT NULL REFERENCES runs (run_id),
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    kind     TEXT NOT NULL,
    block_id TEXT,
    body     TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Content-addressed artifact and log bodies (SHA-256, hex).
CREATE TABLE blobs (
    hash    TEXT PRIMARY KEY,
    size    INTEGER NOT NULL,
    content BLOB NOT NULL
);

-- Which worker holds a running block, until when; renewed while it runs.
CREATE TABLE leases (
    run_id     TEXT NOT NULL REFERENCES runs (run_id),
    block_id   TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    pid        INTEGER,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, block_id)
);
CREATE INDEX leases_owner ON leases (owner);
