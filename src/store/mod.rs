//! Durable state: one `Store` over SQLite or PostgreSQL.
//!
//! Stage 3 of the flow. The store knows SQL, not HTTP, and holds no business rules:
//! `ingest` decides what to write, the store writes it atomically. Every query that
//! reads tenant data takes the `TenantId` first and filters by it, so a row of another
//! tenant is indistinguishable from a missing one.
//!
//! Queries are written once, in SQL both dialects accept (`$N` placeholders,
//! `RETURNING`, `ON CONFLICT`), and expanded for either pool by [`reader!`] and [`writer!`];
//! lookups of one row by tenant and id, or by id alone, go through
//! `Store::fetch_scoped` and `Store::fetch_by_id` with each query's own SQL.

mod activities;
mod admin;
mod appender;
mod attempts;
mod availability;
mod cache;
mod channels;
mod conversations;
mod deliveries;
mod error;
mod heads;
mod health;
mod nodes;
mod ops;
mod postgres;
mod prune;
mod queue;
mod routes;
mod sealing;
mod sqlite;
mod tenants;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub mod test_support;

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Encode, FromRow, PgPool, Postgres, Sqlite, SqlitePool, Type};

use crate::domain::TenantId;

pub use activities::{ActivityAppend, AppendOutcome, StatusChange, StatusOutcome};
pub use admin::{ChannelDeliveryStats, FailedDelivery};
pub use availability::{PROBE_INTERVAL, PROBE_TIMEOUT};
pub use channels::{ChannelFilter, ChannelUpdate, NewChannel};
pub use conversations::{
    ConversationContext, ConversationFilter, ExternalIdSearch, NewConversation,
};
pub use error::StoreError;
pub use health::{HealthCounts, NamedChannelHealth};
pub use nodes::{NodeRow, Reaped};
pub use ops::{OpsAttemptEnd, TenantOpsEvent};
pub use queue::{AttemptContext, AttemptLog, AttemptResult, ClaimedDelivery, Completion};
pub use routes::RouteTarget;
pub use sealing::{CredentialFn, Reseal, Sealer};

/// Connections of a node's pools, open and idle, and their ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// Deliveries waiting in the queue, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Pending whose attempt time has come, not held: in flight, about to be claimed,
    /// or waiting behind an earlier delivery to the same channel and conversation.
    pub pending_due: i64,
    /// Pending, waiting for the time of its next attempt.
    pub pending_scheduled: i64,
    /// Pending on a paused channel or one whose breaker is open: not attempted until
    /// it resumes or closes.
    pub pending_held: i64,
    /// Failed for good: dead letters awaiting a retry by hand.
    pub failed: i64,
}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Connection pools of one database, cheap to clone.
#[derive(Clone)]
pub enum Store {
    /// Embedded: one writer connection (SQLite serialises writers anyway; queuing them
    /// in the pool avoids busy-wait retries) and a pool of readers (WAL lets them run
    /// beside the writer).
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
        /// The task that appends activities in batches through `writer`.
        appender: appender::Appender,
        shared: std::sync::Arc<Shared>,
    },
    /// Production and multi-node.
    Postgres(PgPool, std::sync::Arc<Shared>),
}

/// What the clones of a store share besides its pools (behind one `Arc`, so that a
/// store stays small in every future that holds one).
#[derive(Clone, Default)]
pub struct Shared {
    /// Encrypts channel credentials at rest.
    sealer: Sealer,
    /// Recent reads of rows that hardly change (see `cache.rs`).
    cache: std::sync::Arc<cache::ReadCache>,
    /// Whether the database is reachable (see `health.rs`).
    availability: std::sync::Arc<availability::Availability>,
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a database URL names, or `None` for an unsupported scheme.
    pub fn from_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections to PostgreSQL (readers, for SQLite).
    pub max_connections: u32,
    /// How long to wait for a free connection before failing a request.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Expands `$body` with `$pool` bound to a pool that may read.
macro_rules! reader {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite { reader: $pool, .. } => $body,
            $crate::store::Store::Postgres($pool, _) => $body,
        }
    };
}

/// Expands `$body` with `$pool` bound to a pool that may write.
macro_rules! writer {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite { writer: $pool, .. } => $body,
            $crate::store::Store::Postgres($pool, _) => $body,
        }
    };
}
pub(crate) use {reader, writer};

/// A row type both backends decode, for queries written once.
pub(crate) trait Row:
    Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>
{
}
impl<T> Row for T where T: Send + Unpin + for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow>
{}

/// A value both backends bind, for queries written once.
pub(crate) trait Param:
    Send + for<'q> Encode<'q, Sqlite> + Type<Sqlite> + for<'q> Encode<'q, Postgres> + Type<Postgres>
{
}
impl<T> Param for T where
    T: Send
        + for<'q> Encode<'q, Sqlite>
        + Type<Sqlite>
        + for<'q> Encode<'q, Postgres>
        + Type<Postgres>
{
}

/// Lookups by key shared by the tables' queries; each caller's SQL stays its own.
impl Store {
    /// The one row `sql` selects by a tenant (`$1`) and an id (`$2`): a row of another
    /// tenant is `NotFound`, as a missing one.
    pub(crate) async fn fetch_scoped<T: Row>(
        &self,
        sql: &'static str,
        tenant_id: TenantId,
        id: impl Param,
    ) -> StoreResult<T> {
        Ok(reader!(self, |pool| sqlx::query_as(sql)
            .bind(tenant_id)
            .bind(id)
            .fetch_one(pool)
            .await)?)
    }

    /// The one row `sql` selects by an id alone (`$1`), for the callers that are not
    /// tenant-scoped (operators, channel-signed webhooks).
    pub(crate) async fn fetch_by_id<T: Row>(
        &self,
        sql: &'static str,
        id: impl Param,
    ) -> StoreResult<T> {
        Ok(reader!(self, |pool| sqlx::query_as(sql)
            .bind(id)
            .fetch_one(pool)
            .await)?)
    }
}

impl Store {
    /// Connects to the database a URL names (`sqlite://PATH` or `postgres://...`).
    ///
    /// # Errors
    /// An unsupported scheme, an unreachable server, or an unopenable file.
    pub async fn connect(url: &str, options: &StoreOptions) -> StoreResult<Self> {
        match Backend::from_url(url) {
            Some(Backend::Sqlite) => sqlite::connect(url, options).await,
            Some(Backend::Postgres) => postgres::connect(url, options).await,
            None => Err(StoreError::Config(format!(
                "unsupported database URL scheme in `{}`: use sqlite://PATH or postgres://...",
                redact_url(url)
            ))),
        }
    }

    /// Which backend this store runs on.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite { .. } => Backend::Sqlite,
            Store::Postgres(..) => Backend::Postgres,
        }
    }

    /// This store sealing channel credentials with `sealer` (by default, it keeps
    /// them in plaintext). Set once, before the store is shared.
    pub fn with_sealer(self, sealer: Sealer) -> Self {
        let sealed = |shared: std::sync::Arc<Shared>| {
            std::sync::Arc::new(Shared {
                sealer,
                ..Shared::clone(&shared)
            })
        };
        match self {
            Store::Sqlite {
                writer,
                reader,
                appender,
                shared,
            } => Store::Sqlite {
                writer,
                reader,
                appender,
                shared: sealed(shared),
            },
            Store::Postgres(pool, shared) => Store::Postgres(pool, sealed(shared)),
        }
    }

    /// What seals and opens channel credentials.
    pub fn sealer(&self) -> &Sealer {
        match self {
            Store::Sqlite { shared, .. } | Store::Postgres(_, shared) => &shared.sealer,
        }
    }

    /// The read cache of this store and its clones.
    fn cache(&self) -> &cache::ReadCache {
        &self.shared().cache
    }

    /// What this store's clones share besides the pools.
    fn shared(&self) -> &Shared {
        match self {
            Store::Sqlite { shared, .. } | Store::Postgres(_, shared) => shared,
        }
    }

    /// The PostgreSQL pool, for the parts that need PostgreSQL itself (LISTEN/NOTIFY).
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match self {
            Store::Postgres(pool, _) => Some(pool),
            Store::Sqlite { .. } => None,
        }
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    ///
    /// Migrations only add (columns, tables, indexes), so a database migrated by a newer
    /// release still serves this one: migrations it does not know are left alone, and
    /// a rolling upgrade or a rollback of the binary can run old and new nodes side by
    /// side.
    ///
    /// # Errors
    /// A migration failed, or one this binary knows was changed after it ran.
    pub async fn migrate(&self) -> StoreResult<()> {
        match self {
            Store::Sqlite { writer, .. } => {
                let mut migrator = sqlx::migrate!("migrations/sqlite");
                migrator.set_ignore_missing(true).run(writer).await?;
            }
            Store::Postgres(pool, _) => {
                let mut migrator = sqlx::migrate!("migrations/postgres");
                // An index build on a large table may outlast the statement timeout of
                // the pool's connections: migrations run on a connection without one.
                let options = (*pool.connect_options())
                    .clone()
                    .options([("statement_timeout", "0")]);
                let unbounded = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await?;
                let migrated = migrator.set_ignore_missing(true).run(&unbounded).await;
                unbounded.close().await;
                migrated?;
            }
        }
        Ok(())
    }

    /// Connections of this node's pools (reader and writer together for SQLite).
    pub fn pool_stats(&self) -> PoolStats {
        fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolStats {
            PoolStats {
                size: pool.size(),
                idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                max: pool.options().get_max_connections(),
            }
        }
        match self {
            Store::Sqlite { writer, reader, .. } => {
                let (w, r) = (of(writer), of(reader));
                PoolStats {
                    size: w.size + r.size,
                    idle: w.idle + r.idle,
                    max: w.max + r.max,
                }
            }
            Store::Postgres(pool, _) => of(pool),
        }
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub async fn ping(&self) -> StoreResult<()> {
        reader!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Closes every connection; pending queries finish first.
    pub async fn close(&self) {
        match self {
            Store::Sqlite { writer, reader, .. } => {
                writer.close().await;
                reader.close().await;
            }
            Store::Postgres(pool, _) => pool.close().await,
        }
    }
}

/// A database URL with its password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_by_scheme() {
        assert_eq!(Backend::from_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::from_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::from_url("mysql://h/db"), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:hunter2@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://converger.db"), "sqlite://converger.db");
    }
}
