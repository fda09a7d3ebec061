-- The notification outbox (README "Notifications"; `factory_core::notify`):
-- one row per event of the feed and channel a rule sends it to. Its id is
-- made of the event's number and the channel, so a second read of the feed
-- (after a crash) adds nothing; it is written in one transaction with the
-- notifier's cursor. A row is `pending` until a channel takes it
-- (`delivered`) or its tries run out (`failed`); a sender claims it until
-- `claim_until`, so two workers never send it at once and a crashed one's
-- claim runs out.
CREATE TABLE notifications (
    id           TEXT    PRIMARY KEY,
    event_seq    BIGINT  NOT NULL,
    channel      TEXT    NOT NULL,
    occasion     TEXT    NOT NULL,
    template_id  TEXT    NOT NULL,
    run_id       TEXT,
    block_id     TEXT,
    subject      TEXT    NOT NULL,
    message      TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    attempts     BIGINT  NOT NULL DEFAULT 0,
    next_at      BIGINT  NOT NULL,
    claimed_by   TEXT,
    claim_until  BIGINT,
    last_error   TEXT,
    created_at   BIGINT  NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX notifications_due ON notifications (status, next_at);
CREATE INDEX notifications_by_created ON notifications (created_at, id);
