//! `echo`: answers every inbound message with a bot reply of the same text.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::config::{ConfigSpec, stored};
use super::{AdapterError, ChannelAdapter, Delivered, Outbound};
use crate::domain::{ActivityType, ChannelType, DeliveryOrdering, Direction, NewActivity};

/// Sender of echo replies.
pub const ECHO_SENDER: &str = "echo-bot";

/// Settings of an `echo` channel.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(title = "echo")]
pub struct EchoConfig {
    /// Reply prefix
    ///
    /// Put before the echoed text, e.g. "echo: ".
    #[serde(default)]
    #[schema(default = "")]
    pub prefix: String,
    /// Delivery order
    ///
    /// conversation: one delivery of a conversation at a time, in order; a failing one
    /// holds back the later ones of its conversation until it is delivered or given up.
    /// none: each delivery on its own; nothing waits for a failing one, and a
    /// conversation's messages may arrive out of order.
    #[serde(default)]
    #[schema(inline, default = DeliveryOrdering::default)]
    pub ordering: DeliveryOrdering,
}

/// Adapter of `echo` channels.
pub struct EchoAdapter;

#[async_trait::async_trait]
impl ChannelAdapter for EchoAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::Echo
    }

    fn config_spec(&self) -> &'static ConfigSpec {
        static SPEC: LazyLock<ConfigSpec> = LazyLock::new(ConfigSpec::of::<EchoConfig>);
        &SPEC
    }

    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool {
        // Only what the external party says is answered; bot replies are outbound, so
        // an echo never answers itself.
        direction == Direction::Inbound && kind == ActivityType::Message
    }

    async fn deliver(&self, out: &Outbound<'_>) -> Result<Delivered, AdapterError> {
        let activity = out.activity;
        if activity.direction != Direction::Inbound {
            // Never answer a bot: that is how echo loops start.
            return Ok(Delivered::default());
        }
        let config: EchoConfig = stored(&out.channel.config).map_err(AdapterError::permanent)?;
        let text = activity
            .text
            .as_deref()
            .map(|t| format!("{}{t}", config.prefix));
        Ok(Delivered {
            external_id: None,
            reply: Some(NewActivity {
                kind: ActivityType::Message,
                direction: Direction::Outbound,
                sender: ECHO_SENDER.to_owned(),
                text,
                attachments: activity.attachments.clone(),
                metadata: json!({"echo_of": activity.id}),
                // A retried delivery must not answer twice.
                idempotency_key: Some(format!("echo:{}", activity.id)),
            }),
        })
    }
}
