//! Channel credentials encrypted at rest: the `secret` column whole, and the
//! credentials inside `config` value by value, so that the rest of a config stays
//! readable in the database.
//!
//! Channels are sealed on every write and opened on every read here, in the store:
//! everything above it sees plaintext [`Channel`]s. Which config values are
//! credentials is the adapters' knowledge, given to the [`Sealer`] by the composition
//! root as a function (the store does not know channel types' configs). Each value is
//! sealed for its place, `channel:<id>:secret` or `channel:<id>:config<JSON pointer>`,
//! so a value copied to another channel or field does not open.
//!
//! [`Store::seal_channels`] rewrites the rows that are not as the keyring would
//! write them: at start-up the plaintext ones, on `converger secrets reencrypt` also
//! those sealed with a previous key. Either reads every row, so a missing or wrong key
//! is reported before the node serves.

use std::sync::Arc;

use serde_json::Value;

use super::{Store, StoreError, StoreResult, reader, writer};
use crate::domain::{Channel, ChannelId, ChannelType};
use crate::secrets::{Keyring, SecretError, is_sealed, pointer};

/// Where a config of a channel type holds credentials, as JSON pointers.
pub type CredentialFn = dyn Fn(ChannelType, &Value) -> Vec<String> + Send + Sync;

/// Seals and opens the credentials of channel rows. The default holds no key and
/// knows no credentials: it writes plaintext and opens nothing sealed.
#[derive(Clone)]
pub struct Sealer {
    keys: Arc<Keyring>,
    credentials: Arc<CredentialFn>,
}

impl Default for Sealer {
    fn default() -> Self {
        Self::new(Keyring::default(), |_, _| Vec::new())
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("keys", &self.keys).finish()
    }
}

/// Which rows [`Store::seal_channels`] rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reseal {
    /// Rows holding a credential in plaintext while a key is configured.
    Plaintext,
    /// Also rows holding values sealed with a previous key.
    Rotate,
}

/// The place a value is sealed for: its channel and field.
fn place(id: ChannelId, field: &str) -> String {
    format!("channel:{id}:{field}")
}

/// The string values of a config, one and two levels deep (settings and the values
/// of string maps), with their JSON pointers.
fn strings(config: &Value) -> Vec<(String, &str)> {
    let mut found = Vec::new();
    let Value::Object(map) = config else {
        return found;
    };
    for (name, value) in map {
        match value {
            Value::String(s) => found.push((pointer(&[name]), s.as_str())),
            Value::Object(inner) => {
                for (key, value) in inner {
                    if let Value::String(s) = value {
                        found.push((pointer(&[name, key]), s.as_str()));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

impl Sealer {
    /// A sealer with `keys`, asking `credentials` which config values to seal.
    pub fn new(
        keys: Keyring,
        credentials: impl Fn(ChannelType, &Value) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            keys: Arc::new(keys),
            credentials: Arc::new(credentials),
        }
    }

    /// The keys this sealer uses.
    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    fn error(id: ChannelId, field: &str, source: SecretError) -> StoreError {
        StoreError::Secret {
            channel: id,
            field: field.to_owned(),
            source,
        }
    }

    /// The stored form of a channel's secret.
    pub(super) fn seal_secret(&self, id: ChannelId, secret: &str) -> StoreResult<String> {
        self.keys
            .seal(secret, &place(id, "secret"))
            .map_err(|e| Self::error(id, "secret", e))
    }

    /// The stored form of a channel's config: its credentials sealed, and any other
    /// value that would read back as sealed.
    pub(super) fn seal_config(
        &self,
        id: ChannelId,
        kind: ChannelType,
        config: &Value,
    ) -> StoreResult<Value> {
        let mut pointers = (self.credentials)(kind, config);
        for (at, s) in strings(config) {
            if is_sealed(s) && !pointers.contains(&at) {
                pointers.push(at);
            }
        }
        let mut sealed = config.clone();
        for at in pointers {
            let field = format!("config{at}");
            if let Some(value) = sealed.pointer_mut(&at)
                && let Some(plaintext) = value.as_str()
            {
                let stored = self
                    .keys
                    .seal(plaintext, &place(id, &field))
                    .map_err(|e| Self::error(id, &field, e))?;
                *value = Value::String(stored);
            }
        }
        Ok(sealed)
    }

    /// A channel as read, with its secret and config opened.
    ///
    /// # Errors
    /// `StoreError::Secret` naming the channel and field that does not open.
    pub(super) fn open(&self, mut channel: Channel) -> StoreResult<Channel> {
        let id = channel.id;
        channel.secret = self
            .keys
            .open(&channel.secret, &place(id, "secret"))
            .map_err(|e| Self::error(id, "secret", e))?
            .into_owned();
        let mut opened = Vec::new();
        for (at, s) in strings(&channel.config) {
            if is_sealed(s) {
                let field = format!("config{at}");
                let plaintext = self
                    .keys
                    .open(s, &place(id, &field))
                    .map_err(|e| Self::error(id, &field, e))?;
                opened.push((at, plaintext.into_owned()));
            }
        }
        for (at, plaintext) in opened {
            if let Some(value) = channel.config.pointer_mut(&at) {
                *value = Value::String(plaintext);
            }
        }
        Ok(channel)
    }

    /// Whether a row read as `raw` (and opened as `opened`) should be written again.
    fn stale(&self, raw: &Channel, opened: &Channel, mode: Reseal) -> bool {
        let current = |s: &str| match mode {
            Reseal::Rotate => self.keys.is_current(s),
            Reseal::Plaintext => is_sealed(s) || self.keys.current().is_none(),
        };
        if !current(&raw.secret) {
            return true;
        }
        if strings(&raw.config)
            .iter()
            .any(|(_, s)| !current(s) && is_sealed(s))
        {
            return true;
        }
        self.keys.current().is_some()
            && (self.credentials)(opened.kind, &opened.config)
                .iter()
                .any(|at| {
                    raw.config
                        .pointer(at)
                        .and_then(Value::as_str)
                        .is_some_and(|s| !is_sealed(s))
                })
    }
}

/// Rows read per batch by [`Store::seal_channels`].
const RESEAL_BATCH: i64 = 200;

impl Store {
    /// Rewrites every channel row that `mode` finds stale with the current key, and
    /// checks on the way that every row opens. Returns how many rows were rewritten.
    /// Rows changed by someone else meanwhile are left as they were written.
    ///
    /// # Errors
    /// The first row that does not open (a missing or wrong key), or a database error.
    pub async fn seal_channels(&self, mode: Reseal) -> StoreResult<u64> {
        const PAGE: &str = "SELECT id, tenant_id, name, type, secret, config, status, inserted_at, \
             updated_at FROM channels WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2";
        const UPDATE: &str = "UPDATE channels SET secret = $2, config = $3 \
             WHERE id = $1 AND secret = $4 AND updated_at = $5";
        let sealer = self.sealer();
        let mut after: Option<ChannelId> = None;
        let mut rewritten = 0;
        loop {
            let page: Vec<Channel> = reader!(self, |pool| sqlx::query_as(PAGE)
                .bind(after)
                .bind(RESEAL_BATCH)
                .fetch_all(pool)
                .await)?;
            let Some(last) = page.last() else {
                return Ok(rewritten);
            };
            after = Some(last.id);
            for raw in page {
                let opened = sealer.open(raw.clone())?;
                if !sealer.stale(&raw, &opened, mode) {
                    continue;
                }
                let secret = sealer.seal_secret(raw.id, &opened.secret)?;
                let config = sealer.seal_config(raw.id, raw.kind, &opened.config)?;
                let done = writer!(self, |pool| sqlx::query(UPDATE)
                    .bind(raw.id)
                    .bind(&secret)
                    .bind(sqlx::types::Json(&config))
                    .bind(&raw.secret)
                    .bind(raw.updated_at)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()))?;
                rewritten += done;
            }
        }
    }
}
