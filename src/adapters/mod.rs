//! Channel adapters: everything Converger knows about one kind of channel.
//!
//! Stage 4 of the flow. An adapter validates its channel's config, says which
//! activities it delivers, and (with the delivery engine) speaks the external wire
//! format. Adapters know external formats, not the store: they never read or write
//! rows themselves.

mod config;
mod echo;
mod webhook;
mod websocket;
mod whatsapp_infobip;
mod whatsapp_meta;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::domain::{ActivityType, ChannelType, Direction, FieldError};

pub use config::{MASK, mask_config, merge_config_patch};

/// The behaviour of one channel type.
pub trait ChannelAdapter: Send + Sync + 'static {
    /// The channel type this adapter serves.
    fn channel_type(&self) -> ChannelType;

    /// Checks a channel config and returns it with defaults filled in.
    ///
    /// # Errors
    /// Every broken rule, each naming its field as `config.<path>`.
    fn validate_config(&self, config: &Value) -> Result<Value, Vec<FieldError>>;

    /// Config fields holding credentials: masked on every read.
    fn secret_fields(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether an activity of this direction and type, in a conversation on a channel of
    /// this type (or routed to one), gets a delivery row for this channel.
    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool;

    /// Whether an activity forwarded to a channel of this type by a route gets a
    /// delivery row. The route's direction filter has already matched.
    fn accepts_routed(&self, kind: ActivityType) -> bool {
        kind != ActivityType::Typing
    }
}

/// Every adapter, by channel type. Built once and shared.
#[derive(Clone)]
pub struct Adapters {
    by_type: Arc<HashMap<ChannelType, Arc<dyn ChannelAdapter>>>,
}

impl Default for Adapters {
    fn default() -> Self {
        Self::new()
    }
}

impl Adapters {
    /// The registry with one adapter for each channel type.
    pub fn new() -> Self {
        let all: [Arc<dyn ChannelAdapter>; 5] = [
            Arc::new(echo::EchoAdapter),
            Arc::new(webhook::WebhookAdapter),
            Arc::new(websocket::WebsocketAdapter),
            Arc::new(whatsapp_meta::WhatsappMetaAdapter),
            Arc::new(whatsapp_infobip::WhatsappInfobipAdapter),
        ];
        let by_type = all.into_iter().map(|a| (a.channel_type(), a)).collect();
        Self {
            by_type: Arc::new(by_type),
        }
    }

    /// The adapter of a channel type.
    pub fn get(&self, kind: ChannelType) -> &dyn ChannelAdapter {
        // `new` registers every variant of `ChannelType`; the test below keeps it so.
        self.by_type
            .get(&kind)
            .map(|a| a.as_ref())
            .unwrap_or_else(|| unreachable!("no adapter registered for {kind}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_type_has_its_adapter() {
        let adapters = Adapters::new();
        for &kind in ChannelType::ALL {
            assert_eq!(adapters.get(kind).channel_type(), kind);
        }
    }

    #[test]
    fn delivery_directions_follow_the_design() {
        let a = Adapters::new();
        let msg = ActivityType::Message;
        assert!(
            a.get(ChannelType::Webhook)
                .delivers(Direction::Outbound, msg)
        );
        assert!(
            !a.get(ChannelType::Webhook)
                .delivers(Direction::Inbound, msg)
        );
        assert!(a.get(ChannelType::Echo).delivers(Direction::Inbound, msg));
        assert!(!a.get(ChannelType::Echo).delivers(Direction::Outbound, msg));
        assert!(
            !a.get(ChannelType::Websocket)
                .delivers(Direction::Outbound, msg)
        );
        for kind in [
            ChannelType::Webhook,
            ChannelType::WhatsappMeta,
            ChannelType::WhatsappInfobip,
        ] {
            assert!(
                !a.get(kind)
                    .delivers(Direction::Outbound, ActivityType::Typing)
            );
        }
    }
}
