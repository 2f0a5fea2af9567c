//! Reading channel configs field by field, masking their secrets, and merging patches.

use serde_json::{Map, Value};

use crate::domain::FieldError;

/// What a secret config value reads as.
pub const MASK: &str = "********";

/// Walks a config object, collecting every problem and rejecting unknown keys, so a
/// typo in a field name is an error rather than a silently ignored setting.
pub(super) struct ConfigReader<'a> {
    object: Option<&'a Map<String, Value>>,
    known: Vec<&'static str>,
    errors: Vec<FieldError>,
    out: Map<String, Value>,
}

impl<'a> ConfigReader<'a> {
    pub(super) fn new(config: &'a Value) -> Self {
        let mut errors = Vec::new();
        let object = match config {
            Value::Object(map) => Some(map),
            Value::Null => None,
            _ => {
                errors.push(FieldError::new("config", "must be an object"));
                None
            }
        };
        Self {
            object,
            known: Vec::new(),
            errors,
            out: Map::new(),
        }
    }

    fn raw(&mut self, name: &'static str) -> Option<&'a Value> {
        self.known.push(name);
        self.object
            .and_then(|o| o.get(name))
            .filter(|v| !v.is_null())
    }

    fn error(&mut self, name: &str, message: impl Into<String>) {
        self.errors
            .push(FieldError::new(format!("config.{name}"), message));
    }

    /// A string field; `required` ones must be present and non-blank.
    pub(super) fn string(&mut self, name: &'static str, required: bool) -> Option<String> {
        match self.raw(name) {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                self.out.insert(name.into(), Value::String(s.clone()));
                Some(s.clone())
            }
            Some(Value::String(_)) | None if required => {
                self.error(name, "is required");
                None
            }
            Some(Value::String(_)) | None => None,
            Some(_) => {
                self.error(name, "must be a string");
                None
            }
        }
    }

    /// A string field with a default.
    pub(super) fn string_or(&mut self, name: &'static str, default: &str) -> String {
        let value = self
            .string(name, false)
            .unwrap_or_else(|| default.to_owned());
        self.out.insert(name.into(), Value::String(value.clone()));
        value
    }

    /// An absolute http(s) URL.
    pub(super) fn url(&mut self, name: &'static str, required: bool, default: Option<&str>) {
        let value = match self.string(name, required && default.is_none()) {
            Some(v) => v,
            None => match default {
                Some(d) => {
                    self.out.insert(name.into(), Value::String(d.into()));
                    return;
                }
                None => return,
            },
        };
        match url::Url::parse(&value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => self.error(name, "must be an absolute http:// or https:// URL"),
        }
    }

    /// A boolean field with a default.
    pub(super) fn boolean(&mut self, name: &'static str, default: bool) -> bool {
        let value = match self.raw(name) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.error(name, "must be true or false");
                default
            }
        };
        self.out.insert(name.into(), Value::Bool(value));
        value
    }

    /// An integer field within bounds, with a default.
    pub(super) fn integer(&mut self, name: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let value = match self.raw(name) {
            None => default,
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => n,
                _ => {
                    self.error(name, format!("must be a whole number from {min} to {max}"));
                    default
                }
            },
        };
        self.out.insert(name.into(), Value::from(value));
        value
    }

    /// One of a fixed set of strings, with a default.
    pub(super) fn one_of(&mut self, name: &'static str, allowed: &[&str], default: &str) -> String {
        let value = self.string_or(name, default);
        if !allowed.contains(&value.as_str()) {
            self.error(name, format!("must be one of: {}", allowed.join(", ")));
        }
        value
    }

    /// An object of string values (e.g. extra HTTP headers).
    pub(super) fn string_map(&mut self, name: &'static str) {
        match self.raw(name) {
            None => {
                self.out.insert(name.into(), Value::Object(Map::new()));
            }
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    if !v.is_string() {
                        self.error(&format!("{name}.{k}"), "must be a string");
                    }
                }
                self.out.insert(name.into(), Value::Object(map.clone()));
            }
            Some(_) => self.error(name, "must be an object of strings"),
        }
    }

    /// Adds an error found by a caller's own check.
    pub(super) fn invalid(&mut self, name: &str, message: impl Into<String>) {
        self.error(name, message);
    }

    /// The normalised config, or every problem found.
    pub(super) fn finish(mut self) -> Result<Value, Vec<FieldError>> {
        if let Some(object) = self.object {
            let mut unknown: Vec<&String> = object
                .keys()
                .filter(|k| !self.known.contains(&k.as_str()))
                .collect();
            unknown.sort();
            for key in unknown {
                self.error(key, "is not a setting of this channel type");
            }
        }
        if self.errors.is_empty() {
            Ok(Value::Object(self.out))
        } else {
            Err(self.errors)
        }
    }
}

/// Header names whose values are credentials.
fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "authorization",
        "token",
        "key",
        "secret",
        "password",
        "cookie",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// A config as it may be shown: secret fields and credential-like headers masked.
pub fn mask_config(config: &Value, secret_fields: &[&str]) -> Value {
    let mut masked = config.clone();
    if let Value::Object(map) = &mut masked {
        for field in secret_fields {
            if let Some(v) = map.get_mut(*field)
                && !v.is_null()
            {
                *v = Value::String(MASK.into());
            }
        }
        if let Some(Value::Object(headers)) = map.get_mut("headers") {
            for (name, value) in headers.iter_mut() {
                if is_sensitive_header(name) {
                    *value = Value::String(MASK.into());
                }
            }
        }
    }
    masked
}

/// Applies a JSON merge patch (RFC 7396) to a config. A masked value sent back, as a
/// client does when it edits what it read, keeps the stored value.
pub fn merge_config_patch(current: &Value, patch: &Value) -> Value {
    match (current, patch) {
        (Value::Object(current_map), Value::Object(patch_map)) => {
            let mut merged = current_map.clone();
            for (key, value) in patch_map {
                match value {
                    Value::Null => {
                        merged.remove(key);
                    }
                    Value::String(s) if s == MASK => {}
                    _ => {
                        let base = current_map.get(key).unwrap_or(&Value::Null);
                        merged.insert(key.clone(), merge_config_patch(base, value));
                    }
                }
            }
            Value::Object(merged)
        }
        (_, patch) => patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_secrets_and_credential_headers() {
        let config = json!({"access_token": "EAAG", "phone_number_id": "1", "headers": {"Authorization": "Bearer x", "X-Team": "a"}});
        let masked = mask_config(&config, &["access_token", "app_secret"]);
        assert_eq!(
            masked,
            json!({"access_token": MASK, "phone_number_id": "1", "headers": {"Authorization": MASK, "X-Team": "a"}})
        );
    }

    #[test]
    fn merge_patch_keeps_masked_values_and_deletes_nulls() {
        let current = json!({"access_token": "EAAG", "api_version": "v18.0", "headers": {"a": "1", "b": "2"}});
        let patch = json!({"access_token": MASK, "api_version": null, "headers": {"b": "3"}});
        assert_eq!(
            merge_config_patch(&current, &patch),
            json!({"access_token": "EAAG", "headers": {"a": "1", "b": "3"}})
        );
    }
}
