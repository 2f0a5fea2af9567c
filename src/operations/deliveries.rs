//! Retrying deliveries: one (failed, or pending and waiting for its next attempt), or
//! a channel's failed ones, through `delivery::outcome` (which also wakes the
//! workers).

use super::{OpError, OpResult, channels, not_found_as};
use crate::delivery::{DeliveryWaker, REPLAY_BATCH, replay_failed, retry_now};
use crate::domain::{
    ChannelId, Delivery, DeliveryId, DeliveryStatus, FieldError, TenantId, Timestamp,
};
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

/// Retries a tenant's delivery at once: a failed one is queued again, a pending one
/// waiting for its next attempt (after a fixed receiver, say) becomes due now. Either
/// gets a fresh budget of attempts, numbered on from its last one; `last_error` is
/// kept (docs/design.md#delivery).
///
/// # Errors
///
/// [`OpError::NotFound`] for a delivery missing from the tenant;
/// [`OpError::DeliveryNotFailed`] for a delivered one; [`OpError::DeliveryInFlight`]
/// while an attempt of it is under way.
pub async fn retry(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    id: DeliveryId,
) -> OpResult<Delivery> {
    match retry_now(store, waker, tenant_id, id).await {
        Ok(delivery) => {
            tracing::info!(delivery_id = %id, %tenant_id, "delivery retried");
            Ok(delivery)
        }
        // Not retryable for this tenant: missing, delivered, or being attempted.
        Err(StoreError::NotFound) => {
            let current = store
                .get_delivery(tenant_id, id)
                .await
                .map_err(not_found_as("delivery"))?;
            Err(match current.status {
                DeliveryStatus::Delivered => OpError::DeliveryNotFailed {
                    status: current.status,
                },
                // Leased when retried; it may have ended since.
                DeliveryStatus::Pending | DeliveryStatus::Failed => OpError::DeliveryInFlight,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// The time window of a replay: activities created at `since` or later, and before
/// `until` when given.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayWindow {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl ReplayWindow {
    /// Checks that the window is not empty.
    ///
    /// # Errors
    ///
    /// A [`FieldError`] on `until` when it is not after `since`.
    pub fn check(&self) -> Result<(), FieldError> {
        match (self.since, self.until) {
            (Some(since), Some(until)) if until <= since => {
                Err(FieldError::new("until", "must be later than since"))
            }
            _ => Ok(()),
        }
    }
}

/// Queues a tenant's channel's failed deliveries again, those of activities created
/// within `window`, in batches of [`REPLAY_BATCH`] (one transaction each); returns how
/// many. Deliveries of one conversation keep their order: each is attempted after the
/// earlier ones of its conversation.
///
/// # Errors
///
/// [`OpError::Invalid`] for an empty window; [`OpError::NotFound`] for a channel
/// missing from the tenant.
pub async fn replay_channel(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    channel_id: ChannelId,
    window: ReplayWindow,
) -> OpResult<u64> {
    window.check().map_err(|e| OpError::Invalid(vec![e]))?;
    store
        .get_channel(tenant_id, channel_id)
        .await
        .map_err(not_found_as("channel"))?;
    let requeued = replay_failed(
        store,
        waker,
        tenant_id,
        channel_id,
        window.since,
        window.until,
        REPLAY_BATCH,
    )
    .await?;
    tracing::info!(%channel_id, %tenant_id, requeued, since = ?window.since, until = ?window.until,
        "failed deliveries of a channel replayed");
    Ok(requeued)
}

/// Queues every failed delivery to a channel (of any tenant: an operator action)
/// again; returns how many.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing channel.
pub async fn retry_channel(store: &Store, waker: &DeliveryWaker, id: ChannelId) -> OpResult<u64> {
    let channel = channels::get(store, id).await?;
    replay_channel(store, waker, channel.tenant_id, id, ReplayWindow::default()).await
}
