//! Delivery status of activities (DESIGN.md §5 "deliveries").

use axum::extract::State;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::Data;
use crate::domain::{ActivityId, Delivery};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiPath, TenantAuth};
use crate::http::state::AppState;
use crate::store::StoreError;

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

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_activity_deliveries))
}
