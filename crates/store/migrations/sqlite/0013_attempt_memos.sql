-- Memoized attempts (README "Memoized attempts"; `factory_core::memo`): for
-- each memo key, the accepted attempt that produced it and its report (the
-- artifacts' addresses, metrics, logs; no audit). Written in the same
-- transaction as the commit that makes the block done; the latest accepted
-- attempt for a key replaces the one before. Blobs are never deleted, so the artifacts a memo
-- names are always there.
CREATE TABLE attempt_memos (
    memo_key   TEXT    PRIMARY KEY,
    run_id     TEXT    NOT NULL,
    block_id   TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    report     TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
