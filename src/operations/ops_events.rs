//! Operational events: choosing a tenant's ops webhook and listing its events.

use crate::domain::{
    ChannelId, ChannelType, FieldError, OpsEvent, OpsEventId, OpsEventType, OpsWebhook, TenantId,
    Timestamp,
};
use crate::store::{Store, StoreError};

use super::{OpError, OpResult, not_found_as};

/// Makes a tenant's `webhook` channel its ops webhook: its operational events from now
/// on are sent there, signed with the channel's secret. Replaces the one it had.
///
/// # Errors
/// `NotFound` for a channel of another tenant; `Invalid` for a channel of another type.
pub async fn set_webhook(
    store: &Store,
    tenant_id: TenantId,
    channel_id: ChannelId,
) -> OpResult<OpsWebhook> {
    let channel = store
        .get_channel(tenant_id, channel_id)
        .await
        .map_err(not_found_as("channel"))?;
    if channel.kind != ChannelType::Webhook {
        return Err(OpError::Invalid(vec![FieldError::new(
            "channel_id",
            format!(
                "the ops webhook must be a webhook channel; this one is {}",
                channel.kind
            ),
        )]));
    }
    Ok(store
        .set_ops_webhook(tenant_id, channel_id, Timestamp::now())
        .await?)
}

/// A tenant's ops webhook.
///
/// # Errors
/// `NotFound` when it has none.
pub async fn get_webhook(store: &Store, tenant_id: TenantId) -> OpResult<OpsWebhook> {
    store
        .get_ops_webhook(tenant_id)
        .await
        .map_err(not_found_as("ops webhook"))
}

/// Removes a tenant's ops webhook; its events are still recorded and listed.
///
/// # Errors
/// `NotFound` when it had none.
pub async fn delete_webhook(store: &Store, tenant_id: TenantId) -> OpResult<()> {
    store
        .delete_ops_webhook(tenant_id)
        .await
        .map_err(not_found_as("ops webhook"))
}

/// A page of a tenant's events, newest first.
///
/// # Errors
/// Store failures only.
pub async fn list(
    store: &Store,
    tenant_id: TenantId,
    kind: Option<OpsEventType>,
    before: Option<OpsEventId>,
    limit: i64,
) -> Result<Vec<OpsEvent>, StoreError> {
    store.list_ops_events(tenant_id, kind, before, limit).await
}
