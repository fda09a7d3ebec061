-- Which review page produced an improvement item (`extraction-review`,
-- `expert-audit`, or an outside system's name); the router reports it as the
-- corrections' source.
ALTER TABLE improvement_items ADD COLUMN source TEXT NOT NULL DEFAULT '';

-- A review link's token is bound to one run and one tester with a tester role
-- (JSON: {"run_id", "tester", "tester_role"}); NULL for ordinary API tokens.
ALTER TABLE api_tokens ADD COLUMN scope TEXT;
