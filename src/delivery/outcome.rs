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
use super::backoff::next_delay;

/// An operator's retry of a delivery: a failed one queued again, a pending one waiting
/// for its next attempt made due; either is due now with a fresh budget of
/// [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS) attempts, numbered on from its last one. An
/// open breaker of its channel probes now rather than at the end of its cool-down.
/// The workers are woken after the commit.
///
/// # Errors
/// `NotFound` when the tenant has no delivery with this id that is failed, or pending
/// without an attempt under way.
pub async fn retry_now(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    id: DeliveryId,
) -> StoreResult<Delivery> {
    let now = Timestamp::now();
    let delivery = store.retry_delivery(tenant_id, id, now).await?;
    // Held behind an open breaker, it would wait for the cool-down: the receiver is
    // probed now instead (the probe may be another delivery of the channel first in
    // line; this one follows once it succeeds).
    store
        .probe_soon(delivery.channel_id, "delivery retried")
        .await;
    waker.wake();
    Ok(delivery)
}

/// Most deliveries a replay requeues in one transaction.
pub const REPLAY_BATCH: i64 = 1000;

/// An operator's replay of a tenant's channel's failed deliveries, those of activities
/// created in `[since, until)` (unbounded where `None`): each is queued again as by
/// [`retry_now`], in order of id, `batch` rows per transaction so that no replay holds
/// a long one; the workers are woken after each. An open breaker of the channel probes
/// now. Returns how many were requeued.
///
/// # Errors
/// Database failures; the batches committed before one stay committed.
pub async fn replay_failed(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    channel_id: ChannelId,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    batch: i64,
) -> StoreResult<u64> {
    // Bounds both stores order correctly (SQLite compares fixed-width text).
    let since = since.unwrap_or(Timestamp(chrono::DateTime::UNIX_EPOCH));
    let until = until.unwrap_or_else(|| {
        Timestamp(chrono::DateTime::from_timestamp(253_402_300_799, 0).unwrap_or_default())
    });
    let batch = batch.max(1);
    let (mut total, mut after) = (0, None);
    loop {
        let (n, last) = store
            .requeue_failed_batch(
                tenant_id,
                channel_id,
                since..until,
                after,
                batch,
                Timestamp::now(),
            )
            .await?;
        total += n;
        if n > 0 {
            waker.wake();
        }
        if n < batch as u64 {
            if total > 0 {
                store
                    .probe_soon(channel_id, "failed deliveries replayed")
                    .await;
            }
            return Ok(total);
        }
        after = last;
        tokio::task::yield_now().await;
    }
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

/// What to record after the `attempt`-th attempt (1-based) of the delivery's current
/// budget ended with `result`. Error texts are made storable: a receiver's answer
/// quoted in one may hold U+0000, which PostgreSQL's `text` cannot.
pub fn attempt_result(
    result: &Result<Delivered, AdapterError>,
    attempt: u32,
    now: Timestamp,
    backoff_scale: f64,
) -> AttemptResult {
    let storable = |message: &str| message.replace('\0', "\u{FFFD}");
    match result {
        Ok(delivered) => AttemptResult::Delivered {
            external_id: delivered.external_id.clone(),
        },
        Err(AdapterError::Permanent { message, .. }) => AttemptResult::Failed {
            error: storable(message),
        },
        Err(AdapterError::Retryable {
            message,
            retry_after,
            ..
        }) => match next_delay(attempt, *retry_after, backoff_scale) {
            Some(wait) => AttemptResult::RetryAt {
                at: now.plus(wait),
                error: storable(message),
            },
            None => AttemptResult::Failed {
                error: storable(&format!("{message} (gave up after {attempt} attempts)")),
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
            budget_start: 0,
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
        let quoted = Err(AdapterError::permanent("HTTP 400: a\0b"));
        assert_eq!(
            attempt_result(&quoted, 1, now, 1.0),
            AttemptResult::Failed {
                error: "HTTP 400: a\u{FFFD}b".into()
            }
        );
        let permanent = Err(AdapterError::permanent("HTTP 404"));
        assert_eq!(
            attempt_result(&permanent, 1, now, 1.0),
            AttemptResult::Failed {
                error: "HTTP 404".into()
            }
        );
    }
}
