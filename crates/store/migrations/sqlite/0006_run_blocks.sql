-- A run's blocks, one row each: a commit rewrites only the blocks its events
-- changed instead of the whole run document, so its cost does not grow with
-- the run. `runs.doc` keeps the rest of the document (its header).
CREATE TABLE run_blocks (
    run_id   TEXT NOT NULL REFERENCES runs (run_id),
    block_id TEXT NOT NULL,
    state    TEXT NOT NULL,
    PRIMARY KEY (run_id, block_id)
);

INSERT INTO run_blocks (run_id, block_id, state)
    SELECT runs.run_id, blocks.key, blocks.value
    FROM runs, json_each(runs.doc, '$.blocks') AS blocks;

UPDATE runs SET doc = json_remove(doc, '$.blocks');

-- SQLite rewrites a whole row when any column changes, overflow pages
-- included: with the template in the run's row, every commit of a large run
-- copied its template. It moves to a row of its own, written once.
CREATE TABLE run_templates (
    run_id        TEXT PRIMARY KEY REFERENCES runs (run_id),
    template_json TEXT NOT NULL,
    template_path TEXT
);

INSERT INTO run_templates (run_id, template_json, template_path)
    SELECT run_id, template_json, template_path FROM runs;

ALTER TABLE runs DROP COLUMN template_json;
ALTER TABLE runs DROP COLUMN template_path;
