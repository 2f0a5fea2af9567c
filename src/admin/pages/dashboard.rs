//! The dashboard: delivery counts, activity rate, per-channel counts, recent failures
//! the channels that are not healthy and the latest operational events (live,
//! `ops_feed.rs`), from [`crate::operations::dashboard::stats`] (the JSON API serves the same).

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::{Query, State};

use super::{Chrome, Notice};
use crate::admin::guard::AdminContext;
use crate::admin::ops_feed::{self, OpsRow};
use crate::http::error::ApiResult;
use crate::http::state::AppState;
use crate::operations::dashboard::{HealthRow, RecentFailure, stats};
use crate::store::ChannelDeliveryStats;

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
    health: Vec<HealthRow>,
    events: Vec<OpsRow>,
}

pub async fn dashboard(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<Notice>,
) -> ApiResult<DashboardPage> {
    let s = stats(&state.store).await?;
    Ok(DashboardPage {
        chrome: Chrome::new(&ctx, "dashboard", q.notice),
        pending: s.pending,
        delivered: s.delivered,
        failed: s.failed,
        per_minute: s.activities_last_minute,
        channels: s.channels,
        failures: s.recent_failures,
        health: s.channel_health,
        events: ops_feed::recent(&state).await?,
    })
}
