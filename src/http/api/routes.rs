//! Routing rules between a tenant's channels (docs/design.md#data-model, docs/design.md#routing, docs/design.md#api), managed with the API key.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::domain::{ChannelId, Route, RouteDirection, RouteId};
use crate::http::error::ApiResult;
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, TenantAuth};
use crate::http::state::AppState;
use crate::operations;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteIn {
    /// Activities of conversations on this channel are forwarded...
    pub source_channel_id: ChannelId,
    /// ...to this one. Both must be active channels of the tenant.
    pub target_channel_id: ChannelId,
    /// Which activities are forwarded; `any` when omitted.
    pub direction: Option<RouteDirection>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RouteQuery {
    /// Only the routes from this channel.
    pub source_channel_id: Option<ChannelId>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<RouteId>,
    pub limit: Option<i64>,
}

/// Create a route between two active channels of the tenant; a route that would close
/// a cycle is refused (docs/design.md#data-model, docs/design.md#api).
#[utoipa::path(post, path = "/routes", tag = "routes", request_body = RouteIn,
    security(("api_key" = [])),
    responses((status = 201, body = Data<Route>), (status = 404, body = crate::http::error::ErrorBody),
              (status = 409, description = "`route_exists` or `route_cycle`", body = crate::http::error::ErrorBody),
              (status = 422, body = crate::http::error::ErrorBody)))]
async fn create_route(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiJson(body): ApiJson<RouteIn>,
) -> ApiResult<(StatusCode, axum::Json<Data<Route>>)> {
    let route = operations::routes::create(
        &state.store,
        auth.tenant_id,
        body.source_channel_id,
        body.target_channel_id,
        body.direction.unwrap_or(RouteDirection::Any),
    )
    .await?;
    Ok((StatusCode::CREATED, Data::new(route)))
}

/// List the tenant's routes, oldest first, keyset-paginated.
#[utoipa::path(get, path = "/routes", tag = "routes", params(RouteQuery),
    security(("api_key" = [])), responses((status = 200, body = Page<Route>)))]
async fn list_routes(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiQuery(query): ApiQuery<RouteQuery>,
) -> ApiResult<axum::Json<Page<Route>>> {
    let limit = page_limit(query.limit);
    let routes = state
        .store
        .list_routes(auth.tenant_id, query.source_channel_id, query.cursor, limit)
        .await?;
    Ok(Page::new(routes, limit, |r: &Route| r.id.to_string()))
}

/// Delete a route; activities created afterwards are no longer forwarded.
#[utoipa::path(delete, path = "/routes/{id}", tag = "routes", params(("id" = RouteId, Path)),
    security(("api_key" = [])),
    responses((status = 204, description = "deleted"), (status = 404, body = crate::http::error::ErrorBody)))]
async fn delete_route(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<RouteId>,
) -> ApiResult<StatusCode> {
    operations::routes::delete(&state.store, auth.tenant_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_route, list_routes))
        .routes(routes!(delete_route))
}
