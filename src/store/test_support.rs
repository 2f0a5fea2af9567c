//! Doors below `ingest`, for the integration tests only.
//!
//! Every activity is created by `ingest`, and visibility enforces it:
//! [`Store::append_activity`] is `pub(crate)`, so no edge and no other crate can
//! append past the rules. A few tests must reach below them, to check what the store
//! itself guarantees whatever `ingest` decided: that it refuses appends to a closed
//! conversation, that an append the database refuses fails alone within a group
//! commit, that delivery rows of chosen channels get the right head-of-line flag.
//!
//! This module is compiled only with the `test-support` feature, which only the
//! crate's dev-dependency on itself enables (see Cargo.toml): `cargo build` and the
//! server never have it, and it is hidden from the documentation. Nothing but tests
//! may call it.

use super::{ActivityAppend, AppendOutcome, Store, StoreResult};

/// Appends `append` as `ingest` would after deciding it, without `ingest`'s checks,
/// publish or worker wake-up: [`Store::append_activity`] itself.
///
/// # Errors
/// As [`Store::append_activity`]: a database error, such as a foreign key refusing a
/// target channel that does not exist.
pub async fn append_activity(store: &Store, append: &ActivityAppend) -> StoreResult<AppendOutcome> {
    store.append_activity(append).await
}
