//! The one integration-test binary: every module drives a real server over real HTTP,
//! each test on SQLite and (with `CONVERGER_TEST_DATABASE_URL`) on PostgreSQL.

mod common;

mod activities;
mod admin;
mod channels;
mod cli;
mod concurrency;
mod conversations;
mod deliveries;
mod delivery;
mod durability;
mod errors;
mod inbound;
mod limits;
mod ops;
mod realtime;
mod routes;
mod shutdown;
mod tenancy;
mod tls;
mod tokens;
mod whatsapp;
