-- Slots of limits shared by every worker of the store (calls in flight to an
-- LLM provider): a row is a slot taken until `expires_at` by `holder`; a
-- missing or expired row is a free slot. Holders renew what they hold and
-- delete it when done, so a crashed worker's slot frees itself.
CREATE TABLE permits (
    key        TEXT    NOT NULL,
    slot       INTEGER NOT NULL,
    holder     TEXT    NOT NULL,
    expires_at BIGINT  NOT NULL,
    PRIMARY KEY (key, slot)
);
