//! Retrying failed deliveries, one or all of a channel's, through
//! `delivery::outcome` (which also wakes the workers).

use super::{OpError, OpResult, channels, not_found_as};
use crate::delivery::{DeliveryWaker, retry_all_failed, retry_failed};
use crate::domain::{ChannelId, Delivery, DeliveryId, TenantId};
use crate::store::{Store, StoreError};

/// The tenant of a delivery, for the operator, who names deliveries by id alone.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing delivery.
pub async fn tenant_of(store: &Store, id: DeliveryId) -> OpResult<TenantId> {
    let delivery = store
        .get_delivery_unscoped(id)
        .await
        .map_err(not_found_as("delivery"))?;
    Ok(delivery.tenant_id)
}

/// Queues a tenant's failed delivery again: pending, due now, attempts reset,
/// `last_error` kept (DESIGN.md §3 "Delivery").
///
/// # Errors
///
/// [`OpError::NotFound`] for a delivery missing from the tenant;
/// [`OpError::DeliveryNotFailed`] for one in another status.
pub async fn retry(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    id: DeliveryId,
) -> OpResult<Delivery> {
    match retry_failed(store, waker, tenant_id, id).await {
        Ok(delivery) => {
            tracing::info!(delivery_id = %id, %tenant_id, "delivery retried");
            Ok(delivery)
        }
        // Not a failed delivery of this tenant: missing, or in another status.
        Err(StoreError::NotFound) => {
            let current = store
                .get_delivery(tenant_id, id)
                .await
                .map_err(not_found_as("delivery"))?;
            Err(OpError::DeliveryNotFailed {
                status: current.status,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Queues every failed delivery to a channel (of any tenant: an operator action)
/// again; returns how many.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing channel.
pub async fn retry_channel(store: &Store, waker: &DeliveryWaker, id: ChannelId) -> OpResult<u64> {
    channels::get(store, id).await?;
    let retried = retry_all_failed(store, waker, id).await?;
    tracing::info!(channel_id = %id, retried, "failed deliveries of a channel retried");
    Ok(retried)
}
