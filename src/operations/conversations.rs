//! Conversations: closing one (later activities are refused by `ingest`).

use super::{OpResult, not_found_as};
use crate::domain::{Conversation, ConversationId, TenantId};
use crate::store::Store;

/// The tenant of a conversation, for the operator, who names conversations by id alone.
///
/// # Errors
///
/// [`super::OpError::NotFound`] for a missing conversation.
pub async fn tenant_of(store: &Store, id: ConversationId) -> OpResult<TenantId> {
    let conversation = store
        .get_conversation_unscoped(id)
        .await
        .map_err(not_found_as("conversation"))?;
    Ok(conversation.tenant_id)
}

/// Closes a tenant's conversation.
///
/// # Errors
///
/// [`super::OpError::NotFound`] for a conversation missing from the tenant.
pub async fn close(
    store: &Store,
    tenant_id: TenantId,
    id: ConversationId,
) -> OpResult<Conversation> {
    let conversation = store
        .close_conversation(tenant_id, id)
        .await
        .map_err(not_found_as("conversation"))?;
    tracing::info!(conversation_id = %id, %tenant_id, "conversation closed");
    Ok(conversation)
}
