//! Channels (where messages come from and go to) and routes between them.

use serde_json::Value;

use super::{ChannelId, RouteId, TenantId, Timestamp, string_enum};

string_enum! {
    /// The adapter that speaks for a channel.
    pub enum ChannelType {
        /// Answers every inbound message with a bot reply (testing and demos).
        Echo => "echo",
        /// Generic HTTP: signed inbound webhooks, signed outbound POSTs.
        Webhook => "webhook",
        /// Real-time clients only; delivery happens through PubSub.
        Websocket => "websocket",
        /// WhatsApp through Meta's Cloud API.
        WhatsappMeta => "whatsapp_meta",
        /// WhatsApp through Infobip.
        WhatsappInfobip => "whatsapp_infobip",
    }
}

string_enum! {
    /// Whether a channel takes part in traffic.
    pub enum ChannelStatus { Active => "active", Inactive => "inactive" }
}

string_enum! {
    /// In what order a channel's deliveries go out (the channel config's `ordering`).
    #[derive(Default)]
    pub enum DeliveryOrdering {
        /// Of each conversation, one delivery at a time, in `seq` order: a delivery
        /// waiting for a retry holds back the later ones of its conversation.
        #[default]
        Conversation => "conversation",
        /// Each delivery on its own: a failing one holds back nothing, and a
        /// conversation's deliveries may arrive out of order.
        None => "none",
    }
}

impl DeliveryOrdering {
    /// The order a channel config asks for; `conversation` when it does not say
    /// (channel types that deliver nothing have no such setting).
    pub fn of_config(config: &Value) -> Self {
        config
            .get("ordering")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_default()
    }
}

/// The most deliveries a channel may receive per second, minute or hour, over all
/// nodes together (the channel config's `rate_limit`, e.g. `"80/s"`, Meta's default
/// per phone number). Written and read as `N/s`, `N/m` or `N/h`, N from 1 to 1,000,000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: std::time::Duration,
}

impl RateLimit {
    /// The limit a channel config asks for, if any.
    pub fn of_config(config: &Value) -> Option<Self> {
        config.get("rate_limit")?.as_str()?.parse().ok()
    }

    /// The time between two deliveries when `nodes` nodes share the limit equally.
    pub fn interval(self, nodes: u32) -> std::time::Duration {
        self.per * nodes.max(1) / self.count
    }
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "must be N/s, N/m or N/h with N from 1 to 1000000, e.g. 80/s";
        let (count, unit) = s.split_once('/').ok_or(EXPECTED)?;
        let count: u32 = count.trim().parse().map_err(|_| EXPECTED)?;
        let per = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(EXPECTED.into()),
        };
        if !(1..=1_000_000).contains(&count) {
            return Err(EXPECTED.into());
        }
        Ok(RateLimit {
            count,
            per: std::time::Duration::from_secs(per),
        })
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl serde::Serialize for RateLimit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

string_enum! {
    /// Which activities a route forwards.
    pub enum RouteDirection { Inbound => "inbound", Outbound => "outbound", Any => "any" }
}

impl ChannelType {
    /// Whether the channel's external parties are phone numbers, kept in E.164 form
    /// ([`super::normalise_phone`]): WhatsApp, through either provider.
    pub fn keys_by_phone(self) -> bool {
        matches!(
            self,
            ChannelType::WhatsappMeta | ChannelType::WhatsappInfobip
        )
    }
}

impl RouteDirection {
    /// Whether an activity travelling in `direction` passes this filter.
    pub fn matches(self, direction: super::Direction) -> bool {
        match self {
            RouteDirection::Any => true,
            RouteDirection::Inbound => direction == super::Direction::Inbound,
            RouteDirection::Outbound => direction == super::Direction::Outbound,
        }
    }
}

/// A channel as stored. Not serialized directly: the API masks secrets in `config`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Channel {
    pub id: ChannelId,
    pub tenant_id: TenantId,
    pub name: String,
    #[sqlx(rename = "type", try_from = "String")]
    pub kind: ChannelType,
    /// Standard Webhooks secret (`whsec_...`): signs outbound webhooks, verifies inbound
    /// ones and binds channel tokens (rotating it revokes them).
    pub secret: String,
    /// Settings of the channel's type: what the type's config struct serializes to once
    /// validated (defaults filled in). Kept as JSON here; adapters read it back typed.
    #[sqlx(json)]
    pub config: Value,
    #[sqlx(try_from = "String")]
    pub status: ChannelStatus,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Channel {
    /// The delivery order its config asks for.
    pub fn ordering(&self) -> DeliveryOrdering {
        DeliveryOrdering::of_config(&self.config)
    }

    /// The delivery rate its config allows, if limited.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        RateLimit::of_config(&self.config)
    }
}

/// A routing rule: activities of conversations on `source` are also delivered to `target`.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Route {
    pub id: RouteId,
    pub tenant_id: TenantId,
    pub source_channel_id: ChannelId,
    pub target_channel_id: ChannelId,
    #[sqlx(try_from = "String")]
    pub direction: RouteDirection,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod rate_limit_tests {
    use super::RateLimit;
    use std::time::Duration;

    #[test]
    fn rate_limits_parse_print_and_share() {
        let limit: RateLimit = "80/s".parse().unwrap();
        assert_eq!(limit.to_string(), "80/s");
        assert_eq!(limit.interval(1), Duration::from_micros(12_500));
        assert_eq!(limit.interval(2), Duration::from_millis(25));
        let hourly: RateLimit = " 3600 / h".parse().unwrap();
        assert_eq!(hourly.interval(1), Duration::from_secs(1));
        assert_eq!(hourly.to_string(), "3600/h");
        for bad in [
            "",
            "80",
            "0/s",
            "80/d",
            "-1/s",
            "1000001/s",
            "x/s",
            "80/s/s",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?} parsed");
        }
    }
}
