//! Server-rendered admin pages. Reads go to the store; changes go through the same
//! store methods (and `delivery::outcome`) the REST API uses. Forms post back, then
//! redirect with a `notice`, so a reload never repeats an action — except where a
//! secret is shown once (new tenant key, new channel secret), which is rendered
//! directly and never stored in a URL.

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;

use super::forms::{ConfigField, CsrfForm, FieldKind, config_fields, config_from_form, input_name};
use super::guard::{AdminContext, COOKIE};
use crate::adapters::mask_config;
use crate::auth;
use crate::domain::{
    Activity, Channel, ChannelId, ChannelStatus, ChannelType, Conversation, ConversationId,
    ConversationStatus, Delivery, DeliveryId, DeliveryStatus, FieldError, Route, RouteDirection,
    RouteId, Tenant, TenantId, TenantStatus, Timestamp,
};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::store::{
    ChannelDeliveryStats, ChannelFilter, ChannelUpdate, ConversationFilter, NewChannel, StoreError,
};

/// Rows per list page.
const PAGE: i64 = 50;

/// What every page shows around its content.
pub struct Chrome {
    pub csrf: String,
    pub password_required: bool,
    pub notice: Option<String>,
    pub section: &'static str,
}

impl Chrome {
    fn new(ctx: &AdminContext, section: &'static str, notice: Option<String>) -> Self {
        Self {
            csrf: ctx.csrf.clone(),
            password_required: ctx.password_required,
            notice,
            section,
        }
    }
}

fn go(path: &str, notice: &str) -> Response {
    let q = serde_urlencoded::to_string([("notice", notice)]).unwrap_or_default();
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}{q}")).into_response()
}

fn short(ts: &Timestamp) -> String {
    ts.0.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[derive(Deserialize, Default)]
pub struct Notice {
    notice: Option<String>,
}

// ---------------------------------------------------------------- login

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    chrome: Chrome,
    failed: bool,
}

pub async fn login_form(Extension(ctx): Extension<AdminContext>) -> LoginPage {
    LoginPage {
        chrome: Chrome::new(&ctx, "login", None),
        failed: false,
    }
}

pub async fn login(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    form: CsrfForm,
) -> Response {
    if state
        .admin
        .password_matches(form.get("password").unwrap_or_default())
    {
        // A new session id on login: a planted cookie cannot be promoted.
        let session = state
            .admin
            .new_session(true, chrono::Utc::now().timestamp());
        let mut response = Redirect::to("/admin").into_response();
        response
            .headers_mut()
            .insert(header::SET_COOKIE, state.admin.set_cookie(&session));
        return response;
    }
    tracing::warn!("admin login failed");
    LoginPage {
        chrome: Chrome::new(&ctx, "login", None),
        failed: true,
    }
    .into_response()
}

pub async fn logout(_form: CsrfForm) -> Response {
    let mut response = Redirect::to("/admin/login").into_response();
    if let Ok(v) = format!("{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0").parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

// ---------------------------------------------------------------- dashboard

#[derive(Template, WebTemplate)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    chrome: Chrome,
    pending: i64,
    delivered: i64,
    failed: i64,
    per_minute: i64,
    channels: Vec<ChannelDeliveryStats>,
    failures: Vec<RecentFailure>,
}

/// Counts for the dashboard (also served as JSON for live updates).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
    /// Activities created in the last 60 seconds.
    pub activities_last_minute: i64,
    pub channels: Vec<ChannelDeliveryStats>,
    /// The newest failed deliveries.
    pub recent_failures: Vec<RecentFailure>,
}

/// A failed delivery as the dashboard lists it.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RecentFailure {
    pub delivery_id: DeliveryId,
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    pub channel_name: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// When it failed, as shown on the page.
    pub when: String,
}

pub(super) async fn stats(state: &AppState) -> ApiResult<Stats> {
    let counts: HashMap<String, i64> = state
        .store
        .count_deliveries_by_status()
        .await?
        .into_iter()
        .collect();
    let since = Timestamp::now().minus(std::time::Duration::from_secs(60));
    Ok(Stats {
        pending: counts.get("pending").copied().unwrap_or(0),
        delivered: counts.get("delivered").copied().unwrap_or(0),
        failed: counts.get("failed").copied().unwrap_or(0),
        activities_last_minute: state.store.count_activities_since(since).await?,
        channels: state.store.delivery_stats_by_channel(None, 20).await?,
        recent_failures: state
            .store
            .recent_failed_deliveries(10)
            .await?
            .into_iter()
            .map(|f| RecentFailure {
                when: short(&f.delivery.updated_at),
                delivery_id: f.delivery.id,
                tenant_id: f.delivery.tenant_id,
                channel_id: f.delivery.channel_id,
                channel_name: f.channel_name,
                attempts: f.delivery.attempts,
                last_error: f.delivery.last_error,
            })
            .collect(),
    })
}

pub async fn dashboard(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<Notice>,
) -> ApiResult<DashboardPage> {
    let s = stats(&state).await?;
    Ok(DashboardPage {
        chrome: Chrome::new(&ctx, "dashboard", q.notice),
        pending: s.pending,
        delivered: s.delivered,
        failed: s.failed,
        per_minute: s.activities_last_minute,
        channels: s.channels,
        failures: s.recent_failures,
    })
}

// ---------------------------------------------------------------- tenants

#[derive(Template, WebTemplate)]
#[template(path = "tenants.html")]
pub struct TenantsPage {
    chrome: Chrome,
    tenants: Vec<Tenant>,
    /// A key to show once: (tenant name, key).
    new_key: Option<(String, String)>,
    error: Option<String>,
}

async fn tenants_page(
    state: &AppState,
    chrome: Chrome,
    new_key: Option<(String, String)>,
    error: Option<String>,
) -> ApiResult<TenantsPage> {
    Ok(TenantsPage {
        chrome,
        tenants: state.store.list_tenants().await?,
        new_key,
        error,
    })
}

pub async fn tenants(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<Notice>,
) -> ApiResult<TenantsPage> {
    tenants_page(&state, Chrome::new(&ctx, "tenants", q.notice), None, None).await
}

pub async fn create_tenant(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    form: CsrfForm,
) -> ApiResult<TenantsPage> {
    let chrome = Chrome::new(&ctx, "tenants", None);
    let Some(name) = form.get("name") else {
        return tenants_page(&state, chrome, None, Some("A tenant needs a name.".into())).await;
    };
    let key = auth::generate_api_key();
    let tenant = state
        .store
        .insert_tenant(name, &key.hash, &key.prefix)
        .await?;
    tracing::info!(tenant_id = %tenant.id, "tenant created from the admin panel");
    tenants_page(&state, chrome, Some((tenant.name, key.key)), None).await
}

pub async fn set_tenant_status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<TenantId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let status: TenantStatus = form
        .get("status")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::invalid_field("status", "must be active or inactive"))?;
    let tenant = state
        .store
        .set_tenant_status(id, status)
        .await
        .map_err(ApiError::not_found_as("tenant"))?;
    Ok(go(
        "/admin/tenants",
        &format!("Tenant {} is {}.", tenant.name, tenant.status),
    ))
}

pub async fn rotate_tenant_key(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    ApiPath(id): ApiPath<TenantId>,
    _form: CsrfForm,
) -> ApiResult<TenantsPage> {
    let key = auth::generate_api_key();
    let tenant = state
        .store
        .update_tenant_api_key(id, &key.hash, &key.prefix)
        .await
        .map_err(ApiError::not_found_as("tenant"))?;
    tenants_page(
        &state,
        Chrome::new(&ctx, "tenants", None),
        Some((tenant.name, key.key)),
        None,
    )
    .await
}

// ---------------------------------------------------------------- channels

/// A channel row with its tenant's name.
pub struct ChannelRow {
    pub channel: Channel,
    pub tenant_name: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "channels.html")]
pub struct ChannelsPage {
    chrome: Chrome,
    tenants: Vec<Tenant>,
    types: &'static [ChannelType],
    tenant: Option<TenantId>,
    kind: Option<ChannelType>,
    rows: Vec<ChannelRow>,
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct ChannelsQuery {
    tenant: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    after: Option<ChannelId>,
    notice: Option<String>,
}

fn opt_parse<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
    s.filter(|s| !s.is_empty()).and_then(|s| s.parse().ok())
}

fn tenant_names(tenants: &[Tenant]) -> HashMap<TenantId, String> {
    tenants.iter().map(|t| (t.id, t.name.clone())).collect()
}

pub async fn channels(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<ChannelsQuery>,
) -> ApiResult<ChannelsPage> {
    let tenant: Option<TenantId> = opt_parse(q.tenant.as_deref());
    let kind: Option<ChannelType> = opt_parse(q.kind.as_deref());
    let tenants = state.store.list_tenants().await?;
    let channels = match tenant {
        Some(t) => {
            let filter = ChannelFilter {
                kind,
                status: None,
                after: q.after,
                limit: PAGE,
            };
            state.store.list_channels(t, &filter).await?
        }
        None => state.store.list_all_channels(kind, q.after, PAGE).await?,
    };
    let names = tenant_names(&tenants);
    let next = (channels.len() as i64 == PAGE).then(|| {
        let mut params = vec![(
            "after",
            channels
                .last()
                .map(|c| c.id.to_string())
                .unwrap_or_default(),
        )];
        if let Some(t) = tenant {
            params.push(("tenant", t.to_string()));
        }
        if let Some(k) = kind {
            params.push(("type", k.as_str().to_owned()));
        }
        serde_urlencoded::to_string(params).unwrap_or_default()
    });
    let rows = channels
        .into_iter()
        .map(|c| ChannelRow {
            tenant_name: names.get(&c.tenant_id).cloned().unwrap_or_default(),
            channel: c,
        })
        .collect();
    Ok(ChannelsPage {
        chrome: Chrome::new(&ctx, "channels", q.notice),
        tenants,
        types: ChannelType::ALL,
        tenant,
        kind,
        rows,
        next,
    })
}

/// One channel type's group of fields on the new-channel form.
pub struct TypeFields {
    pub kind: ChannelType,
    pub fields: Vec<FormField>,
}

/// One field on the form, with what was entered and its error.
pub struct FormField {
    pub def: ConfigField,
    pub input: String,
    pub value: String,
    pub error: Option<String>,
}

impl FormField {
    pub fn is_checkbox(&self) -> bool {
        self.def.kind == FieldKind::Checkbox
    }
    pub fn is_lines(&self) -> bool {
        self.def.kind == FieldKind::Lines
    }
    pub fn is_secret(&self) -> bool {
        self.def.kind == FieldKind::Secret
    }
    pub fn choices(&self) -> &'static [&'static str] {
        match self.def.kind {
            FieldKind::Choice(c) => c,
            _ => &[],
        }
    }
    pub fn checked(&self) -> bool {
        !self.value.is_empty()
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "channel_new.html")]
pub struct NewChannelPage {
    chrome: Chrome,
    tenants: Vec<Tenant>,
    tenant: Option<TenantId>,
    selected: ChannelType,
    name: String,
    name_error: Option<String>,
    tenant_error: Option<String>,
    groups: Vec<TypeFields>,
}

fn build_groups(
    form: Option<&CsrfForm>,
    selected: ChannelType,
    errors: &[FieldError],
) -> Vec<TypeFields> {
    ChannelType::ALL
        .iter()
        .map(|&kind| TypeFields {
            kind,
            fields: config_fields(kind)
                .iter()
                .map(|def| {
                    let input = input_name(kind, def);
                    let default_on =
                        def.kind == FieldKind::Checkbox && def.name == "require_signature";
                    let value = match form {
                        // Secrets are never written back into the page.
                        Some(_) if def.kind == FieldKind::Secret => String::new(),
                        Some(f) => f.get(&input).unwrap_or_default().to_owned(),
                        None if default_on => "on".to_owned(),
                        None => String::new(),
                    };
                    let error = (kind == selected)
                        .then(|| {
                            errors
                                .iter()
                                .find(|e| {
                                    e.field == format!("config.{}", def.name)
                                        || e.field.starts_with(&format!("config.{}.", def.name))
                                })
                                .map(|e| e.message.clone())
                        })
                        .flatten();
                    FormField {
                        def: *def,
                        input,
                        value,
                        error,
                    }
                })
                .collect(),
        })
        .collect()
}

#[derive(Deserialize)]
pub struct NewChannelQuery {
    tenant: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

pub async fn new_channel(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<NewChannelQuery>,
) -> ApiResult<NewChannelPage> {
    let selected = opt_parse(q.kind.as_deref()).unwrap_or(ChannelType::Webhook);
    Ok(NewChannelPage {
        chrome: Chrome::new(&ctx, "channels", None),
        tenants: state.store.list_tenants().await?,
        tenant: opt_parse(q.tenant.as_deref()),
        selected,
        name: String::new(),
        name_error: None,
        tenant_error: None,
        groups: build_groups(None, selected, &[]),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "channel.html")]
pub struct ChannelPage {
    chrome: Chrome,
    channel: Channel,
    tenant_name: String,
    config: String,
    token: String,
    inbound_url: String,
    /// A secret to show once (new channel or rotated secret).
    secret: Option<String>,
    stats: Option<ChannelDeliveryStats>,
}

async fn channel_page(
    state: &AppState,
    ctx: &AdminContext,
    id: ChannelId,
    notice: Option<String>,
    secret: Option<String>,
) -> ApiResult<ChannelPage> {
    let channel = state
        .store
        .get_channel_unscoped(id)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    let tenant = state.store.get_tenant(channel.tenant_id).await?;
    let masked = mask_config(
        &channel.config,
        state.adapters.get(channel.kind).secret_fields(),
    );
    let stats = state
        .store
        .delivery_stats_by_channel(Some(channel.id), 1)
        .await?
        .into_iter()
        .next();
    Ok(ChannelPage {
        chrome: Chrome::new(ctx, "channels", notice),
        token: state
            .jwt
            .issue_channel_token(channel.tenant_id, channel.id, &channel.secret),
        inbound_url: format!(
            "{}/api/v1/channels/{}/inbound",
            state.config.public_base(),
            channel.id
        ),
        config: pretty(&masked),
        tenant_name: tenant.name,
        channel,
        secret,
        stats,
    })
}

pub async fn channel(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    ApiPath(id): ApiPath<ChannelId>,
    Query(q): Query<Notice>,
) -> ApiResult<ChannelPage> {
    channel_page(&state, &ctx, id, q.notice, None).await
}

pub async fn create_channel(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let selected: ChannelType = opt_parse(form.get("type")).unwrap_or(ChannelType::Webhook);
    let tenant: Option<TenantId> = opt_parse(form.get("tenant"));
    let name = form.get("name").unwrap_or_default().to_owned();
    let validated = state
        .adapters
        .get(selected)
        .validate_config(&config_from_form(selected, &form));
    let tenant = match tenant {
        Some(t) if state.store.get_tenant(t).await.is_ok() => Some(t),
        _ => None,
    };
    let name_error = name.is_empty().then(|| "is required".to_owned());
    let tenant_error = tenant.is_none().then(|| "choose a tenant".to_owned());
    let (config, tenant) = match (validated, tenant) {
        (Ok(config), Some(tenant)) if name_error.is_none() => (config, tenant),
        (validated, tenant) => {
            let errors = validated.err().unwrap_or_default();
            return Ok(NewChannelPage {
                chrome: Chrome::new(&ctx, "channels", None),
                tenants: state.store.list_tenants().await?,
                tenant,
                selected,
                name,
                name_error,
                tenant_error,
                groups: build_groups(Some(&form), selected, &errors),
            }
            .into_response());
        }
    };
    let secret = auth::generate_channel_secret();
    let channel = state
        .store
        .insert_channel(
            tenant,
            NewChannel {
                name,
                kind: selected,
                secret: secret.clone(),
                config,
            },
        )
        .await?;
    tracing::info!(channel_id = %channel.id, tenant_id = %tenant, "channel created from the admin panel");
    Ok(channel_page(
        &state,
        &ctx,
        channel.id,
        Some("Channel created. Copy the secret now: it is shown once.".into()),
        Some(secret),
    )
    .await?
    .into_response())
}

pub async fn set_channel_status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let status: ChannelStatus = form
        .get("status")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::invalid_field("status", "must be active or inactive"))?;
    let channel = state
        .store
        .get_channel_unscoped(id)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    let update = ChannelUpdate {
        status: Some(status),
        ..ChannelUpdate::default()
    };
    state
        .store
        .update_channel(channel.tenant_id, id, update)
        .await?;
    Ok(go(
        &format!("/admin/channels/{id}"),
        &format!("Channel is {status}."),
    ))
}

pub async fn rotate_channel_secret(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    ApiPath(id): ApiPath<ChannelId>,
    _form: CsrfForm,
) -> ApiResult<ChannelPage> {
    let channel = state
        .store
        .get_channel_unscoped(id)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    let rotated = crate::http::api::rotate_secret_of(&state, channel.tenant_id, id).await?;
    channel_page(
        &state,
        &ctx,
        id,
        Some("Secret rotated; the old secret and channel tokens no longer work.".into()),
        Some(rotated.secret),
    )
    .await
}

pub async fn retry_channel_failures(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    state
        .store
        .get_channel_unscoped(id)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    let n = crate::delivery::retry_all_failed(&state.store, &state.waker, id).await?;
    let back = form
        .get("back")
        .filter(|b| b.starts_with("/admin"))
        .unwrap_or("/admin/deliveries")
        .to_owned();
    Ok(go(&back, &format!("{n} failed deliveries queued again.")))
}

/// The filter bar of per-tenant list pages: every tenant, the chosen one (else the
/// first), and the chosen tenant's channels.
struct TenantScope {
    tenants: Vec<Tenant>,
    tenant: Option<TenantId>,
    channels: Vec<Channel>,
}

async fn tenant_channels(state: &AppState, tenant: TenantId) -> ApiResult<Vec<Channel>> {
    let filter = ChannelFilter {
        limit: 500,
        ..ChannelFilter::default()
    };
    Ok(state.store.list_channels(tenant, &filter).await?)
}

async fn tenant_scope(state: &AppState, requested: Option<TenantId>) -> ApiResult<TenantScope> {
    let tenants = state.store.list_tenants().await?;
    let tenant = requested.or_else(|| tenants.first().map(|t| t.id));
    let channels = match tenant {
        Some(t) => tenant_channels(state, t).await?,
        None => Vec::new(),
    };
    Ok(TenantScope {
        tenants,
        tenant,
        channels,
    })
}

// ---------------------------------------------------------------- routes

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
    let names: HashMap<ChannelId, String> =
        channels.iter().map(|c| (c.id, c.name.clone())).collect();
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
    let result =
        crate::http::api::create_route_checked(&state, tenant, source, target, direction).await;
    match result {
        Ok(_) => Ok(go(
            &format!("/admin/routes?tenant={tenant}"),
            "Route created.",
        )),
        Err(e) => Ok(routes_page(&state, chrome, Some(tenant), Some(e.message))
            .await?
            .into_response()),
    }
}

pub async fn delete_route(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RouteId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let tenant: TenantId = opt_parse(form.get("tenant"))
        .ok_or_else(|| ApiError::invalid_field("tenant", "is required"))?;
    state
        .store
        .delete_route(tenant, id)
        .await
        .map_err(ApiError::not_found_as("route"))?;
    Ok(go(
        &format!("/admin/routes?tenant={tenant}"),
        "Route deleted.",
    ))
}

// ---------------------------------------------------------------- conversations

#[derive(Template, WebTemplate)]
#[template(path = "conversations.html")]
pub struct ConversationsPage {
    chrome: Chrome,
    tenants: Vec<Tenant>,
    tenant: Option<TenantId>,
    channels: Vec<Channel>,
    channel: Option<ChannelId>,
    status: Option<ConversationStatus>,
    rows: Vec<Conversation>,
    names: HashMap<ChannelId, String>,
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct ConversationsQuery {
    tenant: Option<String>,
    channel: Option<String>,
    status: Option<String>,
    before: Option<ConversationId>,
    notice: Option<String>,
}

pub async fn conversations(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<ConversationsQuery>,
) -> ApiResult<ConversationsPage> {
    let TenantScope {
        tenants,
        tenant,
        channels,
    } = tenant_scope(&state, opt_parse(q.tenant.as_deref())).await?;
    let channel: Option<ChannelId> = opt_parse(q.channel.as_deref());
    let status: Option<ConversationStatus> = opt_parse(q.status.as_deref());
    let rows = match tenant {
        Some(t) => {
            let filter = ConversationFilter {
                channel_id: channel,
                status,
                before: q.before,
                limit: PAGE,
            };
            state.store.list_conversations(t, &filter).await?
        }
        None => Vec::new(),
    };
    let next = (rows.len() as i64 == PAGE).then(|| {
        let mut params = vec![(
            "before",
            rows.last().map(|c| c.id.to_string()).unwrap_or_default(),
        )];
        if let Some(t) = tenant {
            params.push(("tenant", t.to_string()));
        }
        if let Some(c) = channel {
            params.push(("channel", c.to_string()));
        }
        if let Some(s) = status {
            params.push(("status", s.as_str().to_owned()));
        }
        serde_urlencoded::to_string(params).unwrap_or_default()
    });
    Ok(ConversationsPage {
        chrome: Chrome::new(&ctx, "conversations", q.notice),
        names: channels.iter().map(|c| (c.id, c.name.clone())).collect(),
        tenants,
        tenant,
        channels,
        channel,
        status,
        rows,
        next,
    })
}

/// An activity with its deliveries, for the conversation page.
pub struct ActivityRow {
    pub activity: Activity,
    pub deliveries: Vec<Delivery>,
}

#[derive(Template, WebTemplate)]
#[template(path = "conversation.html")]
pub struct ConversationPage {
    chrome: Chrome,
    conversation: Conversation,
    channel_name: String,
    tenant_name: String,
    metadata: String,
    rows: Vec<ActivityRow>,
    names: HashMap<ChannelId, String>,
    next: Option<i64>,
}

#[derive(Deserialize)]
pub struct ConversationQuery {
    after: Option<i64>,
    notice: Option<String>,
}

pub async fn conversation(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    ApiPath(id): ApiPath<ConversationId>,
    Query(q): Query<ConversationQuery>,
) -> ApiResult<ConversationPage> {
    let conversation = state
        .store
        .get_conversation_unscoped(id)
        .await
        .map_err(ApiError::not_found_as("conversation"))?;
    let tenant = conversation.tenant_id;
    let activities = state
        .store
        .list_activities(tenant, id, q.after.unwrap_or(0), PAGE)
        .await?;
    let deliveries = match (activities.first(), activities.last()) {
        (Some(first), Some(last)) => {
            state
                .store
                .list_deliveries_for_seq_range(id, first.seq, last.seq)
                .await?
        }
        _ => Vec::new(),
    };
    let mut by_activity: HashMap<_, Vec<Delivery>> = HashMap::new();
    for d in deliveries {
        by_activity.entry(d.activity_id).or_default().push(d);
    }
    let next = (activities.len() as i64 == PAGE).then(|| activities.last().map_or(0, |a| a.seq));
    let names = tenant_channels(&state, tenant)
        .await?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect::<HashMap<_, _>>();
    Ok(ConversationPage {
        chrome: Chrome::new(&ctx, "conversations", q.notice),
        channel_name: names
            .get(&conversation.channel_id)
            .cloned()
            .unwrap_or_default(),
        tenant_name: state.store.get_tenant(tenant).await?.name,
        metadata: pretty(&conversation.metadata),
        rows: activities
            .into_iter()
            .map(|a| ActivityRow {
                deliveries: by_activity.remove(&a.id).unwrap_or_default(),
                activity: a,
            })
            .collect(),
        names,
        conversation,
        next,
    })
}

pub async fn close_conversation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
    _form: CsrfForm,
) -> ApiResult<Response> {
    let conversation = state
        .store
        .get_conversation_unscoped(id)
        .await
        .map_err(ApiError::not_found_as("conversation"))?;
    state
        .store
        .close_conversation(conversation.tenant_id, id)
        .await?;
    Ok(go(
        &format!("/admin/conversations/{id}"),
        "Conversation closed.",
    ))
}

// ---------------------------------------------------------------- deliveries

#[derive(Template, WebTemplate)]
#[template(path = "deliveries.html")]
pub struct DeliveriesPage {
    chrome: Chrome,
    tenants: Vec<Tenant>,
    tenant: Option<TenantId>,
    channels: Vec<Channel>,
    channel: Option<ChannelId>,
    status: Option<DeliveryStatus>,
    statuses: &'static [DeliveryStatus],
    rows: Vec<Delivery>,
    names: HashMap<ChannelId, String>,
    next: Option<String>,
    back: String,
}

#[derive(Deserialize)]
pub struct DeliveriesQuery {
    tenant: Option<String>,
    channel: Option<String>,
    status: Option<String>,
    before: Option<DeliveryId>,
    notice: Option<String>,
}

pub async fn deliveries(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<DeliveriesQuery>,
) -> ApiResult<DeliveriesPage> {
    let TenantScope {
        tenants,
        tenant,
        channels,
    } = tenant_scope(&state, opt_parse(q.tenant.as_deref())).await?;
    let channel: Option<ChannelId> = opt_parse(q.channel.as_deref());
    // Failed by default: this page is where delivery problems are fixed.
    let status = match q.status.as_deref() {
        None => Some(DeliveryStatus::Failed),
        Some("all") | Some("") => None,
        Some(s) => s.parse().ok(),
    };
    let rows = match tenant {
        Some(t) => {
            state
                .store
                .list_deliveries(t, status, channel, q.before, PAGE)
                .await?
        }
        None => Vec::new(),
    };
    let mut params = Vec::new();
    if let Some(t) = tenant {
        params.push(("tenant", t.to_string()));
    }
    if let Some(c) = channel {
        params.push(("channel", c.to_string()));
    }
    params.push((
        "status",
        status.map_or("all", DeliveryStatus::as_str).to_owned(),
    ));
    let back = format!(
        "/admin/deliveries?{}",
        serde_urlencoded::to_string(&params).unwrap_or_default()
    );
    let next = (rows.len() as i64 == PAGE).then(|| {
        let mut p = params.clone();
        p.push((
            "before",
            rows.last().map(|d| d.id.to_string()).unwrap_or_default(),
        ));
        serde_urlencoded::to_string(p).unwrap_or_default()
    });
    Ok(DeliveriesPage {
        chrome: Chrome::new(&ctx, "deliveries", q.notice),
        names: channels.iter().map(|c| (c.id, c.name.clone())).collect(),
        tenants,
        tenant,
        channels,
        channel,
        status,
        statuses: DeliveryStatus::ALL,
        rows,
        next,
        back,
    })
}

pub async fn retry_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<DeliveryId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let tenant: TenantId = opt_parse(form.get("tenant"))
        .ok_or_else(|| ApiError::invalid_field("tenant", "is required"))?;
    let back = form
        .get("back")
        .filter(|b| b.starts_with("/admin"))
        .unwrap_or("/admin/deliveries")
        .to_owned();
    match crate::delivery::retry_failed(&state.store, &state.waker, tenant, id).await {
        Ok(_) => Ok(go(&back, "Delivery queued again.")),
        Err(StoreError::NotFound) => Ok(go(&back, "That delivery is not failed (any more).")),
        Err(e) => Err(e.into()),
    }
}

/// Helpers the templates call.
pub mod filters {
    use super::*;

    pub fn ts(t: &Timestamp) -> String {
        short(t)
    }
}
