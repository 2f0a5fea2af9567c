//! Operational events: the tenant's ops webhook and the list of what happened to its
//! deliveries and channels (docs/operations.md#operational-events).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::domain::{ChannelId, OpsEvent, OpsEventId, OpsEventType, OpsWebhook};
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, ApiQuery, TenantAuth};
use crate::http::state::AppState;
use crate::operations::ops_events;

/// Which channel receives the tenant's operational events.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpsWebhookIn {
    /// One of the tenant's `webhook` channels; its URL, secret, method and headers are
    /// used. A channel without routes receives nothing else.
    pub channel_id: ChannelId,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OpsEventQuery {
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type", inline)]
    pub kind: Option<OpsEventType>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<OpsEventId>,
    pub limit: Option<i64>,
}

/// Set the ops webhook: from now on every operational event of the tenant
/// (`delivery.failed`, `channel.breaker_opened`, `channel.breaker_closed`,
/// `channel.paused`, `channel.resumed`) is posted to this webhook channel as a
/// Standard Webhook signed with its secret, retried on the delivery schedule.
/// Replaces the previous one.
#[utoipa::path(put, path = "/ops-webhook", tag = "operational events", request_body = OpsWebhookIn,
    security(("api_key" = [])),
    responses((status = 200, body = Data<OpsWebhook>),
        (status = 404, description = "no such channel", body = crate::http::error::ErrorBody),
        (status = 422, description = "`validation_failed`: not a webhook channel", body = crate::http::error::ErrorBody)))]
async fn set_ops_webhook(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiJson(body): ApiJson<OpsWebhookIn>,
) -> ApiResult<axum::Json<Data<OpsWebhook>>> {
    let webhook = ops_events::set_webhook(&state.store, auth.tenant_id, body.channel_id).await?;
    Ok(Data::new(webhook))
}

/// The ops webhook, if one is set.
#[utoipa::path(get, path = "/ops-webhook", tag = "operational events", security(("api_key" = [])),
    responses((status = 200, body = Data<OpsWebhook>),
        (status = 404, description = "no ops webhook is set", body = crate::http::error::ErrorBody)))]
async fn get_ops_webhook(
    State(state): State<AppState>,
    auth: TenantAuth,
) -> ApiResult<axum::Json<Data<OpsWebhook>>> {
    Ok(Data::new(
        ops_events::get_webhook(&state.store, auth.tenant_id).await?,
    ))
}

/// Remove the ops webhook. Events are still recorded and listed; those waiting to be
/// sent are given up.
#[utoipa::path(delete, path = "/ops-webhook", tag = "operational events", security(("api_key" = [])),
    responses((status = 204, description = "removed"),
        (status = 404, description = "no ops webhook is set", body = crate::http::error::ErrorBody)))]
async fn delete_ops_webhook(
    State(state): State<AppState>,
    auth: TenantAuth,
) -> ApiResult<StatusCode> {
    ops_events::delete_webhook(&state.store, auth.tenant_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The tenant's operational events, newest first, keyset-paginated, each with where
/// its sending to the ops webhook stands (`webhook: null` when none was set when it
/// happened).
#[utoipa::path(get, path = "/ops-events", tag = "operational events", params(OpsEventQuery),
    security(("api_key" = [])), responses((status = 200, body = Page<OpsEvent>)))]
async fn list_ops_events(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiQuery(query): ApiQuery<OpsEventQuery>,
) -> ApiResult<axum::Json<Page<OpsEvent>>> {
    let limit = page_limit(query.limit);
    let events = ops_events::list(
        &state.store,
        auth.tenant_id,
        query.kind,
        query.cursor,
        limit,
    )
    .await?;
    Ok(Page::new(events, limit, |e: &OpsEvent| e.id.to_string()))
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            set_ops_webhook,
            get_ops_webhook,
            delete_ops_webhook
        ))
        .routes(routes!(list_ops_events))
}
