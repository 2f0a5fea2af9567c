//! Sends operational events to their tenants' ops webhooks.
//!
//! Events are rows written with what they report (`store/ops.rs`); this loop leases
//! the due ones, as the delivery workers lease deliveries, and posts each as a
//! Standard Webhook through the tenant's ops webhook channel: its URL, secret, method
//! and headers, under the node's egress policy. Failures are retried on the delivery
//! schedule ([`next_delay`]) and given up after [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS);
//! an event that could not be sent reports nothing further, so a broken ops webhook
//! cannot feed itself.

use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::backoff::next_delay;
use crate::adapters::webhook::send_signed;
use crate::adapters::{AdapterError, Exchange};
use crate::domain::{ChannelStatus, ChannelType, OpsEvent, Timestamp};
use crate::egress::EgressClient;
use crate::store::{OpsAttemptEnd, Store, StoreError};

/// Events leased per look at the table.
const BATCH: i64 = 32;

/// How long a leased event is the node's; every request ends well before.
const LEASE: Duration = Duration::from_secs(60);

/// Longest request to an ops webhook, whatever its channel allows.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the ops event sender.
#[derive(Debug, Clone)]
pub struct OpsSenderSettings {
    /// How often the table is looked at for due events.
    pub poll_interval: Duration,
    /// Multiplies every retry wait, as for deliveries.
    pub backoff_scale: f64,
}

/// Sends due events every `poll_interval` until `stop`; a batch under way is finished.
pub async fn run_ops_sender(
    store: Store,
    http: EgressClient,
    settings: OpsSenderSettings,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(settings.poll_interval) => {}
        }
        loop {
            let now = Timestamp::now();
            let due = match store.claim_ops_events(now, now.plus(LEASE), BATCH).await {
                Ok(due) => due,
                // An outage is logged once, by the store's availability probe.
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::debug!(error = %e, "cannot claim operational events; will retry");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim operational events; will retry");
                    break;
                }
            };
            let full = due.len() as i64 == BATCH;
            let mut attempts = JoinSet::new();
            for event in due {
                let (store, http) = (store.clone(), http.clone());
                let lease = now.plus(LEASE);
                let scale = settings.backoff_scale;
                attempts.spawn(async move { send(&store, &http, event, lease, scale).await });
            }
            while attempts.join_next().await.is_some() {}
            if !full || stop.is_cancelled() {
                break;
            }
        }
    }
}

/// The body an event is posted with: its type, time and details, as Svix's
/// operational webhooks shape them, and its tenant and id.
pub fn ops_payload(event: &OpsEvent) -> serde_json::Value {
    json!({
        "id": event.id,
        "type": event.kind,
        "timestamp": event.created_at,
        "tenant_id": event.tenant_id,
        "data": event.data,
    })
}

/// One attempt to send `event`, leased until `lease`, and its outcome recorded.
async fn send(store: &Store, http: &EgressClient, event: OpsEvent, lease: Timestamp, scale: f64) {
    let end = match attempt(store, http, &event).await {
        Ok(()) => OpsAttemptEnd::Delivered,
        Err(Failure::Retry(message, retry_after)) => {
            let attempt = event.webhook.as_ref().map_or(0, |w| w.attempts) + 1;
            match next_delay(attempt.unsigned_abs(), retry_after, scale) {
                Some(wait) => OpsAttemptEnd::RetryAt {
                    at: Timestamp::now().plus(wait),
                    error: message,
                },
                None => OpsAttemptEnd::Failed {
                    error: format!("{message} (gave up after {attempt} attempts)"),
                },
            }
        }
        Err(Failure::Permanent(message)) => OpsAttemptEnd::Failed { error: message },
        Err(Failure::Store(e)) => {
            // Not the webhook's fault: the lease runs out and the event is tried again.
            // An outage is logged once, by the store's availability probe.
            if matches!(e, StoreError::Unavailable(_)) {
                tracing::debug!(event = %event.id, error = %e, "cannot send an operational event");
            } else {
                tracing::warn!(event = %event.id, error = %e, "cannot send an operational event");
            }
            return;
        }
    };
    if let OpsAttemptEnd::Failed { error } = &end {
        tracing::warn!(event = %event.id, tenant = %event.tenant_id, %error,
            "operational event given up");
    }
    match store
        .record_ops_attempt(event.id, lease, Timestamp::now(), &end)
        .await
    {
        Ok(true) => {
            let outcome = match end {
                OpsAttemptEnd::Delivered => "delivered",
                OpsAttemptEnd::RetryAt { .. } => "retry",
                OpsAttemptEnd::Failed { .. } => "failed",
            };
            metrics::counter!(crate::metrics::OPS_WEBHOOK_ATTEMPTS, "outcome" => outcome)
                .increment(1);
        }
        Ok(false) => tracing::debug!(event = %event.id, "ops event lease lost; outcome dropped"),
        Err(e) => tracing::warn!(event = %event.id, error = %e,
            "cannot record an operational event's attempt; it will be sent again"),
    }
}

/// Why an attempt did not deliver.
enum Failure {
    Retry(String, Option<Duration>),
    Permanent(String),
    Store(StoreError),
}

async fn attempt(store: &Store, http: &EgressClient, event: &OpsEvent) -> Result<(), Failure> {
    let channel = match store.ops_webhook_channel(event.tenant_id).await {
        Ok(channel) => channel,
        Err(StoreError::NotFound) => {
            return Err(Failure::Permanent(
                "the tenant has no ops webhook any more".into(),
            ));
        }
        // A channel that cannot be opened (its secret sealed with a key no longer
        // configured) stays so: trying again every lease would never end.
        Err(e @ (StoreError::Secret { .. } | StoreError::Config(_))) => {
            return Err(Failure::Permanent(format!(
                "the ops webhook's channel cannot be read: {e}"
            )));
        }
        Err(e) => return Err(Failure::Store(e)),
    };
    if channel.kind != ChannelType::Webhook {
        return Err(Failure::Permanent(
            "the ops webhook's channel is not a webhook channel".into(),
        ));
    }
    if channel.status == ChannelStatus::Inactive {
        return Err(Failure::Retry(
            "the ops webhook's channel is inactive".into(),
            None,
        ));
    }
    let body = serde_json::to_vec(&ops_payload(event))
        .map_err(|e| Failure::Permanent(format!("cannot encode the event: {e}")))?;
    let exchange = Exchange::default();
    match send_signed(
        http,
        &channel,
        &event.id.to_string(),
        body,
        MAX_TIMEOUT,
        &exchange,
    )
    .await
    {
        Ok(_) => Ok(()),
        // A receiver's answer quoted in a message may hold U+0000, which PostgreSQL's
        // `text` cannot.
        Err(AdapterError::Permanent { message, .. }) => {
            Err(Failure::Permanent(message.replace('\0', "\u{FFFD}")))
        }
        Err(AdapterError::Retryable {
            message,
            retry_after,
            ..
        }) => Err(Failure::Retry(
            message.replace('\0', "\u{FFFD}"),
            retry_after,
        )),
    }
}
