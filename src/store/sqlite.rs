//! SQLite connection set-up: WAL, foreign keys on, a busy timeout, one writer.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{Store, StoreOptions, StoreResult};

pub(super) async fn connect(url: &str, options: &StoreOptions) -> StoreResult<Store> {
    let connect = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode is durable against application crashes; only an OS crash
        // or power loss can lose the last transactions. The usual choice for WAL.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect.clone())
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(options.max_connections.clamp(1, 8))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect.read_only(true))
        .await?;
    let appender = super::appender::Appender::start(writer.clone());
    Ok(Store::Sqlite {
        writer,
        reader,
        appender,
    })
}
