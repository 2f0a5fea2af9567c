//! Conversations (docs/design.md#api).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::domain::{
    ChannelId, ChannelStatus, Conversation, ConversationId, ConversationStatus, FieldError,
    MAX_METADATA_BYTES, check_json_no_nul, check_no_nul, normalise_external_id,
};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, Caller, TenantAuth};
use crate::http::state::AppState;
use crate::ingest::StatusCause;
use crate::operations;
use crate::store::{ConversationFilter, ExternalIdSearch, NewConversation, StoreError};

/// Longest `external_id`, in characters.
const MAX_EXTERNAL_ID_CHARS: usize = 255;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationIn {
    /// Required with the API key; implied by a channel token.
    pub channel_id: Option<ChannelId>,
    /// The external party's id on the channel (phone number, user id, ...). On
    /// WhatsApp channels a phone number in international form, stored as E.164
    /// (`+4915112345678`); elsewhere kept as given.
    pub external_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationQuery {
    pub channel_id: Option<ChannelId>,
    #[param(inline)]
    pub status: Option<ConversationStatus>,
    /// Only the conversations of this external party, of any status, newest first. On
    /// WhatsApp channels compared as a phone number (`0049 151 12345678` finds
    /// `+4915112345678`), elsewhere exactly.
    pub external_id: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<ConversationId>,
    pub limit: Option<i64>,
}

impl AppState {
    /// A conversation the caller may see, or 404 (for other tenants' and out-of-scope
    /// conversations alike).
    pub(crate) async fn visible_conversation(
        &self,
        caller: &Caller,
        id: ConversationId,
    ) -> ApiResult<Conversation> {
        match self.store.get_conversation(caller.tenant_id(), id).await {
            Ok(c) if caller.may_access(&c) => Ok(c),
            Ok(_) | Err(StoreError::NotFound) => Err(ApiError::not_found("conversation")),
            Err(e) => Err(e.into()),
        }
    }
}

fn check_conversation_input(body: &ConversationIn) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(external_id) = &body.external_id
        && (external_id.trim().is_empty() || external_id.chars().count() > MAX_EXTERNAL_ID_CHARS)
    {
        errors.push(FieldError::new(
            "external_id",
            format!("must be 1 to {MAX_EXTERNAL_ID_CHARS} characters"),
        ));
    }
    if let Some(external_id) = &body.external_id {
        errors.extend(check_no_nul("external_id", external_id).err());
    }
    if let Some(metadata) = &body.metadata {
        errors.extend(check_json_no_nul("metadata", metadata).err());
        if !metadata.is_object() {
            errors.push(FieldError::new("metadata", "must be an object"));
        } else if serde_json::to_vec(metadata).map_or(0, |v| v.len()) > MAX_METADATA_BYTES {
            errors.push(FieldError::new(
                "metadata",
                format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"),
            ));
        }
    }
    errors
}

/// Create a conversation on an active channel (docs/design.md#api).
#[utoipa::path(post, path = "/conversations", tag = "conversations", request_body = ConversationIn,
    security(("api_key" = []), ("channel_token" = [])),
    responses((status = 201, body = Data<Conversation>),
              (status = 404, body = crate::http::error::ErrorBody, description = "`not_found`: no such channel for this tenant"),
              (status = 409, body = crate::http::error::ErrorBody, description = "`conversation_exists`: an active conversation holds this external_id on the channel (`details.conversation_id`)"),
              (status = 422, body = crate::http::error::ErrorBody, description = "`validation_failed`; on WhatsApp channels also an `external_id` that is not a phone number in international form")))]
async fn create_conversation(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ConversationIn>,
) -> ApiResult<(StatusCode, axum::Json<Data<Conversation>>)> {
    let tenant_id = caller.tenant_id();
    let channel_id = match (&caller, body.channel_id) {
        (Caller::Tenant { .. }, Some(id)) => id,
        (Caller::Tenant { .. }, None) => {
            return Err(ApiError::invalid_field(
                "channel_id",
                "is required with an API key",
            ));
        }
        (Caller::Channel { channel_id, .. }, None) => *channel_id,
        (Caller::Channel { channel_id, .. }, Some(id)) if id == *channel_id => id,
        (Caller::Channel { .. }, Some(_)) => return Err(ApiError::not_found("channel")),
        (Caller::Client { .. }, _) => {
            return Err(ApiError::forbidden(
                "insufficient_scope",
                "client tokens cannot create conversations",
            ));
        }
    };
    let errors = check_conversation_input(&body);
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let channel = match state.store.get_channel(tenant_id, channel_id).await {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(ApiError::not_found("channel")),
        Err(e) => return Err(e.into()),
    };
    if channel.status != ChannelStatus::Active {
        return Err(ApiError::forbidden(
            "channel_inactive",
            "the channel is inactive",
        ));
    }
    let external_id = body
        .external_id
        .as_deref()
        .map(|raw| normalise_external_id(channel.kind, raw))
        .transpose()
        .map_err(|e| ApiError::invalid_field("external_id", &e.to_string()))?;
    let new = NewConversation {
        channel_id,
        external_id: external_id.clone(),
        metadata: body.metadata.unwrap_or_else(|| json!({})),
    };
    match state.store.insert_conversation(tenant_id, new).await {
        Ok(conversation) => Ok((StatusCode::CREATED, Data::new(conversation))),
        Err(err @ StoreError::Conflict { .. }) => {
            let mut api_err = ApiError::from(err);
            if let Some(external_id) = &external_id
                && let Ok(Some(existing)) = state
                    .store
                    .find_active_conversation(tenant_id, channel_id, external_id)
                    .await
            {
                api_err = api_err.with_details(json!({ "conversation_id": existing.id }));
            }
            Err(api_err)
        }
        Err(e) => Err(e.into()),
    }
}

/// List the tenant's conversations, newest first, keyset-paginated; filtered by
/// channel, status and external party.
#[utoipa::path(get, path = "/conversations", tag = "conversations", params(ConversationQuery),
    security(("api_key" = [])), responses((status = 200, body = Page<Conversation>)))]
async fn list_conversations(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiQuery(query): ApiQuery<ConversationQuery>,
) -> ApiResult<axum::Json<Page<Conversation>>> {
    let limit = page_limit(query.limit);
    let filter = ConversationFilter {
        channel_id: query.channel_id,
        status: query.status,
        external_id: query.external_id.as_deref().map(ExternalIdSearch::new),
        before: query.cursor,
        limit,
    };
    let conversations = state
        .store
        .list_conversations(auth.tenant_id, &filter)
        .await?;
    Ok(Page::new(conversations, limit, |c: &Conversation| {
        c.id.to_string()
    }))
}

/// Read a conversation (any credential that reaches it).
#[utoipa::path(get, path = "/conversations/{id}", tag = "conversations", params(("id" = ConversationId, Path)),
    security(("api_key" = []), ("channel_token" = []), ("client_token" = [])),
    responses((status = 200, body = Data<Conversation>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn get_conversation(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<ConversationId>,
) -> ApiResult<axum::Json<Data<Conversation>>> {
    Ok(Data::new(state.visible_conversation(&caller, id).await?))
}

/// Close a conversation (docs/design.md#api); later posts get 409 `conversation_closed`. The
/// close is the conversation's next activity, a `conversationUpdate` with
/// `metadata.status = "closed"`; closing a closed conversation changes nothing.
#[utoipa::path(post, path = "/conversations/{id}/close", tag = "conversations", params(("id" = ConversationId, Path)),
    security(("api_key" = [])), responses((status = 200, body = Data<Conversation>)))]
async fn close_conversation(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ConversationId>,
) -> ApiResult<axum::Json<Data<Conversation>>> {
    let closed =
        operations::conversations::close(&state.ingest, auth.tenant_id, id, StatusCause::Api)
            .await?;
    Ok(Data::new(closed))
}

/// Reopen a closed conversation, so it takes activities again; recorded as a
/// `conversationUpdate` with `metadata.status = "active"`.
#[utoipa::path(post, path = "/conversations/{id}/reopen", tag = "conversations", params(("id" = ConversationId, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Data<Conversation>),
              (status = 409, body = crate::http::error::ErrorBody,
               description = "`conversation_active`: the conversation is not closed; `conversation_exists`: another active conversation holds its external_id on the channel (`details.conversation_id`)")))]
async fn reopen_conversation(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ConversationId>,
) -> ApiResult<axum::Json<Data<Conversation>>> {
    let reopened =
        operations::conversations::reopen(&state.ingest, auth.tenant_id, id, StatusCause::Api)
            .await?;
    Ok(Data::new(reopened))
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_conversation, list_conversations))
        .routes(routes!(get_conversation))
        .routes(routes!(close_conversation))
        .routes(routes!(reopen_conversation))
}
