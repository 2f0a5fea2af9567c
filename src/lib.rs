//! Converger: a multi-tenant message routing hub.
//!
//! # Layout
//!
//! Modules in the order data flows through them (DESIGN.md §1):
//!
//! 0. [`domain`]: vocabulary (ids, entities, validation rules); no I/O. [`auth`]:
//!    API keys, channel secrets and JWTs, pure.
//! 1. [`http`], [`realtime`] and [`admin`]: the edges (REST, Phoenix Channels
//!    WebSocket, the operator's panel).
//!    Decode, authenticate, then call [`ingest`] or read the [`store`].
//! 2. [`ingest`]: the one write path. Validation, idempotency, gap-free `seq`, the
//!    activity and its delivery rows in one transaction, then publish and wake.
//! 3. [`store`]: durable state over SQLite or PostgreSQL; [`pubsub`]: fan-out of
//!    committed activities.
//! 4. [`delivery`] and [`adapters`]: outbound delivery and what each channel type
//!    knows of its external wire format.
//!
//! [`app::run`] composes them; [`config`] and [`telemetry`] configure them, and
//! [`metrics`] counts what they do.

pub mod adapters;
pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod egress;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pubsub;
pub mod realtime;
pub mod store;
pub mod telemetry;

pub use app::run;
pub use config::Config;
