-- Spends against budgets every worker of the store shares (an LLM
-- provider's tokens per minute): a row is one request's tokens, counted
-- until `expires_at` (a window after it was made). A spend is admitted only
-- while the live rows of its key leave room for it; its amount is corrected
-- to what the request used once the reply says so.
CREATE TABLE budget_spends (
    key        TEXT   NOT NULL,
    holder     TEXT   NOT NULL,
    amount     BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key, holder)
);
