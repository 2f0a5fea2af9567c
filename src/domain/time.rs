//! UTC timestamps with one storage form per backend.
//!
//! PostgreSQL stores `TIMESTAMPTZ`. SQLite has no time type, and sqlx's default text
//! form drops trailing zero fractions, which breaks ordering by string comparison, so
//! SQLite gets a fixed-width RFC 3339 string (`2026-11-25T21:56:00.000000Z`) that sorts
//! like the instant it denotes. Both keep microseconds, PostgreSQL's precision.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// A point in time, UTC, microsecond precision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to what both backends store.
    pub fn now() -> Self {
        Self(Utc::now().trunc_subsecs(6))
    }

    /// This instant moved by `d` (saturating at the representable range).
    pub fn plus(self, d: std::time::Duration) -> Self {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Self(
            self.0
                .checked_add_signed(d)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
                .trunc_subsecs(6),
        )
    }

    /// This instant moved back by `d`.
    pub fn minus(self, d: std::time::Duration) -> Self {
        let d = chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        Self(
            self.0
                .checked_sub_signed(d)
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
                .trunc_subsecs(6),
        )
    }

    fn sqlite_text(&self) -> String {
        self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &sqlx::sqlite::SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as sqlx::Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.sqlite_text(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: sqlx::sqlite::SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Sqlite>>::decode(value).map(Self)
    }
}

impl Type<Postgres> for Timestamp {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as sqlx::Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, BoxDynError> {
        <DateTime<Utc> as Decode<Postgres>>::decode(value).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_text_sorts_like_time() {
        let base = Timestamp::now();
        let whole = Timestamp(base.0.trunc_subsecs(0));
        let later = whole.plus(std::time::Duration::from_micros(1));
        assert!(whole.sqlite_text() < later.sqlite_text());
        assert_eq!(whole.sqlite_text().len(), later.sqlite_text().len());
    }
}
