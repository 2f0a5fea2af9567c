//! The admin JSON API under `/admin/api`: the panel's operations for scripts (e.g.
//! onboarding a tenant), behind the same guard. With a password set, scripts send it
//! as `Authorization: Bearer`.
//!
//! Decoding and JSON only: every change is a function of [`crate::operations`], the
//! same the pages and the CLI call, and `http::error` picks the status codes.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::guard::AdminContext;
use crate::domain::{
    ChannelId, ChannelStatus, ChannelType, Conversation, ConversationId, Delivery, DeliveryId,
    DeliveryStatus, Route, RouteDirection, RouteId, Tenant, TenantId, TenantStatus,
};
use crate::http::api::{ChannelCreated, ChannelOut, Data, Page, page_limit};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery};
use crate::http::state::AppState;
use crate::ingest::StatusCause;
use crate::operations::channels::{self, ChannelIn};
use crate::operations::dashboard::{self, Stats};
use crate::operations::tenants::{self, TenantWithKey};
use crate::operations::{conversations, deliveries, routes as route_ops};
use crate::store::{ChannelFilter, ConversationFilter};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantIn {
    pub name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantStatusIn {
    pub status: TenantStatus,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminChannelIn {
    pub tenant_id: TenantId,
    #[serde(flatten)]
    pub channel: ChannelIn,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminChannelQuery {
    pub tenant_id: Option<TenantId>,
    #[serde(rename = "type")]
    #[param(rename = "type", inline)]
    pub kind: Option<ChannelType>,
}

/// How many deliveries an action queued again.
#[derive(Serialize, ToSchema)]
pub struct Retried {
    pub retried: u64,
}

/// Delivery counts and activity rate, as on the dashboard.
#[utoipa::path(get, path = "/stats", tag = "admin", responses((status = 200, body = Data<Stats>)))]
async fn get_stats(State(state): State<AppState>) -> ApiResult<axum::Json<Data<Stats>>> {
    Ok(Data::new(dashboard::stats(&state.store).await?))
}

/// Every tenant.
#[utoipa::path(get, path = "/tenants", tag = "admin", responses((status = 200, body = Data<Vec<Tenant>>)))]
async fn list_tenants(State(state): State<AppState>) -> ApiResult<axum::Json<Data<Vec<Tenant>>>> {
    Ok(Data::new(state.store.list_tenants().await?))
}

/// Create a tenant; the API key is in this answer only.
#[utoipa::path(post, path = "/tenants", tag = "admin", request_body = TenantIn,
    responses((status = 201, body = Data<TenantWithKey>),
        (status = 409, description = "`tenant_exists`: another tenant has this name, compared without case", body = crate::http::error::ErrorBody),
        (status = 422, body = crate::http::error::ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TenantIn>,
) -> ApiResult<(StatusCode, axum::Json<Data<TenantWithKey>>)> {
    let created = tenants::create(&state.store, &body.name).await?;
    Ok((StatusCode::CREATED, Data::new(created)))
}

/// Enable or disable a tenant.
#[utoipa::path(post, path = "/tenants/{id}/status", tag = "admin", params(("id" = TenantId, Path)),
    request_body = TenantStatusIn, responses((status = 200, body = Data<Tenant>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn set_tenant_status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<TenantId>,
    ApiJson(body): ApiJson<TenantStatusIn>,
) -> ApiResult<axum::Json<Data<Tenant>>> {
    Ok(Data::new(
        tenants::set_status(&state.store, id, body.status).await?,
    ))
}

/// Replace a tenant's API key; the old one stops working.
#[utoipa::path(post, path = "/tenants/{id}/rotate_key", tag = "admin", params(("id" = TenantId, Path)),
    responses((status = 200, body = Data<TenantWithKey>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn rotate_tenant_key(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<TenantId>,
) -> ApiResult<axum::Json<Data<TenantWithKey>>> {
    Ok(Data::new(tenants::rotate_key(&state.store, id).await?))
}

/// Channels of one tenant or of all, optionally of one type (first 500).
#[utoipa::path(get, path = "/channels", tag = "admin", params(AdminChannelQuery),
    responses((status = 200, body = Data<Vec<ChannelOut>>)))]
async fn list_channels(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AdminChannelQuery>,
) -> ApiResult<axum::Json<Data<Vec<ChannelOut>>>> {
    let channels = match q.tenant_id {
        Some(t) => {
            let filter = ChannelFilter {
                kind: q.kind,
                limit: 500,
                ..ChannelFilter::default()
            };
            state.store.list_channels(t, &filter).await?
        }
        None => state.store.list_all_channels(q.kind, None, 500).await?,
    };
    Ok(Data::new(
        channels.into_iter().map(|c| state.channel_out(c)).collect(),
    ))
}

/// Create a channel for a tenant, validated by its adapter.
#[utoipa::path(post, path = "/channels", tag = "admin", request_body = AdminChannelIn,
    responses((status = 201, body = Data<ChannelCreated>), (status = 404, body = crate::http::error::ErrorBody),
              (status = 422, body = crate::http::error::ErrorBody)))]
async fn create_channel(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AdminChannelIn>,
) -> ApiResult<(StatusCode, axum::Json<Data<ChannelCreated>>)> {
    let created =
        channels::create(&state.store, &state.adapters, body.tenant_id, &body.channel).await?;
    Ok((
        StatusCode::CREATED,
        Data::new(state.channel_created(created)),
    ))
}

/// Queue every failed delivery of a channel again.
#[utoipa::path(post, path = "/channels/{id}/retry_failed", tag = "admin", params(("id" = ChannelId, Path)),
    responses((status = 200, body = Data<Retried>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn retry_channel_failures(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<Retried>>> {
    let retried = deliveries::retry_channel(&state.store, &state.waker, id).await?;
    Ok(Data::new(Retried { retried }))
}

/// Queue one failed delivery again.
#[utoipa::path(post, path = "/deliveries/{id}/retry", tag = "admin", params(("id" = DeliveryId, Path)),
    responses((status = 200, body = Data<crate::domain::Delivery>), (status = 404, body = crate::http::error::ErrorBody),
              (status = 409, body = crate::http::error::ErrorBody)))]
async fn retry_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<DeliveryId>,
) -> ApiResult<axum::Json<Data<crate::domain::Delivery>>> {
    let tenant = deliveries::tenant_of(&state.store, id).await?;
    Ok(Data::new(
        deliveries::retry(&state.store, &state.waker, tenant, id).await?,
    ))
}

/// Close a conversation, recorded as its `conversationUpdate` activity.
#[utoipa::path(post, path = "/conversations/{id}/close", tag = "admin", params(("id" = ConversationId, Path)),
    responses((status = 200, body = Data<crate::domain::Conversation>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn close_conversation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
) -> ApiResult<axum::Json<Data<crate::domain::Conversation>>> {
    let tenant = conversations::tenant_of(&state.store, id).await?;
    Ok(Data::new(
        conversations::close(&state.ingest, tenant, id, StatusCause::Admin).await?,
    ))
}

/// Reopen a closed conversation, recorded as its `conversationUpdate` activity.
#[utoipa::path(post, path = "/conversations/{id}/reopen", tag = "admin", params(("id" = ConversationId, Path)),
    responses((status = 200, body = Data<crate::domain::Conversation>), (status = 404, body = crate::http::error::ErrorBody),
              (status = 409, body = crate::http::error::ErrorBody,
               description = "`conversation_active`: not closed; `conversation_exists`: another active conversation holds its external_id")))]
async fn reopen_conversation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
) -> ApiResult<axum::Json<Data<crate::domain::Conversation>>> {
    let tenant = conversations::tenant_of(&state.store, id).await?;
    Ok(Data::new(
        conversations::reopen(&state.ingest, tenant, id, StatusCause::Admin).await?,
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminRouteIn {
    pub tenant_id: TenantId,
    pub source_channel_id: ChannelId,
    pub target_channel_id: ChannelId,
    /// `any` when omitted.
    pub direction: Option<RouteDirection>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantScoped {
    pub tenant_id: TenantId,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminListQuery {
    pub tenant_id: TenantId,
    pub channel_id: Option<ChannelId>,
    /// A conversation status (`active`, `closed`) or delivery status (`pending`,
    /// `delivered`, `failed`), by endpoint.
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<uuid::Uuid>,
    pub limit: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelStatusIn {
    pub status: ChannelStatus,
}

fn parse_status<T: std::str::FromStr<Err = String>>(s: Option<&str>) -> ApiResult<Option<T>> {
    s.map(|s| s.parse::<T>()).transpose().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("status: {e}"),
        )
    })
}

/// A tenant's routes.
#[utoipa::path(get, path = "/routes", tag = "admin", params(TenantScoped),
    responses((status = 200, body = Data<Vec<Route>>)))]
async fn list_routes(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<TenantScoped>,
) -> ApiResult<axum::Json<Data<Vec<Route>>>> {
    Ok(Data::new(
        state
            .store
            .list_routes(q.tenant_id, None, None, 500)
            .await?,
    ))
}

/// Create a route between two active channels of a tenant (no cycles).
#[utoipa::path(post, path = "/routes", tag = "admin", request_body = AdminRouteIn,
    responses((status = 201, body = Data<Route>), (status = 404, body = crate::http::error::ErrorBody),
              (status = 409, body = crate::http::error::ErrorBody), (status = 422, body = crate::http::error::ErrorBody)))]
async fn create_route(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<AdminRouteIn>,
) -> ApiResult<(StatusCode, axum::Json<Data<Route>>)> {
    let direction = body.direction.unwrap_or(RouteDirection::Any);
    let route = route_ops::create(
        &state.store,
        body.tenant_id,
        body.source_channel_id,
        body.target_channel_id,
        direction,
    )
    .await?;
    Ok((StatusCode::CREATED, Data::new(route)))
}

/// Delete a route of a tenant.
#[utoipa::path(delete, path = "/routes/{id}", tag = "admin", params(("id" = RouteId, Path), TenantScoped),
    responses((status = 204, description = "deleted"), (status = 404, body = crate::http::error::ErrorBody)))]
async fn delete_route(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RouteId>,
    ApiQuery(q): ApiQuery<TenantScoped>,
) -> ApiResult<StatusCode> {
    route_ops::delete(&state.store, q.tenant_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A tenant's conversations, newest first, keyset-paginated.
#[utoipa::path(get, path = "/conversations", tag = "admin", params(AdminListQuery),
    responses((status = 200, body = Page<Conversation>)))]
async fn list_conversations(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AdminListQuery>,
) -> ApiResult<axum::Json<Page<Conversation>>> {
    let limit = page_limit(q.limit);
    let filter = ConversationFilter {
        channel_id: q.channel_id,
        status: parse_status(q.status.as_deref())?,
        external_id: None,
        before: q.cursor.map(ConversationId),
        limit,
    };
    let rows = state.store.list_conversations(q.tenant_id, &filter).await?;
    Ok(Page::new(rows, limit, |c: &Conversation| c.id.to_string()))
}

/// A tenant's deliveries, newest first, keyset-paginated.
#[utoipa::path(get, path = "/deliveries", tag = "admin", params(AdminListQuery),
    responses((status = 200, body = Page<Delivery>)))]
async fn list_deliveries(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AdminListQuery>,
) -> ApiResult<axum::Json<Page<Delivery>>> {
    let limit = page_limit(q.limit);
    let status: Option<DeliveryStatus> = parse_status(q.status.as_deref())?;
    let rows = state
        .store
        .list_deliveries(
            q.tenant_id,
            status,
            q.channel_id,
            q.cursor.map(DeliveryId),
            limit,
        )
        .await?;
    Ok(Page::new(rows, limit, |d: &Delivery| d.id.to_string()))
}

/// Enable or disable a channel.
#[utoipa::path(post, path = "/channels/{id}/status", tag = "admin", params(("id" = ChannelId, Path)),
    request_body = ChannelStatusIn, responses((status = 200, body = Data<ChannelOut>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn set_channel_status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    ApiJson(body): ApiJson<ChannelStatusIn>,
) -> ApiResult<axum::Json<Data<ChannelOut>>> {
    let channel = channels::set_status(&state.store, id, body.status).await?;
    Ok(Data::new(state.channel_out(channel)))
}

/// Replace a channel's secret; the answer shows the new one.
#[utoipa::path(post, path = "/channels/{id}/rotate_secret", tag = "admin", params(("id" = ChannelId, Path)),
    responses((status = 200, body = Data<ChannelCreated>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn rotate_channel_secret(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<ChannelCreated>>> {
    let tenant = channels::get(&state.store, id).await?.tenant_id;
    let rotated = channels::rotate_secret(&state.store, tenant, id).await?;
    Ok(Data::new(state.channel_created(rotated)))
}

/// Whether the caller is logged in (always true past the guard): a cheap probe for scripts.
#[utoipa::path(get, path = "/session", tag = "admin", responses((status = 200, body = Data<bool>)))]
async fn session(Extension(ctx): Extension<AdminContext>) -> axum::Json<Data<bool>> {
    Data::new(ctx.session.authenticated || !ctx.password_required)
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_stats))
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(set_tenant_status))
        .routes(routes!(rotate_tenant_key))
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(retry_channel_failures))
        .routes(routes!(retry_delivery))
        .routes(routes!(close_conversation))
        .routes(routes!(reopen_conversation))
        .routes(routes!(session))
        .routes(routes!(list_routes, create_route))
        .routes(routes!(delete_route))
        .routes(routes!(list_conversations))
        .routes(routes!(list_deliveries))
        .routes(routes!(set_channel_status))
        .routes(routes!(rotate_channel_secret))
}
