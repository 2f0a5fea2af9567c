//! `websocket`: real-time clients only. Nothing is delivered externally: PubSub carries
//! every activity to the conversation's sockets.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ChannelAdapter;
use super::config::ConfigSpec;
use crate::domain::{ActivityType, ChannelType, Direction};

/// Settings of a `websocket` channel: none.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(title = "websocket")]
pub struct WebsocketConfig {}

/// Adapter of `websocket` channels.
pub struct WebsocketAdapter;

#[async_trait::async_trait]
impl ChannelAdapter for WebsocketAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::Websocket
    }

    fn config_spec(&self) -> &'static ConfigSpec {
        static SPEC: LazyLock<ConfigSpec> = LazyLock::new(ConfigSpec::of::<WebsocketConfig>);
        &SPEC
    }

    fn delivers(&self, _direction: Direction, _kind: ActivityType) -> bool {
        false
    }

    fn accepts_routed(&self, _kind: ActivityType) -> bool {
        false
    }
}
