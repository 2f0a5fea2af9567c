//! The one integration-test binary: every module drives a real server over real HTTP,
//! each test on SQLite and (with `CONVERGER_TEST_DATABASE_URL`) on PostgreSQL. `deploy`
//! and `docs` are the exceptions: they check the deployment files and the documentation
//! by reading them.

mod common;

mod activities;
mod admin;
mod attempts;
mod channels;
mod cli;
mod concurrency;
mod connections;
mod control;
mod conversations;
mod deliveries;
mod delivery;
mod deploy;
mod docs;
mod durability;
mod egress;
mod errors;
mod inbound;
mod lifecycle;
mod limits;
mod nul;
mod observability;
mod ops;
mod ops_events;
mod outage;
mod queue;
mod ratelimit;
mod realtime;
mod routes;
mod secrets;
mod shutdown;
mod tenancy;
mod tls;
mod tokens;
mod whatsapp;
