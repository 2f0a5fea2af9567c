//! Deliveries of a tenant (failed ones by default: this is where delivery problems are
//! fixed), and retrying one through [`crate::operations::deliveries`]: a failed one, or
//! a pending one now rather than after its backoff.

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;

use super::{Chrome, ListQuery, PAGE, Pager, back_to, channel_names, go, opt_parse};
use crate::admin::forms::CsrfForm;
use crate::admin::guard::AdminContext;
use crate::domain::{
    Channel, ChannelId, Delivery, DeliveryId, DeliveryStatus, Tenant, TenantId, Timestamp,
};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::operations::{OpError, deliveries as ops};

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
    /// This page with its filters, for the retry forms to come back to.
    back: String,
    /// Now, to tell the pending deliveries that wait for their next attempt.
    now: Timestamp,
}

impl DeliveriesPage {
    /// Whether a delivery waits for its next attempt after a failed one, so that
    /// "retry now" would make it due.
    pub fn waiting(&self, d: &Delivery) -> bool {
        d.status == DeliveryStatus::Pending
            && d.attempts > 0
            && d.next_attempt_at.is_some_and(|at| at > self.now)
            && d.locked_until.is_none_or(|lease| lease < self.now)
    }
}

pub async fn deliveries(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<ListQuery<DeliveryId>>,
) -> ApiResult<DeliveriesPage> {
    let scope = q.scope(&state).await?;
    let (tenant, channel) = (scope.tenant, q.channel());
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
    let pager = Pager::default()
        .filter("tenant", tenant)
        .filter("channel", channel)
        .filter("status", Some(status.map_or("all", DeliveryStatus::as_str)));
    Ok(DeliveriesPage {
        chrome: Chrome::new(&ctx, "deliveries", q.notice),
        names: channel_names(&scope.channels),
        next: pager.next(&rows, "before", |d| d.id.to_string()),
        back: format!("/admin/deliveries?{}", pager.query()),
        tenants: scope.tenants,
        tenant,
        channels: scope.channels,
        channel,
        status,
        statuses: DeliveryStatus::ALL,
        rows,
        now: Timestamp::now(),
    })
}

pub async fn retry_delivery(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<DeliveryId>,
    form: CsrfForm,
) -> ApiResult<Response> {
    let tenant: TenantId = opt_parse(form.get("tenant"))
        .ok_or_else(|| ApiError::invalid_field("tenant", "is required"))?;
    let back = back_to(&form);
    match ops::retry(&state.store, &state.waker, tenant, id).await {
        Ok(_) => Ok(go(&back, "Delivery queued again.")),
        Err(OpError::NotFound(_) | OpError::DeliveryNotFailed { .. }) => Ok(go(
            &back,
            "That delivery is delivered (or gone): nothing to retry.",
        )),
        Err(OpError::DeliveryInFlight) => Ok(go(
            &back,
            "An attempt of that delivery is under way; retry once it has ended.",
        )),
        Err(e) => Err(e.into()),
    }
}
