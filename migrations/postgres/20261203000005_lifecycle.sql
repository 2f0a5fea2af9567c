-- Conversation lifecycle and phone numbers. Kept in step with
-- migrations/sqlite/20261203000005_lifecycle.sql.

-- 1. `conversationUpdate` activities record a conversation being closed or reopened.
-- The constraint only widens: every stored row passes it.
ALTER TABLE activities
    DROP CONSTRAINT activities_type_check,
    ADD CONSTRAINT activities_type_check
        CHECK (type IN ('message', 'event', 'typing', 'conversationUpdate'));

-- 2. Search by external id (`GET /conversations?external_id=`), of every status and
-- channel of a tenant, newest first.
CREATE INDEX conversations_tenant_external_id_idx ON conversations (tenant_id, external_id, id);

-- 3. External ids of WhatsApp channels are phone numbers in E.164 form (`+` and 7 to
-- 15 digits, the first not 0), as src/domain/phone.rs writes them: separators
-- (spaces, dashes, dots, parentheses) and the trunk notation `(0)` dropped, a leading
-- `00` read as `+`, bare digits (a provider's `wa_id`) given their `+`. Ids that do
-- not read as such a number (letters, a national number with one leading 0) are left
-- as they are.
CREATE TEMP TABLE lifecycle_numbers ON COMMIT DROP AS
SELECT id, channel_id, status, updated_at, '+' || digits AS number
  FROM (SELECT id, channel_id, status, updated_at,
               CASE WHEN compact LIKE '00%' THEN substr(compact, 3)
                    WHEN compact LIKE '+%' THEN substr(compact, 2)
                    ELSE compact END AS digits
          FROM (SELECT c.id, c.channel_id, c.status, c.updated_at,
                       regexp_replace(replace(c.external_id, '(0)', ''),
                                      '[\s\u00a0.()-]', '', 'g') AS compact
                  FROM conversations c JOIN channels ch ON ch.id = c.channel_id
                 WHERE ch.type IN ('whatsapp_meta', 'whatsapp_infobip')
                   AND c.external_id IS NOT NULL) AS compacted) AS prefixed
 WHERE digits ~ '^[1-9][0-9]{6,14}$';

-- Spellings of one number on one channel may each have an active conversation
-- (`+4915112345678` opened by the application, `4915112345678` by the user's reply).
-- Only one may stay active under the normalised id: the one with the latest activity
-- (ties: the newer). The others are closed, keep their history, and name the one
-- that goes on in `metadata.superseded_by`. They are closed first, so that no
-- statement below ever holds two active rows of one number.
CREATE TEMP TABLE lifecycle_keep ON COMMIT DROP AS
SELECT channel_id, number, id
  FROM (SELECT channel_id, number, id,
               ROW_NUMBER() OVER (PARTITION BY channel_id, number
                                  ORDER BY updated_at DESC, id DESC) AS n
          FROM lifecycle_numbers WHERE status = 'active') AS ranked
 WHERE n = 1;

UPDATE conversations c
   SET status = 'closed',
       metadata = c.metadata || jsonb_build_object('superseded_by', k.id::text)
  FROM lifecycle_numbers l
  JOIN lifecycle_keep k ON k.channel_id = l.channel_id AND k.number = l.number
 WHERE l.id = c.id AND c.status = 'active' AND k.id <> c.id;

UPDATE conversations c
   SET external_id = l.number
  FROM lifecycle_numbers l
 WHERE l.id = c.id AND c.external_id IS DISTINCT FROM l.number;

-- 4. The idle closer (`CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS`) looks for active
-- conversations whose last activity is older than the limit. Not indexed on purpose:
-- `updated_at` changes with every activity, and an index on it would cost every
-- append an index write (and PostgreSQL its HOT updates) to save a periodic scan,
-- which runs only when the closer is on.
