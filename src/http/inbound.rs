//! Inbound webhooks (DESIGN.md §3 "Inbound"): `POST /api/v1/channels/:id/inbound`
//! verifies the sender's signature, lets the channel's adapter parse the payload, finds
//! or opens each sender's conversation and hands every message to `ingest`, keyed by
//! the provider's message id so re-deliveries create nothing.
//!
//! This edge only authenticates and hands over: adapters parse, `ingest` writes.
//! Everything that can be checked is checked before the first write, so a refused
//! request writes nothing.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, read_body};
use super::state::AppState;
use crate::adapters::{InboundError, InboundMessage};
use crate::domain::{
    ActivityId, Channel, ChannelId, ChannelStatus, ConversationId, ConversationStatus, Direction,
    FieldError, NewActivity, TenantStatus,
};
use crate::ingest::IngestRequest;
use crate::store::{NewConversation, StoreError};

/// The answer to an accepted inbound request.
#[derive(Serialize, ToSchema)]
pub struct InboundAccepted {
    /// Always `accepted`.
    pub status: &'static str,
    /// The activities of the request's messages, in order (existing ones for replays).
    pub activity_ids: Vec<ActivityId>,
}

fn no_channel() -> ApiError {
    ApiError::not_found("channel")
}

/// The channel, if it exists, is active and belongs to an active tenant; anything else
/// looks like a missing channel to the sender.
async fn active_channel(state: &AppState, id: ChannelId) -> ApiResult<Channel> {
    let channel = match state.store.get_channel_unscoped(id).await {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(no_channel()),
        Err(e) => return Err(e.into()),
    };
    let tenant = state.store.get_tenant(channel.tenant_id).await?;
    if channel.status != ChannelStatus::Active || tenant.status != TenantStatus::Active {
        return Err(no_channel());
    }
    Ok(channel)
}

fn inbound_error(channel: &Channel, err: InboundError) -> ApiError {
    match err {
        InboundError::Unauthorized(reason) => {
            // The reason names what failed, never the secret or the signature itself.
            tracing::warn!(channel_id = %channel.id, %reason, "inbound request refused");
            ApiError::unauthorized("invalid_signature", reason)
        }
        InboundError::Forbidden(reason) => ApiError::forbidden("forbidden", reason),
        InboundError::Malformed(reason) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_payload", reason)
        }
        InboundError::NotSupported => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{} channels take no inbound webhooks", channel.kind),
        ),
    }
}

fn new_activity(message: &InboundMessage) -> NewActivity {
    NewActivity {
        kind: message.kind,
        direction: Direction::Inbound,
        sender: message.sender.clone(),
        text: message.text.clone(),
        attachments: message.attachments.clone(),
        metadata: message.metadata.clone(),
        idempotency_key: message.provider_id.clone(),
    }
}

/// The conversation a message belongs to: the one it names, else the sender's active
/// conversation on this channel, else a new one.
async fn resolve_conversation(
    state: &AppState,
    channel: &Channel,
    message: &InboundMessage,
) -> ApiResult<ConversationId> {
    if let Some(id) = message.conversation_id {
        return Ok(id);
    }
    let tenant = channel.tenant_id;
    if let Some(found) = state
        .store
        .find_active_conversation(tenant, channel.id, &message.external_id)
        .await?
    {
        return Ok(found.id);
    }
    let new = NewConversation {
        channel_id: channel.id,
        external_id: Some(message.external_id.clone()),
        metadata: json!({}),
    };
    match state.store.insert_conversation(tenant, new).await {
        Ok(created) => Ok(created.id),
        // Another request of the same sender opened it just now.
        Err(StoreError::Conflict { .. }) => state
            .store
            .find_active_conversation(tenant, channel.id, &message.external_id)
            .await?
            .map(|c| c.id)
            .ok_or_else(|| ApiError::internal(&"conversation vanished after a conflict")),
        Err(e) => Err(e.into()),
    }
}

/// Receive messages from the channel's external side (DESIGN.md §3 "Inbound").
#[utoipa::path(post, path = "/channels/{id}/inbound", tag = "inbound", params(("id" = ChannelId, Path)),
    request_body(content = Object, description = "The channel type's inbound format", content_type = "application/json"),
    responses((status = 201, body = InboundAccepted), (status = 400, body = crate::http::error::ErrorBody),
              (status = 401, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody)))]
async fn receive_inbound(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<(StatusCode, axum::Json<InboundAccepted>)> {
    let channel = active_channel(&state, id).await?;
    let body = read_body(request, &state).await?;
    let adapter = state.adapters.get(channel.kind);
    let now = chrono::Utc::now().timestamp();
    adapter
        .verify_inbound(&channel, &headers, &body, now)
        .map_err(|e| inbound_error(&channel, e))?;
    let batch = adapter
        .parse_inbound(&channel, &body)
        .map_err(|e| inbound_error(&channel, e))?;

    // Check every message before writing any.
    let mut errors = Vec::new();
    for (i, message) in batch.messages.iter().enumerate() {
        errors.extend(
            new_activity(message)
                .validate()
                .into_iter()
                .map(|e| FieldError::new(format!("messages[{i}].{}", e.field), e.message)),
        );
        if let Some(conversation_id) = message.conversation_id {
            match state
                .store
                .get_conversation(channel.tenant_id, conversation_id)
                .await
            {
                Ok(c) if c.channel_id == channel.id && c.status == ConversationStatus::Active => {}
                Ok(c) if c.channel_id == channel.id => {
                    return Err(ApiError::from(
                        crate::ingest::IngestError::ConversationClosed,
                    ));
                }
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(ApiError::not_found("conversation"));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }

    let mut activity_ids = Vec::with_capacity(batch.messages.len());
    for message in &batch.messages {
        let conversation_id = resolve_conversation(&state, &channel, message).await?;
        let request = IngestRequest {
            tenant_id: channel.tenant_id,
            conversation_id,
            activity: new_activity(message),
            origin_channel: Some(channel.id),
        };
        activity_ids.push(state.ingest.ingest(request).await?.activity().id);
    }
    tracing::info!(channel_id = %channel.id, messages = activity_ids.len(), "inbound accepted");
    Ok((
        StatusCode::CREATED,
        axum::Json(InboundAccepted {
            status: "accepted",
            activity_ids,
        }),
    ))
}

/// Reachability check for senders that probe the URL with `GET`.
#[utoipa::path(get, path = "/channels/{id}/inbound", tag = "inbound", params(("id" = ChannelId, Path)),
    responses((status = 200, description = "The channel takes inbound requests"), (status = 404, body = crate::http::error::ErrorBody)))]
async fn probe_inbound(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    active_channel(&state, id).await?;
    Ok(axum::Json(json!({"status": "ok"})))
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive_inbound, probe_inbound))
}
