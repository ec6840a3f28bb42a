//! What every tier service runs: configuration, the case engine, replication (relay, consumer,
//! receipts, reconciliation) under one supervisor, the gRPC server with health, reflection and
//! grpc-web, the services all tiers share, and the one graceful shutdown path.

pub mod actor;
pub mod admin;
pub mod config;
pub mod console;
pub mod engine;
mod error;
#[cfg(test)]
mod proptests;
pub mod query;
pub mod reconcile;
pub mod replicate;
pub mod request;
mod server;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod validate;
pub mod watch;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use engine::Engine;
pub use error::Error;
pub use server::run;

/// What a tier's gRPC services share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub engine: Arc<Engine>,
    /// Cancelled when the service begins to stop: long-lived streams end then.
    pub stopping: CancellationToken,
    /// What the admin service reports on.
    pub ops: Arc<admin::Operations>,
}
