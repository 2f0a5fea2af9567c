//! PostgreSQL connection set-up.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{Store, StoreOptions, StoreResult};

pub(super) async fn connect(url: &str, options: &StoreOptions) -> StoreResult<Store> {
    let connect = PgConnectOptions::from_str(url)?.application_name("converger");
    let pool = PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await?;
    Ok(Store::Postgres(pool, super::Sealer::default()))
}
