//! Server-rendered admin pages, one file per resource. Reads go to the store; every
//! change is a function of [`crate::operations`], the same the admin JSON API and the
//! CLI call, so a rule is checked the same way in all three. Forms post back, then
//! redirect with a `notice`, so a reload never repeats an action — except where a
//! secret is shown once (new tenant key, new channel secret), which is rendered
//! directly and never stored in a URL.
//!
//! This module holds what the pages share: the chrome around every page, redirects
//! with a notice, the pager of list pages and the tenant filter bar.

mod channels;
mod conversations;
mod dashboard;
mod deliveries;
mod login;
mod routes;
mod tenants;

use std::collections::HashMap;
use std::str::FromStr;

use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::Value;

use super::forms::CsrfForm;
use super::guard::AdminContext;
use crate::domain::{Channel, ChannelId, Tenant, TenantId};
use crate::http::error::{ApiError, ApiResult};
use crate::http::state::AppState;
use crate::store::ChannelFilter;

pub use channels::{
    channel, channels, create_channel, edit_channel_config, new_channel, pause_channel,
    replay_channel_failures, resume_channel, retry_channel_failures, rotate_channel_secret,
    set_channel_status,
};
pub use conversations::{close_conversation, conversation, conversations, reopen_conversation};
pub use dashboard::dashboard;
pub use deliveries::{deliveries, retry_delivery};
pub use login::{login, login_form, logout};
pub use routes::{create_route, delete_route, routes};
pub use tenants::{create_tenant, rotate_tenant_key, set_tenant_status, tenants};

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

/// The `notice` a redirect carries to the page it lands on.
#[derive(Deserialize, Default)]
pub struct Notice {
    notice: Option<String>,
}

/// Redirects to `path` with a notice to show there.
fn go(path: &str, notice: &str) -> Response {
    let q = serde_urlencoded::to_string([("notice", notice)]).unwrap_or_default();
    let sep = if path.contains('?') { '&' } else { '?' };
    Redirect::to(&format!("{path}{sep}{q}")).into_response()
}

/// Where a form's `back` field asks to return to, when that is an admin page.
fn back_to(form: &CsrfForm) -> String {
    form.get("back")
        .filter(|b| b.starts_with("/admin"))
        .unwrap_or("/admin/deliveries")
        .to_owned()
}

/// A form's `status` field (`active` or `inactive`).
fn form_status<T: FromStr>(form: &CsrfForm) -> ApiResult<T> {
    form.get("status")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::invalid_field("status", "must be active or inactive"))
}

/// A query or form value, empty or unreadable counting as absent.
fn opt_parse<T: FromStr>(s: Option<&str>) -> Option<T> {
    s.filter(|s| !s.is_empty()).and_then(|s| s.parse().ok())
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn channel_names(channels: &[Channel]) -> HashMap<ChannelId, String> {
    channels.iter().map(|c| (c.id, c.name.clone())).collect()
}

/// The query string of a list page: the filters in force, in the order added, and for
/// the next page the cursor after the last row shown.
#[derive(Default)]
struct Pager(Vec<(&'static str, String)>);

impl Pager {
    /// Adds a filter, when it is set.
    fn filter(mut self, name: &'static str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.0.push((name, v.to_string()));
        }
        self
    }

    /// This page's query string.
    fn query(&self) -> String {
        serde_urlencoded::to_string(&self.0).unwrap_or_default()
    }

    /// The next page's query string when `rows` fill a page: these filters and
    /// `cursor` set to the key of the last row.
    fn next<T>(
        &self,
        rows: &[T],
        cursor: &'static str,
        key: impl Fn(&T) -> String,
    ) -> Option<String> {
        let last = rows.last().filter(|_| rows.len() as i64 == PAGE)?;
        let mut params = self.0.clone();
        params.push((cursor, key(last)));
        Some(serde_urlencoded::to_string(params).unwrap_or_default())
    }
}

/// The query of a per-tenant list page (conversations, deliveries): its filters, the
/// cursor of the page (`before`, of type `C`) and a notice.
#[derive(Deserialize)]
pub struct ListQuery<C> {
    tenant: Option<String>,
    channel: Option<String>,
    status: Option<String>,
    before: Option<C>,
    notice: Option<String>,
}

impl<C> ListQuery<C> {
    /// The channel filter, when it names one.
    fn channel(&self) -> Option<ChannelId> {
        opt_parse(self.channel.as_deref())
    }

    /// The tenant filter bar, for the tenant asked for (else the first).
    async fn scope(&self, state: &AppState) -> ApiResult<TenantScope> {
        tenant_scope(state, opt_parse(self.tenant.as_deref())).await
    }
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

/// Helpers the templates call.
pub mod filters {
    use crate::domain::Timestamp;

    /// A timestamp as the panel shows it.
    pub fn ts(t: &Timestamp) -> String {
        crate::operations::dashboard::display_time(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pager_keeps_the_filters_and_adds_the_cursor_on_a_full_page() {
        let pager = Pager::default()
            .filter("tenant", Some("t 1"))
            .filter("channel", None::<String>)
            .filter("status", Some("failed"));
        assert_eq!(pager.query(), "tenant=t+1&status=failed");
        let full: Vec<i64> = (1..=PAGE).collect();
        assert_eq!(
            pager.next(&full, "before", i64::to_string).as_deref(),
            Some("tenant=t+1&status=failed&before=50")
        );
        assert_eq!(pager.next(&full[1..], "before", i64::to_string), None);
    }
}
