-- Admin sessions ended by logout. A session cookie is signed and valid until it
-- expires, so logging out records its id here until then, and every node refuses it.
-- Rows past `expires_at` (Unix seconds, the cookie's own expiry) mean nothing and are
-- deleted as new ones are written.
CREATE TABLE admin_session_revocations (
    sid TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX admin_session_revocations_expires_idx ON admin_session_revocations (expires_at);
