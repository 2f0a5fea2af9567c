//! Store errors, with database constraint violations named so callers can map them.

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No row matched (within the tenant asked for).
    #[error("not found")]
    NotFound,
    /// A constraint rejected the write; `constraint` is its name in the migrations
    /// (`foreign_key` for foreign keys, whose names SQLite does not report).
    #[error("constraint `{constraint}` violated")]
    Conflict { constraint: String },
    /// The store cannot be used as configured.
    #[error("{0}")]
    Config(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A channel's stored credential cannot be sealed or opened with the configured
    /// keys.
    #[error("channel {channel}: {field} {source}")]
    Secret {
        channel: crate::domain::ChannelId,
        field: String,
        source: crate::secrets::SecretError,
    },
    /// The database cannot be reached or is refusing work right now (connections
    /// refused or dropped, the pool exhausted, the server shutting down or starting):
    /// the same request may succeed in a moment.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Any other database failure.
    #[error("database error: {0}")]
    Db(sqlx::Error),
}

impl StoreError {
    /// Whether the failure is the database being out of reach rather than this
    /// request's doing: worth retrying the same request later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Whether `err` says the database is out of reach, not that the statement failed.
fn unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // PostgreSQL: connection exceptions (class 08), the server shutting down
            // or starting (57P01-57P03), out of connections (53300). SQLite: the
            // database is locked or busy past the busy timeout (5, 6).
            code.starts_with("08")
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
                || matches!(&*code, "5" | "6" | "261" | "262" | "517" | "773")
        }),
        _ => false,
    }
}

/// SQLite names the columns of a failed UNIQUE constraint, not the constraint: this maps
/// them back to the names the PostgreSQL migrations give.
const SQLITE_UNIQUE: &[(&str, &str)] = &[
    ("tenants.api_key_hash", "tenants_api_key_hash_key"),
    (
        "routes.source_channel_id, routes.target_channel_id",
        "routes_source_target_key",
    ),
    (
        "conversations.channel_id, conversations.external_id",
        "conversations_channel_id_external_id_key",
    ),
    (
        "activities.conversation_id, activities.seq",
        "activities_conversation_id_seq_key",
    ),
    (
        "activities.conversation_id, activities.idempotency_key",
        "activities_conversation_id_idempotency_key_key",
    ),
    (
        "deliveries.activity_id, deliveries.channel_id",
        "deliveries_activity_id_channel_id_key",
    ),
];

fn sqlite_constraint(message: &str) -> Option<String> {
    if let Some(columns) = message.strip_prefix("UNIQUE constraint failed: ") {
        // A unique index on an expression is reported by its name.
        if let Some(index) = columns
            .strip_prefix("index '")
            .and_then(|rest| rest.strip_suffix('\''))
        {
            return Some(index.to_owned());
        }
        return SQLITE_UNIQUE
            .iter()
            .find(|(cols, _)| *cols == columns)
            .map(|(_, name)| (*name).to_owned());
    }
    if let Some(name) = message.strip_prefix("CHECK constraint failed: ") {
        return Some(name.trim().to_owned());
    }
    if message.starts_with("FOREIGN KEY constraint failed") {
        return Some("foreign_key".to_owned());
    }
    None
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if unavailable(&err) {
            return StoreError::Unavailable(err);
        }
        match &err {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => {
                let constraint = match db.kind() {
                    sqlx::error::ErrorKind::ForeignKeyViolation => Some("foreign_key".to_owned()),
                    _ => db
                        .constraint()
                        .map(str::to_owned)
                        .or_else(|| sqlite_constraint(db.message())),
                };
                match constraint {
                    Some(constraint) => StoreError::Conflict { constraint },
                    None => StoreError::Db(err),
                }
            }
            _ => StoreError::Db(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_messages_map_to_constraint_names() {
        assert_eq!(
            sqlite_constraint(
                "UNIQUE constraint failed: conversations.channel_id, conversations.external_id"
            )
            .as_deref(),
            Some("conversations_channel_id_external_id_key")
        );
        assert_eq!(
            sqlite_constraint("CHECK constraint failed: routes_not_self_check").as_deref(),
            Some("routes_not_self_check")
        );
        assert_eq!(
            sqlite_constraint("UNIQUE constraint failed: index 'tenants_name_key'").as_deref(),
            Some("tenants_name_key")
        );
        assert_eq!(sqlite_constraint("disk I/O error"), None);
    }
}
