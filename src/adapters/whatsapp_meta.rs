//! `whatsapp_meta`: WhatsApp through Meta's Cloud API (Graph API).

use serde_json::Value;

use super::ChannelAdapter;
use super::config::ConfigReader;
use crate::domain::{ActivityType, ChannelType, Direction, FieldError};

/// Adapter of `whatsapp_meta` channels.
pub struct WhatsappMetaAdapter;

#[async_trait::async_trait]
impl ChannelAdapter for WhatsappMetaAdapter {
    fn channel_type(&self) -> ChannelType {
        ChannelType::WhatsappMeta
    }

    fn validate_config(&self, config: &Value) -> Result<Value, Vec<FieldError>> {
        let mut r = ConfigReader::new(config);
        if let Some(id) = r.string("phone_number_id", true)
            && !id.chars().all(|c| c.is_ascii_digit())
        {
            r.invalid(
                "phone_number_id",
                "must be the numeric id Meta shows for the number",
            );
        }
        r.string("access_token", true);
        r.string("verify_token", true);
        r.string("app_secret", false);
        let version = r.string_or("api_version", "v18.0");
        let valid_version = version
            .strip_prefix('v')
            .and_then(|v| v.split_once('.'))
            .is_some_and(|(major, minor)| {
                !major.is_empty()
                    && !minor.is_empty()
                    && major
                        .chars()
                        .chain(minor.chars())
                        .all(|c| c.is_ascii_digit())
            });
        if !valid_version {
            r.invalid("api_version", "must look like v18.0");
        }
        r.url("api_base_url", false, Some("https://graph.facebook.com"));
        // Without an app secret, unsigned inbound notifications are refused unless this is true.
        r.boolean("allow_unsigned_inbound", false);
        r.finish()
    }

    fn secret_fields(&self) -> &'static [&'static str] {
        &["access_token", "verify_token", "app_secret"]
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
    fn requires_credentials_and_fills_defaults() {
        let errors = WhatsappMetaAdapter.validate_config(&json!({})).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "config.phone_number_id",
                "config.access_token",
                "config.verify_token"
            ]
        );

        let ok = WhatsappMetaAdapter
            .validate_config(&json!({"phone_number_id": "106540352242922", "access_token": "EAAG", "verify_token": "v"}))
            .unwrap();
        assert_eq!(ok["api_version"], "v18.0");
        assert_eq!(ok["api_base_url"], "https://graph.facebook.com");
    }

    #[test]
    fn rejects_malformed_version() {
        let errors = WhatsappMetaAdapter
            .validate_config(&json!({"phone_number_id": "1", "access_token": "a", "verify_token": "v", "api_version": "18"}))
            .unwrap_err();
        assert_eq!(errors[0].field, "config.api_version");
    }
}
