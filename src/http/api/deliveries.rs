//! Deliveries: status per activity, the tenant's dead letters, each delivery's attempt
//! log, retrying one now and replaying a channel's failures (docs/design.md#delivery,
//! docs/design.md#api).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::domain::{
    ActivityId, ChannelId, Delivery, DeliveryAttempt, DeliveryId, DeliveryStatus, Timestamp,
};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, TenantAuth};
use crate::http::state::AppState;
use crate::operations;
use crate::operations::deliveries::ReplayWindow;
use crate::store::StoreError;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// `failed` lists the dead letters.
    #[param(inline)]
    pub status: Option<DeliveryStatus>,
    /// Only deliveries to this channel.
    pub channel_id: Option<ChannelId>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<DeliveryId>,
    pub limit: Option<i64>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptQuery {
    /// `next_cursor` of the previous page: the attempt number to continue after.
    pub cursor: Option<i32>,
    pub limit: Option<i64>,
}

/// Which failed deliveries of a channel to queue again: those of activities created at
/// `since` or later, and before `until` when given.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayIn {
    /// RFC 3339, e.g. `2026-12-03T09:00:00Z`.
    pub since: Timestamp,
    /// RFC 3339; later than `since`.
    pub until: Option<Timestamp>,
}

#[derive(Serialize, ToSchema)]
pub struct ReplayOut {
    /// How many failed deliveries were queued again.
    pub requeued: u64,
}

/// The deliveries of one activity: one per target channel, with status and attempts.
#[utoipa::path(get, path = "/activities/{id}/deliveries", tag = "deliveries", params(("id" = ActivityId, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Data<Vec<Delivery>>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn list_activity_deliveries(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ActivityId>,
) -> ApiResult<axum::Json<Data<Vec<Delivery>>>> {
    match state.store.get_activity(auth.tenant_id, id).await {
        Ok(_) => {}
        Err(StoreError::NotFound) => return Err(ApiError::not_found("activity")),
        Err(e) => return Err(e.into()),
    }
    let deliveries = state
        .store
        .list_deliveries_for_activity(auth.tenant_id, id)
        .await?;
    Ok(Data::new(deliveries))
}

/// List the tenant's deliveries, newest first, keyset-paginated; `?status=failed` are
/// the dead letters (docs/design.md#api).
#[utoipa::path(get, path = "/deliveries", tag = "deliveries", params(DeliveryQuery),
    security(("api_key" = [])), responses((status = 200, body = Page<Delivery>)))]
async fn list_deliveries(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiQuery(query): ApiQuery<DeliveryQuery>,
) -> ApiResult<axum::Json<Page<Delivery>>> {
    let limit = page_limit(query.limit);
    let deliveries = state
        .store
        .list_deliveries(
            auth.tenant_id,
            query.status,
            query.channel_id,
            query.cursor,
            limit,
        )
        .await?;
    Ok(Page::new(deliveries, limit, |d: &Delivery| {
        d.id.to_string()
    }))
}

/// Retry a delivery now (docs/design.md#delivery: an operator can retry a failed
/// delivery). A failed one is queued again; a pending one waiting for its next attempt
/// (after its receiver was fixed, say) becomes due at once instead of after its
/// backoff. Either gets a fresh budget of 5 attempts, numbered on from its last one;
/// `last_error` is kept. A delivered one is 409 `delivery_not_failed`; one whose
/// attempt is under way right now, 409 `delivery_in_flight`.
#[utoipa::path(post, path = "/deliveries/{id}/retry", tag = "deliveries", params(("id" = DeliveryId, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Data<Delivery>), (status = 400, body = crate::http::error::ErrorBody),
              (status = 404, body = crate::http::error::ErrorBody),
              (status = 409, body = crate::http::error::ErrorBody)))]
async fn retry_delivery(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<DeliveryId>,
) -> ApiResult<axum::Json<Data<Delivery>>> {
    let retried =
        operations::deliveries::retry(&state.store, &state.waker, auth.tenant_id, id).await?;
    Ok(Data::new(retried))
}

/// The attempt log of a delivery, oldest first, keyset-paginated by attempt number:
/// when each attempt started, how long it took, what it recorded, the receiver's HTTP
/// status (none for a transport error) and the first 1 KiB of its answer, and the node
/// that made it. Attempts are numbered over the delivery's life, across retries.
#[utoipa::path(get, path = "/deliveries/{id}/attempts", tag = "deliveries",
    params(("id" = DeliveryId, Path), AttemptQuery), security(("api_key" = [])),
    responses((status = 200, body = Page<DeliveryAttempt>), (status = 400, body = crate::http::error::ErrorBody),
              (status = 404, body = crate::http::error::ErrorBody)))]
async fn list_delivery_attempts(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<DeliveryId>,
    ApiQuery(query): ApiQuery<AttemptQuery>,
) -> ApiResult<axum::Json<Page<DeliveryAttempt>>> {
    state
        .store
        .get_delivery(auth.tenant_id, id)
        .await
        .map_err(ApiError::not_found_as("delivery"))?;
    let limit = page_limit(query.limit);
    let attempts = state
        .store
        .list_delivery_attempts(auth.tenant_id, id, query.cursor.unwrap_or(0), limit)
        .await?;
    Ok(Page::new(attempts, limit, |a: &DeliveryAttempt| {
        a.attempt.to_string()
    }))
}

/// Replay a channel's failed deliveries: those of activities created in
/// `[since, until)` are queued again, each with a fresh budget of attempts, in batches
/// of 1,000 per transaction. Deliveries of one conversation keep their order. Answers
/// how many were requeued.
#[utoipa::path(post, path = "/channels/{id}/deliveries/retry", tag = "deliveries",
    params(("id" = ChannelId, Path)), request_body = ReplayIn, security(("api_key" = [])),
    responses((status = 200, body = Data<ReplayOut>), (status = 400, body = crate::http::error::ErrorBody),
              (status = 404, body = crate::http::error::ErrorBody),
              (status = 422, body = crate::http::error::ErrorBody)))]
async fn replay_channel_deliveries(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
    ApiJson(body): ApiJson<ReplayIn>,
) -> ApiResult<axum::Json<Data<ReplayOut>>> {
    let window = ReplayWindow {
        since: Some(body.since),
        until: body.until,
    };
    let requeued = operations::deliveries::replay_channel(
        &state.store,
        &state.waker,
        auth.tenant_id,
        id,
        window,
    )
    .await?;
    Ok(Data::new(ReplayOut { requeued }))
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_activity_deliveries))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
        .routes(routes!(list_delivery_attempts))
        .routes(routes!(replay_channel_deliveries))
}
