//! Tenant queries. Tenants are the one table not scoped by a tenant: only operators
//! (CLI, admin panel) and API-key authentication use these.

use super::{Store, StoreError, StoreResult, reader, writer};
use crate::domain::{Tenant, TenantId, TenantStatus, Timestamp};

const COLUMNS: &str = "id, name, status, api_key_prefix, inserted_at, updated_at";

impl Store {
    /// Inserts a tenant whose API key hashes to `api_key_hash`.
    pub async fn insert_tenant(
        &self,
        name: &str,
        api_key_hash: &str,
        api_key_prefix: &str,
    ) -> StoreResult<Tenant> {
        let now = Timestamp::now();
        let tenant = Tenant {
            id: TenantId::new(),
            name: name.to_owned(),
            status: TenantStatus::Active,
            api_key_prefix: api_key_prefix.to_owned(),
            inserted_at: now,
            updated_at: now,
        };
        writer!(self, |pool| {
            sqlx::query(
                "INSERT INTO tenants (id, name, status, api_key_hash, api_key_prefix, inserted_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(tenant.id)
            .bind(&tenant.name)
            .bind(tenant.status.as_str())
            .bind(api_key_hash)
            .bind(api_key_prefix)
            .bind(now)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(tenant)
    }

    /// The tenant owning the API key with this hash.
    ///
    /// Served from the read cache when this node read it within the last second.
    pub async fn get_tenant_by_key_hash(&self, api_key_hash: &str) -> StoreResult<Tenant> {
        const SQL: &str =
            const_format::concatcp!("SELECT ", COLUMNS, " FROM tenants WHERE api_key_hash = $1");
        let cache = &self.cache().tenants;
        let generation = self.cache().generation();
        let key = api_key_hash.to_owned();
        if let Some(tenant) = cache.get(&key, generation) {
            return Ok(tenant);
        }
        let tenant: Tenant = reader!(self, |pool| {
            sqlx::query_as(SQL).bind(api_key_hash).fetch_one(pool).await
        })?;
        cache.put(key, tenant.clone(), generation);
        Ok(tenant)
    }

    /// A tenant by id.
    pub async fn get_tenant(&self, id: TenantId) -> StoreResult<Tenant> {
        const SQL: &str =
            const_format::concatcp!("SELECT ", COLUMNS, " FROM tenants WHERE id = $1");
        self.fetch_by_id(SQL, id).await
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        const SQL: &str = const_format::concatcp!("SELECT ", COLUMNS, " FROM tenants ORDER BY id");
        Ok(reader!(self, |pool| sqlx::query_as(SQL)
            .fetch_all(pool)
            .await)?)
    }

    /// Enables or disables a tenant.
    pub async fn set_tenant_status(
        &self,
        id: TenantId,
        status: TenantStatus,
    ) -> StoreResult<Tenant> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE tenants SET status = $2, updated_at = $3 WHERE id = $1 RETURNING ",
            COLUMNS
        );
        let tenant = writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(id)
                .bind(status.as_str())
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?;
        self.cache().invalidate();
        Ok(tenant)
    }

    /// Replaces a tenant's API key; the old one stops working at once.
    pub async fn update_tenant_api_key(
        &self,
        id: TenantId,
        api_key_hash: &str,
        api_key_prefix: &str,
    ) -> StoreResult<Tenant> {
        const SQL: &str = const_format::concatcp!(
            "UPDATE tenants SET api_key_hash = $2, api_key_prefix = $3, updated_at = $4 \
             WHERE id = $1 RETURNING ",
            COLUMNS
        );
        let tenant = writer!(self, |pool| {
            sqlx::query_as(SQL)
                .bind(id)
                .bind(api_key_hash)
                .bind(api_key_prefix)
                .bind(Timestamp::now())
                .fetch_one(pool)
                .await
        })?;
        self.cache().invalidate();
        Ok(tenant)
    }

    /// Finds a tenant by id, name (compared without case, as names are unique) or API
    /// key prefix, for the CLI.
    pub async fn find_tenant(&self, needle: &str) -> StoreResult<Tenant> {
        if let Ok(id) = needle.parse::<TenantId>() {
            return self.get_tenant(id).await;
        }
        const SQL: &str = const_format::concatcp!(
            "SELECT ",
            COLUMNS,
            " FROM tenants WHERE lower(name) = lower($1) OR api_key_prefix = $1 ORDER BY id LIMIT 2"
        );
        let found: Vec<Tenant> = reader!(self, |pool| sqlx::query_as(SQL)
            .bind(needle)
            .fetch_all(pool)
            .await)?;
        match found.len() {
            1 => Ok(found.into_iter().next().ok_or(StoreError::NotFound)?),
            0 => Err(StoreError::NotFound),
            _ => Err(StoreError::Config(format!(
                "`{needle}` is one tenant's name and another's key prefix: name the tenant by id"
            ))),
        }
    }
}
