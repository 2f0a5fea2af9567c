-- Operational events and the ops webhook they are sent to. Kept in step with
-- migrations/postgres/20261203000007_ops_events.sql.

-- A tenant's ops webhook: one of its webhook channels, whose URL, secret and headers
-- its operational events are sent with. One per tenant.
CREATE TABLE ops_webhooks (
    tenant_id   BLOB PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    channel_id  BLOB NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- What happened to a tenant's deliveries and channels (a delivery given up, a breaker
-- opened or closed, a channel paused or resumed), written in the transaction of what
-- it reports; and, when the tenant had an ops webhook then, where its sending stands:
-- the same lease-and-retry scheme as deliveries.
CREATE TABLE ops_events (
    id               BLOB PRIMARY KEY,
    tenant_id        BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    type             TEXT NOT NULL,
    -- What the event is about. Not foreign keys: the record outlives a deleted
    -- channel and a pruned delivery.
    channel_id       BLOB,
    delivery_id      BLOB,
    data             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    -- NULL when the tenant had no ops webhook when the event happened.
    webhook_status   TEXT CONSTRAINT ops_events_webhook_status_check
                     CHECK (webhook_status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    locked_until     TEXT,
    last_error       TEXT,
    delivered_at     TEXT
);

-- A tenant's events, newest first (the API's list, keyset-paginated on id).
CREATE INDEX ops_events_tenant_idx ON ops_events (tenant_id, id);
-- The sender's claim: pending events by due time.
CREATE INDEX ops_events_due_idx ON ops_events (next_attempt_at) WHERE webhook_status = 'pending';
-- The dashboard's recent events and the pruner.
CREATE INDEX ops_events_created_idx ON ops_events (created_at);
