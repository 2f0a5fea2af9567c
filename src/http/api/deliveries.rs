//! Deliveries: status per activity, the tenant's dead letters, and replay (DESIGN.md §3
//! "Delivery", §5 "deliveries").

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::domain::{ActivityId, ChannelId, Delivery, DeliveryId, DeliveryStatus};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiPath, ApiQuery, TenantAuth};
use crate::http::state::AppState;
use crate::operations;
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
/// the dead letters (DESIGN.md §5).
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

/// Retry a failed delivery (DESIGN.md §3 "Delivery": an operator can retry a failed
/// delivery): it is pending again, due now, with its attempts reset and `last_error`
/// kept; any other status is 409 `delivery_not_failed`.
#[utoipa::path(post, path = "/deliveries/{id}/retry", tag = "deliveries", params(("id" = DeliveryId, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Data<Delivery>), (status = 404, body = crate::http::error::ErrorBody),
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

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_activity_deliveries))
        .routes(routes!(list_deliveries))
        .routes(routes!(retry_delivery))
}
