-- Initial schema. Kept in step with migrations/postgres/20261125000001_initial.sql:
-- same tables, columns and constraint names; only types differ (UUIDs are 16-byte
-- blobs, timestamps fixed-width RFC 3339 text that sorts by time, JSON is text).
-- Timestamps are written by the application (never now()), so both backends agree.

CREATE TABLE tenants (
    id              BLOB PRIMARY KEY,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL CONSTRAINT tenants_status_check CHECK (status IN ('active', 'inactive')),
    -- SHA-256 (hex) of the API key; the key itself is shown once and never stored.
    api_key_hash    TEXT NOT NULL CONSTRAINT tenants_api_key_hash_key UNIQUE,
    -- First characters of the key, to recognise it in lists.
    api_key_prefix  TEXT NOT NULL,
    inserted_at     TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE channels (
    id           BLOB PRIMARY KEY,
    tenant_id    BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    type         TEXT NOT NULL CONSTRAINT channels_type_check
                 CHECK (type IN ('echo', 'webhook', 'websocket', 'whatsapp_meta', 'whatsapp_infobip')),
    -- Standard Webhooks secret: signs outbound, verifies inbound, binds channel tokens.
    secret       TEXT NOT NULL,
    config       TEXT NOT NULL,
    status       TEXT NOT NULL CONSTRAINT channels_status_check CHECK (status IN ('active', 'inactive')),
    inserted_at  TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX channels_tenant_id_idx ON channels (tenant_id, id);

CREATE TABLE routes (
    id                 BLOB PRIMARY KEY,
    tenant_id          BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    source_channel_id  BLOB NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    target_channel_id  BLOB NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    direction          TEXT NOT NULL CONSTRAINT routes_direction_check CHECK (direction IN ('inbound', 'outbound', 'any')),
    inserted_at        TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    CONSTRAINT routes_source_target_key UNIQUE (source_channel_id, target_channel_id),
    CONSTRAINT routes_not_self_check CHECK (source_channel_id <> target_channel_id)
);
CREATE INDEX routes_tenant_id_idx ON routes (tenant_id, id);

CREATE TABLE conversations (
    id           BLOB PRIMARY KEY,
    tenant_id    BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    channel_id   BLOB NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    external_id  TEXT,
    status       TEXT NOT NULL CONSTRAINT conversations_status_check CHECK (status IN ('active', 'closed')),
    metadata     TEXT NOT NULL,
    -- seq of the newest activity; bumped in the activity's insert transaction, which
    -- also serialises concurrent writers of one conversation (gap-free seq).
    last_seq     INTEGER NOT NULL DEFAULT 0,
    inserted_at  TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
-- One active conversation per external party and channel; a closed one does not block
-- the party from starting a new conversation.
CREATE UNIQUE INDEX conversations_channel_id_external_id_key
    ON conversations (channel_id, external_id) WHERE status = 'active';
-- Keyset listing per tenant, optionally by channel.
CREATE INDEX conversations_tenant_id_idx ON conversations (tenant_id, id);
CREATE INDEX conversations_channel_id_idx ON conversations (channel_id, id);

CREATE TABLE activities (
    id               BLOB PRIMARY KEY,
    tenant_id        BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    conversation_id  BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    type             TEXT NOT NULL CONSTRAINT activities_type_check CHECK (type IN ('message', 'event', 'typing')),
    direction        TEXT NOT NULL CONSTRAINT activities_direction_check CHECK (direction IN ('inbound', 'outbound')),
    sender           TEXT NOT NULL,
    text             TEXT,
    attachments      TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    idempotency_key  TEXT,
    inserted_at      TEXT NOT NULL,
    -- Also the index for listing a conversation in seq order.
    CONSTRAINT activities_conversation_id_seq_key UNIQUE (conversation_id, seq),
    CONSTRAINT activities_conversation_id_idempotency_key_key UNIQUE (conversation_id, idempotency_key)
);
-- Pruning walks activities from the oldest.
CREATE INDEX activities_inserted_at_idx ON activities (inserted_at);

CREATE TABLE deliveries (
    id               BLOB PRIMARY KEY,
    tenant_id        BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    activity_id      BLOB NOT NULL REFERENCES activities (id) ON DELETE CASCADE,
    channel_id       BLOB NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    -- Copied from the activity so one conversation's deliveries to one channel can be
    -- kept in seq order without a join.
    conversation_id  BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    status           TEXT NOT NULL CONSTRAINT deliveries_status_check CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    -- Lease of the worker that claimed the row; expired leases are taken over.
    locked_until     TEXT,
    last_error       TEXT,
    delivered_at     TEXT,
    -- The receiver's id for the message (e.g. a WhatsApp wamid), for status callbacks.
    external_id      TEXT,
    metadata         TEXT NOT NULL,
    inserted_at      TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    CONSTRAINT deliveries_activity_id_channel_id_key UNIQUE (activity_id, channel_id)
);
-- Claiming due work: only pending rows are indexed.
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
-- Per (conversation, channel) order: is an earlier delivery of the pair still pending?
CREATE INDEX deliveries_order_idx ON deliveries (conversation_id, channel_id, seq) WHERE status = 'pending';
-- Listing and counting per tenant (all statuses, or one) and per channel.
CREATE INDEX deliveries_tenant_idx ON deliveries (tenant_id, id);
CREATE INDEX deliveries_tenant_status_idx ON deliveries (tenant_id, status, id);
CREATE INDEX deliveries_channel_status_idx ON deliveries (channel_id, status, id);
-- Status callbacks find the delivery by the provider's message id.
CREATE INDEX deliveries_external_id_idx ON deliveries (external_id) WHERE external_id IS NOT NULL;
