-- The nodes serving this database. Each running `serve` process has a row it
-- refreshes every few seconds; a row whose heartbeat is older than a few intervals
-- belongs to a dead node, and any live node gives that node's delivery leases back
-- at once instead of leaving them to expire.
CREATE TABLE nodes (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

-- The node holding a delivery's lease. Meaningful only while `locked_until` is set;
-- not cleared when the lease ends, so that claims and completions keep writing the
-- columns they wrote before. Not indexed: it is searched only when a node has died.
ALTER TABLE deliveries ADD COLUMN locked_by UUID;
