-- The attempt log: one row per delivery attempt whose outcome was recorded, written
-- in the transaction that records the outcome on the delivery row. Kept in step with
-- migrations/sqlite/20261203000002_delivery_attempts.sql.
CREATE TABLE delivery_attempts (
    -- Goes with its delivery: pruning an activity removes its deliveries, and they
    -- their attempts.
    delivery_id    UUID NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    -- The delivery's tenant, copied so that reads are scoped without a join.
    tenant_id      UUID NOT NULL,
    -- 1 for the first attempt; numbering goes on across manual retries.
    attempt        INTEGER NOT NULL,
    started_at     TIMESTAMPTZ NOT NULL,
    duration_ms    BIGINT NOT NULL,
    -- What the attempt recorded on the delivery: delivered, retry (scheduled again) or
    -- failed (for good).
    outcome        TEXT NOT NULL CONSTRAINT delivery_attempts_outcome_check
                   CHECK (outcome IN ('delivered', 'retry', 'failed')),
    -- The receiver's HTTP status; NULL when no answer came (transport error, timeout)
    -- or the channel type speaks no HTTP.
    http_status    INTEGER,
    -- Why the attempt did not deliver, as `last_error` says it; NULL when it did.
    error          TEXT,
    -- The first 1 KiB of the receiver's answer, cut at a character boundary.
    response_body  TEXT,
    -- The node that made the attempt (host name and process id).
    node           TEXT NOT NULL,
    CONSTRAINT delivery_attempts_pkey PRIMARY KEY (delivery_id, attempt)
);

-- The attempt budget: attempts made before the last manual retry. A retry grants a
-- fresh budget of attempts from here while `attempts` keeps counting, so attempt
-- numbers never repeat.
ALTER TABLE deliveries ADD COLUMN budget_start INTEGER NOT NULL DEFAULT 0;
