//! Routes between a tenant's channels (docs/design.md#data-model): creating one between
//! two active channels without closing a cycle, and deleting one.

use super::{OpError, OpResult, not_found_as};
use crate::domain::{
    ChannelId, ChannelStatus, FieldError, Route, RouteDirection, RouteId, TenantId,
};
use crate::store::Store;

/// Checks that a route endpoint is a channel of the tenant; an inactive one is a
/// broken rule on `field`.
async fn check_endpoint(
    store: &Store,
    tenant_id: TenantId,
    field: &str,
    id: ChannelId,
) -> OpResult<Option<FieldError>> {
    let channel = store
        .get_channel(tenant_id, id)
        .await
        .map_err(not_found_as("channel"))?;
    Ok((channel.status != ChannelStatus::Active)
        .then(|| FieldError::new(field, "the channel is inactive")))
}

/// Creates a route of a tenant from `source` to `target`.
///
/// # Errors
///
/// [`OpError::NotFound`] when either channel is missing from the tenant (checked
/// before anything else), [`OpError::Invalid`] for an inactive endpoint or a route to
/// itself, and the store's `routes_source_target_key` / `routes_acyclic` conflicts
/// for a duplicate or a cycle.
pub async fn create(
    store: &Store,
    tenant_id: TenantId,
    source: ChannelId,
    target: ChannelId,
    direction: RouteDirection,
) -> OpResult<Route> {
    // Existence first: a channel of another tenant is "not found" whatever else is wrong.
    let (source_inactive, target_inactive) = tokio::try_join!(
        check_endpoint(store, tenant_id, "source_channel_id", source),
        check_endpoint(store, tenant_id, "target_channel_id", target),
    )?;
    let mut errors: Vec<FieldError> = source_inactive.into_iter().chain(target_inactive).collect();
    if source == target {
        errors.push(FieldError::new(
            "target_channel_id",
            "must differ from source_channel_id",
        ));
    }
    if !errors.is_empty() {
        return Err(OpError::Invalid(errors));
    }
    let route = store
        .insert_route(tenant_id, source, target, direction)
        .await?;
    tracing::info!(route_id = %route.id, %tenant_id, %direction, "route created");
    Ok(route)
}

/// Deletes a tenant's route; activities created afterwards are no longer forwarded.
///
/// # Errors
///
/// [`OpError::NotFound`] for a route missing from the tenant.
pub async fn delete(store: &Store, tenant_id: TenantId, id: RouteId) -> OpResult<()> {
    store
        .delete_route(tenant_id, id)
        .await
        .map_err(not_found_as("route"))?;
    tracing::info!(route_id = %id, %tenant_id, "route deleted");
    Ok(())
}
