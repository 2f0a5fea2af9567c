//! Vocabulary of Converger: identifiers, entities and their validation rules.
//!
//! Stage 0 of the flow. Plain data and pure functions only: nothing here performs I/O
//! or depends on another module of this crate, so every other stage can use it.

mod activity;
mod channel;
mod conversation;
mod delivery;
mod health;
mod ids;
mod ops;
mod phone;
mod tenant;
mod text;
mod time;

pub use activity::{
    Activity, ActivityType, Direction, MAX_ATTACHMENTS, MAX_METADATA_BYTES, MAX_TEXT_BYTES,
    NewActivity,
};
pub use channel::{
    Channel, ChannelStatus, ChannelType, DeliveryOrdering, RateLimit, Route, RouteDirection,
};
pub use conversation::{Conversation, ConversationStatus, normalise_external_id};
pub use delivery::{AttemptOutcome, Delivery, DeliveryAttempt, DeliveryStatus};
pub use health::{
    BreakerState, ChannelHealth, HealthState, HealthTransition, Observation, Observed, PauseReason,
    RATE_WINDOW, Recent,
};
pub use ids::{
    ActivityId, ChannelId, ConversationId, DeliveryId, NodeId, OpsEventId, RouteId, TenantId,
};
pub use ops::{NewOpsEvent, OpsDispatch, OpsDispatchStatus, OpsEvent, OpsEventType, OpsWebhook};
pub use phone::{MAX_PHONE_DIGITS, MIN_PHONE_DIGITS, PhoneError, normalise_phone};
pub use tenant::{MAX_TENANT_NAME_CHARS, Tenant, TenantStatus, check_tenant_name};
pub use text::{check_json_no_nul, check_no_nul};
pub use time::Timestamp;

/// A rule broken by user input, named by the field it concerns.
///
/// Collected rather than returned one at a time, so a client sees every problem of a
/// request in one answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `config.url` or `attachments[3]`.
    pub field: String,
    /// Human-readable description of the rule that was broken.
    pub message: String,
}

impl FieldError {
    /// Builds a field error from anything string-like.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Declares an enum stored and serialized as a fixed set of snake_case strings.
macro_rules! string_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire form of this value.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown value `{other}`, expected one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use string_enum;
