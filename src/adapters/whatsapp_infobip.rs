//! `whatsapp_infobip`: WhatsApp through Infobip's API.

use serde_json::Value;

use super::ChannelAdapter;
use super::config::ConfigReader;
use crate::domain::{ActivityType, ChannelType, Direction, FieldError};

/// Adapter of `whatsapp_infobip` channels.
pub struct WhatsappInfobipAdapter;

#[async_trait::async_trait]
impl ChannelAdapter for WhatsappInfobipAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::WhatsappInfobip
    }

    fn validate_config(&self, config: &Value) -> Result<Value, Vec<FieldError>> {
        let mut r = ConfigReader::new(config);
        // The account's personal base URL, e.g. https://xyz123.api.infobip.com.
        r.url("base_url", true, None);
        r.string("api_key", true);
        // The registered WhatsApp sender number.
        r.string("sender", true);
        r.finish()
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["api_key"]
    }

    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool {
        direction == Direction::Outbound && kind == ActivityType::Message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requires_every_field() {
        let errors = WhatsappInfobipAdapter
            .validate_config(&json!({"base_url": "nope"}))
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["config.base_url", "config.api_key", "config.sender"]
        );
    }
}
