-- Head of line. Of each (conversation, channel) only the pending delivery with the
-- smallest seq may be attempted; `head` marks that row, so claiming reads the heads
-- alone instead of checking every due row against the rows ahead of it (which costs
-- O(pending) per claim exactly when a backlog builds up).
--
-- Invariant, kept in the transactions that change it (src/store/heads.rs): for each
-- (conversation, channel) with pending deliveries, exactly the pending row with the
-- smallest seq has head = TRUE. The flag of a delivered or failed row means nothing;
-- it is cleared on the way out and set again explicitly by a retry. Nodes of an older
-- release insert FALSE and never promote; the delivery engine's periodic repair marks
-- what they leave unmarked.
ALTER TABLE deliveries ADD COLUMN head BOOLEAN NOT NULL DEFAULT FALSE;

UPDATE deliveries SET head = TRUE WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (PARTITION BY conversation_id, channel_id ORDER BY seq) AS n
        FROM deliveries WHERE status = 'pending'
    ) AS pending WHERE n = 1
);

-- Claiming due work: the heads only, in the order they are claimed.
CREATE INDEX deliveries_head_due_idx ON deliveries (next_attempt_at, id) WHERE status = 'pending' AND head;
