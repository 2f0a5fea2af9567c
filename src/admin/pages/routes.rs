//! Routes of a tenant: the list with its channels' names, creating and deleting one,
//! through [`crate::operations::routes`].

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Chrome, TenantScope, channel_names, go, opt_parse, tenant_scope};
use crate::admin::forms::CsrfForm;
use crate::admin::guard::AdminContext;
use crate::domain::{Channel, ChannelId, Route, RouteDirection, RouteId, Tenant, TenantId};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::operations::routes as ops;

/// A route with its channels' names.
pub struct RouteRow {
    pub route: Route,
    pub source: String,
    pub target: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "routes.html")]
pub struct RoutesPage {
    chrome: Chrome,
    tenants: Vec<Tenant>,
    tenant: Option<TenantId>,
    channels: Vec<Channel>,
    rows: Vec<RouteRow>,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct TenantQuery {
    tenant: Option<String>,
    notice: Option<String>,
}

async fn routes_page(
    state: &AppState,
    chrome: Chrome,
    tenant: Option<TenantId>,
    error: Option<String>,
) -> ApiResult<RoutesPage> {
    let TenantScope {
        tenants,
        tenant,
        channels,
    } = tenant_scope(state, tenant).await?;
    let routes = match tenant {
        Some(t) => state.store.list_routes(t, None, None, 500).await?,
        None => Vec::new(),
    };
    let names = channel_names(&channels);
    let rows = routes
        .into_iter()
        .map(|r| RouteRow {
            source: names.get(&r.source_channel_id).cloned().unwrap_or_default(),
            target: names.get(&r.target_channel_id).cloned().unwrap_or_default(),
            route: r,
        })
        .collect();
    Ok(RoutesPage {
        chrome,
        tenants,
        tenant,
        channels,
        rows,
        error,
    })
}

pub async fn routes(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<TenantQuery>,
) -> ApiResult<RoutesPage> {
    routes_page(
        &state,
        Chrome::new(&ctx, "routes", q.notice),
        opt_parse(q.tenant.as_deref()),
        None,
    )
    .await
}

pub async fn create_route(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let tenant: Option<TenantId> = opt_parse(form.get("tenant"));
    let source: Option<ChannelId> = opt_parse(form.get("source"));
    let target: Option<ChannelId> = opt_parse(form.get("target"));
    let direction: RouteDirection = opt_parse(form.get("direction")).unwrap_or(RouteDirection::Any);
    let chrome = Chrome::new(&ctx, "routes", None);
    let (Some(tenant), Some(source), Some(target)) = (tenant, source, target) else {
        return Ok(routes_page(
            &state,
            chrome,
            tenant,
            Some("Choose a source and a target channel.".into()),
        )
        .await?
        .into_response());
    };
    match ops::create(&state.store, tenant, source, target, direction).await {
        Ok(_) => Ok(go(
            &format!("/admin/routes?tenant={tenant}"),
            "Route created.",
        )),
        // Shown as the API words it (a cycle, a duplicate, an inactive channel).
        Err(e) => {
            let message = ApiError::from(e).message;
            Ok(routes_page(&state, chrome, Some(tenant), Some(message))
                .await?
                .into_response())
        }
    }
}

pub async fn delete_route(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RouteId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let tenant: TenantId = opt_parse(form.get("tenant"))
        .ok_or_else(|| ApiError::invalid_field("tenant", "is required"))?;
    ops::delete(&state.store, tenant, id).await?;
    Ok(go(
        &format!("/admin/routes?tenant={tenant}"),
        "Route deleted.",
    ))
}
