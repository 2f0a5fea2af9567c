//! Turning an adapter's answer into what is recorded on the delivery row.

use crate::adapters::{AdapterError, Delivered};
use crate::domain::{Delivery, DeliveryId, TenantId, Timestamp};
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
        Err(AdapterError::Permanent { message }) => AttemptResult::Failed {
            error: message.clone(),
        },
        Err(AdapterError::Retryable {
            message,
            retry_after,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::delivery::MAX_ATTEMPTS;

    #[test]
    fn retryable_until_the_last_attempt() {
        let now = Timestamp::now();
        let err = Err(AdapterError::Retryable {
            message: "HTTP 503".into(),
            retry_after: Some(Duration::from_secs(100)),
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
