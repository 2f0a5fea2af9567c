//! Typed identifiers: a `TenantId` can never be passed where a `ChannelId` is expected.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

macro_rules! id_type {
    ($($(#[$meta:meta])* $name:ident),+ $(,)?) => {$(
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (UUIDv7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    )+};
}

id_type!(
    /// Identifies a tenant, the unit of isolation.
    TenantId,
    /// Identifies a channel of a tenant.
    ChannelId,
    /// Identifies a routing rule.
    RouteId,
    /// Identifies a conversation.
    ConversationId,
    /// Identifies an activity.
    ActivityId,
    /// Identifies a delivery of one activity to one channel; also the `webhook-id`.
    DeliveryId,
    /// Identifies a running node (one `serve` process) for as long as it runs.
    NodeId,
    /// Identifies an operational event; also its `webhook-id`.
    OpsEventId,
);
