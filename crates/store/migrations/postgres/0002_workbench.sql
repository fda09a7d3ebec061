-- API tokens: only the SHA-256 of a token is kept; `id` is its public prefix.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Templates registered through the API (files in a templates folder are listed too).
CREATE TABLE templates (
    template_id   TEXT NOT NULL,
    version       TEXT NOT NULL,
    name          TEXT NOT NULL,
    source        TEXT NOT NULL,
    path          TEXT,
    registered_by TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (template_id, version)
);

-- What people attach to a run besides its events: saved form drafts,
-- post-run reflections, block chat messages, uploaded input files.
-- `template_id` is copied so a template's process memory is one index scan.
CREATE TABLE run_records (
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    template_id TEXT NOT NULL,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    actor       TEXT NOT NULL,
    at          BIGINT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (run_id, kind, key)
);
CREATE INDEX run_records_template ON run_records (template_id, kind, at);
CREATE INDEX runs_updated ON runs (updated_at);
