//! The operator's dashboard figures: delivery counts, activity rate, per-channel
//! counts, the newest failures and the channels that are not healthy (the admin page
//! and `GET /admin/api/stats`).

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use super::OpResult;
use crate::domain::{ChannelId, DeliveryId, HealthState, PauseReason, TenantId, Timestamp};
use crate::store::{ChannelDeliveryStats, Store};

/// Channels the dashboard lists, those with failures first.
const CHANNELS: i64 = 20;
/// Failed deliveries the dashboard lists, newest first.
const FAILURES: i64 = 10;

/// Counts for the dashboard (also served as JSON for live updates).
#[derive(Serialize, ToSchema)]
pub struct Stats {
    pub pending: i64,
    pub delivered: i64,
    pub failed: i64,
    /// Activities created in the last 60 seconds.
    pub activities_last_minute: i64,
    pub channels: Vec<ChannelDeliveryStats>,
    /// The newest failed deliveries.
    pub recent_failures: Vec<RecentFailure>,
    /// The channels that are not healthy: paused and open first.
    pub channel_health: Vec<HealthRow>,
}

/// A channel that is not healthy, as the dashboard lists it.
#[derive(Serialize, ToSchema)]
pub struct HealthRow {
    pub channel_id: ChannelId,
    pub tenant_id: TenantId,
    pub channel_name: String,
    pub tenant_name: String,
    pub state: HealthState,
    /// Why a paused channel is paused.
    pub pause_reason: Option<PauseReason>,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    /// When its failures in a row began, as shown on the page ([`display_time`]).
    pub failing_since: Option<String>,
}

/// A failed delivery as the dashboard lists it.
#[derive(Serialize, ToSchema)]
pub struct RecentFailure {
    pub delivery_id: DeliveryId,
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    pub channel_name: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// When it failed, as shown on the page ([`display_time`]).
    pub when: String,
}

/// A timestamp as the admin panel shows it: `2026-11-25 21:56:00 UTC`.
pub fn display_time(ts: &Timestamp) -> String {
    ts.0.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The dashboard figures, over all tenants.
///
/// # Errors
///
/// Only store failures.
pub async fn stats(store: &Store) -> OpResult<Stats> {
    let counts: HashMap<String, i64> = store
        .count_deliveries_by_status()
        .await?
        .into_iter()
        .collect();
    let count = |status: &str| counts.get(status).copied().unwrap_or(0);
    let since = Timestamp::now().minus(Duration::from_secs(60));
    Ok(Stats {
        pending: count("pending"),
        delivered: count("delivered"),
        failed: count("failed"),
        activities_last_minute: store.count_activities_since(since).await?,
        channels: store.delivery_stats_by_channel(None, CHANNELS).await?,
        recent_failures: store
            .recent_failed_deliveries(FAILURES)
            .await?
            .into_iter()
            .map(|f| RecentFailure {
                when: display_time(&f.delivery.updated_at),
                delivery_id: f.delivery.id,
                tenant_id: f.delivery.tenant_id,
                channel_id: f.delivery.channel_id,
                channel_name: f.channel_name,
                attempts: f.delivery.attempts,
                last_error: f.delivery.last_error,
            })
            .collect(),
        channel_health: store
            .list_unhealthy_channels(CHANNELS)
            .await?
            .into_iter()
            .map(|c| HealthRow {
                channel_id: c.health.channel_id,
                tenant_id: c.health.tenant_id,
                channel_name: c.channel_name,
                tenant_name: c.tenant_name,
                state: c.health.state(),
                pause_reason: c.health.pause_reason,
                consecutive_failures: c.health.consecutive_failures,
                last_error: c.health.last_error,
                failing_since: c.health.failing_since.as_ref().map(display_time),
            })
            .collect(),
    })
}
