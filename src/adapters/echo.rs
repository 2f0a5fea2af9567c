//! `echo`: answers every inbound message with a bot reply of the same text.

use serde_json::Value;

use super::ChannelAdapter;
use super::config::ConfigReader;
use crate::domain::{ActivityType, ChannelType, Direction, FieldError};

/// Adapter of `echo` channels.
pub struct EchoAdapter;

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
}
