//! Cross-tier tests: the three tiers against a real nats-server and a real PostgreSQL, driven over
//! gRPC only.

#![allow(clippy::unwrap_used)]

mod authority;
mod bus;
mod calendar;
mod case_loop;
mod chaos;
mod client_errors;
mod clock;
mod delivery;
mod edges;
mod evaluation;
mod intake;
mod lifecycle;
mod limits;
mod nats_accounts;
mod secrets;
mod supervision;
mod tls;
mod topology;
