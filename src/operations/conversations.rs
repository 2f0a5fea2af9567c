//! Conversations: closing and reopening one, each recorded by `ingest` as a
//! `conversationUpdate` activity of the conversation (later activities of a closed one
//! are refused by `ingest`), and closing those left idle.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{OpError, OpResult, not_found_as};
use crate::domain::{Conversation, ConversationId, ConversationStatus, TenantId, Timestamp};
use crate::ingest::{Ingestor, StatusCause, StatusChanged, StatusRequest};
use crate::store::{Store, StoreError};

/// Conversations listed per round of the idle closer, before it looks again.
pub const IDLE_BATCH: usize = 500;

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

/// Closes a tenant's conversation; closing a closed one changes nothing and records
/// nothing.
///
/// # Errors
///
/// [`OpError::NotFound`] for a conversation missing from the tenant.
pub async fn close(
    ingest: &Ingestor,
    tenant_id: TenantId,
    id: ConversationId,
    cause: StatusCause,
) -> OpResult<Conversation> {
    let request = StatusRequest {
        tenant_id,
        conversation_id: id,
        to: ConversationStatus::Closed,
        cause,
        idle_before: None,
    };
    match ingest
        .change_status(request)
        .await
        .map_err(not_found_as("conversation"))?
    {
        StatusChanged::Changed { conversation, .. } | StatusChanged::Unchanged(conversation) => {
            Ok(conversation)
        }
    }
}

/// Reopens a tenant's closed conversation, so that it takes activities again.
///
/// # Errors
///
/// [`OpError::NotFound`] for a conversation missing from the tenant;
/// [`OpError::ConversationActive`] for one that is not closed;
/// [`OpError::ConversationExists`] when its party has opened another conversation on
/// the channel meanwhile (the one that holds its external id now is named).
pub async fn reopen(
    ingest: &Ingestor,
    tenant_id: TenantId,
    id: ConversationId,
    cause: StatusCause,
) -> OpResult<Conversation> {
    let request = StatusRequest {
        tenant_id,
        conversation_id: id,
        to: ConversationStatus::Active,
        cause,
        idle_before: None,
    };
    match ingest.change_status(request).await {
        Ok(StatusChanged::Changed { conversation, .. }) => Ok(conversation),
        Ok(StatusChanged::Unchanged(_)) => Err(OpError::ConversationActive),
        Err(StoreError::Conflict { constraint })
            if constraint == "conversations_channel_id_external_id_key" =>
        {
            let store = ingest.store();
            let conversation = store.get_conversation(tenant_id, id).await?;
            let holder = match &conversation.external_id {
                Some(external_id) => store
                    .find_active_conversation(tenant_id, conversation.channel_id, external_id)
                    .await?
                    .map(|c| c.id),
                None => None,
            };
            Err(OpError::ConversationExists { holder })
        }
        Err(e) => Err(not_found_as("conversation")(e)),
    }
}

/// Closes, as [`StatusCause::Idle`], the active conversations whose last activity is
/// older than `cutoff`, up to [`IDLE_BATCH`] of them; returns how many it found (some
/// may have been closed by another node meanwhile).
/// Several nodes may run it at once: a conversation is closed by one of them, and one
/// that received an activity since it was listed is left open.
///
/// # Errors
///
/// A store failure; conversations closed before it stay closed.
pub async fn close_idle(ingest: &Ingestor, cutoff: Timestamp) -> OpResult<usize> {
    let candidates = ingest
        .store()
        .list_idle_conversations(cutoff, IDLE_BATCH as i64)
        .await?;
    let found = candidates.len();
    let mut closed = 0;
    for (tenant_id, conversation_id) in candidates {
        let request = StatusRequest {
            tenant_id,
            conversation_id,
            to: ConversationStatus::Closed,
            cause: StatusCause::Idle,
            idle_before: Some(cutoff),
        };
        match ingest.change_status(request).await {
            Ok(StatusChanged::Changed { .. }) => closed += 1,
            // Closed by another node, or written to, since it was listed; or deleted.
            Ok(StatusChanged::Unchanged(_)) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if closed > 0 {
        tracing::info!(conversations = closed, "closed idle conversations");
    }
    Ok(found)
}

/// The idle closer of a node: every `interval` until `shutdown`, closes the
/// conversations that had no activity for `idle` (see [`close_idle`]), batch after
/// batch until none is left.
pub async fn run_idle_closer(
    ingest: Ingestor,
    idle: Duration,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tracing::info!(
        idle_secs = idle.as_secs_f64(),
        interval_secs = interval.as_secs_f64(),
        "idle conversation closer started"
    );
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        loop {
            let cutoff = Timestamp::now().minus(idle);
            // Stop between batches at shutdown rather than finishing a long backlog.
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                result = close_idle(&ingest, cutoff) => result,
            };
            // A full batch may have left more behind; a short one, or a failure, waits
            // for the next round.
            match result {
                Ok(found) if found >= IDLE_BATCH => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "closing idle conversations failed; will retry");
                    break;
                }
            }
        }
    }
}
