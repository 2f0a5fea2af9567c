-- Per-channel delivery control: delivery order, the circuit breaker and channel
-- health, pause and resume (src/store/health.rs, src/delivery/breaker.rs). Kept in
-- step with migrations/postgres/20261203000001_channel_delivery_control.sql; SQLite
-- stores the flags as 0/1, TRUE and FALSE being its names for those.

-- A copy of the channel's `config.ordering`, written with the config, so that the
-- queue's SQL reads it without parsing JSON. `conversation`: of each (conversation,
-- channel) only the first pending delivery is claimable (the `head`). `none`: every
-- pending delivery of the channel is a head.
ALTER TABLE channels ADD COLUMN ordering TEXT NOT NULL DEFAULT 'conversation'
    CONSTRAINT channels_ordering_check CHECK (ordering IN ('conversation', 'none'));

-- A delivery of a paused channel, or of one whose breaker is open, is held: pending
-- and kept, never claimed, its attempts untouched. Only heads are claimed, so only
-- heads carry the flag right: every head of such a channel is held, except the one
-- probe let through when the breaker's cool-down ends. Set and cleared on the
-- channel's heads when it pauses, resumes, opens or closes, and on each row that
-- becomes a head as its channel is then.
ALTER TABLE deliveries ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;

-- Claiming due work: the heads that are not held, in the order they are claimed. A
-- paused channel's backlog is out of this index, so it costs claims nothing.
DROP INDEX deliveries_head_due_idx;
CREATE INDEX deliveries_head_due_idx ON deliveries (next_attempt_at, id)
    WHERE status = 'pending' AND head AND NOT held;

-- Delivery health of a channel, shared by every node. A row is written on the first
-- attempt that reached the channel's receiver, or the first pause; a channel without
-- one is healthy and has never been attempted.
CREATE TABLE channel_health (
    channel_id            BLOB PRIMARY KEY REFERENCES channels (id) ON DELETE CASCADE,
    tenant_id             BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- Paused by an operator, or disabled after failing for too long: nothing is
    -- attempted until it is resumed.
    paused                BOOLEAN NOT NULL DEFAULT FALSE,
    pause_reason          TEXT CONSTRAINT channel_health_pause_reason_check
                          CHECK (pause_reason IN ('operator', 'failing')),
    paused_at             TEXT,
    -- The breaker is open while this is set: attempts stop until then (the
    -- cool-down), then one probe is let through (half-open). NULL: closed.
    open_until            TEXT,
    -- Opens since the last success: the cool-down doubles with each.
    opens                 INTEGER NOT NULL DEFAULT 0,
    -- The delivery let through as the half-open probe, if one was.
    probe_id              BLOB,
    -- Failed attempts since the last success, and when the first of them was.
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    failing_since         TEXT,
    last_error            TEXT,
    last_failure_at       TEXT,
    last_success_at       TEXT,
    -- Attempts and failures of the current and the previous half hour, from
    -- `window_start`: the recent failure rate.
    window_start          TEXT,
    window_attempts       INTEGER NOT NULL DEFAULT 0,
    window_failures       INTEGER NOT NULL DEFAULT 0,
    previous_attempts     INTEGER NOT NULL DEFAULT 0,
    previous_failures     INTEGER NOT NULL DEFAULT 0,
    updated_at            TEXT NOT NULL
);
-- Open breakers whose cool-down ends, looked for every second by every node.
CREATE INDEX channel_health_open_idx ON channel_health (open_until) WHERE open_until IS NOT NULL;
