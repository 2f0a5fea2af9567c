//! `webhook`: generic HTTP. Inbound messages arrive signed at the channel's inbound
//! URL; outbound activities are sent as Standard Webhooks to the configured `url`.

use serde_json::Value;

use super::ChannelAdapter;
use super::config::ConfigReader;
use crate::domain::{ActivityType, ChannelType, Direction, FieldError};

/// Adapter of `webhook` channels.
pub struct WebhookAdapter;

/// Longest request timeout a channel may configure, in milliseconds.
const MAX_TIMEOUT_MS: u64 = 60_000;

impl ChannelAdapter for WebhookAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::Webhook
    }

    fn validate_config(&self, config: &Value) -> Result<Value, Vec<FieldError>> {
        let mut r = ConfigReader::new(config);
        r.url("url", true, None);
        r.one_of("method", &["POST", "PUT", "PATCH"], "POST");
        r.string_map("headers");
        r.integer("timeout_ms", 15_000, 100, MAX_TIMEOUT_MS);
        // Inbound requests without a signature are refused unless this is false.
        r.boolean("require_signature", true);
        r.finish()
    }

    fn delivers(&self, direction: Direction, kind: ActivityType) -> bool {
        direction == Direction::Outbound && kind != ActivityType::Typing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_defaults() {
        let out = WebhookAdapter
            .validate_config(&json!({"url": "https://bot.example.com/hook"}))
            .unwrap();
        assert_eq!(
            out,
            json!({"url": "https://bot.example.com/hook", "method": "POST", "headers": {}, "timeout_ms": 15000, "require_signature": true})
        );
    }

    #[test]
    fn names_every_bad_field() {
        let errors = WebhookAdapter
            .validate_config(
                &json!({"url": "ftp://x", "method": "GET", "headers": {"a": 1}, "retries": 3}),
            )
            .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "config.url",
                "config.method",
                "config.headers.a",
                "config.retries"
            ]
        );
    }
}
