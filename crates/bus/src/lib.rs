//! The NATS side of wangge: subjects, the JetStream stream, the outbox relay and the inbox consumer.
//!
//! Subjects carry the org path, so a scope is a subject wildcard NATS permissions can enforce:
//! `wg.case.350205.002.006.001` is a case event in grid 350205002006001, and a street scope
//! subscribes to `wg.case.350205.002.>`.

mod consumer;
mod relay;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use wangge_domain::{GridCode, Scope};

pub use consumer::{Consumer, Disposition, Handler, Message};
pub use relay::{Relay, RelayHandle};

/// The stream holding every case event.
pub const CASE_STREAM: &str = "WANGGE_CASES";
const CASE_SUBJECTS: &str = "wg.case.>";

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nats: {0}")]
    Nats(String),
    #[error(transparent)]
    Store(#[from] wangge_store::Error),
}

impl Error {
    fn nats(e: impl std::fmt::Display) -> Error {
        Error::Nats(e.to_string())
    }
}

/// The subject of a case event in `grid`.
pub fn case_subject(grid: &GridCode) -> String {
    format!("wg.case.{}", grid.subject_path())
}

/// The wildcard of every case event in `scope`.
pub fn scope_filter(scope: &Scope) -> String {
    format!("wg.case.{}.>", scope.subject_path())
}

/// Creates the case stream unless it exists: every tier runs this at start, in any order.
pub async fn ensure_stream(js: &jetstream::Context) -> Result<(), Error> {
    js.get_or_create_stream(stream::Config {
        name: CASE_STREAM.to_owned(),
        subjects: vec![CASE_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        // Relays retry with the same message id; inside this window JetStream drops the copy.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(Error::nats)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_subject_matches_the_filters_of_its_scopes() {
        let grid: GridCode = "350205002006001".parse().unwrap();
        assert_eq!(case_subject(&grid), "wg.case.350205.002.006.001");
        for (scope, filter) in [
            ("350205", "wg.case.350205.>"),
            ("350205002", "wg.case.350205.002.>"),
            ("350205002006", "wg.case.350205.002.006.>"),
        ] {
            assert_eq!(scope_filter(&scope.parse().unwrap()), filter);
        }
    }
}
