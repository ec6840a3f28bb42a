//! Authentication at the edge: every call to a wangge service (health and reflection stay open)
//! must carry `authorization: Bearer <token>`; the interceptor verifies it before anything else
//! of the call is read, admits the caller under its rate limit, and hands the verified
//! [`Caller`] to the handler (see [`crate::policy`] for what the caller may then do).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::{debug, warn};
use wangge_auth::{Caller, Verifier};

/// The metadata key of the token.
pub const AUTHORIZATION: &str = "authorization";

/// How many distinct callers the rate limiter remembers before it forgets the idle ones.
const REMEMBERED_CALLERS: usize = 10_000;

/// Verifies tokens and limits each caller's rate.
#[derive(Clone)]
pub struct Authenticate {
    verifier: Arc<Verifier>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    calls: Arc<AtomicU64>,
    /// Calls refused for their rate since the start.
    refused: Arc<AtomicU64>,
}

impl std::fmt::Debug for Authenticate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticate")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl Authenticate {
    /// Each caller (by token subject) may make `per_second` calls a second on average, and
    /// `burst` at once.
    pub fn new(verifier: Verifier, per_second: NonZeroU32, burst: NonZeroU32) -> Authenticate {
        Authenticate {
            verifier: Arc::new(verifier),
            limiter: Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )),
            calls: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// The caller of `request`, verified and admitted, or the status that refuses the call.
    pub fn admit<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header =
            match request.metadata().get(AUTHORIZATION) {
                None => None,
                Some(value) => Some(value.to_str().map_err(|_| {
                    Status::unauthenticated("authorization metadata must be ASCII")
                })?),
            };
        let caller = self.verifier.verify_header(header).map_err(|e| {
            // The reason, never the token.
            debug!(reason = %e, "call refused: unauthenticated");
            Status::unauthenticated(e.to_string())
        })?;
        if self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(1024)
            && self.limiter.len() > REMEMBERED_CALLERS
        {
            self.limiter.retain_recent();
        }
        if self.limiter.check_key(&caller.subject).is_err() {
            // A flood must not become a flood of log lines: the first refusals, then every
            // thousandth, with the running count.
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused <= 10 || refused.is_multiple_of(1000) {
                warn!(subject = %caller.subject, refused, "call refused: rate limit");
            }
            return Err(Status::resource_exhausted(format!(
                "{} is calling faster than allowed; slow down and retry",
                caller.subject
            )));
        }
        Ok(caller)
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.admit(&request)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}
