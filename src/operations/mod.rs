//! Operations on tenants, channels, routes, conversations and deliveries, shared by
//! every edge that changes them: the admin pages, the admin JSON API, the tenant REST
//! API and the CLI. One function per operation, holding its validation, so a rule
//! (a tenant name's length, a route's endpoints) is checked the same way everywhere.
//!
//! Below the edges, above `store` and `delivery`: functions take the handles they need
//! (`Store`, `Adapters`, `DeliveryWaker`) and return typed results or an [`OpError`].
//! Must not import `http`, `admin` or `realtime`, choose HTTP status codes or render
//! anything: the edges map [`OpError`] (the APIs through `http::error`, pages into
//! field errors, the CLI into text). Activities are never written here (`ingest` owns
//! that), and delivery rows change only through `delivery::outcome`.

pub mod channels;
pub mod conversations;
pub mod dashboard;
pub mod deliveries;
pub mod ops_events;
pub mod routes;
pub mod tenants;

use crate::domain::{DeliveryStatus, FieldError};
use crate::store::StoreError;

/// Why an operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The named resource does not exist, or belongs to another tenant (the two are
    /// never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input broke these rules, every one of them listed.
    #[error("{}", summary(.0))]
    Invalid(Vec<FieldError>),
    /// Another tenant has this name, compared without case.
    #[error("a tenant called `{0}` exists already (names are compared without case)")]
    TenantExists(String),
    /// Only a failed or pending delivery can be retried; this one is in `status`.
    #[error("only failed or pending deliveries can be retried; this one is {status}")]
    DeliveryNotFailed { status: DeliveryStatus },
    /// An attempt of the delivery is under way: its outcome decides what comes next.
    #[error("an attempt of this delivery is under way; retry once it has ended")]
    DeliveryInFlight,
    /// Only a closed conversation can be reopened; this one is active.
    #[error("the conversation is active")]
    ConversationActive,
    /// Reopening would give the conversation's party a second active conversation on
    /// its channel; `holder` is the one active now, if it is still there.
    #[error("another active conversation holds the external id on the channel")]
    ConversationExists {
        holder: Option<crate::domain::ConversationId>,
    },
    /// Any other store failure, constraint violations included (named for the edges).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Result of an operation.
pub type OpResult<T> = Result<T, OpError>;

/// `field: message; ...`, the broken rules in one line.
pub fn summary(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Maps a store error, `NotFound` naming `what`: `.map_err(not_found_as("channel"))`.
fn not_found_as(what: &'static str) -> impl Fn(StoreError) -> OpError {
    move |e| match e {
        StoreError::NotFound => OpError::NotFound(what),
        other => OpError::Store(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_input_reads_as_every_broken_rule() {
        let err = OpError::Invalid(vec![
            FieldError::new("name", "must be 1 to 200 characters"),
            FieldError::new("config.url", "is required"),
        ]);
        assert_eq!(
            err.to_string(),
            "name: must be 1 to 200 characters; config.url: is required"
        );
        assert_eq!(OpError::NotFound("tenant").to_string(), "tenant not found");
    }
}
