//! Shared pieces of the end-to-end benchmarks (`delivery`, `wsbench`, `chaos`): the
//! REST calls that set a run up ([`e2e::api`]), an open-loop activity poster
//! ([`e2e::poster`]) and the tracker that matches each posted activity with where it
//! arrived ([`e2e::tracker`]).
//!
//! The REST ingest generator `loadgen` (src/main.rs) predates this library and keeps
//! its own modules.

pub mod e2e;
