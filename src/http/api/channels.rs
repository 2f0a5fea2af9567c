//! Channels of a tenant (docs/design.md#api), managed with the API key. Creating
//! one, rotating its secret, pausing and resuming its deliveries are
//! [`crate::operations::channels`], shared with the admin panel; this file decodes,
//! and shows channels with secrets masked and their delivery health.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{Data, Page, page_limit};
use crate::adapters::{mask_config, merge_config_patch};
use crate::domain::{
    BreakerState, Channel, ChannelHealth, ChannelId, ChannelStatus, ChannelType, HealthState,
    PauseReason, TenantId, Timestamp,
};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, TenantAuth};
use crate::http::state::AppState;
use crate::operations::channels::{self, ChannelIn, ChannelWithSecret};
use crate::store::{ChannelFilter, ChannelUpdate};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    pub name: Option<String>,
    /// A JSON merge patch of the config; masked values sent back keep the stored secret.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    pub status: Option<ChannelStatus>,
}

/// A channel as the API shows it: secrets in `config` masked.
#[derive(Serialize, ToSchema)]
pub struct ChannelOut {
    pub id: ChannelId,
    pub tenant_id: TenantId,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ChannelType,
    #[schema(schema_with = crate::adapters::config_schema)]
    pub config: Value,
    pub status: ChannelStatus,
    /// Channel token (`x-channel-token`): creates conversations on this channel and
    /// issues client tokens for them. Revoked by rotating the secret.
    pub token: String,
    /// Where the channel's provider or sender posts inbound messages.
    pub inbound_url: String,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A created channel: the one answer besides `GET /secret` that shows the secret.
#[derive(Serialize, ToSchema)]
pub struct ChannelCreated {
    #[serde(flatten)]
    pub channel: ChannelOut,
    /// Standard Webhooks secret (`whsec_...`) signing outbound and verifying inbound webhooks.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct SecretOut {
    pub secret: String,
}

/// A channel's delivery health: its breaker, its pause and its recent attempts.
/// Only attempts that reached the receiver count: an answer of any status, a timeout
/// or a failed connection.
#[derive(Serialize, ToSchema)]
pub struct ChannelHealthOut {
    pub channel_id: ChannelId,
    /// `paused` or `open`: nothing is attempted; `degraded`: the latest attempts
    /// failed, fewer in a row than open the breaker; else `healthy`.
    pub state: HealthState,
    /// `half_open`: the cool-down is over and one delivery is let through as a probe.
    pub breaker: BreakerState,
    /// Why the channel is paused: `operator` (paused by request) or `failing` (no
    /// success for longer than the disable limit). Resume it to deliver again.
    pub pause_reason: Option<PauseReason>,
    pub paused_at: Option<Timestamp>,
    /// When an open breaker's cool-down ends.
    pub open_until: Option<Timestamp>,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// Failed attempts in a row that open the breaker.
    pub failure_threshold: u32,
    /// When the first of the consecutive failures was.
    pub failing_since: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_failure_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub recent: RecentOut,
}

/// Attempts of the last half hour to hour.
#[derive(Serialize, ToSchema)]
pub struct RecentOut {
    pub attempts: i64,
    pub failures: i64,
    /// `failures / attempts`; null without attempts.
    pub failure_rate: Option<f64>,
    /// Since when attempts are counted; null when none ever were.
    pub since: Option<Timestamp>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelQuery {
    #[serde(rename = "type")]
    #[param(rename = "type", inline)]
    pub kind: Option<ChannelType>,
    #[param(inline)]
    pub status: Option<ChannelStatus>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<ChannelId>,
    pub limit: Option<i64>,
}

impl AppState {
    pub(crate) fn channel_out(&self, channel: Channel) -> ChannelOut {
        let adapter = self.adapters.get(channel.kind);
        ChannelOut {
            token: self.jwt.issue_channel_token(
                channel.tenant_id,
                channel.id,
                channel.inserted_at.0.timestamp(),
                &channel.secret,
            ),
            inbound_url: format!(
                "{}/api/v1/channels/{}/inbound",
                self.config.public_base(),
                channel.id
            ),
            config: mask_config(&channel.config, adapter.secret_fields()),
            id: channel.id,
            tenant_id: channel.tenant_id,
            name: channel.name,
            kind: channel.kind,
            status: channel.status,
            inserted_at: channel.inserted_at,
            updated_at: channel.updated_at,
        }
    }

    /// A channel's health as the APIs answer it.
    pub(crate) fn channel_health_out(&self, health: ChannelHealth) -> ChannelHealthOut {
        let now = Timestamp::now();
        let recent = health.recent(now);
        ChannelHealthOut {
            channel_id: health.channel_id,
            state: health.state(),
            breaker: health.breaker(now),
            pause_reason: health.pause_reason,
            paused_at: health.paused_at,
            open_until: health.open_until,
            consecutive_failures: health.consecutive_failures,
            failure_threshold: self.config.breaker_failures,
            failing_since: health.failing_since,
            last_error: health.last_error,
            last_failure_at: health.last_failure_at,
            last_success_at: health.last_success_at,
            recent: RecentOut {
                attempts: recent.attempts,
                failures: recent.failures,
                failure_rate: recent.failure_rate(),
                since: recent.since,
            },
        }
    }

    /// A created channel or rotated secret as the APIs answer it.
    pub(crate) fn channel_created(&self, created: ChannelWithSecret) -> ChannelCreated {
        ChannelCreated {
            channel: self.channel_out(created.channel),
            secret: created.secret,
        }
    }
}

/// Create a channel; its config is validated by the adapter of its type (docs/design.md#data-model, docs/design.md#api).
#[utoipa::path(post, path = "/channels", tag = "channels", request_body = ChannelIn,
    security(("api_key" = [])),
    responses((status = 201, body = Data<ChannelCreated>), (status = 422, body = crate::http::error::ErrorBody)))]
async fn create_channel(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiJson(body): ApiJson<ChannelIn>,
) -> ApiResult<(StatusCode, axum::Json<Data<ChannelCreated>>)> {
    let created = channels::create(&state.store, &state.adapters, auth.tenant_id, &body).await?;
    Ok((
        StatusCode::CREATED,
        Data::new(state.channel_created(created)),
    ))
}

/// List the tenant's channels, keyset-paginated by id.
#[utoipa::path(get, path = "/channels", tag = "channels", params(ChannelQuery),
    security(("api_key" = [])), responses((status = 200, body = Page<ChannelOut>)))]
async fn list_channels(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiQuery(query): ApiQuery<ChannelQuery>,
) -> ApiResult<axum::Json<Page<ChannelOut>>> {
    let limit = page_limit(query.limit);
    let filter = ChannelFilter {
        kind: query.kind,
        status: query.status,
        after: query.cursor,
        limit,
    };
    let channels = state.store.list_channels(auth.tenant_id, &filter).await?;
    let out = channels.into_iter().map(|c| state.channel_out(c)).collect();
    Ok(Page::new(out, limit, |c: &ChannelOut| c.id.to_string()))
}

/// Read one channel, with its token and inbound URL.
#[utoipa::path(get, path = "/channels/{id}", tag = "channels", params(("id" = ChannelId, Path)),
    security(("api_key" = [])), responses((status = 200, body = Data<ChannelOut>), (status = 404, body = crate::http::error::ErrorBody)))]
async fn get_channel(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<ChannelOut>>> {
    let channel = state
        .store
        .get_channel(auth.tenant_id, id)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    Ok(Data::new(state.channel_out(channel)))
}

/// Rename, reconfigure (merge patch, re-validated) or enable/disable a channel.
#[utoipa::path(patch, path = "/channels/{id}", tag = "channels", params(("id" = ChannelId, Path)),
    request_body = ChannelPatch, security(("api_key" = [])),
    responses((status = 200, body = Data<ChannelOut>), (status = 422, body = crate::http::error::ErrorBody)))]
async fn update_channel(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
    ApiJson(body): ApiJson<ChannelPatch>,
) -> ApiResult<axum::Json<Data<ChannelOut>>> {
    let current = state
        .store
        .get_channel(auth.tenant_id, id)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    let name = body
        .name
        .as_deref()
        .map(channels::check_name)
        .transpose()
        .map_err(|e| ApiError::validation(vec![e]))?;
    let config = match &body.config {
        Some(patch) => {
            let merged = merge_config_patch(&current.config, patch);
            Some(
                channels::check_config(&state.adapters, current.kind, &merged)
                    .map_err(ApiError::validation)?,
            )
        }
        None => None,
    };
    let update = ChannelUpdate {
        name,
        config,
        status: body.status,
        secret: None,
    };
    let channel = state
        .store
        .update_channel(auth.tenant_id, id, update)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    Ok(Data::new(state.channel_out(channel)))
}

/// Reveal the channel secret (as Svix does for endpoint secrets).
#[utoipa::path(get, path = "/channels/{id}/secret", tag = "channels", params(("id" = ChannelId, Path)),
    security(("api_key" = [])), responses((status = 200, body = Data<SecretOut>)))]
async fn get_channel_secret(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<SecretOut>>> {
    let channel = state
        .store
        .get_channel(auth.tenant_id, id)
        .await
        .map_err(ApiError::not_found_as("channel"))?;
    Ok(Data::new(SecretOut {
        secret: channel.secret,
    }))
}

/// Replace the channel secret; channel tokens issued under the old one stop working.
#[utoipa::path(post, path = "/channels/{id}/rotate_secret", tag = "channels", params(("id" = ChannelId, Path)),
    security(("api_key" = [])), responses((status = 200, body = Data<ChannelCreated>)))]
async fn rotate_channel_secret(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<ChannelCreated>>> {
    let rotated = channels::rotate_secret(&state.store, auth.tenant_id, id).await?;
    Ok(Data::new(state.channel_created(rotated)))
}

/// A channel's delivery health: circuit breaker, pause, last error, recent failure
/// rate (docs/delivery-control.md).
#[utoipa::path(get, path = "/channels/{id}/health", tag = "channels", params(("id" = ChannelId, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Data<ChannelHealthOut>),
        (status = 400, description = "`invalid_id`: the id is not a UUID", body = crate::http::error::ErrorBody),
        (status = 401, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody)))]
async fn get_channel_health(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<ChannelHealthOut>>> {
    let health = channels::health(&state.store, auth.tenant_id, id).await?;
    Ok(Data::new(state.channel_health_out(health)))
}

/// Pause deliveries to a channel: they stay pending, in order, and none is attempted
/// until it is resumed; new activities still get their deliveries
/// (docs/delivery-control.md). Pausing a paused channel changes nothing.
#[utoipa::path(post, path = "/channels/{id}/pause", tag = "channels", params(("id" = ChannelId, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Data<ChannelHealthOut>),
        (status = 400, description = "`invalid_id`: the id is not a UUID", body = crate::http::error::ErrorBody),
        (status = 401, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody)))]
async fn pause_channel(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<ChannelHealthOut>>> {
    let health = channels::pause(&state.store, auth.tenant_id, id).await?;
    Ok(Data::new(state.channel_health_out(health)))
}

/// Resume a paused channel, or one whose circuit breaker is open: its waiting
/// deliveries are due at once, in order, and the breaker is closed.
#[utoipa::path(post, path = "/channels/{id}/resume", tag = "channels", params(("id" = ChannelId, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Data<ChannelHealthOut>),
        (status = 400, description = "`invalid_id`: the id is not a UUID", body = crate::http::error::ErrorBody),
        (status = 401, body = crate::http::error::ErrorBody),
        (status = 404, body = crate::http::error::ErrorBody)))]
async fn resume_channel(
    State(state): State<AppState>,
    auth: TenantAuth,
    ApiPath(id): ApiPath<ChannelId>,
) -> ApiResult<axum::Json<Data<ChannelHealthOut>>> {
    let health = channels::resume(&state.store, &state.waker, auth.tenant_id, id).await?;
    Ok(Data::new(state.channel_health_out(health)))
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_channel, list_channels))
        .routes(routes!(get_channel, update_channel))
        .routes(routes!(get_channel_secret))
        .routes(routes!(rotate_channel_secret))
        .routes(routes!(get_channel_health))
        .routes(routes!(pause_channel))
        .routes(routes!(resume_channel))
}
