//! Channels: create one (name rule plus its adapter's config validation), enable or
//! disable it, rotate its secret, edit its config as the operator, pause and resume
//! its deliveries. The result carries the stored channel; each edge shows it its own
//! way (the APIs mask secrets and add the token and inbound URL).

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{OpError, OpResult, not_found_as};
use crate::adapters::{Adapters, masked_paths, replace_config};
use crate::auth;
use crate::delivery::{DeliveryWaker, pause_channel, resume_channel};
use crate::domain::{
    Channel, ChannelHealth, ChannelId, ChannelStatus, ChannelType, FieldError, TenantId,
    check_json_no_nul, check_no_nul,
};
use crate::store::{ChannelUpdate, NewChannel, Store};

/// Longest channel name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// What a new channel is made of (REST body, admin API body, admin form).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelIn {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ChannelType,
    /// Settings of the channel type; see the adapter documentation.
    #[serde(default)]
    #[schema(schema_with = crate::adapters::config_schema)]
    pub config: Value,
}

/// A channel with its secret, which only creation and rotation show.
pub struct ChannelWithSecret {
    pub channel: Channel,
    /// Standard Webhooks secret (`whsec_...`).
    pub secret: String,
}

/// The channel name rule: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no U+0000.
///
/// # Errors
///
/// A [`FieldError`] on `name`.
pub fn check_name(name: &str) -> Result<String, FieldError> {
    let name = name.trim();
    check_no_nul("name", name)?;
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(FieldError::new(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Checks a channel's config (whole, after any patch is merged): no U+0000 in any
/// string or key, then the rules of its type's adapter. Returns the config as the
/// adapter normalised it.
///
/// # Errors
///
/// The broken rules, on `config.*`.
pub fn check_config(
    adapters: &Adapters,
    kind: ChannelType,
    config: &Value,
) -> Result<Value, Vec<FieldError>> {
    check_json_no_nul("config", config).map_err(|e| vec![e])?;
    adapters.validate_config(kind, config)
}

/// Checks a new channel's name and config; every broken rule is listed. Returns the
/// trimmed name and the config as its adapter normalised it.
///
/// # Errors
///
/// The broken rules, on `name` and `config.*`.
pub fn validate(
    adapters: &Adapters,
    input: &ChannelIn,
) -> Result<(String, Value), Vec<FieldError>> {
    let mut errors = Vec::new();
    let name = check_name(&input.name).map_err(|e| errors.push(e)).ok();
    let config = check_config(adapters, input.kind, &input.config)
        .map_err(|e| errors.extend(e))
        .ok();
    match (name, config) {
        (Some(name), Some(config)) => Ok((name, config)),
        _ => Err(errors),
    }
}

/// Creates a channel of a tenant with a new secret.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing tenant (checked first), else
/// [`OpError::Invalid`] with every rule of [`validate`] that `input` breaks.
pub async fn create(
    store: &Store,
    adapters: &Adapters,
    tenant_id: TenantId,
    input: &ChannelIn,
) -> OpResult<ChannelWithSecret> {
    store
        .get_tenant(tenant_id)
        .await
        .map_err(not_found_as("tenant"))?;
    let (name, config) = validate(adapters, input).map_err(OpError::Invalid)?;
    let secret = auth::generate_channel_secret();
    let new = NewChannel {
        name,
        kind: input.kind,
        secret: secret.clone(),
        config,
    };
    let channel = store.insert_channel(tenant_id, new).await?;
    tracing::info!(channel_id = %channel.id, %tenant_id, kind = %channel.kind, "channel created");
    Ok(ChannelWithSecret { channel, secret })
}

/// A channel of any tenant, for the operator, who names channels by id alone.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing channel.
pub async fn get(store: &Store, id: ChannelId) -> OpResult<Channel> {
    store
        .get_channel_unscoped(id)
        .await
        .map_err(not_found_as("channel"))
}

/// Enables or disables a channel (of any tenant: an operator action).
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing channel.
pub async fn set_status(store: &Store, id: ChannelId, status: ChannelStatus) -> OpResult<Channel> {
    let current = get(store, id).await?;
    let update = ChannelUpdate {
        status: Some(status),
        ..ChannelUpdate::default()
    };
    let channel = store
        .update_channel(current.tenant_id, id, update)
        .await
        .map_err(not_found_as("channel"))?;
    tracing::info!(channel_id = %id, %status, "channel status set");
    Ok(channel)
}

/// The operator's edit of a channel's config (of any tenant): `submitted`, the whole
/// config as the panel showed it with credentials masked, replaces the stored one.
/// Values sent back masked keep what is stored; a removed key removes the setting.
/// Checked by [`check_config`], as the tenant's API checks a change.
///
/// # Errors
///
/// [`OpError::NotFound`] for a missing channel; [`OpError::Invalid`] naming every
/// broken rule, and any value left masked with nothing stored behind it.
pub async fn edit_config(
    store: &Store,
    adapters: &Adapters,
    id: ChannelId,
    submitted: &Value,
) -> OpResult<Channel> {
    let current = get(store, id).await?;
    if !submitted.is_object() {
        return Err(OpError::Invalid(vec![FieldError::new(
            "config",
            "must be a JSON object",
        )]));
    }
    let replaced = replace_config(&current.config, submitted);
    let masked: Vec<FieldError> = masked_paths(&replaced)
        .into_iter()
        .map(|at| FieldError::new(at, "is masked but no value is stored: enter the value"))
        .collect();
    if !masked.is_empty() {
        return Err(OpError::Invalid(masked));
    }
    let config = check_config(adapters, current.kind, &replaced).map_err(OpError::Invalid)?;
    let changed: std::collections::BTreeSet<String> = match (&current.config, &config) {
        (Value::Object(before), Value::Object(after)) => before
            .keys()
            .chain(after.keys())
            .filter(|key| before.get(*key) != after.get(*key))
            .cloned()
            .collect(),
        _ => Default::default(),
    };
    let update = ChannelUpdate {
        config: Some(config),
        ..ChannelUpdate::default()
    };
    let channel = store
        .update_channel(current.tenant_id, id, update)
        .await
        .map_err(not_found_as("channel"))?;
    // Names of the settings only: their values may be credentials.
    tracing::info!(channel_id = %id, tenant_id = %channel.tenant_id, changed = ?changed,
        "channel config changed by the operator");
    Ok(channel)
}

/// Gives a tenant's channel a new secret, which revokes its channel tokens.
///
/// # Errors
///
/// [`OpError::NotFound`] for a channel missing from the tenant.
pub async fn rotate_secret(
    store: &Store,
    tenant_id: TenantId,
    id: ChannelId,
) -> OpResult<ChannelWithSecret> {
    let secret = auth::generate_channel_secret();
    let update = ChannelUpdate {
        secret: Some(secret.clone()),
        ..ChannelUpdate::default()
    };
    let channel = store
        .update_channel(tenant_id, id, update)
        .await
        .map_err(not_found_as("channel"))?;
    tracing::info!(channel_id = %channel.id, "channel secret rotated");
    Ok(ChannelWithSecret { channel, secret })
}

/// The delivery health of a tenant's channel.
///
/// # Errors
///
/// [`OpError::NotFound`] for a channel missing from the tenant.
pub async fn health(store: &Store, tenant_id: TenantId, id: ChannelId) -> OpResult<ChannelHealth> {
    store
        .get_channel_health(tenant_id, id)
        .await
        .map_err(not_found_as("channel"))
}

/// Pauses a tenant's channel: its deliveries wait, pending and in order, until it is
/// resumed.
///
/// # Errors
///
/// [`OpError::NotFound`] for a channel missing from the tenant.
pub async fn pause(store: &Store, tenant_id: TenantId, id: ChannelId) -> OpResult<ChannelHealth> {
    let health = pause_channel(store, tenant_id, id)
        .await
        .map_err(not_found_as("channel"))?;
    tracing::info!(channel_id = %id, %tenant_id, "channel paused");
    Ok(health)
}

/// Resumes a tenant's channel, paused or with its breaker open: its waiting
/// deliveries are due at once.
///
/// # Errors
///
/// [`OpError::NotFound`] for a channel missing from the tenant.
pub async fn resume(
    store: &Store,
    waker: &DeliveryWaker,
    tenant_id: TenantId,
    id: ChannelId,
) -> OpResult<ChannelHealth> {
    let health = resume_channel(store, waker, tenant_id, id)
        .await
        .map_err(not_found_as("channel"))?;
    tracing::info!(channel_id = %id, %tenant_id, "channel resumed");
    Ok(health)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_broken_rule_of_a_new_channel_is_listed() {
        let input = ChannelIn {
            name: " ".into(),
            kind: ChannelType::Webhook,
            config: serde_json::json!({}),
        };
        let errors = validate(&Adapters::new(), &input).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "config.url"], "{errors:?}");
        assert_eq!(check_name(&"x".repeat(201)).unwrap_err().field, "name");
        assert_eq!(check_name("  Bot ").unwrap(), "Bot");
        assert_eq!(check_name("B\0t").unwrap_err().field, "name");
        let config = serde_json::json!({"url": "https://example.com", "headers": {"X": "a\0"}});
        let errors = check_config(&Adapters::new(), ChannelType::Webhook, &config).unwrap_err();
        assert_eq!(errors[0].field, "config.headers.X");
    }
}
