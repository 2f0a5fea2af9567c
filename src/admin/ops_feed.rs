//! The dashboard's live feed of operational events: recent events of every tenant as
//! rows, and a WebSocket at `/admin/ops-events/socket` that pushes each new one as it
//! is written, on whichever node (docs/operations.md#operational-events).
//!
//! The feed reads the `ops_events` table, which every node writes, once a second
//! while a dashboard is open: an event written on another node reaches this one's
//! dashboards without a message bus. Rows are picked by time with a margin and sent
//! once each, so one committed a little after a later one is not missed. The feed is
//! for display: each look sends at most the newest [`BATCH`] of the last minute, and
//! the list at `GET /api/v1/ops-events` is the record.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::{ChannelId, OpsEventType, TenantId, Timestamp};
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::operations::dashboard::display_time;
use crate::store::{StoreResult, TenantOpsEvent};

/// Events the dashboard renders.
pub const RECENT: i64 = 20;

/// How often an open feed looks for new events.
const POLL: Duration = Duration::from_secs(1);

/// How far back each look reaches: longer than any transaction writing an event.
const MARGIN: Duration = Duration::from_secs(60);

/// Longest wait for a dashboard to take a frame.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Most events one look sends.
const BATCH: i64 = 200;

/// An operational event as the dashboard shows it, rendered or pushed.
#[derive(Debug, Clone, Serialize)]
pub struct OpsRow {
    pub id: String,
    pub when: String,
    pub tenant_id: TenantId,
    pub tenant_name: String,
    #[serde(rename = "type")]
    pub kind: OpsEventType,
    pub channel_id: Option<ChannelId>,
    /// The channel's name, or its id once it is deleted.
    pub channel_name: Option<String>,
    /// What happened, in a line.
    pub summary: String,
    /// Where its sending to the tenant's ops webhook stands: `-` without one.
    pub webhook: String,
}

impl From<&TenantOpsEvent> for OpsRow {
    fn from(e: &TenantOpsEvent) -> Self {
        let event = &e.event;
        let data = &event.data;
        let text = |key: &str| data[key].as_str().unwrap_or("").to_owned();
        let cause = |key: &str| match data[key].as_str() {
            Some(error) => format!(": {error}"),
            None => String::new(),
        };
        let summary = match event.kind {
            OpsEventType::DeliveryFailed => format!(
                "delivery {} failed for good{}",
                text("delivery_id"),
                cause("error")
            ),
            OpsEventType::BreakerOpened => format!(
                "breaker opened after {} failures in a row{}",
                data["consecutive_failures"],
                cause("last_error")
            ),
            OpsEventType::BreakerClosed => "breaker closed: deliveries flow again".into(),
            OpsEventType::ChannelPaused => format!("paused ({})", text("reason")),
            OpsEventType::ChannelResumed => format!("resumed (was {})", text("from")),
        };
        Self {
            id: event.id.to_string(),
            when: display_time(&event.created_at),
            tenant_id: event.tenant_id,
            tenant_name: e.tenant_name.clone(),
            kind: event.kind,
            channel_id: event.channel_id,
            channel_name: e
                .channel_name
                .clone()
                .or_else(|| event.channel_id.map(|c| c.to_string())),
            summary,
            webhook: event
                .webhook
                .as_ref()
                .map_or_else(|| "-".to_owned(), |w| w.status.to_string()),
        }
    }
}

/// The most recent events of every tenant, newest first, for the dashboard.
pub async fn recent(state: &AppState) -> StoreResult<Vec<OpsRow>> {
    let since = Timestamp(chrono::DateTime::UNIX_EPOCH);
    let events = state.store.recent_ops_events(since, RECENT).await?;
    Ok(events.iter().map(OpsRow::from).collect())
}

/// `GET /admin/ops-events/socket`: a WebSocket that sends every operational event
/// written from now on as a JSON text frame `{"event": "ops_event", "payload": row}`.
pub async fn socket(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if !same_origin(&headers, &state.config.public_url) {
        return ApiError::forbidden(
            "csrf_rejected",
            "the admin feed opens only from the admin panel's own origin",
        )
        .into_response();
    }
    match upgrade {
        Ok(upgrade) => {
            let tasks = state.tasks.clone();
            upgrade.on_upgrade(move |socket| tasks.track_future(feed(socket, state)))
        }
        Err(rejection) => ApiError::websocket_required(&rejection.body_text()).into_response(),
    }
}

/// Whether a handshake comes from the panel's own pages. Browsers let any page open a
/// WebSocket to any address and send the cookies of that address, so without this
/// check a page on another site, in the operator's browser, could read the feed;
/// they always send `Origin`, which must then name the host the request was sent to
/// or the public URL. Clients other than browsers send none, and pass on the guard
/// alone.
fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let authority = |url: &url::Url| {
        let host = url.host_str()?.to_ascii_lowercase();
        Some(match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        })
    };
    let Some(origin) = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .and_then(|o| authority(&o))
    else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    let public = url::Url::parse(public_url).ok().and_then(|u| authority(&u));
    host.as_deref() == Some(origin.as_str()) || public.as_deref() == Some(origin.as_str())
}

async fn feed(mut socket: WebSocket, state: AppState) {
    let opened = Timestamp::now();
    // Ids sent, with their times, forgotten once they fall out of the margin.
    let mut sent: HashMap<String, Timestamp> = HashMap::new();
    loop {
        let now = Timestamp::now();
        let since = now.minus(MARGIN).max(opened.minus(Duration::from_secs(2)));
        match state.store.recent_ops_events(since, BATCH).await {
            Ok(events) => {
                sent.retain(|_, at| *at >= now.minus(MARGIN));
                for event in events.iter().rev() {
                    let row = OpsRow::from(event);
                    if sent.contains_key(&row.id) {
                        continue;
                    }
                    sent.insert(row.id.clone(), event.event.created_at);
                    let frame = serde_json::json!({"event": "ops_event", "payload": row});
                    let send = socket.send(Message::Text(frame.to_string().into()));
                    // A dashboard that stops reading is dropped, not waited for.
                    if !matches!(tokio::time::timeout(SEND_TIMEOUT, send).await, Ok(Ok(()))) {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "the ops event feed cannot read; trying again"),
        }
        tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            () = tokio::time::sleep(POLL) => {}
            incoming = socket.recv() => match incoming {
                // The feed only talks; a close or an error ends it, anything else is
                // ignored (pings are answered by the library).
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
