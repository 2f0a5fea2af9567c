//! Conversations: the list of a tenant's (by channel and status), one conversation's
//! activities with their deliveries and each delivery's attempt log, and closing and
//! reopening it through [`crate::operations::conversations`].

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::{
    Chrome, ListQuery, PAGE, Pager, channel_names, go, opt_parse, pretty, tenant_channels,
};
use crate::admin::forms::CsrfForm;
use crate::admin::guard::AdminContext;
use crate::domain::{
    Activity, Channel, ChannelId, Conversation, ConversationId, ConversationStatus, Delivery,
    DeliveryAttempt, DeliveryId, DeliveryStatus, Tenant, TenantId, Timestamp,
};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiPath;
use crate::http::state::AppState;
use crate::ingest::StatusCause;
use crate::operations::OpError;
use crate::operations::conversations as ops;
use crate::store::ConversationFilter;

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

pub async fn conversations(
    State(state): State<AppState>,
    Extension(ctx): Extension<AdminContext>,
    Query(q): Query<ListQuery<ConversationId>>,
) -> ApiResult<ConversationsPage> {
    let scope = q.scope(&state).await?;
    let (tenant, channel) = (scope.tenant, q.channel());
    let status: Option<ConversationStatus> = opt_parse(q.status.as_deref());
    let rows = match tenant {
        Some(t) => {
            let filter = ConversationFilter {
                channel_id: channel,
                status,
                external_id: None,
                before: q.before,
                limit: PAGE,
            };
            state.store.list_conversations(t, &filter).await?
        }
        None => Vec::new(),
    };
    let next = Pager::default()
        .filter("tenant", tenant)
        .filter("channel", channel)
        .filter("status", status)
        .next(&rows, "before", |c| c.id.to_string());
    Ok(ConversationsPage {
        chrome: Chrome::new(&ctx, "conversations", q.notice),
        names: channel_names(&scope.channels),
        tenants: scope.tenants,
        tenant,
        channels: scope.channels,
        channel,
        status,
        rows,
        next,
    })
}

/// An activity with its deliveries, for the conversation page.
pub struct ActivityRow {
    pub activity: Activity,
    pub deliveries: Vec<DeliveryRow>,
}

/// Attempts shown per delivery; the API lists them all.
const ATTEMPTS_SHOWN: usize = 20;

/// A delivery with the latest of its attempts.
pub struct DeliveryRow {
    pub delivery: Delivery,
    /// Oldest first, the latest [`ATTEMPTS_SHOWN`].
    pub attempts: Vec<DeliveryAttempt>,
    /// Attempts older than those shown.
    pub earlier: usize,
    /// Pending and waiting for its next attempt after a failed one: "retry now" helps.
    pub waiting: bool,
}

impl DeliveryRow {
    fn new(delivery: Delivery, mut attempts: Vec<DeliveryAttempt>, now: Timestamp) -> Self {
        let earlier = attempts.len().saturating_sub(ATTEMPTS_SHOWN);
        attempts.drain(..earlier);
        let waiting = delivery.status == DeliveryStatus::Pending
            && delivery.attempts > 0
            && delivery.next_attempt_at.is_some_and(|at| at > now)
            && delivery.locked_until.is_none_or(|lease| lease < now);
        Self {
            delivery,
            attempts,
            earlier,
            waiting,
        }
    }

    /// The badge class of an attempt's outcome: a retry is still pending.
    pub fn badge(attempt: &DeliveryAttempt) -> &'static str {
        match attempt.outcome.as_str() {
            "retry" => "pending",
            other => other,
        }
    }
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
    /// Query string of the later activities, when there are more.
    next: Option<String>,
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
    let (deliveries, attempts) = match (activities.first(), activities.last()) {
        (Some(first), Some(last)) => tokio::try_join!(
            state
                .store
                .list_deliveries_for_seq_range(id, first.seq, last.seq),
            state
                .store
                .list_attempts_for_seq_range(id, first.seq, last.seq),
        )?,
        _ => (Vec::new(), Vec::new()),
    };
    let mut attempts_of: HashMap<DeliveryId, Vec<DeliveryAttempt>> = HashMap::new();
    for a in attempts {
        attempts_of.entry(a.delivery_id).or_default().push(a);
    }
    let now = Timestamp::now();
    let mut by_activity: HashMap<_, Vec<DeliveryRow>> = HashMap::new();
    for d in deliveries {
        let attempts = attempts_of.remove(&d.id).unwrap_or_default();
        by_activity
            .entry(d.activity_id)
            .or_default()
            .push(DeliveryRow::new(d, attempts, now));
    }
    let next = Pager::default().next(&activities, "after", |a| a.seq.to_string());
    let names = channel_names(&tenant_channels(&state, tenant).await?);
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
    let tenant = ops::tenant_of(&state.store, id).await?;
    ops::close(&state.ingest, tenant, id, StatusCause::Admin).await?;
    Ok(go(
        &format!("/admin/conversations/{id}"),
        "Conversation closed.",
    ))
}

pub async fn reopen_conversation(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<ConversationId>,
    _form: CsrfForm,
) -> ApiResult<Response> {
    let tenant = ops::tenant_of(&state.store, id).await?;
    let notice = match ops::reopen(&state.ingest, tenant, id, StatusCause::Admin).await {
        Ok(_) => "Conversation reopened.".to_owned(),
        Err(OpError::ConversationActive) => "The conversation is already active.".to_owned(),
        Err(OpError::ConversationExists { holder }) => match holder {
            Some(other) => format!(
                "Not reopened: conversation {other} is active for this external id on the channel; close it first."
            ),
            None => {
                "Not reopened: another conversation is active for this external id on the channel."
                    .to_owned()
            }
        },
        Err(e) => return Err(e.into()),
    };
    Ok(go(&format!("/admin/conversations/{id}"), &notice))
}
