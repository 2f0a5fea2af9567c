//! HTML forms: a CSRF-checked form extractor, and the channel config fields of each
//! channel type (the form follows the selected type).
//!
//! The config fields are read from each adapter's config schema (name, label, doc,
//! required, default, secret); nothing here re-declares an adapter's settings.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::guard::AdminContext;
use crate::adapters::{Adapters, FieldSpec, FieldType};
use crate::domain::ChannelType;
use crate::http::error::ApiError;
use crate::http::extract::read_body;

/// A submitted form whose `_csrf` matched the session's token.
pub struct CsrfForm(pub HashMap<String, String>);

impl CsrfForm {
    /// A field, trimmed; empty counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
}

impl<S: Send + Sync> FromRequest<S> for CsrfForm {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let expected = req
            .extensions()
            .get::<AdminContext>()
            .map(|ctx| ctx.csrf.clone())
            .ok_or_else(|| ApiError::forbidden("csrf_rejected", "no admin session"))?;
        let body = read_body(req, state).await?;
        let fields: HashMap<String, String> = serde_urlencoded::from_bytes(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_form",
                format!("unreadable form: {e}"),
            )
        })?;
        let given = fields.get("_csrf").map(String::as_str).unwrap_or_default();
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            expected.as_bytes(),
        )) {
            return Err(ApiError::forbidden(
                "csrf_rejected",
                "the form's CSRF token is missing or stale; reload the page",
            ));
        }
        Ok(CsrfForm(fields))
    }
}

/// How a config field is edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    Text,
    Secret,
    Number,
    Checkbox,
    /// One of the listed values.
    Choice(&'static [&'static str]),
    /// `Name: value` per line, for HTTP headers.
    Lines,
}

/// One config field of a channel type's form, read from the adapter's config schema.
#[derive(Debug, Clone, Copy)]
pub struct ConfigField {
    pub name: &'static str,
    pub label: &'static str,
    pub kind: FieldKind,
    pub required: bool,
    /// The field's doc, with how to fill it in and its default.
    pub help: &'static str,
    /// A checkbox whose schema default is `true` starts ticked on a new form.
    pub checked_by_default: bool,
}

impl ConfigField {
    fn of(spec: &'static FieldSpec) -> Self {
        let kind = match spec.kind {
            _ if spec.secret => FieldKind::Secret,
            FieldType::Boolean => FieldKind::Checkbox,
            FieldType::Integer => FieldKind::Number,
            FieldType::StringMap => FieldKind::Lines,
            FieldType::String if !spec.choices.is_empty() => FieldKind::Choice(spec.choices),
            FieldType::String => FieldKind::Text,
        };
        let mut help = spec.description.trim_end_matches('.').to_owned();
        if kind == FieldKind::Lines {
            help.push_str(". One Name: value per line");
        }
        let default = match &spec.default {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        if let Some(default) =
            default.filter(|_| matches!(kind, FieldKind::Text | FieldKind::Number))
        {
            help.push_str(&format!(". Default {default}"));
        }
        let checked_by_default = spec.default == Some(Value::Bool(true));
        Self {
            checked_by_default,
            name: spec.name,
            label: spec.label,
            kind,
            required: spec.required,
            // Built once per process (below); the form lives as long as the program.
            help: Box::leak(help.into_boxed_str()),
        }
    }
}

/// The form fields of each channel type, in the order its config struct declares them.
static FIELDS: LazyLock<HashMap<ChannelType, Vec<ConfigField>>> = LazyLock::new(|| {
    let adapters = Adapters::new();
    ChannelType::ALL
        .iter()
        .map(|&kind| {
            let spec = adapters.get(kind).config_spec();
            (kind, spec.fields.iter().map(ConfigField::of).collect())
        })
        .collect()
});

/// The form fields of each channel type, matching its adapter's config.
pub fn config_fields(kind: ChannelType) -> &'static [ConfigField] {
    FIELDS.get(&kind).map_or(&[], Vec::as_slice)
}

/// The form input name of a config field of a type (unique across types, so one
/// page can hold every type's fields).
pub fn input_name(kind: ChannelType, field: &ConfigField) -> String {
    format!("{}.{}", kind.as_str(), field.name)
}

/// Builds a channel config from the submitted fields of `kind`. Values that do not
/// parse are passed through as strings, so the adapter names the field in its error.
pub fn config_from_form(kind: ChannelType, form: &CsrfForm) -> Value {
    let mut config = Map::new();
    for f in config_fields(kind) {
        let name = input_name(kind, f);
        let value = form.get(&name);
        let json = match f.kind {
            FieldKind::Checkbox => Some(Value::Bool(value.is_some())),
            FieldKind::Number => value.map(|v| {
                v.parse::<u64>()
                    .map_or_else(|_| Value::String(v.into()), Value::from)
            }),
            FieldKind::Lines => value.map(|v| {
                let headers: Map<String, Value> = v
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), Value::String(v.trim().to_owned())))
                    .filter(|(k, _)| !k.is_empty())
                    .collect();
                Value::Object(headers)
            }),
            _ => value.map(|v| Value::String(v.to_owned())),
        };
        if let Some(json) = json {
            config.insert(f.name.to_owned(), json);
        }
    }
    Value::Object(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> CsrfForm {
        CsrfForm(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn webhook_form_builds_a_valid_config() {
        let f = form(&[
            ("webhook.url", "https://bot.example.com/h"),
            ("webhook.method", "PUT"),
            (
                "webhook.headers",
                "X-Team: a\nAuthorization: Bearer t\nbroken",
            ),
            ("webhook.timeout_ms", "2000"),
        ]);
        let config = config_from_form(ChannelType::Webhook, &f);
        assert_eq!(config["headers"]["Authorization"], "Bearer t");
        assert_eq!(config["require_signature"], false);
        let ok = Adapters::new()
            .get(ChannelType::Webhook)
            .validate_config(&config)
            .unwrap();
        assert_eq!(ok["timeout_ms"], 2000);
    }

    #[test]
    fn every_form_field_is_a_setting_of_its_adapter() {
        let adapters = Adapters::new();
        for &kind in ChannelType::ALL {
            // A form with every field filled must not hit "is not a setting".
            let pairs: Vec<(String, String)> = config_fields(kind)
                .iter()
                .map(|f| (input_name(kind, f), "x".to_owned()))
                .collect();
            let f = CsrfForm(pairs.into_iter().collect());
            if let Err(errors) = adapters
                .get(kind)
                .validate_config(&config_from_form(kind, &f))
            {
                assert!(
                    errors.iter().all(|e| !e.message.contains("not a setting")),
                    "{kind}: {errors:?}"
                );
            }
        }
    }

    #[test]
    fn fields_follow_the_config_structs() {
        use FieldKind::{Checkbox, Choice, Lines, Number, Secret, Text};
        const ORDERING: FieldKind = Choice(&["conversation", "none"]);
        let summary = |kind| -> Vec<(&str, &str, FieldKind, bool)> {
            config_fields(kind)
                .iter()
                .map(|f| (f.name, f.label, f.kind, f.required))
                .collect()
        };
        assert_eq!(
            summary(ChannelType::Webhook),
            [
                ("url", "URL", Text, true),
                ("method", "Method", Choice(&["POST", "PUT", "PATCH"]), false),
                ("headers", "Extra headers", Lines, false),
                ("timeout_ms", "Timeout (ms)", Number, false),
                (
                    "require_signature",
                    "Require signed inbound requests",
                    Checkbox,
                    false
                ),
                ("ordering", "Delivery order", ORDERING, false),
                ("rate_limit", "Rate limit", Text, false),
            ]
        );
        assert_eq!(
            summary(ChannelType::Echo),
            [
                ("prefix", "Reply prefix", Text, false),
                ("ordering", "Delivery order", ORDERING, false),
            ]
        );
        assert_eq!(summary(ChannelType::Websocket), []);
        assert_eq!(
            summary(ChannelType::WhatsappMeta),
            [
                ("phone_number_id", "Phone number ID", Text, true),
                ("access_token", "Access token", Secret, true),
                ("verify_token", "Verify token", Secret, true),
                ("app_secret", "App secret", Secret, false),
                ("api_version", "API version", Text, false),
                ("api_base_url", "API base URL", Text, false),
                (
                    "allow_unsigned_inbound",
                    "Accept unsigned notifications (no app secret)",
                    Checkbox,
                    false
                ),
                ("ordering", "Delivery order", ORDERING, false),
                ("rate_limit", "Rate limit", Text, false),
            ]
        );
        assert_eq!(
            summary(ChannelType::WhatsappInfobip),
            [
                ("base_url", "Base URL", Text, true),
                ("api_key", "API key", Secret, true),
                ("sender", "Sender number", Text, true),
                ("ordering", "Delivery order", ORDERING, false),
                ("rate_limit", "Rate limit", Text, false),
            ]
        );
        let timeout = &config_fields(ChannelType::Webhook)[3];
        assert!(timeout.help.ends_with("Default 15000"), "{}", timeout.help);
    }
}
