//! A failure that repeats is worth more than a warning: while it is young it is logged at warn level
//! (a broker restarting, a database failing over), once it has lasted it is logged at error level,
//! then at most once a minute, and its end is logged too.

use std::fmt::Display;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

/// How long a failure may repeat before it is an error.
const GRACE: Duration = Duration::from_secs(30);
/// How often a lasting failure is logged at error level.
const REPEAT: Duration = Duration::from_secs(60);

/// The state of one recurring operation (a relay round, a consumer, a reconciliation).
#[derive(Debug, Default)]
pub struct Persisting {
    since: Option<Instant>,
    logged: Option<Instant>,
}

impl Persisting {
    /// Notes a failure of `what`.
    pub fn failed(&mut self, what: &str, error: &dyn Display) {
        let since = *self.since.get_or_insert_with(Instant::now);
        let lasted = since.elapsed();
        if lasted < GRACE {
            warn!(%error, "{what} failed, retrying");
        } else if self.logged.is_none_or(|at| at.elapsed() >= REPEAT) {
            error!(%error, failing_for_s = lasted.as_secs(), "{what} keeps failing");
            self.logged = Some(Instant::now());
        }
    }

    /// Notes a success of `what`, logging the end of a failure.
    pub fn succeeded(&mut self, what: &str) {
        if let Some(since) = self.since.take() {
            info!(
                failed_for_ms = since.elapsed().as_millis() as u64,
                "{what} works again"
            );
            self.logged = None;
        }
    }

    /// How long the current failure has lasted, if there is one.
    pub fn failing_for(&self) -> Option<Duration> {
        self.since.map(|s| s.elapsed())
    }
}
