//! PostgreSQL storage shared by the three tiers: every tier keeps the registry and the case log of
//! its scope in its own database, with the same schema (`migrations/`).

pub mod cases;
pub mod evaluation;
pub mod intake;
pub mod outbox;
pub mod registry;
pub mod replication;
pub mod rules;
pub mod sync;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use sqlx::{PgConnection, Postgres, Transaction};

/// The schema, embedded in every binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A caller broke a function's contract (a bug of ours, never the data).
    #[error("store misused: {0}")]
    Mismatch(String),
    #[error("stored {what} does not decode: {source}")]
    Corrupt {
        what: &'static str,
        source: prost::DecodeError,
    },
}

/// What a storage failure means to the caller, decided in one place ([`Error::class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The database is away, overloaded or cut the connection: nothing was decided, try again
    /// (UNAVAILABLE to gRPC callers). A write that failed this way at its commit may or may not
    /// have happened; the callers' idempotency keys make the retry safe.
    Unavailable,
    /// The transaction lost a race (serialization failure, deadlock) and was rolled back: the same
    /// call again will likely succeed (ABORTED to gRPC callers).
    Contention,
    /// Anything else: a bug, a schema drift or corrupt data; retrying does not help.
    Permanent,
}

impl Error {
    /// The SQLSTATE of a database error, if any (23505 is a unique violation).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }

    /// Whether retrying can help, by SQLSTATE for errors the server sent and by kind for the rest.
    pub fn class(&self) -> Class {
        let Error::Database(error) = self else {
            return Class::Permanent;
        };
        match error {
            sqlx::Error::Database(db) => db
                .code()
                .map_or(Class::Permanent, |code| sqlstate_class(&code)),
            // The connection broke (reset, EOF, TLS) or none could be had in time. A protocol
            // error is a connection in an unknown state; sqlx drops it, so a retry gets a fresh one.
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => Class::Unavailable,
            _ => Class::Permanent,
        }
    }

    /// True when the database could not be reached (worth retrying, UNAVAILABLE to callers).
    pub fn is_unavailable(&self) -> bool {
        self.class() == Class::Unavailable
    }
}

/// Classes of SQLSTATE (PostgreSQL appendix A) that say "not now" rather than "never".
fn sqlstate_class(code: &str) -> Class {
    match code {
        // serialization_failure, deadlock_detected
        "40001" | "40P01" => Class::Contention,
        // 08: connection exception; 53: insufficient resources (too many connections, out of
        // memory or disk); 57: operator intervention (admin or crash shutdown, cannot connect now,
        // query canceled, database dropped); 58030: io_error.
        _ if code.starts_with("08") || code.starts_with("53") || code.starts_with("57") => {
            Class::Unavailable
        }
        "58030" => Class::Unavailable,
        _ => Class::Permanent,
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Opens a pool and brings the schema up to date.
pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        // No ping before each use: it is a round trip on every acquire (three per report). A
        // connection the server dropped fails its next query instead, which is UNAVAILABLE (the
        // caller retries) and closes it, so the next acquire opens a fresh one.
        .test_before_acquire(false)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options)
        .await?;
    MIGRATOR.run(&pool).await.map_err(sqlx::Error::from)?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classed_by_what_a_retry_can_do() {
        for code in [
            "08006", "08001", "53300", "53100", "57P01", "57P02", "57P03", "57014",
        ] {
            assert_eq!(sqlstate_class(code), Class::Unavailable, "{code}");
        }
        for code in ["40001", "40P01"] {
            assert_eq!(sqlstate_class(code), Class::Contention, "{code}");
        }
        for code in ["23505", "42P01", "XX000", "22P02"] {
            assert_eq!(sqlstate_class(code), Class::Permanent, "{code}");
        }
    }

    #[test]
    fn broken_connections_are_unavailable_and_bugs_are_not() {
        let broken = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            Error::from(sqlx::Error::Io(broken)).class(),
            Class::Unavailable
        );
        assert_eq!(
            Error::from(sqlx::Error::PoolTimedOut).class(),
            Class::Unavailable
        );
        assert_eq!(
            Error::from(sqlx::Error::PoolClosed).class(),
            Class::Unavailable
        );
        assert_eq!(
            Error::from(sqlx::Error::Protocol("unexpected eof".into())).class(),
            Class::Unavailable
        );
        assert_eq!(
            Error::from(sqlx::Error::RowNotFound).class(),
            Class::Permanent
        );
        assert_eq!(
            Error::from(sqlx::Error::ColumnNotFound("x".into())).class(),
            Class::Permanent
        );
    }
}
