-- Dead letters: counted for the queue-depth metric and listed newest first by the
-- admin dashboard, without walking the delivered rows.
CREATE INDEX deliveries_failed_idx ON deliveries (updated_at) WHERE status = 'failed';

-- The id of the request that created the activity, so delivery logs name it.
ALTER TABLE deliveries ADD COLUMN request_id TEXT;
