//! Channels: the list (all tenants or one, by type), the new-channel form whose fields
//! follow the selected type, a channel's page with its delivery health, and its
//! actions (enable/disable, rotate the secret, edit its config, pause and resume
//! deliveries, retry or replay its failed deliveries), through
//! [`crate::operations::channels`] and [`crate::operations::deliveries`].

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Chrome, Notice, PAGE, Pager, back_to, form_status, go, opt_parse, pretty};
use crate::adapters::mask_config;
use crate::admin::forms::{
    ConfigField, CsrfForm, FieldKind, config_fields, config_from_form, input_name,
};
use crate::admin::guard::AdminContext;
use crate::domain::{
    BreakerState, Channel, ChannelHealth, ChannelId, ChannelType, FieldError, HealthState,
    PauseReason, Tenant, TenantId, Timestamp,
};
use crate::http::error::ApiResult;
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::operations::OpError;
use crate::operations::channels::{self as ops, ChannelIn};
use crate::operations::dashboard::display_time;
use crate::operations::deliveries::{self, ReplayWindow};
use crate::store::{ChannelDeliveryStats, ChannelFilter};

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
    let next = Pager::default()
        .filter("tenant", tenant)
        .filter("type", kind)
        .next(&channels, "after", |c| c.id.to_string());
    let names: HashMap<TenantId, String> = tenants.iter().map(|t| (t.id, t.name.clone())).collect();
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
                    let default_on = def.kind == FieldKind::Checkbox && def.checked_by_default;
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

/// A channel's delivery health as its page shows it.
pub struct HealthView {
    pub state: HealthState,
    pub breaker: BreakerState,
    pub pause_reason: Option<PauseReason>,
    pub open_until: Option<String>,
    pub consecutive_failures: i32,
    pub threshold: u32,
    pub failure_rate: String,
    pub last_error: Option<String>,
    pub last_success_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub failing_since: Option<String>,
}

impl HealthView {
    fn new(health: &ChannelHealth, threshold: u32) -> Self {
        let now = Timestamp::now();
        let recent = health.recent(now);
        let shown = |t: &Option<Timestamp>| t.as_ref().map(display_time);
        Self {
            state: health.state(),
            breaker: health.breaker(now),
            pause_reason: health.pause_reason,
            open_until: shown(&health.open_until),
            consecutive_failures: health.consecutive_failures,
            threshold,
            failure_rate: match recent.failure_rate() {
                Some(rate) => format!("{:.0}% of {} attempts", rate * 100.0, recent.attempts),
                None => "no attempts".into(),
            },
            last_error: health.last_error.clone(),
            last_success_at: shown(&health.last_success_at),
            last_failure_at: shown(&health.last_failure_at),
            failing_since: shown(&health.failing_since),
        }
    }

    /// Whether deliveries can be paused (they are not yet).
    pub fn can_pause(&self) -> bool {
        self.state != HealthState::Paused
    }

    /// Whether resuming would change anything: paused, or the breaker open.
    pub fn can_resume(&self) -> bool {
        matches!(self.state, HealthState::Paused | HealthState::Open)
    }
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
    /// The config editor's text: the masked config, or what was submitted (masked
    /// again) when it was refused.
    config_input: String,
    /// Why the submitted config was refused.
    config_errors: Vec<FieldError>,
    /// The replay form's default start, a day ago, as `datetime-local` writes it.
    replay_since: String,
    health: HealthView,
}

async fn channel_page(
    state: &AppState,
    ctx: &AdminContext,
    id: ChannelId,
    notice: Option<String>,
    secret: Option<String>,
) -> ApiResult<ChannelPage> {
    let channel = ops::get(&state.store, id).await?;
    let tenant = state.store.get_tenant(channel.tenant_id).await?;
    // Masked config, token and inbound URL exactly as the API shows them.
    let shown = state.channel_out(channel.clone());
    let stats = state
        .store
        .delivery_stats_by_channel(Some(channel.id), 1)
        .await?
        .into_iter()
        .next();
    let config = pretty(&shown.config);
    let health = ops::health(&state.store, channel.tenant_id, channel.id).await?;
    Ok(ChannelPage {
        health: HealthView::new(&health, state.config.breaker_failures),
        chrome: Chrome::new(ctx, "channels", notice),
        token: shown.token,
        inbound_url: shown.inbound_url,
        config_input: config.clone(),
        config,
        tenant_name: tenant.name,
        channel,
        secret,
        stats,
        config_errors: Vec::new(),
        replay_since: form_time(Timestamp::now().minus(std::time::Duration::from_secs(86_400))),
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
    let input = ChannelIn {
        name: form.get("name").unwrap_or_default().to_owned(),
        kind: selected,
        config: config_from_form(selected, &form),
    };
    let outcome = match tenant {
        Some(t) => ops::create(&state.store, &state.adapters, t, &input).await,
        None => Err(OpError::NotFound("tenant")),
    };
    let (tenant, errors) = match outcome {
        Ok(created) => {
            return Ok(channel_page(
                &state,
                &ctx,
                created.channel.id,
                Some("Channel created. Copy the secret now: it is shown once.".into()),
                Some(created.secret),
            )
            .await?
            .into_response());
        }
        Err(OpError::Invalid(errors)) => (tenant, errors),
        // The tenant is checked first: list the other problems along with it.
        Err(OpError::NotFound("tenant")) => (
            None,
            ops::validate(&state.adapters, &input)
                .err()
                .unwrap_or_default(),
        ),
        Err(e) => return Err(e.into()),
    };
    Ok(NewChannelPage {
        chrome: Chrome::new(&ctx, "channels", None),
        tenants: state.store.list_tenants().await?,
        tenant,
        selected,
        name_error: errors
            .iter()
            .find(|e| e.field == "name")
            .map(|e| e.message.clone()),
        tenant_error: tenant.is_none().then(|| "choose a tenant".to_owned()),
        name: input.name,
        groups: build_groups(Some(&form), selected, &errors),
    }
    .into_response())
}

pub async fn set_channel_status(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let channel = ops::set_status(&state.store, id, form_status(&form)?).await?;
    Ok(go(
        &format!("/admin/channels/{id}"),
        &format!("Channel is {}.", channel.status),
    ))
}

pub async fn rotate_channel_secret(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    ApiPath(id): ApiPath<ChannelId>,
    _form: CsrfForm,
) -> ApiResult<ChannelPage> {
    let tenant = ops::get(&state.store, id).await?.tenant_id;
    let rotated = ops::rotate_secret(&state.store, tenant, id).await?;
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
    let n = deliveries::retry_channel(&state.store, &state.waker, id).await?;
    Ok(go(
        &back_to(&form),
        &format!("{n} failed deliveries queued again."),
    ))
}

pub async fn pause_channel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    _form: CsrfForm,
) -> ApiResult<Response> {
    let tenant = ops::get(&state.store, id).await?.tenant_id;
    ops::pause(&state.store, tenant, id).await?;
    Ok(go(
        &format!("/admin/channels/{id}"),
        "Deliveries paused: they wait, in order, until resumed.",
    ))
}

pub async fn resume_channel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    _form: CsrfForm,
) -> ApiResult<Response> {
    let tenant = ops::get(&state.store, id).await?.tenant_id;
    ops::resume(&state.store, &state.waker, tenant, id).await?;
    Ok(go(
        &format!("/admin/channels/{id}"),
        "Deliveries resumed: those waiting are due now.",
    ))
}

/// The admin's edit of a channel's config: the whole JSON document, as the editor
/// shows it with credentials masked. Refused input comes back with its errors, and
/// credentials in it masked again.
pub async fn edit_channel_config(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    ApiPath(id): ApiPath<ChannelId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let text = form.get("config").unwrap_or_default();
    let (shown_back, errors) = match serde_json::from_str::<serde_json::Value>(text) {
        Err(e) => (
            text.to_owned(),
            vec![FieldError::new("config", format!("is not valid JSON: {e}"))],
        ),
        Ok(submitted) => {
            match ops::edit_config(&state.store, &state.adapters, id, &submitted).await {
                Ok(_) => return Ok(go(&format!("/admin/channels/{id}"), "Config saved.")),
                Err(OpError::Invalid(mut errors)) => {
                    let channel = ops::get(&state.store, id).await?;
                    let secrets = state.adapters.get(channel.kind).secret_fields();
                    let replaced = crate::adapters::replace_config(&channel.config, &submitted);
                    // Credentials typed in are not written back into the page.
                    let typed = crate::adapters::credential_pointers(&replaced, secrets)
                        .iter()
                        .any(|at| replaced.pointer(at) != channel.config.pointer(at));
                    if typed {
                        errors.push(FieldError::new(
                        "config",
                        "secret values you typed are not shown again: type them again before saving",
                    ));
                    }
                    (pretty(&mask_config(&replaced, secrets)), errors)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let mut page = channel_page(&state, &ctx, id, None, None).await?;
    page.config_input = shown_back;
    page.config_errors = errors;
    Ok(page.into_response())
}

/// The admin's replay of a channel's failed deliveries of activities created in a
/// window (UTC): `since` required, `until` optional.
pub async fn replay_channel_failures(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ChannelId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let back = format!("/admin/channels/{id}");
    let channel = ops::get(&state.store, id).await?;
    let Some(since) = form.get("since").and_then(parse_form_time) else {
        return Ok(go(
            &back,
            "Replay refused: since must be a date and time (UTC).",
        ));
    };
    let until = match form.get("until") {
        None => None,
        Some(text) => match parse_form_time(text) {
            Some(until) => Some(until),
            None => {
                return Ok(go(
                    &back,
                    "Replay refused: until must be a date and time (UTC).",
                ));
            }
        },
    };
    let window = ReplayWindow {
        since: Some(since),
        until,
    };
    match deliveries::replay_channel(&state.store, &state.waker, channel.tenant_id, id, window)
        .await
    {
        Ok(n) => Ok(go(&back, &format!("{n} failed deliveries queued again."))),
        Err(OpError::Invalid(errors)) => Ok(go(
            &back,
            &format!("Replay refused: {}", crate::operations::summary(&errors)),
        )),
        Err(e) => Err(e.into()),
    }
}

/// A time as a `datetime-local` input writes it, to the second, in UTC.
fn form_time(t: Timestamp) -> String {
    t.0.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// A time from a form: RFC 3339, or a `datetime-local` value read as UTC.
fn parse_form_time(text: &str) -> Option<Timestamp> {
    use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                .map(|t| t.and_utc())
        })?;
    Some(Timestamp(parsed.trunc_subsecs(6)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_times_are_read_as_utc() {
        let minute = parse_form_time("2026-12-03T09:30").unwrap();
        assert_eq!(minute.0.to_rfc3339(), "2026-12-03T09:30:00+00:00");
        let second = parse_form_time("2026-12-03T09:30:15").unwrap();
        assert_eq!(form_time(second), "2026-12-03T09:30:15");
        let zoned = parse_form_time("2026-12-03T10:30:00+01:00").unwrap();
        assert_eq!(zoned, minute);
        assert_eq!(parse_form_time("yesterday"), None);
    }
}
