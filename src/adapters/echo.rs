//! `echo`: answers every inbound message with a bot reply of the same text.

use serde_json::{Value, json};

use super::config::ConfigReader;
use super::{AdapterError, ChannelAdapter, Delivered, Outbound};
use crate::domain::{ActivityType, ChannelType, Direction, FieldError, NewActivity};

/// Sender of echo replies.
pub const ECHO_SENDER: &str = "echo-bot";

/// Adapter of `echo` channels.
pub struct EchoAdapter;

#[async_trait::async_trait]
impl ChannelAdapter for EchoAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::Echo
    }

    fn validate_config(&self, config: &Value) -> Result<Value, Vec<FieldError>> {
        let mut r = ConfigReader::new(config);
        // Put before the echoed text, e.g. "echo: ".
        r.string_or("prefix", "");
        r.finish()
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
        let prefix = out.channel.config["prefix"].as_str().unwrap_or("");
        let text = activity.text.as_deref().map(|t| format!("{prefix}{t}"));
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
