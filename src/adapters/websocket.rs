//! `websocket`: real-time clients only. Nothing is delivered externally: PubSub carries
//! every activity to the conversation's sockets.

use serde_json::Value;

use super::ChannelAdapter;
use super::config::ConfigReader;
use crate::domain::{ActivityType, ChannelType, Direction, FieldError};

/// Adapter of `websocket` channels.
pub struct WebsocketAdapter;

#[async_trait::async_trait]
impl ChannelAdapter for WebsocketAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::Websocket
    }

    fn validate_config(&self, config: &Value) -> Result<Value, Vec<FieldError>> {
        ConfigReader::new(config).finish()
    }

    fn delivers(&self, _direction: Direction, _kind: ActivityType) -> bool {
        false
    }

    fn accepts_routed(&self, _kind: ActivityType) -> bool {
        false
    }
}
