//! Turning an adapter's answer, or a provider's later report, into what is recorded on
//! the delivery row, and the operator's actions on the queue (retry, pause, resume).
//! The worker and the edges change delivery rows only here.

use serde_json::{Value, json};

use crate::adapters::{AdapterError, Delivered, ProviderStatus, StatusUpdate};
use crate::domain::{
    ChannelHealth, ChannelId, Delivery, DeliveryId, Observation, Observed, TenantId, Timestamp,
};
use crate::pubsub::{Event, PubSub};
use crate::store::{AttemptResult, Store, StoreResult};

use super::DeliveryWaker;

/// An operator's retry of a failed delivery: back to `pending` with its attempts
/// reset, due now; the workers are woken after the commit.
///
/// # Errors
/// `NotFound` when the tenant has no failed delivery with this id.
pub async fn retry_failed(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    id: DeliveryId,
) -> StoreResult<Delivery> {
    let delivery = store.retry_failed_delivery(tenant_id, id).await?;
    waker.wake();
    Ok(delivery)
}

use super::backoff::next_delay;

/// An operator's retry of every failed delivery of a channel; returns how many.
///
/// # Errors
/// Database failures.
pub async fn retry_all_failed(
    store: &Store,
    waker: &DeliveryWaker,
    channel_id: crate::domain::ChannelId,
) -> StoreResult<u64> {
    let n = store.retry_failed_deliveries_of_channel(channel_id).await?;
    if n > 0 {
        waker.wake();
    }
    Ok(n)
}

/// Pauses a tenant's channel: its pending deliveries stay pending, in order, and none
/// is attempted until it is resumed (an attempt already under way ends as it would).
///
/// # Errors
/// `NotFound` when the tenant has no such channel.
pub async fn pause_channel(
    store: &Store,
    tenant_id: TenantId,
    id: ChannelId,
) -> StoreResult<ChannelHealth> {
    store.pause_channel(tenant_id, id, Timestamp::now()).await
}

/// Resumes a tenant's channel, paused or with its breaker open: its held deliveries
/// are due at once and the workers are woken after the commit.
///
/// # Errors
/// `NotFound` when the tenant has no such channel.
pub async fn resume_channel(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    id: ChannelId,
) -> StoreResult<ChannelHealth> {
    let health = store
        .resume_channel(tenant_id, id, Timestamp::now())
        .await?;
    waker.wake();
    Ok(health)
}

/// What a provider's status report did.
#[derive(Debug, Clone)]
pub enum StatusApplied {
    /// The delivery moved to the reported status (recorded in its `metadata`) and the
    /// conversation's sockets were told.
    Updated(Box<Delivery>),
    /// No delivery of this channel has this provider message id (sent by something
    /// else, or pruned), and none is being sent right now.
    Unknown,
    /// No delivery has this id yet, but the report is recent and one of the channel's
    /// deliveries is being sent right now: the report may have overtaken the answer to
    /// that send. The provider should be asked to report again.
    Early,
    /// A duplicate, or a report older than what is recorded: nothing changed.
    Stale,
}

/// Compare-and-set rounds before a status report is given up as contended.
const STATUS_ROUNDS: usize = 5;

/// Records a provider's report on a delivered message (WhatsApp `statuses[]`, Infobip
/// delivery and seen reports) on the delivery the provider id names, within the
/// channel's tenant, and tells the conversation's sockets (`Event::DeliveryStatus`).
///
/// Statuses only move forward (`sent < delivered < read`; `failed` only before
/// `delivered`, and terminal), so duplicates and late reports change nothing. They are
/// kept in the delivery's `metadata` as `provider_status`, `provider_status_at` (the
/// provider's time) and, for failures, `provider_error`; the delivery's own `status`
/// stays `delivered`: it says the provider accepted the message, which remains true.
///
/// # Errors
/// Database errors only.
pub async fn apply_provider_status(
    store: &Store,
    pubsub: &PubSub,
    tenant_id: TenantId,
    channel_id: ChannelId,
    update: &StatusUpdate,
) -> StoreResult<StatusApplied> {
    for _ in 0..STATUS_ROUNDS {
        let Some(delivery) = store
            .find_delivery_by_external_id(tenant_id, channel_id, &update.provider_id)
            .await?
        else {
            let in_flight = reported_recently(update)
                && store
                    .channel_has_attempt_in_flight(tenant_id, channel_id, Timestamp::now())
                    .await?;
            return Ok(if in_flight {
                StatusApplied::Early
            } else {
                StatusApplied::Unknown
            });
        };
        let current = delivery
            .metadata
            .get("provider_status")
            .and_then(Value::as_str)
            .and_then(ProviderStatus::parse);
        if !update.status.advances(current) {
            return Ok(StatusApplied::Stale);
        }
        let now = Timestamp::now();
        let mut metadata = match &delivery.metadata {
            Value::Object(map) => map.clone(),
            _ => serde_json::Map::new(),
        };
        metadata.insert("provider_status".into(), json!(update.status.as_str()));
        metadata.insert(
            "provider_status_at".into(),
            json!(
                update
                    .timestamp
                    .clone()
                    .unwrap_or_else(|| now.0.to_rfc3339())
            ),
        );
        match &update.error {
            Some(error) => metadata.insert("provider_error".into(), json!(error)),
            None => metadata.remove("provider_error"),
        };
        let metadata = Value::Object(metadata);
        if store
            .update_delivery_metadata(tenant_id, delivery.id, delivery.updated_at, &metadata, now)
            .await?
        {
            // After the write: a socket never hears of a status that is not recorded.
            pubsub.publish(
                delivery.conversation_id,
                Event::DeliveryStatus {
                    conversation_id: delivery.conversation_id,
                    delivery_id: delivery.id,
                    activity_id: delivery.activity_id,
                    channel_id: delivery.channel_id,
                    status: update.status.as_str().to_owned(),
                    error: update.error.clone(),
                },
            );
            let mut updated = delivery;
            updated.metadata = metadata;
            return Ok(StatusApplied::Updated(Box::new(updated)));
        }
    }
    tracing::warn!(provider_id = %update.provider_id, "status report lost to concurrent updates");
    Ok(StatusApplied::Stale)
}

/// Reports older than this cannot be about a send still in flight.
const EARLY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Whether a report may be about a send still in flight: it is recent, or its time is
/// unknown. An old report for an unknown message id (one sent by another system on the
/// same number) is never asked for again, however busy the channel.
fn reported_recently(update: &StatusUpdate) -> bool {
    update
        .timestamp
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_none_or(|at| chrono::Utc::now().signed_duration_since(at) < EARLY_WINDOW)
}

/// What to record after attempt number `attempt` (1-based) ended with `result`.
pub fn attempt_result(
    result: &Result<Delivered, AdapterError>,
    attempt: u32,
    now: Timestamp,
    backoff_scale: f64,
) -> AttemptResult {
    match result {
        Ok(delivered) => AttemptResult::Delivered {
            external_id: delivered.external_id.clone(),
        },
        Err(AdapterError::Permanent { message, .. }) => AttemptResult::Failed {
            error: message.clone(),
        },
        Err(AdapterError::Retryable {
            message,
            retry_after,
            ..
        }) => match next_delay(attempt, *retry_after, backoff_scale) {
            Some(wait) => AttemptResult::RetryAt {
                at: now.plus(wait),
                error: message.clone(),
            },
            None => AttemptResult::Failed {
                error: format!("{message} (gave up after {attempt} attempts)"),
            },
        },
    }
}

/// What an attempt tells about its channel's receiver: `None` when it never reached
/// it (see [`AdapterError::reached`]), so the channel's health is left alone.
pub fn observation(
    delivery: &Delivery,
    result: &Result<Delivered, AdapterError>,
    at: Timestamp,
) -> Option<Observation> {
    let outcome = match result {
        Ok(_) => Observed::Delivered,
        Err(e) if e.reached() => Observed::Failed(e.to_string()),
        Err(_) => return None,
    };
    Some(Observation {
        channel_id: delivery.channel_id,
        tenant_id: delivery.tenant_id,
        delivery_id: delivery.id,
        at,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::delivery::MAX_ATTEMPTS;

    #[test]
    fn only_attempts_that_reached_the_receiver_are_observed() {
        let now = Timestamp::now();
        let delivery = Delivery {
            id: DeliveryId::new(),
            tenant_id: TenantId::new(),
            activity_id: crate::domain::ActivityId::new(),
            channel_id: ChannelId::new(),
            conversation_id: crate::domain::ConversationId::new(),
            seq: 1,
            status: crate::domain::DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(now),
            locked_until: None,
            last_error: None,
            delivered_at: None,
            external_id: None,
            metadata: Value::Null,
            inserted_at: now,
            updated_at: now,
            request_id: None,
        };
        let observed = |result| observation(&delivery, &result, now).map(|o| o.outcome);
        assert_eq!(
            observed(Ok(Delivered::default())),
            Some(Observed::Delivered)
        );
        let answered = AdapterError::permanent("HTTP 404").from_receiver();
        assert_eq!(
            observed(Err(answered)),
            Some(Observed::Failed("HTTP 404".into()))
        );
        assert_eq!(observed(Err(AdapterError::permanent("no recipient"))), None);
        assert_eq!(
            observed(Err(AdapterError::retryable("database: gone"))),
            None
        );
        let o = observation(&delivery, &Ok(Delivered::default()), now).unwrap();
        assert_eq!(
            (o.channel_id, o.tenant_id, o.delivery_id, o.at),
            (delivery.channel_id, delivery.tenant_id, delivery.id, now)
        );
    }

    #[test]
    fn retryable_until_the_last_attempt() {
        let now = Timestamp::now();
        let err = Err(AdapterError::Retryable {
            message: "HTTP 503".into(),
            retry_after: Some(Duration::from_secs(100)),
            reached: true,
        });
        assert_eq!(
            attempt_result(&err, 1, now, 1.0),
            AttemptResult::RetryAt {
                at: now.plus(Duration::from_secs(100)),
                error: "HTTP 503".into()
            }
        );
        assert!(matches!(
            attempt_result(&err, MAX_ATTEMPTS, now, 1.0),
            AttemptResult::Failed { error } if error.contains("gave up after 5 attempts")
        ));
        let permanent = Err(AdapterError::permanent("HTTP 404"));
        assert_eq!(
            attempt_result(&permanent, 1, now, 1.0),
            AttemptResult::Failed {
                error: "HTTP 404".into()
            }
        );
    }
}
