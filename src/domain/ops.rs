//! Operational events: what happened to a tenant's deliveries and channels that its
//! operators want to hear about without watching a dashboard (a delivery given up, a
//! breaker opened, a channel paused), kept as rows and sent to the tenant's ops
//! webhook when it has one.

use serde_json::Value;

use super::{ChannelId, DeliveryId, OpsEventId, TenantId, Timestamp, string_enum};

string_enum! {
    /// What an operational event reports (the wire form has a dot: `delivery.failed`).
    pub enum OpsEventType {
        /// A delivery failed for good: its attempts are used up, or its receiver refused
        /// it permanently. It waits in the dead letters for a retry.
        #[serde(rename = "delivery.failed")]
        DeliveryFailed => "delivery.failed",
        /// A channel's circuit breaker opened after failures in a row: its deliveries
        /// wait for the cool-down, then one probe.
        #[serde(rename = "channel.breaker_opened")]
        BreakerOpened => "channel.breaker_opened",
        /// A channel's breaker closed on a success: its deliveries flow again.
        #[serde(rename = "channel.breaker_closed")]
        BreakerClosed => "channel.breaker_closed",
        /// A channel was paused, by an operator or for failing too long
        /// (`data.reason`): nothing is attempted until it is resumed.
        #[serde(rename = "channel.paused")]
        ChannelPaused => "channel.paused",
        /// A paused channel, or one with its breaker open, was resumed.
        #[serde(rename = "channel.resumed")]
        ChannelResumed => "channel.resumed",
    }
}

string_enum! {
    /// Where an event stands with the tenant's ops webhook.
    pub enum OpsDispatchStatus {
        /// Waiting for its next attempt.
        Pending => "pending",
        /// The webhook answered 2xx.
        Delivered => "delivered",
        /// Its attempts are used up; the event stays listed.
        Failed => "failed",
    }
}

/// An operational event, as stored and listed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct OpsEvent {
    pub id: OpsEventId,
    pub tenant_id: TenantId,
    #[serde(rename = "type")]
    pub kind: OpsEventType,
    /// The channel the event is about.
    pub channel_id: Option<ChannelId>,
    /// The delivery the event is about (`delivery.failed`).
    pub delivery_id: Option<DeliveryId>,
    /// Details of the event; see the event types.
    pub data: Value,
    pub created_at: Timestamp,
    /// Its sending to the ops webhook; `null` when the tenant had none when it
    /// happened.
    pub webhook: Option<OpsDispatch>,
}

/// How far an event got with the tenant's ops webhook.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct OpsDispatch {
    pub status: OpsDispatchStatus,
    pub attempts: i32,
    /// Why the last attempt did not deliver.
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
}

/// An event to record, in the transaction of what it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOpsEvent {
    pub tenant_id: TenantId,
    pub kind: OpsEventType,
    pub channel_id: Option<ChannelId>,
    pub delivery_id: Option<DeliveryId>,
    pub data: Value,
}

impl NewOpsEvent {
    /// An event about a tenant's channel: `data`, an object, also names the channel.
    pub fn channel(
        tenant_id: TenantId,
        channel_id: ChannelId,
        kind: OpsEventType,
        mut data: Value,
    ) -> Self {
        if let Value::Object(map) = &mut data {
            map.insert("channel_id".into(), Value::String(channel_id.to_string()));
        }
        Self {
            tenant_id,
            kind,
            channel_id: Some(channel_id),
            delivery_id: None,
            data,
        }
    }
}

/// A tenant's ops webhook: one of its `webhook` channels, to which its operational
/// events are sent, signed with that channel's secret.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct OpsWebhook {
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_serialize_as_they_are_stored() {
        for kind in OpsEventType::ALL {
            let wire = serde_json::to_value(kind).unwrap();
            assert_eq!(wire, Value::String(kind.as_str().to_owned()));
            assert_eq!(serde_json::from_value::<OpsEventType>(wire).unwrap(), *kind);
        }
    }

    #[test]
    fn channel_events_name_their_channel() {
        let (tenant, channel) = (TenantId::new(), ChannelId::new());
        let event = NewOpsEvent::channel(
            tenant,
            channel,
            OpsEventType::ChannelResumed,
            serde_json::json!({"from": "paused"}),
        );
        assert_eq!(event.channel_id, Some(channel));
        assert_eq!(event.data["channel_id"], channel.to_string());
        assert_eq!(event.data["from"], "paused");
    }
}
