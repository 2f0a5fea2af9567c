//! Tenants: create one (with its first API key), enable or disable it, rotate its key.
//! The name rule is [`crate::domain::check_tenant_name`], whichever edge asks.

use serde::Serialize;
use utoipa::ToSchema;

use super::{OpError, OpResult, not_found_as};
use crate::auth;
use crate::domain::{Tenant, TenantId, TenantStatus, check_tenant_name};
use crate::store::{Store, StoreError};

/// The unique index on `lower(name)`.
const TENANT_NAME_KEY: &str = "tenants_name_key";

/// A tenant with its API key, shown this once (the store keeps only its hash).
#[derive(Serialize, ToSchema)]
pub struct TenantWithKey {
    pub tenant: Tenant,
    pub api_key: String,
}

/// Creates a tenant named `name` (trimmed) with a new API key.
///
/// # Errors
///
/// [`OpError::Invalid`] naming `name` when it breaks the tenant name rule;
/// [`OpError::TenantExists`] when another tenant has the name, compared without case
/// (the `tenants_name_key` index decides, so two creations racing cannot both win).
pub async fn create(store: &Store, name: &str) -> OpResult<TenantWithKey> {
    let name = check_tenant_name(name).map_err(|e| OpError::Invalid(vec![e]))?;
    let key = auth::generate_api_key();
    let tenant = store
        .insert_tenant(name, &key.hash, &key.prefix)
        .await
        .map_err(|e| match e {
            StoreError::Conflict { constraint } if constraint == TENANT_NAME_KEY => {
                OpError::TenantExists(name.to_owned())
            }
            other => other.into(),
        })?;
    tracing::info!(tenant_id = %tenant.id, "tenant created");
    Ok(TenantWithKey {
        tenant,
        api_key: key.key,
    })
}

/// Enables or disables a tenant; a disabled tenant's credentials stop working at once.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing tenant.
pub async fn set_status(store: &Store, id: TenantId, status: TenantStatus) -> OpResult<Tenant> {
    let tenant = store
        .set_tenant_status(id, status)
        .await
        .map_err(not_found_as("tenant"))?;
    tracing::info!(tenant_id = %id, %status, "tenant status set");
    Ok(tenant)
}

/// Gives a tenant a new API key; the old one stops working.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing tenant.
pub async fn rotate_key(store: &Store, id: TenantId) -> OpResult<TenantWithKey> {
    let key = auth::generate_api_key();
    let tenant = store
        .update_tenant_api_key(id, &key.hash, &key.prefix)
        .await
        .map_err(not_found_as("tenant"))?;
    tracing::info!(tenant_id = %id, "tenant API key rotated");
    Ok(TenantWithKey {
        tenant,
        api_key: key.key,
    })
}
