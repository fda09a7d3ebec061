-- A block's attempts, one row each: a transition rewrites the attempt it
-- changed (its start, its end and report, why it was retried) instead of
-- the block's whole history, so a commit's cost does not grow with a
-- block's retries and passes. `run_blocks.state` keeps the rest of the
-- block (its head). `seq` is the attempt's position in the history.
CREATE TABLE run_attempts (
    run_id   TEXT NOT NULL REFERENCES runs (run_id),
    block_id TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    attempt  TEXT NOT NULL,
    PRIMARY KEY (run_id, block_id, seq)
);

INSERT INTO run_attempts (run_id, block_id, seq, attempt)
    SELECT b.run_id, b.block_id, (h.ordinality - 1)::int, h.value::text
    FROM run_blocks b,
         jsonb_array_elements(b.state::jsonb -> 'history') WITH ORDINALITY AS h (value, ordinality)
    WHERE b.state::jsonb ? 'history';

UPDATE run_blocks SET state = (state::jsonb - 'history')::text
    WHERE state::jsonb ? 'history';
