-- Conversation lifecycle and phone numbers. Kept in step with
-- migrations/postgres/20261203000005_lifecycle.sql.

-- 1. `conversationUpdate` activities record a conversation being closed or reopened.
-- SQLite cannot alter a CHECK constraint, and rebuilding `activities` would copy the
-- largest table and drop the indexes other migrations put on it. The constraint only
-- widens (every stored row passes the new one), which is the case SQLite documents as
-- safe to make by editing the schema text (lang_altertable.html, "Making Other Kinds
-- Of Table Schema Changes"). `RESET` reloads this connection's schema; the CREATE
-- INDEX statements below bump the schema version, so other connections reload theirs.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, 'CHECK (type IN (''message'', ''event'', ''typing''))',
                          'CHECK (type IN (''message'', ''event'', ''typing'', ''conversationUpdate''))')
 WHERE type = 'table' AND name = 'activities';
PRAGMA writable_schema = RESET;

-- 2. Search by external id (`GET /conversations?external_id=`), of every status and
-- channel of a tenant, newest first.
CREATE INDEX conversations_tenant_external_id_idx ON conversations (tenant_id, external_id, id);

-- 3. External ids of WhatsApp channels are phone numbers in E.164 form (`+` and 7 to
-- 15 digits, the first not 0), as src/domain/phone.rs writes them: separators
-- (spaces, dashes, dots, parentheses) and the trunk notation `(0)` dropped, a leading
-- `00` read as `+`, bare digits (a provider's `wa_id`) given their `+`. Ids that do
-- not read as such a number (letters, a national number with one leading 0) are left
-- as they are.
CREATE TEMP TABLE lifecycle_numbers AS
SELECT id, channel_id, status, updated_at, '+' || digits AS number
  FROM (SELECT id, channel_id, status, updated_at,
               CASE WHEN compact LIKE '00%' THEN substr(compact, 3)
                    WHEN compact LIKE '+%' THEN substr(compact, 2)
                    ELSE compact END AS digits
          FROM (SELECT c.id, c.channel_id, c.status, c.updated_at,
                       replace(replace(replace(replace(replace(replace(replace(replace(
                       replace(replace(c.external_id, '(0)', ''), ' ', ''), '-', ''), '.', ''),
                       '(', ''), ')', ''), char(9), ''), char(10), ''), char(13), ''),
                       char(160), '') AS compact
                  FROM conversations c JOIN channels ch ON ch.id = c.channel_id
                 WHERE ch.type IN ('whatsapp_meta', 'whatsapp_infobip')
                   AND c.external_id IS NOT NULL))
 WHERE length(digits) BETWEEN 7 AND 15
   AND digits NOT GLOB '*[^0-9]*'
   AND substr(digits, 1, 1) <> '0';

-- Spellings of one number on one channel may each have an active conversation
-- (`+4915112345678` opened by the application, `4915112345678` by the user's reply).
-- Only one may stay active under the normalised id: the one with the latest activity
-- (ties: the newer). The others are closed, keep their history, and name the one
-- that goes on in `metadata.superseded_by`. They are closed first, so that no
-- statement below ever holds two active rows of one number.
CREATE TEMP TABLE lifecycle_keep AS
SELECT channel_id, number, id
  FROM (SELECT channel_id, number, id,
               ROW_NUMBER() OVER (PARTITION BY channel_id, number
                                  ORDER BY updated_at DESC, id DESC) AS n
          FROM lifecycle_numbers WHERE status = 'active')
 WHERE n = 1;

UPDATE conversations
   SET status = 'closed',
       metadata = json_set(metadata, '$.superseded_by', (
           SELECT lower(substr(hex(k.id), 1, 8) || '-' || substr(hex(k.id), 9, 4) || '-' ||
                        substr(hex(k.id), 13, 4) || '-' || substr(hex(k.id), 17, 4) || '-' ||
                        substr(hex(k.id), 21))
             FROM lifecycle_numbers l JOIN lifecycle_keep k
               ON k.channel_id = l.channel_id AND k.number = l.number
            WHERE l.id = conversations.id))
 WHERE status = 'active'
   AND id IN (SELECT id FROM lifecycle_numbers)
   AND id NOT IN (SELECT id FROM lifecycle_keep);

UPDATE conversations
   SET external_id = (SELECT number FROM lifecycle_numbers l WHERE l.id = conversations.id)
 WHERE id IN (SELECT id FROM lifecycle_numbers);

DROP TABLE lifecycle_keep;
DROP TABLE lifecycle_numbers;

-- 4. The idle closer (`CONVERGER_CONVERSATION_IDLE_CLOSE_HOURS`) looks for active
-- conversations whose last activity is older than the limit. Not indexed on purpose:
-- `updated_at` changes with every activity, and an index on it would cost every
-- append an index write to save a periodic scan, which runs only when the closer is on.
