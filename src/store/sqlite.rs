//! SQLite connection set-up: WAL, foreign keys on, a busy timeout, one writer. A new
//! database file is created readable by its owner only: it holds provider tokens and
//! channel secrets, and SQLite gives the WAL and shared-memory files the same mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::{Store, StoreError, StoreOptions, StoreResult};

pub(super) async fn connect(url: &str, options: &StoreOptions) -> StoreResult<Store> {
    let connect = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL in WAL mode is durable against application crashes; only an OS crash
        // or power loss can lose the last transactions. The usual choice for WAL.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    create_private(connect.get_filename())?;
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
        shared: Default::default(),
    })
}

/// Creates the database file, empty and mode 0600, if it does not exist yet (an
/// in-memory database has no file). An existing file keeps the mode it has.
fn create_private(path: &Path) -> StoreResult<()> {
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Config(format!(
            "cannot create the database file {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn a_new_database_and_its_wal_are_private_to_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let store = connect(
            &format!("sqlite://{}", path.display()),
            &StoreOptions::default(),
        )
        .await
        .unwrap();
        store.migrate().await.unwrap();
        for file in ["c.db", "c.db-wal", "c.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
        }
    }
}
