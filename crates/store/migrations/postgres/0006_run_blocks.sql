-- A run's blocks, one row each: a commit rewrites only the blocks its events
-- changed instead of the whole run document, so its cost does not grow with
-- the run. `runs.doc` keeps the rest of the document (its header). States are
-- text, not jsonb: they are written and read whole, never queried inside.
CREATE TABLE run_blocks (
    run_id   TEXT NOT NULL REFERENCES runs (run_id),
    block_id TEXT NOT NULL,
    state    TEXT NOT NULL,
    PRIMARY KEY (run_id, block_id)
);

INSERT INTO run_blocks (run_id, block_id, state)
    SELECT runs.run_id, blocks.key, blocks.value::text
    FROM runs, jsonb_each(runs.doc -> 'blocks') AS blocks;

UPDATE runs SET doc = doc - 'blocks';
