//! Channel configs: one typed struct per channel type, and what is derived from it.
//!
//! Each adapter declares its settings once, as a `serde` struct that also derives
//! `utoipa::ToSchema`: field names, `///` docs, types, defaults (`#[serde(default =
//! ..)]` and the same function as `#[schema(default = ..)]`), bounds (`minimum`,
//! `maximum`), choices (enums), secrets (`format = Password`) and form labels (a
//! field doc's first paragraph, when the doc has two). [`ConfigSpec`] reads that
//! schema once per channel type; validation, masking, the admin form and the OpenAPI
//! document all follow from it, so adding a setting is one edit to one struct. Field
//! docs are shown in the admin form as they are: plain sentences, no markup.
//!
//! Validation collects every problem, each naming its field as `config.<path>`: the
//! schema's rules (required, unknown, bounds, choices, value types) and the field types'
//! own checks (a URL's scheme, a phone number id's digits) from deserializing with
//! `serde_path_to_error`. What passes is stored as the struct serializes, defaults
//! filled in. This module knows no channel type and does no I/O.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, Object, Schema, SchemaFormat, SchemaType, Type};

use crate::domain::FieldError;
use crate::secrets::pointer;

/// What a secret config value reads as.
pub const MASK: &str = "********";

/// A channel type's typed config: validated, stored and read back as this struct.
pub trait ChannelConfig: Serialize + DeserializeOwned + ToSchema + 'static {}

impl<T: Serialize + DeserializeOwned + ToSchema + 'static> ChannelConfig for T {}

/// The JSON type of a config field, as its schema says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Boolean,
    /// An object of string values (e.g. extra HTTP headers).
    StringMap,
}

/// One field of a channel type's config, read from the config struct's schema.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    /// The JSON key.
    pub name: &'static str,
    /// The form label: the doc's first paragraph when it has more, else the key.
    pub label: &'static str,
    /// The field's `///` doc, without the label.
    pub description: &'static str,
    pub required: bool,
    /// The value an absent field takes.
    pub default: Option<Value>,
    /// A credential: masked on every read, never written back into a form.
    pub secret: bool,
    /// A destination URL ([`HttpUrl`]): checked against the egress policy.
    pub url: bool,
    pub kind: FieldType,
    /// The allowed values of a string field with a fixed set; empty otherwise.
    pub choices: &'static [&'static str],
    /// Inclusive bounds of an integer field.
    pub minimum: Option<u64>,
    pub maximum: Option<u64>,
}

impl FieldSpec {
    /// What a wrongly typed value of this field is told.
    fn type_message(&self, value: Option<&Value>) -> String {
        match self.kind {
            FieldType::Boolean => "must be true or false".into(),
            FieldType::StringMap => "must be an object of strings".into(),
            FieldType::Integer => match (self.minimum, self.maximum) {
                (Some(min), Some(max)) => format!("must be a whole number from {min} to {max}"),
                (Some(min), None) => format!("must be a whole number of at least {min}"),
                (None, Some(max)) => format!("must be a whole number up to {max}"),
                (None, None) => "must be a whole number".into(),
            },
            FieldType::String
                if value.is_some_and(Value::is_string) && !self.choices.is_empty() =>
            {
                format!("must be one of: {}", self.choices.join(", "))
            }
            FieldType::String => "must be a string".into(),
        }
    }

    /// Whether an integer value is within the schema's bounds.
    fn in_bounds(&self, value: &Value) -> bool {
        value.as_u64().is_some_and(|n| {
            self.minimum.is_none_or(|min| n >= min) && self.maximum.is_none_or(|max| n <= max)
        })
    }
}

type Roundtrip = fn(Value) -> Result<Value, serde_path_to_error::Error<serde_json::Error>>;

/// A channel type's settings, as its config struct declares them. Built once per
/// channel type into a static (`ChannelAdapter::config_spec`); its strings are leaked
/// there, so they live as long as the program, like the struct they describe.
pub struct ConfigSpec {
    /// In declaration order.
    pub fields: Vec<FieldSpec>,
    /// The names of the fields holding credentials.
    pub secrets: &'static [&'static str],
    /// The struct's schema, for the OpenAPI document; properties flattened.
    schema: RefOr<Schema>,
    /// Deserializes into the struct and serializes it back.
    roundtrip: Roundtrip,
}

fn leak(s: impl Into<String>) -> &'static str {
    Box::leak(s.into().into_boxed_str())
}

fn first_type(schema_type: &SchemaType) -> Option<Type> {
    match schema_type {
        SchemaType::Type(t) => Some(t.clone()),
        SchemaType::Array(types) => types.iter().find(|t| **t != Type::Null).cloned(),
        SchemaType::AnyValue => None,
    }
}

fn as_u64(n: &utoipa::Number) -> Option<u64> {
    match n {
        utoipa::Number::Int(i) => u64::try_from(*i).ok(),
        utoipa::Number::UInt(u) => u64::try_from(*u).ok(),
        utoipa::Number::Float(f) => (*f >= 0.0).then_some(*f as u64),
    }
}

/// A property as one object: utoipa writes a field of a type with its own schema as
/// `allOf: [type's schema, {description, default}]`; this merges the two.
fn flatten(property: &RefOr<Schema>) -> Option<Object> {
    match property {
        RefOr::T(Schema::Object(object)) => Some(object.clone()),
        RefOr::T(Schema::AllOf(all)) => {
            let mut parts = all.items.iter().filter_map(flatten);
            let mut base = parts.next()?;
            for overlay in parts {
                base.description = overlay.description.or(base.description);
                base.default = overlay.default.or(base.default);
            }
            Some(base)
        }
        _ => None,
    }
}

fn field_spec(name: &str, property: &Object, required: bool) -> FieldSpec {
    let kind = match first_type(&property.schema_type) {
        Some(Type::Integer | Type::Number) => FieldType::Integer,
        Some(Type::Boolean) => FieldType::Boolean,
        Some(Type::Object) => FieldType::StringMap,
        _ => FieldType::String,
    };
    let choices: Vec<&'static str> = property
        .enum_values
        .iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(leak)
        .collect();
    let doc = property.description.as_deref().unwrap_or_default();
    let (label, description) = doc.split_once("\n\n").unwrap_or((name, doc));
    FieldSpec {
        name: leak(name),
        label: leak(label.trim()),
        description: leak(description.trim().replace('\n', " ")),
        required,
        default: property.default.clone(),
        secret: matches!(
            property.format,
            Some(SchemaFormat::KnownFormat(KnownFormat::Password))
        ),
        url: matches!(&property.format, Some(SchemaFormat::Custom(f)) if f == "uri"),
        kind,
        choices: Vec::leak(choices),
        minimum: property.minimum.as_ref().and_then(as_u64),
        maximum: property.maximum.as_ref().and_then(as_u64),
    }
}

fn roundtrip<T: ChannelConfig>(
    value: Value,
) -> Result<Value, serde_path_to_error::Error<serde_json::Error>> {
    let typed: T = serde_path_to_error::deserialize(value)?;
    // A struct of strings, numbers, booleans and string maps always serializes.
    Ok(serde_json::to_value(typed).unwrap_or(Value::Null))
}

impl ConfigSpec {
    /// Reads the schema of a config struct.
    ///
    /// # Panics
    /// When the struct's schema is not an object of plain properties: a programming
    /// error, caught by every adapter's tests.
    pub fn of<T: ChannelConfig>() -> Self {
        let RefOr::T(Schema::Object(mut object)) = T::schema() else {
            panic!("the config of a channel type must be a struct");
        };
        let mut fields = Vec::new();
        for (name, property) in object.properties.iter_mut() {
            let Some(flat) = flatten(property) else {
                panic!("config field {name} must have an inline schema");
            };
            fields.push(field_spec(name, &flat, object.required.contains(name)));
            *property = RefOr::T(Schema::Object(flat));
        }
        let schema = RefOr::T(Schema::Object(object));
        let secrets = fields.iter().filter(|f| f.secret).map(|f| f.name).collect();
        Self {
            secrets: Vec::leak(secrets),
            fields,
            schema,
            roundtrip: roundtrip::<T>,
        }
    }

    /// The config struct's schema.
    pub fn schema(&self) -> RefOr<Schema> {
        self.schema.clone()
    }

    fn field(&self, name: &str) -> Option<(usize, &FieldSpec)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name)
    }

    /// Checks a config and returns it as stored: defaults filled in. `null` counts as
    /// `{}`; a null value, or a blank string for a string field, as an absent field.
    ///
    /// # Errors
    /// Every broken rule, in field order, unknown fields last, each naming its field as
    /// `config.<path>`.
    pub fn validate(&self, config: &Value) -> Result<Value, Vec<FieldError>> {
        let mut object = match config {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            _ => return Err(vec![FieldError::new("config", "must be an object")]),
        };
        object.retain(|name, value| match (self.field(name), &*value) {
            (_, Value::Null) => false,
            (Some((_, f)), Value::String(s)) if f.kind == FieldType::String => !s.trim().is_empty(),
            _ => true,
        });
        // (field index, error): unknown fields sort after every known one.
        let mut errors: Vec<(usize, FieldError)> = Vec::new();
        let error =
            |name: &str, message: String| FieldError::new(format!("config.{name}"), message);
        let mut unknown: Vec<String> = object
            .keys()
            .filter(|k| self.field(k).is_none())
            .cloned()
            .collect();
        unknown.sort();
        for name in unknown {
            object.remove(&name);
            errors.push((
                usize::MAX,
                error(&name, "is not a setting of this channel type".into()),
            ));
        }
        for (i, f) in self.fields.iter().enumerate() {
            match object.get(f.name) {
                None if f.required => errors.push((i, error(f.name, "is required".into()))),
                Some(value) if f.kind == FieldType::Integer && !f.in_bounds(value) => {
                    errors.push((i, error(f.name, f.type_message(Some(value)))));
                    object.remove(f.name);
                }
                _ => {}
            }
        }
        // Each failed attempt names one bad value; it is taken out and the rest tried
        // again. An error without a path (a missing field) means every value present
        // has passed.
        loop {
            let e = match (self.roundtrip)(Value::Object(object.clone())) {
                Ok(normalised) if errors.is_empty() => return Ok(normalised),
                Ok(_) => break,
                Err(e) => e,
            };
            let path: Vec<String> = e
                .path()
                .iter()
                .map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => key.clone(),
                    other => other.to_string(),
                })
                .collect();
            let Some((i, f)) = path.first().and_then(|name| self.field(name)) else {
                if errors.is_empty() {
                    errors.push((usize::MAX, FieldError::new("config", e.inner().to_string())));
                }
                break;
            };
            let value = object.get(f.name);
            // A string that a string field refused failed the field type's own check,
            // whose message says why; otherwise the schema says what was expected.
            let message = match (path.len(), f.kind) {
                (1, FieldType::String)
                    if value.is_some_and(Value::is_string) && f.choices.is_empty() =>
                {
                    e.inner().to_string()
                }
                (1, _) => f.type_message(value),
                (_, FieldType::StringMap) => "must be a string".into(),
                _ => e.inner().to_string(),
            };
            errors.push((i, error(&path.join("."), message)));
            let removed_nested = path.len() == 2
                && object
                    .get_mut(f.name)
                    .and_then(Value::as_object_mut)
                    .and_then(|map| map.remove(&path[1]))
                    .is_some();
            if !removed_nested && object.remove(f.name).is_none() {
                break;
            }
        }
        errors.sort_by_key(|(i, _)| *i);
        Err(errors.into_iter().map(|(_, e)| e).collect())
    }
}

/// Reads a stored config into its struct: validated at write, so this fails only for a
/// row changed behind Converger's back.
///
/// # Errors
/// The first field that does not read, with its path.
pub fn stored<T: ChannelConfig>(config: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        format!(
            "the channel's stored config is unreadable at {}: {}",
            e.path(),
            e.inner()
        )
    })
}

/// Declares a string setting whose deserialization checks it, kept as written: the
/// field's own rule runs with the other fields' checks, and the type says it holds.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $format:expr, $message:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// The value as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = String::deserialize(d)?;
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(value))
                } else {
                    Err(serde::de::Error::custom($message))
                }
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format($format)
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(super) use checked_string;

checked_string! {
    /// An absolute `http://` or `https://` URL.
    HttpUrl,
    Some(SchemaFormat::Custom("uri".to_owned())),
    "must be an absolute http:// or https:// URL",
    |s| url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

impl HttpUrl {
    /// The URL without trailing slashes, to append paths to.
    pub fn base(&self) -> &str {
        self.0.trim_end_matches('/')
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

/// Where a config holds credentials, as JSON pointers (`/access_token`,
/// `/headers/Authorization`): the non-null secret fields, string values that are URLs
/// with a password in their user info, and the values of credential-like headers.
/// What [`mask_config`] hides on every read, and what is encrypted at rest.
pub fn credential_pointers(config: &Value, secret_fields: &[&str]) -> Vec<String> {
    let Value::Object(map) = config else {
        return Vec::new();
    };
    let mut pointers = Vec::new();
    for (name, value) in map {
        let secret = secret_fields.contains(&name.as_str()) && !value.is_null();
        if secret || value.as_str().and_then(mask_url_password).is_some() {
            pointers.push(pointer(&[name]));
        }
    }
    if let Some(Value::Object(headers)) = map.get("headers") {
        for name in headers.keys().filter(|name| is_sensitive_header(name)) {
            pointers.push(pointer(&["headers", name]));
        }
    }
    pointers
}

/// A config as it may be shown: the values of [`credential_pointers`] masked, URLs
/// down to their password.
pub fn mask_config(config: &Value, secret_fields: &[&str]) -> Value {
    let mut masked = config.clone();
    for at in credential_pointers(config, secret_fields) {
        let whole = at.starts_with("/headers/")
            || secret_fields.iter().any(|field| at == pointer(&[field]));
        if let Some(value) = masked.pointer_mut(&at) {
            *value = match value.as_str().and_then(mask_url_password) {
                Some(url) if !whole => Value::String(url),
                _ => Value::String(MASK.into()),
            };
        }
    }
    masked
}

/// `url` with the password of its user info masked, if it has one.
fn mask_url_password(url: &str) -> Option<String> {
    let mut parsed = url::Url::parse(url).ok()?;
    parsed.password()?;
    parsed.set_password(Some(MASK)).ok()?;
    Some(parsed.to_string())
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
                    // A URL read back with its password masked keeps the stored one.
                    Value::String(s)
                        if current_map
                            .get(key)
                            .and_then(Value::as_str)
                            .and_then(mask_url_password)
                            .is_some_and(|masked| masked == *s) => {}
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

/// The config an editor of the whole (masked) config means: `submitted` replaces
/// `current`, removals included, except that a value sent back as it was shown (masked
/// whole, or a URL with its password masked) keeps the stored value.
pub fn replace_config(current: &Value, submitted: &Value) -> Value {
    match (current, submitted) {
        (Value::Object(current_map), Value::Object(submitted_map)) => Value::Object(
            submitted_map
                .iter()
                .map(|(key, value)| {
                    let stored = current_map.get(key);
                    let kept = match value {
                        Value::String(s) if s == MASK => stored.cloned(),
                        Value::String(s)
                            if stored
                                .and_then(Value::as_str)
                                .and_then(mask_url_password)
                                .is_some_and(|masked| masked == *s) =>
                        {
                            stored.cloned()
                        }
                        _ => None,
                    };
                    let value = kept
                        .unwrap_or_else(|| replace_config(stored.unwrap_or(&Value::Null), value));
                    (key.clone(), value)
                })
                .collect(),
        ),
        (_, submitted) => submitted.clone(),
    }
}

/// The paths (`config.<path>`) of values left masked in a config: sent back masked
/// where nothing is stored to keep.
pub fn masked_paths(config: &Value) -> Vec<String> {
    fn walk(at: &str, value: &Value, found: &mut Vec<String>) {
        match value {
            Value::String(s) if s == MASK || s.contains(&format!(":{MASK}@")) => {
                found.push(at.to_owned());
            }
            Value::Object(map) => {
                for (key, value) in map {
                    walk(&format!("{at}.{key}"), value, found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk("config", config, &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn url_passwords_are_masked_and_kept_when_sent_back() {
        let config =
            json!({"url": "https://bot:s3cret@hooks.example.com/in?x=1", "method": "POST"});
        let masked = mask_config(&config, &[]);
        assert_eq!(
            masked["url"],
            format!("https://bot:{MASK}@hooks.example.com/in?x=1")
        );
        assert!(!masked.to_string().contains("s3cret"));
        assert_eq!(masked["method"], "POST");
        // Editing what was read keeps the stored password; a new URL replaces it.
        assert_eq!(merge_config_patch(&config, &masked), config);
        let new = json!({"url": "https://bot:other@hooks.example.com/in"});
        assert_eq!(merge_config_patch(&config, &new)["url"], new["url"]);
        // URLs without a password are shown as they are.
        let plain = json!({"url": "https://user@hooks.example.com/"});
        assert_eq!(mask_config(&plain, &[]), plain);
    }

    #[test]
    fn a_replaced_config_keeps_what_came_back_masked() {
        let stored = json!({
            "url": "https://bot:s3cret@hooks.example.com/in",
            "access_token": "EAAG",
            "headers": {"Authorization": "Bearer x", "X-Team": "a", "X-Old": "o"},
            "timeout_ms": 1000
        });
        let shown = mask_config(&stored, &["access_token"]);
        // Sent back unchanged: nothing changes.
        assert_eq!(replace_config(&stored, &shown), stored);
        // Edited: removals go, new values replace, masked ones stay.
        let mut edited = shown.clone();
        edited["headers"].as_object_mut().unwrap().remove("X-Old");
        edited["headers"]["X-Team"] = json!("b");
        edited.as_object_mut().unwrap().remove("timeout_ms");
        let replaced = replace_config(&stored, &edited);
        assert_eq!(
            replaced,
            json!({
                "url": "https://bot:s3cret@hooks.example.com/in",
                "access_token": "EAAG",
                "headers": {"Authorization": "Bearer x", "X-Team": "b"}
            })
        );
        assert!(masked_paths(&replaced).is_empty());
        // A masked value with nothing stored behind it stays masked, and is named.
        let fresh = replace_config(&json!({}), &shown);
        let mut named = masked_paths(&fresh);
        named.sort();
        assert_eq!(
            named,
            [
                "config.access_token",
                "config.headers.Authorization",
                "config.url"
            ]
        );
    }

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
    fn credentials_are_what_masking_hides() {
        let config = json!({
            "access_token": "EAAG",
            "app_secret": null,
            "url": "https://bot:pw@x.example/",
            "plain": "https://x.example/",
            "headers": {"X-Api-Key": "k", "a/b~Token": "t", "X-Team": "a"},
        });
        let pointers = credential_pointers(&config, &["access_token", "app_secret"]);
        assert_eq!(
            pointers,
            [
                "/access_token",
                "/url",
                "/headers/X-Api-Key",
                "/headers/a~1b~0Token"
            ]
        );
        for at in &pointers {
            assert!(config.pointer(at).is_some(), "{at}");
        }
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

    #[test]
    fn urls_must_be_absolute_http() {
        for ok in ["https://x.example/h", "http://127.0.0.1:8080"] {
            assert!(serde_json::from_value::<HttpUrl>(json!(ok)).is_ok(), "{ok}");
        }
        for bad in ["ftp://x", "graph", "https://", ""] {
            assert!(
                serde_json::from_value::<HttpUrl>(json!(bad)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(HttpUrl::from("https://x/").base(), "https://x");
    }
}
