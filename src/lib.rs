//! Converger: a multi-tenant message routing hub.
//!
//! # Layout
//!
//! Modules in layers, low to high; a module imports only from its own layer or
//! the ones below it (the echo adapter's call back into [`ingest`] is the one
//! exception). In the order data flows through them:
//!
//! 0. [`domain`]: vocabulary (ids, entities, validation rules); no I/O. [`auth`]:
//!    API keys, channel secrets and JWTs, pure. [`secrets`]: sealing stored
//!    credentials with the node's key, pure. [`access`]: client addresses behind
//!    trusted proxies, CIDR allow-lists, admin sessions and CSRF tokens, pure.
//!    [`egress`]: where outbound HTTP may go, and the one client that obeys it.
//! 1. [`config`] configures the node, [`telemetry`] sets up logging and request ids,
//!    [`metrics`] counts what the others do. None of them imports an edge or the
//!    write path.
//! 2. [`store`]: durable state over SQLite or PostgreSQL; [`pubsub`]: fan-out of
//!    committed activities.
//! 3. [`adapters`]: what each channel type knows of its external wire format.
//! 4. [`ingest`]: the one write path. Validation, idempotency, gap-free `seq`, the
//!    activity and its delivery rows in one transaction, then publish and wake the
//!    workers through its `DeliveryWaker`.
//! 5. [`delivery`]: outbound delivery, listening to that waker.
//! 6. [`operations`]: one function per admin operation, called by admin pages, admin
//!    API and CLI (and by the REST API where it does the same); the idle
//!    conversation closer.
//! 7. The edges, which decode, authenticate, then call [`ingest`] or read the
//!    [`store`]: [`http`] (REST API, inbound webhooks, health and metrics, connection
//!    admission), [`realtime`] (Phoenix Channels over WebSocket and long-poll) and [`admin`] (the
//!    operator's panel). No edge mounts another.
//! 8. [`app`]: the composition root. [`app::run`] builds the state, mounts the three
//!    edges and runs the node; `main` parses the CLI and calls it.

pub mod access;
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
pub mod operations;
pub mod pubsub;
pub mod realtime;
pub mod secrets;
pub mod store;
pub mod telemetry;

pub use app::run;
pub use config::Config;
