//! What every tier service runs: configuration, the case engine, replication (relay, consumer,
//! receipts, reconciliation) under one supervisor, the gRPC server with health, reflection and
//! grpc-web, the services all tiers share, and the one graceful shutdown path.

pub mod admin;
pub mod authn;
pub mod clocks;
pub mod config;
pub mod console;
pub mod engine;
mod error;
pub mod evaluation;
mod intake;
pub mod limits;
#[cfg(test)]
mod machine_proptests;
pub mod policy;
#[cfg(test)]
mod proptests;
pub mod query;
pub mod reconcile;
pub mod replicate;
pub mod request;
mod server;
pub mod shutdown;
pub mod supervise;
pub mod supervisor;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod validate;
pub mod watch;
pub mod worklist;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

pub use config::{Config, NatsAuthConfig};
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
    /// Verifies every caller's token and limits its rate.
    pub authenticate: authn::Authenticate,
    /// The largest request message a call may send.
    pub max_request_bytes: usize,
    /// How often a watch looks again at the lights of the open cases it has sent (the 督办 scan's
    /// interval: a light change reaches a console about when its 督办 would).
    pub lights_every: std::time::Duration,
}

impl Shared {
    /// `service` behind the authentication interceptor: no handler runs for an unverified caller.
    pub fn guard<S>(&self, service: S) -> InterceptedService<S, authn::Authenticate> {
        InterceptedService::new(service, self.authenticate.clone())
    }
}
