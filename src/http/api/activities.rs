//! Activities of a conversation (docs/design.md#api). Creation goes through
//! `ingest`, like every other source of activities.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::domain::{Activity, ActivityId, ActivityType, ConversationId, Direction, NewActivity};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, Caller};
use crate::http::state::AppState;
use crate::ingest::{IngestRequest, Ingested};
use crate::store::StoreError;

/// Sender of activities posted with the API key that name none.
const DEFAULT_APP_SENDER: &str = "app";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityIn {
    /// Defaults to `message`. `conversationUpdate` is recorded by the hub when the
    /// conversation is closed or reopened and refused here (422).
    #[serde(rename = "type")]
    pub kind: Option<ActivityType>,
    /// API key only (default `outbound`); channel and client tokens always post `inbound`.
    pub direction: Option<Direction>,
    /// Id of the author. Client tokens: always the token's user. Channel tokens: defaults
    /// to the conversation's `external_id`. API key: defaults to `app`.
    pub sender: Option<String>,
    pub text: Option<String>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub attachments: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Same as the `x-idempotency-key` header.
    pub idempotency_key: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ActivityQuery {
    /// Return activities after this one: an activity id or a `seq`.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

/// Create an activity (docs/design.md#idempotency, docs/design.md#direction): 201 when created,
/// 200 with the original when the idempotency key was used for the same activity.
#[utoipa::path(post, path = "/conversations/{id}/activities", tag = "activities",
    params(("id" = ConversationId, Path), ("x-idempotency-key" = Option<String>, Header)),
    request_body = ActivityIn, security(("api_key" = []), ("channel_token" = []), ("client_token" = [])),
    responses((status = 201, body = Data<Activity>), (status = 200, description = "idempotent replay", body = Data<Activity>),
              (status = 409, body = crate::http::error::ErrorBody), (status = 422, body = crate::http::error::ErrorBody)))]
async fn create_activity(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(conversation_id): ApiPath<ConversationId>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ActivityIn>,
) -> ApiResult<(StatusCode, axum::Json<Data<Activity>>)> {
    let header_key = match headers.get("x-idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid_field("x-idempotency-key", "must be visible ASCII"))?
                .to_owned(),
        ),
        None => None,
    };
    let idempotency_key = match (header_key, body.idempotency_key) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::invalid_field(
                "idempotency_key",
                "differs from the x-idempotency-key header",
            ));
        }
        (h, b) => h.or(b),
    };

    let (direction, sender, origin_channel) = match &caller {
        Caller::Tenant { .. } => (
            body.direction.unwrap_or(Direction::Outbound),
            body.sender.unwrap_or_else(|| DEFAULT_APP_SENDER.to_owned()),
            None,
        ),
        Caller::Channel { channel_id, .. } | Caller::Client { channel_id, .. } => {
            if body.direction == Some(Direction::Outbound) {
                return Err(ApiError::invalid_field(
                    "direction",
                    "channel and client tokens post inbound activities only",
                ));
            }
            let conversation = state.visible_conversation(&caller, conversation_id).await?;
            let sender = match &caller {
                Caller::Client { user_id, .. } => user_id.clone(),
                _ => match body.sender.or(conversation.external_id) {
                    Some(s) => s,
                    None => {
                        return Err(ApiError::invalid_field(
                            "sender",
                            "is required when the conversation has no external_id",
                        ));
                    }
                },
            };
            (Direction::Inbound, sender, Some(*channel_id))
        }
    };

    let request = IngestRequest {
        tenant_id: caller.tenant_id(),
        conversation_id,
        activity: NewActivity {
            kind: body.kind.unwrap_or(ActivityType::Message),
            direction,
            sender,
            text: body.text,
            attachments: body.attachments.unwrap_or_else(|| json!([])),
            metadata: body.metadata.unwrap_or_else(|| json!({})),
            idempotency_key,
        },
        origin_channel,
    };
    match state.ingest.ingest(request).await? {
        Ingested::Created(activity) => Ok((StatusCode::CREATED, Data::new(activity))),
        Ingested::Replayed(activity) => Ok((StatusCode::OK, Data::new(activity))),
    }
}

/// List a conversation's activities in `seq` order (docs/design.md#ordering).
#[utoipa::path(get, path = "/conversations/{id}/activities", tag = "activities",
    params(("id" = ConversationId, Path), ActivityQuery),
    security(("api_key" = []), ("channel_token" = []), ("client_token" = [])),
    responses((status = 200, body = Page<Activity>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn list_activities(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(conversation_id): ApiPath<ConversationId>,
    ApiQuery(query): ApiQuery<ActivityQuery>,
) -> ApiResult<axum::Json<Page<Activity>>> {
    let conversation = state.visible_conversation(&caller, conversation_id).await?;
    let after_seq = match query.after.as_deref() {
        None | Some("") => 0,
        Some(after) => match (after.parse::<i64>(), after.parse::<ActivityId>()) {
            (Ok(seq), _) if seq >= 0 => seq,
            (_, Ok(id)) => match state.store.get_activity(caller.tenant_id(), id).await {
                Ok(a) if a.conversation_id == conversation.id => a.seq,
                Ok(_) | Err(StoreError::NotFound) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        "`after` names no activity of this conversation",
                    ));
                }
                Err(e) => return Err(e.into()),
            },
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    "`after` must be an activity id or a non-negative seq",
                ));
            }
        },
    };
    let limit = page_limit(query.limit);
    let activities = state
        .store
        .list_activities(caller.tenant_id(), conversation.id, after_seq, limit)
        .await?;
    Ok(Page::new(activities, limit, |a: &Activity| {
        a.seq.to_string()
    }))
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_activity, list_activities))
}
