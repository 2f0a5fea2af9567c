//! Tenants: the unit of isolation. Every other row belongs to exactly one.

use super::{TenantId, Timestamp, string_enum};

string_enum! {
    /// Whether a tenant's credentials are accepted.
    pub enum TenantStatus { Active => "active", Inactive => "inactive" }
}

/// A tenant as stored; the API key itself is never kept, only its hash.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    #[sqlx(try_from = "String")]
    pub status: TenantStatus,
    /// The first characters of the API key, for recognising it in lists.
    pub api_key_prefix: String,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}
