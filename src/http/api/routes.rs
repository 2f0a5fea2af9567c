//! Routing rules between a tenant's channels (DESIGN.md §2 "route", §3 "Which channels
//! get a delivery row", §5 "routes"), managed with the API key.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::domain::{
    ChannelId, ChannelStatus, FieldError, Route, RouteDirection, RouteId, TenantId,
};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, TenantAuth};
use crate::http::state::AppState;
use crate::store::StoreError;

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

/// Checks that a route endpoint is a channel of the tenant (404 otherwise, as for a
/// missing one); an inactive channel is a validation error naming `field`.
async fn check_endpoint(
    state: &AppState,
    tenant_id: TenantId,
    field: &str,
    id: ChannelId,
) -> ApiResult<Option<FieldError>> {
    match state.store.get_channel(tenant_id, id).await {
        Ok(c) if c.status == ChannelStatus::Active => Ok(None),
        Ok(_) => Ok(Some(FieldError::new(field, "the channel is inactive"))),
        Err(StoreError::NotFound) => Err(ApiError::not_found("channel")),
        Err(e) => Err(e.into()),
    }
}

/// Create a route between two active channels of the tenant; a route that would close
/// a cycle is refused (DESIGN.md §2 "route", §5 "routes").
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
    let route = create_route_checked(
        &state,
        auth.tenant_id,
        body.source_channel_id,
        body.target_channel_id,
        body.direction.unwrap_or(RouteDirection::Any),
    )
    .await?;
    Ok((StatusCode::CREATED, Data::new(route)))
}

/// Validates and creates a route of a tenant (REST API and admin panel).
pub(crate) async fn create_route_checked(
    state: &AppState,
    tenant_id: TenantId,
    source: ChannelId,
    target: ChannelId,
    direction: RouteDirection,
) -> ApiResult<Route> {
    // Existence first: a channel of another tenant is 404 whatever else is wrong.
    let (source_inactive, target_inactive) = tokio::try_join!(
        check_endpoint(state, tenant_id, "source_channel_id", source),
        check_endpoint(state, tenant_id, "target_channel_id", target),
    )?;
    let mut errors: Vec<FieldError> = source_inactive.into_iter().chain(target_inactive).collect();
    if source == target {
        errors.push(FieldError::new(
            "target_channel_id",
            "must differ from source_channel_id",
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let route = state
        .store
        .insert_route(tenant_id, source, target, direction)
        .await?;
    tracing::info!(route_id = %route.id, tenant_id = %route.tenant_id, %direction, "route created");
    Ok(route)
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
    match state.store.delete_route(auth.tenant_id, id).await {
        Ok(()) => {
            tracing::info!(route_id = %id, tenant_id = %auth.tenant_id, "route deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::NotFound) => Err(ApiError::not_found("route")),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_route, list_routes))
        .routes(routes!(delete_route))
}
