-- Feedback submissions from the review pages (seed 002's clone_feedback):
-- who reviewed, in which role, which run version, and per-item verdicts.
CREATE TABLE feedback (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    version     TEXT NOT NULL,
    source      TEXT NOT NULL,
    tester      TEXT NOT NULL,
    tester_role TEXT NOT NULL,
    free_text   TEXT NOT NULL,
    items       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX feedback_run ON feedback (run_id, created_at);

-- Findings to correct (seed 002's improvement_items); `source_key` identifies
-- "the same item" across testers, so consensus is computed per (run, source_key).
CREATE TABLE improvement_items (
    id                  TEXT PRIMARY KEY,
    run_id              TEXT NOT NULL REFERENCES runs (run_id),
    source_key          TEXT NOT NULL,
    skill_target        TEXT NOT NULL,
    finding_type        TEXT NOT NULL,
    priority            TEXT NOT NULL,
    source_text         TEXT NOT NULL,
    expert_correction   TEXT NOT NULL,
    status              TEXT NOT NULL,
    consensus_score     DOUBLE PRECISION NOT NULL,
    flagged_by          TEXT NOT NULL,
    prompt_version      TEXT,
    extraction_version  TEXT,
    resolved_in_version TEXT,
    resolution_notes    TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (run_id, source_key)
);
-- The corrections router's queries: accepted items of a run, per target block.
CREATE INDEX improvement_items_run_status ON improvement_items (run_id, status);
CREATE INDEX improvement_items_run_target ON improvement_items (run_id, skill_target, status);
