//! Inbound webhooks (docs/design.md#inbound): `POST /api/v1/channels/:id/inbound`
//! verifies the sender's signature, lets the channel's adapter parse the payload, finds
//! or opens each sender's conversation and hands every message to `ingest`, keyed by
//! the provider's message id so re-deliveries create nothing.
//!
//! This edge only authenticates and hands over: adapters parse, `ingest` writes, and
//! status reports go through `delivery::outcome`. Everything that can be checked is
//! checked before the first write, so a refused request writes nothing.
//!
//! Providers (WhatsApp through Meta or Infobip; adapters whose `lenient_inbound` is
//! true) re-send every request not answered 200, for days. Their requests are answered
//! **200** (not 201) once stored, with the same body. What can never be stored is
//! logged and skipped rather than refused, since refusing only brings it back: a JSON
//! payload of an unexpected shape, an item without an id, a message that fails
//! validation. They get 401 for a bad signature, 400 only for a body that is not JSON
//! at all ("unparseable"), and 5xx when the store fails, so that they retry.
//! `GET` answers Meta's verification handshake (`hub.challenge` as `text/plain`, or
//! 403); for other types it is a reachability check.

use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, read_body};
use super::state::AppState;
use crate::adapters::{InboundBatch, InboundError, InboundMessage};
use crate::delivery::{StatusApplied, apply_provider_status};
use crate::domain::{
    ActivityId, Channel, ChannelId, ChannelStatus, ConversationId, ConversationStatus, Direction,
    FieldError, NewActivity, TenantStatus, check_no_nul,
};
use crate::ingest::IngestRequest;
use crate::store::{NewConversation, StoreError};

/// How long a provider is asked to wait before reporting a status again when the
/// report overtook the answer to its send (providers may ignore it: Meta retries on
/// its own schedule).
const EARLY_STATUS_RETRY_SECS: u64 = 5;
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
        InboundError::Forbidden(reason) => {
            tracing::warn!(channel_id = %channel.id, %reason, "inbound handshake refused");
            ApiError::forbidden("forbidden", reason)
        }
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

/// Keys what a signed request carries without a provider id by the request's
/// signature: the same signed request again (a replay, or a sender's retry) then
/// finds the activities it created instead of creating them twice.
fn key_unidentified(batch: &mut InboundBatch, signature: Option<&str>) {
    let Some(signature) = signature else {
        return;
    };
    let digest = Sha256::digest(signature.as_bytes());
    let request = hex::encode(&digest[..16]);
    for (i, message) in batch.messages.iter_mut().enumerate() {
        if message.provider_id.is_none() {
            message.provider_id = Some(format!("signed:{request}:{i}"));
        }
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

/// Every rule a message breaks: those of its activity, and no U+0000 in what its
/// conversation would be opened with (`external_id`, `contact_name`). Checked for the
/// whole request before the first write, so a refused message opens no conversation.
fn check_message(message: &InboundMessage) -> Vec<FieldError> {
    let mut errors = new_activity(message).validate();
    errors.extend(check_no_nul("external_id", &message.external_id).err());
    if let Some(name) = &message.contact_name {
        errors.extend(check_no_nul("contact_name", name).err());
    }
    errors
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
    let metadata = match &message.contact_name {
        Some(name) => json!({ "contact_name": name }),
        None => json!({}),
    };
    let new = NewConversation {
        channel_id: channel.id,
        external_id: Some(message.external_id.clone()),
        metadata,
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

/// Receive messages from the channel's external side (docs/design.md#inbound).
#[utoipa::path(post, path = "/channels/{id}/inbound", tag = "inbound", params(("id" = ChannelId, Path)),
    request_body(content = Object, description = "The channel type's inbound format", content_type = "application/json"),
    responses((status = 201, body = InboundAccepted), (status = 200, body = InboundAccepted, description = "Accepted from a provider (WhatsApp)"),
              (status = 400, body = crate::http::error::ErrorBody),
              (status = 401, body = crate::http::error::ErrorBody), (status = 404, body = crate::http::error::ErrorBody),
              (status = 503, body = crate::http::error::ErrorBody, description = "`status_before_send`: a provider's status report overtook the answer to its send; everything else was stored, send it again")))]
async fn receive_inbound(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    headers: HeaderMap,
    request: Request,
) -> ApiResult<(StatusCode, axum::Json<InboundAccepted>)> {
    let channel = active_channel(&state, id).await?;
    state.limits.check_inbound(channel.id)?;
    let body = read_body(request, &state).await?;
    let adapter = state.adapters.get(channel.kind);
    let now = chrono::Utc::now().timestamp();
    adapter
        .verify_inbound(&channel, &headers, &body, now)
        .map_err(|e| inbound_error(&channel, e))?;
    let mut batch = adapter
        .parse_inbound(&channel, &body)
        .map_err(|e| inbound_error(&channel, e))?;
    let signature = adapter
        .inbound_signature_header()
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok());
    key_unidentified(&mut batch, signature);
    let lenient = adapter.lenient_inbound();
    for reason in &batch.skipped {
        tracing::warn!(channel_id = %channel.id, %reason, "inbound item skipped");
    }
    drop_unmatchable_statuses(&channel, &mut batch);
    if lenient {
        drop_invalid(&channel, &mut batch);
    } else {
        check_messages(&state, &channel, &batch).await?;
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
        match state.ingest.ingest(request).await {
            Ok(ingested) => activity_ids.push(ingested.activity().id),
            // A provider id re-used for different content, or a conversation closed a
            // moment ago: storing it can never succeed, so a provider is not asked to retry.
            Err(
                e @ (crate::ingest::IngestError::IdempotencyConflict { .. }
                | crate::ingest::IngestError::ConversationClosed),
            ) if lenient => {
                tracing::warn!(channel_id = %channel.id, provider_id = ?message.provider_id, error = %e, "inbound message skipped");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut statuses = 0;
    let mut early = 0;
    for update in &batch.statuses {
        match apply_provider_status(
            &state.store,
            &state.pubsub,
            channel.tenant_id,
            channel.id,
            update,
        )
        .await?
        {
            StatusApplied::Updated(_) => statuses += 1,
            StatusApplied::Stale => {}
            StatusApplied::Unknown => {
                tracing::info!(channel_id = %channel.id, provider_id = %update.provider_id, "status report for an unknown message");
            }
            StatusApplied::Early => early += 1,
        }
    }
    if early > 0 {
        // Everything else of the request is stored, and idempotent when sent again.
        tracing::info!(channel_id = %channel.id, early, "status reports ahead of their send's answer: asking for a retry");
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "status_before_send",
            "a status report arrived before the answer to its send was recorded; send it again",
        );
        err.retry_after = Some(EARLY_STATUS_RETRY_SECS);
        return Err(err);
    }
    tracing::info!(channel_id = %channel.id, messages = activity_ids.len(), statuses, "inbound accepted");
    let status = if lenient {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(InboundAccepted {
            status: "accepted",
            activity_ids,
        }),
    ))
}

/// Generic channels: every message valid and its named conversation usable, or the
/// whole request is refused before anything is written.
async fn check_messages(
    state: &AppState,
    channel: &Channel,
    batch: &InboundBatch,
) -> ApiResult<()> {
    let mut errors = Vec::new();
    for (i, message) in batch.messages.iter().enumerate() {
        errors.extend(
            check_message(message)
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
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errors))
    }
}

/// Providers: messages that can never be stored are logged and left out.
fn drop_invalid(channel: &Channel, batch: &mut InboundBatch) {
    batch.messages.retain(|message| {
        let errors = check_message(message);
        if !errors.is_empty() {
            let reason = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(channel_id = %channel.id, provider_id = ?message.provider_id, %reason, "inbound message skipped");
        }
        errors.is_empty()
    });
}

/// Status reports holding U+0000 (in the message id, timestamp or error) can never be
/// matched or stored: logged and left out, whatever the channel type.
fn drop_unmatchable_statuses(channel: &Channel, batch: &mut InboundBatch) {
    batch.statuses.retain(|update| {
        let texts = [
            Some(update.provider_id.as_str()),
            update.timestamp.as_deref(),
            update.error.as_deref(),
        ];
        let clean = texts.into_iter().flatten().all(|t| !t.contains('\0'));
        if !clean {
            tracing::warn!(channel_id = %channel.id, "status report holding U+0000 skipped");
        }
        clean
    });
}

/// Reachability check for senders that probe the URL with `GET`, and Meta's webhook
/// verification handshake (docs/protocols.md#meta-verification-handshake).
#[utoipa::path(get, path = "/channels/{id}/inbound", tag = "inbound", params(("id" = ChannelId, Path)),
    responses((status = 200, description = "The channel takes inbound requests; for whatsapp_meta, the `hub.challenge` as text/plain"),
              (status = 403, body = crate::http::error::ErrorBody, description = "whatsapp_meta: wrong hub.mode or hub.verify_token"),
              (status = 404, body = crate::http::error::ErrorBody)))]
async fn probe_inbound(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let channel = active_channel(&state, id).await?;
    // Parsed by hand: the names contain dots (`hub.mode`).
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let answer = state
        .adapters
        .get(channel.kind)
        .verify_subscription(&channel, &params)
        .map_err(|e| inbound_error(&channel, e))?;
    Ok(match answer {
        Some(challenge) => {
            tracing::info!(channel_id = %channel.id, "webhook subscription verified");
            ([(header::CONTENT_TYPE, "text/plain")], challenge).into_response()
        }
        None => axum::Json(json!({"status": "ok"})).into_response(),
    })
}

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive_inbound, probe_inbound))
}
